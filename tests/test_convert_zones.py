"""Local times (no offset) in DST gaps and overlaps: java.time's rule, with zoneinfo (fold=0) as the reference.

java.time's `ZonedDateTime.of(local, zone)`: in an overlap the earlier offset; in a gap the local time is
moved later by the gap's length. zoneinfo with fold=0 does the same (a gap time uses the offset before the
transition). The transitions are found from zoneinfo, and the times tried sit on and around them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.convert import parse_datetimes, to_epoch_seconds

ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Sao_Paulo", "Asia/Kolkata",
         "America/Havana", "Asia/Beirut", "Europe/Berlin", "Pacific/Apia", "Europe/Dublin", "Asia/Tehran"]
MIDNIGHT_ZONES = ["America/Sao_Paulo", "America/Havana", "Asia/Beirut", "America/Santiago", "Asia/Amman"]
EPOCH = datetime(1970, 1, 1)


def utc_offset(zone: str, t: int) -> int:
    off = datetime.fromtimestamp(t, ZoneInfo(zone)).utcoffset()
    assert off is not None
    return int(off.total_seconds())


@cache
def transitions(zone: str, first: int = 1900, last: int = 2060) -> tuple[tuple[int, int, int], ...]:
    """(instant, offset before, offset after) of each change of offset, found day by day then bisected."""
    out = []
    t, end = int(datetime(first, 1, 1, tzinfo=UTC).timestamp()), int(datetime(last, 1, 1, tzinfo=UTC).timestamp())
    prev = utc_offset(zone, t)
    while t < end:
        nxt = t + 86400
        off = utc_offset(zone, nxt)
        if off != prev:
            lo, hi = t, nxt  # offset(lo) == prev, offset(hi) == off
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if utc_offset(zone, mid) == prev else (lo, mid)
            out.append((hi, prev, off))
        t, prev = nxt, off
    return tuple(out)


def reference(wall: datetime, zone: str) -> int:
    """zoneinfo, fold=0: java.time's ZonedDateTime.of."""
    return int(wall.replace(tzinfo=ZoneInfo(zone), fold=0).timestamp())


def as_wall(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


@st.composite
def near_transition(draw: st.DrawFn) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(ZONES))
    found = transitions(zone)
    instant, before, after = draw(st.sampled_from(found))
    side = draw(st.sampled_from([before, after]))  # the wall clock just before the change, and just after
    delta = draw(st.one_of(st.integers(-3 * 3600, 3 * 3600), st.sampled_from([-1, 0, 1, 1800, -1800, 3599, 3600])))
    return zone, as_wall(instant + side + delta)


@settings(max_examples=600, deadline=None)
@given(case=near_transition())
def test_local_times_around_transitions_match_java_time(case: tuple[str, datetime]) -> None:
    zone, wall = case
    expected = reference(wall, zone)
    iso = wall.strftime("%Y-%m-%dT%H:%M:%S")
    texts = [iso, iso.replace("T", " "), wall.strftime("%d/%m/%Y %H:%M:%S")]
    out = parse_datetimes(pa.array(texts), zone, ["%d/%m/%Y %H:%M:%S"]).to_pylist()
    assert out == [expected] * 3, (zone, iso)


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), instant=st.datetimes(min_value=datetime(1900, 1, 1),
                                                          max_value=datetime(2100, 12, 31)))
def test_any_local_time_matches_zoneinfo(zone: str, instant: datetime) -> None:
    wall = instant.replace(microsecond=0)
    assert parse_datetimes(pa.array([wall.isoformat()]), zone).to_pylist() == [reference(wall, zone)]


def midnight_transition_days() -> list[tuple[str, date]]:
    days = []
    for zone in MIDNIGHT_ZONES:
        for instant, before, after in transitions(zone):
            for side in (before, after):
                wall = as_wall(instant + side)
                if wall.time() == datetime.min.time():
                    days.append((zone, wall.date()))
    return days


def test_there_are_midnight_transitions_to_test() -> None:
    found = {zone for zone, _ in midnight_transition_days()}
    assert {"America/Sao_Paulo", "America/Havana", "Asia/Beirut"} <= found


@pytest.mark.parametrize("zone", MIDNIGHT_ZONES)
def test_date_only_on_days_whose_midnight_is_skipped_or_repeated(zone: str) -> None:
    days = sorted({d + timedelta(days=k) for z, d in midnight_transition_days() if z == zone for k in (-1, 0, 1)})
    out = parse_datetimes(pa.array([d.isoformat() for d in days]), zone).to_pylist()
    assert out == [reference(datetime(d.year, d.month, d.day), zone) for d in days]


NY = "America/New_York"


@pytest.mark.parametrize(("text", "zone", "expected"), [
    # spring forward 02:00 -> 03:00: 02:30 is shifted by the gap (one hour) to 03:30 EDT = 07:30Z
    ("2016-03-13T02:30:00", NY, datetime(2016, 3, 13, 7, 30, tzinfo=UTC)),
    ("2016-03-13T02:00:00", NY, datetime(2016, 3, 13, 7, 0, tzinfo=UTC)),
    ("2016-03-13T01:59:59", NY, datetime(2016, 3, 13, 6, 59, 59, tzinfo=UTC)),
    ("2016-03-13T03:00:00", NY, datetime(2016, 3, 13, 7, 0, tzinfo=UTC)),
    # fall back 02:00 -> 01:00: 01:30 happens twice, the earlier offset (EDT) wins
    ("2016-11-06T01:30:00", NY, datetime(2016, 11, 6, 5, 30, tzinfo=UTC)),
    ("2016-11-06T02:00:00", NY, datetime(2016, 11, 6, 7, 0, tzinfo=UTC)),
    # Lord Howe moves by 30 minutes: 02:15 in the gap is 02:45 +11:00
    ("2016-10-02T02:15:00", "Australia/Lord_Howe", datetime(2016, 10, 1, 15, 45, tzinfo=UTC)),
    ("2016-04-03T01:45:00", "Australia/Lord_Howe", datetime(2016, 4, 2, 14, 45, tzinfo=UTC)),
    ("2016-03-27T01:30:00", "Europe/London", datetime(2016, 3, 27, 1, 30, tzinfo=UTC)),
    ("2016-10-30T01:30:00", "Europe/London", datetime(2016, 10, 30, 0, 30, tzinfo=UTC)),
    # Sao Paulo skipped midnight: the day starts at 01:00 -02:00
    ("2016-10-16", "America/Sao_Paulo", datetime(2016, 10, 16, 3, 0, tzinfo=UTC)),
    ("2016-02-21", "America/Sao_Paulo", datetime(2016, 2, 21, 3, 0, tzinfo=UTC)),
    ("2016-04-12T10:15:30", "Asia/Kolkata", datetime(2016, 4, 12, 4, 45, 30, tzinfo=UTC)),
    # past 2037 (where Arrow's zone data stops), the same rule
    ("2040-03-11T02:30:00", NY, datetime(2040, 3, 11, 7, 30, tzinfo=UTC)),
    ("2040-11-04T01:30:00", NY, datetime(2040, 11, 4, 5, 30, tzinfo=UTC)),
])
def test_named_gaps_and_overlaps(text: str, zone: str, expected: datetime) -> None:
    assert to_epoch_seconds(text, zone) == int(expected.timestamp())


def test_rfc_pattern_without_offset_in_a_gap() -> None:
    fmt = "%a, %d %b %Y %H:%M:%S"
    assert to_epoch_seconds("Sun, 13 Mar 2016 02:30:00", NY, [fmt]) == int(
        datetime(2016, 3, 13, 7, 30, tzinfo=UTC).timestamp())


def test_mixed_rows_keep_their_places() -> None:
    values = pa.array(["2016-03-13T02:30:00", "2016-04-12T10:15:30Z", None, "2016-11-06T01:30:00", "2040-03-11T02:30",
                       "2016-03-13"])
    assert parse_datetimes(values, NY).to_pylist() == [
        int(datetime(2016, 3, 13, 7, 30, tzinfo=UTC).timestamp()), 1460456130, None,
        int(datetime(2016, 11, 6, 5, 30, tzinfo=UTC).timestamp()),
        int(datetime(2040, 3, 11, 7, 30, tzinfo=UTC).timestamp()),
        int(datetime(2016, 3, 13, 5, 0, tzinfo=UTC).timestamp())]

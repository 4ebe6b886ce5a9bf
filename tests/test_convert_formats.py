"""Every path rejects the same impossible dates, and keeps to years 0001..9999 UTC.

Arrow's strptime reads `31 Feb` and `second 60` and normalises them (2 March, the next minute); the configured
patterns must reject them as the ISO grammar does. The reference is Python's `datetime`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.convert import MAX_EPOCH, MIN_EPOCH, parse_datetimes, to_epoch_seconds

RFC1123 = "%a, %d %b %Y %H:%M:%S GMT"
PATTERNS = ["%d %b %Y %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%Y%m%d %H%M%S", RFC1123, "%d.%m.%Y", "%b %d, %Y %H:%M:%S"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def real(y: int, mo: int, d: int, h: int, mi: int, s: int) -> datetime | None:
    try:
        return datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except ValueError:
        return None


def write(fmt: str, y: int, mo: int, d: int, h: int, mi: int, s: int) -> str:
    """The text a pattern reads, written by hand (strftime cannot write an impossible date)."""
    weekday = DAYS[real(y, mo, min(d, 28), 0, 0, 0).weekday()]  # type: ignore[union-attr]
    fields = {"%Y": f"{y:04d}", "%m": f"{mo:02d}", "%d": f"{d:02d}", "%H": f"{h:02d}", "%M": f"{mi:02d}",
              "%S": f"{s:02d}", "%b": MONTHS[mo - 1], "%a": weekday}
    out = fmt
    for k, v in fields.items():
        out = out.replace(k, v)
    return out


fields = st.tuples(st.integers(1, 9999), st.integers(1, 12), st.integers(1, 31), st.integers(0, 23),
                   st.integers(0, 59), st.integers(0, 61))


@settings(max_examples=500, deadline=None)
@given(f=fields, fmt=st.sampled_from(PATTERNS))
def test_patterns_reject_what_the_iso_grammar_rejects(f: tuple[int, int, int, int, int, int], fmt: str) -> None:
    y, mo, d, h, mi, s = f
    if "%H" not in fmt:
        h = mi = s = 0
    expected = real(y, mo, d, h, mi, s)
    iso = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"
    out = parse_datetimes(pa.array([iso, write(fmt, y, mo, d, h, mi, s)]), "UTC", [fmt]).to_pylist()
    assert out == [int(expected.timestamp()) if expected else None] * 2


@settings(max_examples=300, deadline=None)
@given(f=fields, minutes=st.integers(-26 * 60, 26 * 60), colon=st.booleans())
def test_patterns_with_an_offset(f: tuple[int, int, int, int, int, int], minutes: int, colon: bool) -> None:
    y, mo, d, h, mi, s = f
    fmt = "%d %b %Y %H:%M:%S %z"
    sign, hh, mm = "-" if minutes < 0 else "+", abs(minutes) // 60, abs(minutes) % 60
    text = write("%d %b %Y %H:%M:%S ", y, mo, d, h, mi, s) + f"{sign}{hh:02d}{':' if colon else ''}{mm:02d}"
    wall = real(y, mo, d, h, mi, s)
    expected = None
    if wall is not None and abs(minutes) <= 18 * 60:
        instant = int(wall.timestamp()) - minutes * 60
        expected = instant if MIN_EPOCH <= instant <= MAX_EPOCH else None
    assert parse_datetimes(pa.array([text]), "UTC", [fmt]).to_pylist() == [expected]


@pytest.mark.parametrize(("text", "fmt"), [
    ("31 Feb 2016", "%d %b %Y"), ("30 Feb 2016", "%d %b %Y"), ("29 Feb 2015", "%d %b %Y"),
    ("31/04/2016", "%d/%m/%Y"), ("31/04 16", "%d/%m %y"), ("31/06/2016 10:00:00", "%d/%m/%Y %H:%M:%S"),
    ("30/04/2016 10:00:60", "%d/%m/%Y %H:%M:%S"), ("30/04/2016 10:00:61", "%d/%m/%Y %H:%M:%S"),
    ("Sun, 31 Apr 2016 10:00:00 GMT", RFC1123), ("30 Apr 2016 10:00:00 +2500", "%d %b %Y %H:%M:%S %z"),
    ("31 Apr 2016 10:00:00 +0100", "%d %b %Y %H:%M:%S %z"), ("01/01/10000", "%d/%m/%Y"),
])
def test_impossible_dates_are_null_on_the_pattern_path(text: str, fmt: str) -> None:
    assert parse_datetimes(pa.array([text, "2016-04-12T10:15:30Z"]), "America/New_York", [fmt]).to_pylist() == [
        None, 1460456130]


@pytest.mark.parametrize(("text", "fmt", "expected"), [
    ("29 Feb 2016", "%d %b %Y", datetime(2016, 2, 29, tzinfo=UTC)),
    (" 3/4/2016 1:2:3", "%d/%m/%Y %H:%M:%S", datetime(2016, 4, 3, 1, 2, 3, tzinfo=UTC)),  # not zero padded
    ("30 apr 2016", "%d %b %Y", datetime(2016, 4, 30, tzinfo=UTC)),  # month name in lower case
    ("Mon, 30 Apr 2016 10:00:00 GMT", RFC1123, datetime(2016, 4, 30, 10, tzinfo=UTC)),  # weekday ignored
    ("30 Apr 2016 10:00:00 +01:00", "%d %b %Y %H:%M:%S %z", datetime(2016, 4, 30, 9, tzinfo=UTC)),
    ("30 Apr 2016 10:00:00 Z", "%d %b %Y %H:%M:%S %z", datetime(2016, 4, 30, 10, tzinfo=UTC)),
    ("30 Apr 2016 10:00:00 -0530", "%d %b %Y %H:%M:%S %z", datetime(2016, 4, 30, 15, 30, tzinfo=UTC)),
    ("2016 366", "%Y %j", datetime(2016, 12, 31, tzinfo=UTC)),  # Arrow drops the day of the year; Python reads it
])
def test_other_spellings_still_read(text: str, fmt: str, expected: datetime) -> None:
    assert parse_datetimes(pa.array([text]), "UTC", [fmt]).to_pylist() == [int(expected.timestamp())]


def test_a_local_pattern_is_in_the_configured_zone() -> None:
    out = parse_datetimes(pa.array(["30/04/2016 10:00:00", "31/04/2016 10:00:00"]), "Asia/Kolkata",
                          ["%d/%m/%Y %H:%M:%S"]).to_pylist()
    assert out == [int(datetime(2016, 4, 30, 10, tzinfo=timezone(timedelta(hours=5, minutes=30))).timestamp()), None]


@pytest.mark.parametrize(("text", "expected"), [
    ("9999-12-31T23:59:59Z", MAX_EPOCH), ("9999-12-31T23:59:59+01:00", MAX_EPOCH - 3600),
    ("9999-12-31T23:59:59-00:01", None), ("9999-12-31", MAX_EPOCH - 86399), ("0001-01-01T00:00:00Z", MIN_EPOCH),
    ("0001-01-01T00:00:00+00:01", None), ("0001-01-01", MIN_EPOCH), ("0000-12-31T23:59:59Z", None),
    ("0000-06-01", None),
])
def test_the_date_range_is_the_same_on_every_path(text: str, expected: int | None) -> None:
    assert parse_datetimes(pa.array([text])).to_pylist() == [expected]
    assert parse_datetimes(pa.array([text]), "UTC", ["%d %b %Y"]).to_pylist() == [expected]


def test_forward_writer_rejects_what_the_transform_rejects() -> None:
    with pytest.raises(ValueError, match="not a date-time"):
        to_epoch_seconds("31 Feb 2016", formats=["%d %b %Y"])
    with pytest.raises(ValueError, match="not a date-time"):
        to_epoch_seconds("9999-12-31T23:59:59-05:00")
    assert to_epoch_seconds("29 Feb 2016", formats=["%d %b %Y"]) == int(datetime(2016, 2, 29, tzinfo=UTC).timestamp())


def test_many_rows_of_a_pattern_keep_their_places() -> None:
    grid = [(d, m, s) for d in (1, 28, 29, 30, 31) for m in range(1, 13) for s in (0, 59, 60)]
    texts = [f"{d:02d}/{m:02d}/2016 10:00:{s:02d}" for d, m, s in grid]
    out = parse_datetimes(pa.array(texts), "UTC", ["%d/%m/%Y %H:%M:%S"]).to_pylist()
    expected = [real(2016, m, d, 10, 0, s) for d, m, s in grid]
    assert out == [int(dt.timestamp()) if dt else None for dt in expected]

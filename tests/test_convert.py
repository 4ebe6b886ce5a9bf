"""Dates to exact epoch seconds: property tests over random instants, zones and formats."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.convert import MAX_EPOCH, MIN_EPOCH, parse_datetimes, parse_epoch_numbers, to_epoch_seconds

instants = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31),
                        timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
digits = st.integers(min_value=0, max_value=9)


def fmt_offset(dt: datetime, style: str) -> str:
    off = dt.utcoffset()
    assert off is not None
    minutes = int(off.total_seconds() // 60)
    if style == "Z" and minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h:02d}:{m:02d}" if style in ("colon", "Z") else f"{sign}{h:02d}{m:02d}"


@settings(max_examples=400, deadline=None)
@given(instant=instants, tz=offsets, nfrac=digits, sep=st.sampled_from(["T", " "]),
       style=st.sampled_from(["colon", "compact", "Z"]))
def test_any_instant_in_any_offset_and_format_converts_exactly(instant: datetime, tz: timezone, nfrac: int,
                                                               sep: str, style: str) -> None:
    local = instant.astimezone(tz)
    frac = f"{local.microsecond:06d}{'000'}"[:nfrac]
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{frac}" if nfrac else "") + fmt_offset(local, style)
    truncated = local.replace(microsecond=int((frac + "000000")[:6]) if nfrac else 0)
    expected = math.floor(truncated.timestamp())
    assert parse_datetimes(pa.array([text])).to_pylist() == [expected]


@settings(max_examples=200, deadline=None)
@given(instant=instants, zone=st.sampled_from(["America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata",
                                                 "Australia/Lord_Howe", "UTC"]))
def test_joda_tostring_in_named_zones(instant: datetime, zone: str) -> None:
    local = instant.astimezone(ZoneInfo(zone))
    text = local.isoformat(timespec="milliseconds")  # what Joda's DateTime.toString() writes
    assert to_epoch_seconds(text) == math.floor(local.replace(microsecond=local.microsecond // 1000 * 1000)
                                                .timestamp())


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=datetime(1901, 1, 1).date(), max_value=datetime(2037, 12, 31).date()),
       zone=st.sampled_from(["UTC", "America/New_York", "Asia/Tokyo"]))
def test_date_only_is_midnight_in_the_configured_zone(day: datetime, zone: str) -> None:
    # Arrow's zone rules stop at 2037 (no DST after it); explicit offsets are exact at any date.
    midnight = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone))
    assert parse_datetimes(pa.array([day.isoformat()]), zone).to_pylist() == [int(midnight.timestamp())]


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(min_value=MIN_EPOCH + 1, max_value=MAX_EPOCH), millis=st.integers(0, 999))
def test_epoch_numbers_in_seconds_and_millis(seconds: int, millis: int) -> None:
    assert parse_epoch_numbers(pa.array([str(seconds)])).to_pylist() == [seconds]
    ms = seconds * 1000 + millis
    assert parse_epoch_numbers(pa.array([str(ms)]), "ms").to_pylist() == [math.floor(ms / 1000)]
    assert parse_epoch_numbers(pa.array([f"{seconds}.{millis:03d}"])).to_pylist() == [
        seconds if millis == 0 or seconds >= 0 else seconds - 1]


def test_rfc1123_via_configured_pattern() -> None:
    out = parse_datetimes(pa.array(["Sat, 04 May 2024 04:54:56 GMT"]), formats=["%a, %d %b %Y %H:%M:%S GMT"])
    assert out.to_pylist() == [int(datetime(2024, 5, 4, 4, 54, 56, tzinfo=UTC).timestamp())]
    assert parse_datetimes(pa.array(["Sat, 04 May 2024 04:54:56 GMT"])).to_pylist() == [None]


@pytest.mark.parametrize("bad", ["not-a-date", "2016-04-32T10:00:00Z", "2016-02-30", "2015-02-29",
                                 "2016/04/05 10:00", "2016-04-12T24:00:00Z", "2016-04-12T10:15:30+25:00",
                                 "2016-04-12T10:15:30.1234567890Z", "", "2016-02-30T10:00:00Z",
                                 "2016-04-12T10:15:60Z", "2016-13-01T00:00:00Z", "2016-04-12T10:60:00Z",
                                 "2O16-04-12T10:15:30Z", "2016-04-12T10:15:30Zjunk", "+2016-04-12T10:15:30Z",
                                 "\uff12016-04-12T10:15:30Z", "2016-04-12T10:15:30.Z"])
def test_invalid_strings_are_null_not_guessed(bad: str) -> None:
    assert parse_datetimes(pa.array([bad])).to_pylist() == [None]


def test_a_sliced_mixed_array_keeps_each_value_in_its_row() -> None:
    values = pa.array(["x", "2016-04-12T10:15:30Z", "bad", "2016-04-12T10:15:30.5-01:00", None, "2016-04-12",
                       "2016-02-30T10:00:00Z", "2016-04-12 10:15:30+0100"]).slice(1)
    assert parse_datetimes(values).to_pylist() == [1460456130, None, 1460459730, None, 1460419200, None, 1460452530]


def test_leap_day_and_time_of_day_are_kept() -> None:
    assert to_epoch_seconds("2016-02-29T23:59:59.999-08:00") == int(
        datetime(2016, 3, 1, 7, 59, 59, tzinfo=UTC).timestamp())
    assert to_epoch_seconds(datetime(2016, 4, 12, 10, 15, 30, 999999, tzinfo=UTC)) == 1460456130
    with pytest.raises(ValueError, match="naive"):
        to_epoch_seconds(datetime(2016, 4, 12))

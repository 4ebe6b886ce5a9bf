"""The two ISO forms the tool's records use (`etl.times`), exactly as manifests, leases and exports spell them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from etl import times

T = datetime(2024, 5, 27, 8, 11, 47, 109_999, tzinfo=timezone(timedelta(hours=2)))  # 06:11:47.109999Z


def test_seconds_and_milliseconds_are_utc_truncated_with_a_z() -> None:
    assert times.iso_seconds(T) == "2024-05-27T06:11:47Z"
    assert times.iso_seconds(T.timestamp()) == "2024-05-27T06:11:47Z"
    assert times.iso_ms(T) == "2024-05-27T06:11:47.109Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", times.iso_seconds())
    assert abs(times.parse(times.iso_seconds()) - datetime.now(UTC)) < timedelta(minutes=1)


def test_parse_reads_both_forms_back_and_a_time_without_an_offset_as_assumed() -> None:
    assert times.parse(times.iso_ms(T)) == T.replace(microsecond=109_000)
    assert times.parse("2024-05-27T06:11:47+02:00") == datetime(2024, 5, 27, 4, 11, 47, tzinfo=UTC)
    assert times.parse("2024-05-27T06:11:47") == datetime(2024, 5, 27, 6, 11, 47, tzinfo=UTC)
    assert times.parse("2024-05-27T06:11:47", assume=None).tzinfo is None
    with pytest.raises(ValueError):
        times.parse("27/05/2024")

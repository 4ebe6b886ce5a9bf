"""DynamoDB N -> epoch seconds and int64, and the TTL sum: exact against `decimal`, never a crash or a wrap."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.convert import MAX_EPOCH, MIN_EPOCH, parse_epoch_numbers, parse_integers, to_epoch_seconds, ttl

INT64 = (-(2**63), 2**63 - 1)
UNITS = {"s": 1, "ms": 1000}


def dynamodb_number(text: str) -> Decimal | None:
    """The reference: DynamoDB's number (sign, digits, point, exponent; 38 significant digits, magnitudes
    1E-130 .. 9.99..E+125), or None where DynamoDB would refuse the text."""
    body = text.strip()
    if not body or body[0] not in "+-0123456789." or "_" in body or body.lower().lstrip("+-")[:1] in ("i", "n"):
        return None
    try:
        number = Decimal(body)
    except ArithmeticError:
        return None
    if not number.is_finite():
        return None
    digits = "".join(map(str, number.as_tuple().digits)).strip("0")
    if not digits:
        return Decimal(0)
    if len(digits) > 38 or not -130 <= number.adjusted() <= 125:
        return None
    return number


def expected_epoch(text: str, unit: str) -> int | None:
    number = dynamodb_number(text)
    if number is None:
        return None
    seconds = math.floor(Fraction(number) / UNITS[unit]) if number.adjusted() < 60 else None
    return seconds if seconds is not None and MIN_EPOCH <= seconds <= MAX_EPOCH else None


def expected_int(text: str) -> int | None:
    number = dynamodb_number(text)
    if number is None or number.adjusted() > 40 or Fraction(number).denominator != 1:
        return None
    value = int(Fraction(number))
    return value if INT64[0] <= value <= INT64[1] else None


# numbers in DynamoDB's grammar, around the interesting sizes (int64, the epoch range in s and ms)
magnitudes = st.sampled_from([1, 10**3, 10**9, 10**11, 253402300799, 10**13, 10**15, 2**63, 10**19, 10**40])
numbers = st.builds(
    lambda sign, size, n, frac, exp: f"{sign}{n % (size * 2)}{frac}{exp}",
    st.sampled_from(["", "-", "+"]), magnitudes, st.integers(min_value=0, max_value=10**41),
    st.sampled_from(["", ".", ".0", ".5", ".000", ".999", ".0000000000000000000000000000000000000001"]),
    st.sampled_from(["", "", "", "e0", "E3", "e-3", "e+2", "E-140", "e130"]))
junk = st.sampled_from(["", ".", "+", "-", "e5", "1e", "1.2.3", "1+2", "--1", "0x10", "NaN", "Infinity", "1_000",
                        "1 2", "١٢", "1e99999999999999999999999", "12abc"])


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(numbers, junk), unit=st.sampled_from(["s", "ms"]))
def test_epoch_numbers_follow_dynamodb_grammar_and_the_date_range(text: str, unit: str) -> None:
    assert parse_epoch_numbers(pa.array([text, "1460456130"]), unit).to_pylist() == [
        expected_epoch(text, unit), expected_epoch("1460456130", unit)]


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(numbers, junk))
def test_integers_are_whole_numbers_that_fit_int64(text: str) -> None:
    assert parse_integers(pa.array([text, "7"])).to_pylist() == [expected_int(text), 7]


@pytest.mark.parametrize(("text", "unit", "expected"), [
    ("99999999999999999999", "s", None),  # past int64: null, not ArrowInvalid
    ("-99999999999999999999", "ms", None),
    ("9223372036854775808", "s", None),
    ("+1460456130", "s", 1460456130),  # DynamoDB accepts a leading + (and stores +5 as 5)
    ("+1460456130123", "ms", 1460456130),
    ("1460456130123", "s", None),  # 13 digits read as seconds: year 48,000
    ("1460456130123", "ms", 1460456130),
    (str(MAX_EPOCH), "s", MAX_EPOCH), (str(MAX_EPOCH + 1), "s", None),
    (str(MIN_EPOCH), "s", MIN_EPOCH), (str(MIN_EPOCH - 1), "s", None),
    (f"{MAX_EPOCH}999", "ms", MAX_EPOCH), (f"{MAX_EPOCH + 1}000", "ms", None),
    (f"{MIN_EPOCH}000", "ms", MIN_EPOCH), (f"{MIN_EPOCH}001", "ms", None),
    ("1.4604561301E9", "s", 1460456130), ("-0.5", "s", -1), ("-1000.5", "ms", -2), ("1E-131", "s", None),
])
def test_named_numbers(text: str, unit: str, expected: int | None) -> None:
    assert parse_epoch_numbers(pa.array([text]), unit).to_pylist() == [expected]


def test_a_bad_number_among_good_ones_keeps_each_row() -> None:
    values = pa.array(["1", "99999999999999999999", None, "+2", "x", "3.5", "1e2"]).slice(0)
    assert parse_epoch_numbers(values).to_pylist() == [1, None, None, 2, None, 3, 100]
    assert parse_integers(values).to_pylist() == [1, None, None, 2, None, None, 100]
    assert parse_epoch_numbers(pa.chunked_array([values, values])).to_pylist() == [1, None, None, 2, None, 3, 100] * 2


@settings(max_examples=300, deadline=None)
@given(epoch=st.one_of(st.integers(MIN_EPOCH, MAX_EPOCH), st.sampled_from([MIN_EPOCH, MAX_EPOCH, 0])),
       ttl_seconds=st.one_of(st.integers(0, 10**12), st.integers(0, 2**70),
                             st.sampled_from([0, 2**63 - 1, 2**63, MAX_EPOCH - MIN_EPOCH])))
def test_ttl_sum_is_checked(epoch: int, ttl_seconds: int) -> None:
    total = epoch + ttl_seconds
    expected = total if MIN_EPOCH <= total <= MAX_EPOCH else None
    assert ttl(pa.array([epoch, None], pa.int64()), ttl_seconds).to_pylist() == [expected, None]


def test_ttl_near_int64_never_wraps() -> None:
    out = ttl(pa.array([2**63 - 10, -(2**63), 1460456130], pa.int64()), 31_536_000).to_pylist()
    assert out == [None, None, 1460456130 + 31_536_000]


def test_forward_writer_numbers() -> None:
    assert to_epoch_seconds(1460456130.5) == 1460456130
    assert to_epoch_seconds(-0.5) == -1
    assert to_epoch_seconds(1e9) == 1_000_000_000
    assert to_epoch_seconds(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)) == MAX_EPOCH
    for bad in (10**20, 1e20, float("nan"), float("inf"), 1460456130123):
        with pytest.raises(ValueError, match="not a date-time"):
            to_epoch_seconds(bad)

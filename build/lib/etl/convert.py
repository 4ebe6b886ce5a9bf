"""Dates and TTL: strings and numbers to exact whole epoch seconds, vectorised over Arrow arrays.

One place computes the epoch and the TTL: the transform and the live forward writer both call it.

Accepted, per value:
  * ISO-8601 / Joda `DateTime.toString()`: `2016-04-12T10:15:30.123-07:00`, `...Z`, `+HH:MM`, `+HHMM`,
    `+HH`, 0-9 fraction digits, `T` or a space between date and time, seconds optional;
  * date-only `yyyy-MM-dd`: midnight in the configured zone (default UTC);
  * a date-time without an offset: local time in the configured zone;
  * extra strptime patterns from config (e.g. RFC 1123 `%a, %d %b %Y %H:%M:%S GMT`), tried on what
    the built-in grammar rejected;
  * numbers (DynamoDB N, by DynamoDB's grammar: sign, digits, point, exponent, at most 38 significant
    digits): epoch seconds or milliseconds, fractions floored.
The result is floor(instant) in seconds; a value that matches nothing is null (the caller quarantines), and
so is an instant outside years 0001..9999 UTC (what a 4-digit ISO year can say), on every path.

Local times (no offset) resolve as java.time's `ZonedDateTime.of` and Python's zoneinfo (fold=0) do: an
overlap takes the earlier offset (the earlier instant), a time in a gap is shifted later by the gap's length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_ISO = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<z>Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)?\s*$"
)
# DynamoDB's number grammar (a leading `+` is valid: DynamoDB stores `+5` as `5`); surrounding blanks tolerated
_NUM = r"^\s*(?P<s>[+-]?)(?P<i>\d*)(?:\.(?P<f>\d*))?(?:[eE](?P<e>[+-]?\d+))?\s*$"
_NUM_DIGITS = 38  # significant digits DynamoDB keeps
_NUM_EXPONENTS = (-130, 125)  # DynamoDB's magnitudes: 1E-130 .. 9.99..9E+125
MIN_EPOCH = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _ints(arr: pa.Array, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits -> int64 numpy values and a validity mask."""
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    vals = pc.cast(pc.fill_null(arr, str(fill)), pa.int64()).to_numpy(zero_copy_only=False)
    return vals, valid


def days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), vectorised."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = np.where(m > 2, m - 3, m + 9)
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return np.asarray(era * 146097 + doe - 719468, dtype=np.int64)


def _is_leap(y: np.ndarray) -> np.ndarray:
    return np.asarray((y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0)))


_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Etc/UCT", "UCT", "Etc/Zulu", "Zulu"})
# Arrow reads a zone's transitions from its TZif file and ignores the rule for the years after the last one
# listed (2037 in the usual "fat" files): wall times from 2038 on are resolved by zoneinfo instead.
_ARROW_RULES_END = 2_145_916_800  # 2038-01-01T00:00:00 as wall-clock seconds


def _local_to_utc(seconds: np.ndarray, mask: np.ndarray, zone: str) -> np.ndarray:
    """Wall-clock seconds in `zone` -> UTC seconds, where `mask` is set (elsewhere unchanged).

    As java.time's `ZonedDateTime.of` and zoneinfo with fold=0: an overlap takes the earlier offset, a gap
    time keeps the offset in force before the gap (so 02:30 on a New York spring-forward day is 07:30Z, the
    wall time shifted by the gap's length). Arrow gives the instants either side of a gap; the rows where
    they differ are the gap rows, resolved with the offset of the instant before it."""
    if zone in _UTC_ZONES or not mask.any():
        return seconds
    rows = np.flatnonzero(mask)
    wall = seconds[rows]
    out = seconds.copy()
    late = wall >= _ARROW_RULES_END
    if (~late).any():
        now = wall[~late]
        naive = pa.array(now, pa.timestamp("s"))
        early = _np(pc.cast(pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest"), pa.int64()))
        after = _np(pc.cast(pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="latest"), pa.int64()))
        gap = early != after
        if gap.any():  # `early` is the last second before the gap: its wall clock gives the offset before it
            before = pa.array(early[gap], pa.timestamp("s", zone))
            offset_before = _np(pc.cast(pc.local_timestamp(before), pa.int64())) - early[gap]
            after[gap] = now[gap] - offset_before
        out[rows[~late]] = after
    if late.any():
        out[rows[late]] = [_zoneinfo_to_utc(int(w), zone) for w in wall[late]]
    return out


def _zoneinfo_to_utc(wall: int, zone: str) -> int:
    """One wall-clock second -> UTC by zoneinfo (fold=0); past year 9999, a value past the accepted range."""
    try:
        local = _EPOCH_NAIVE + timedelta(seconds=wall)
    except OverflowError:
        return MAX_EPOCH + 1
    offset = local.replace(tzinfo=ZoneInfo(zone)).utcoffset()
    return wall - (offset // timedelta(seconds=1) if offset is not None else 0)


_EPOCH_NAIVE = datetime(1970, 1, 1)


def _np(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A writable numpy copy (Arrow's zero-copy views are read-only)."""
    return np.array(a.to_numpy(zero_copy_only=False))


def _in_range(secs: np.ndarray) -> np.ndarray:
    return np.asarray((secs >= MIN_EPOCH) & (secs <= MAX_EPOCH))


_SUFFIX = re.compile(r"^(?:[.,]\d{1,9})?(Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)$")
_MAX_SUFFIXES = 100_000


def _suffix_offset(suffix: str | None) -> int | None:
    """Offset in seconds of a `.fff+HH:MM`-style tail; None when it is not one (or has no zone)."""
    m = _SUFFIX.match(suffix or "")
    if not m:
        return None
    z = m.group(1)
    if z == "Z":
        return 0
    digits = z[1:].replace(":", "")
    hours, minutes, sec = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hours > 18 or minutes > 59 or sec > 59:
        return None
    sec += hours * 3600 + minutes * 60
    return -sec if z[0] == "-" else sec


_HEAD = 19  # len("yyyy-MM-ddTHH:mm:ss")
_HEAD_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_HEAD_SEPS = np.array([4, 7, 10, 13, 16])
_HEAD_SEP_CHARS = np.frombuffer(b"--T::", dtype=np.uint8)


def _head_seconds(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The leading `yyyy-MM-ddTHH:mm:ss` of each value as wall-clock seconds, and where it is one.

    Read straight from the bytes: every head is made 19 bytes long (a placeholder where it is not), so
    the data buffer is an n x 19 matrix of characters; digits and separators are checked in place and
    the fields validated like the general path does (30 Feb, hour 24 or second 60 do not fit)."""
    head = pc.utf8_slice_codeunits(values, 0, _HEAD)
    fits = pc.fill_null(pc.equal(pc.binary_length(head), _HEAD), False)
    head = pc.if_else(fits, head, pa.scalar("1970-01-01T00:00:00"))
    n = len(head)
    offsets = np.frombuffer(head.buffers()[1], dtype=np.int32, count=n + 1, offset=head.offset * 4)
    chars = np.frombuffer(head.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[0] + n * _HEAD].reshape(n, _HEAD)
    d = chars[:, _HEAD_DIGITS].astype(np.int64) - 48
    ok = np.asarray(fits.to_numpy(zero_copy_only=False), dtype=bool)
    ok &= ((d >= 0) & (d <= 9)).all(axis=1) & (chars[:, _HEAD_SEPS] == _HEAD_SEP_CHARS).all(axis=1)
    y = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    mo, day = d[:, 4] * 10 + d[:, 5], d[:, 6] * 10 + d[:, 7]
    h, mi, s = d[:, 8] * 10 + d[:, 9], d[:, 10] * 10 + d[:, 11], d[:, 12] * 10 + d[:, 13]
    mo_ok = (mo >= 1) & (mo <= 12)
    mo = np.where(mo_ok, mo, 1)
    dim = _DAYS[mo] + ((mo == 2) & _is_leap(y))
    ok &= mo_ok & (day >= 1) & (day <= dim) & (h <= 23) & (mi <= 59) & (s <= 59)
    return days_from_civil(y, mo, np.where(ok, day, 1)) * 86400 + h * 3600 + mi * 60 + s, ok


def _valid(a: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_valid(a).to_numpy(zero_copy_only=False), dtype=bool)


def _fast_path(values: pa.Array) -> pa.Array:
    """The common shape `yyyy-MM-ddTHH:mm:ss[.fff](Z|+HH:MM)`: the head read from its bytes
    (`_head_seconds`), the tail's offset computed once per distinct tail. Null where the shape does not
    fit (the general path then decides)."""
    secs, ok = _head_seconds(values)
    # the distinct tails (zones x fractions), then each with its fraction dropped: the few zones
    tails = pc.dictionary_encode(pc.utf8_slice_codeunits(values, _HEAD))
    zones = pc.dictionary_encode(pc.replace_substring_regex(tails.dictionary, r"^[.,]\d{1,9}", ""))
    if len(zones.dictionary) > _MAX_SUFFIXES:
        return pa.nulls(len(values), pa.int64())
    offsets = [_suffix_offset(x) for x in zones.dictionary.to_pylist()]
    known = np.array([o is not None for o in offsets], dtype=bool)
    table = np.array([o or 0 for o in offsets], dtype=np.int64)
    zone_of = np.asarray(zones.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    idx = np.asarray(pc.fill_null(tails.indices, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(table):
        idx = zone_of[idx]
        ok &= known[idx] & _valid(tails.indices)
        secs = secs - table[idx]
        ok &= _in_range(secs)
    else:
        ok[:] = False
    return pa.array(secs, pa.int64(), mask=~ok)


def parse_datetimes(values: pa.Array, zone: str = "UTC", formats: Sequence[str] = ()) -> pa.Array:
    """Strings -> int64 epoch seconds (null where nothing matched)."""
    values = pc.cast(values, pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return pa.array([], pa.int64())
    fast = _fast_path(values)
    todo = pc.and_(pc.is_null(fast), pc.is_valid(values))
    if not pc.any(todo).as_py():
        return fast
    idx = pc.indices_nonzero(todo)
    slow = _parse_general(values.take(idx), zone, formats)
    out = _np(pc.fill_null(fast, 0))
    ok = _valid(fast)
    slow_ok = _valid(slow)
    positions = _np(idx)[slow_ok]
    out[positions] = _np(pc.fill_null(slow, 0))[slow_ok]
    ok[positions] = True
    return pa.array(out, pa.int64(), mask=~ok)


def _parse_general(values: pa.Array, zone: str, formats: Sequence[str]) -> pa.Array:
    """Every accepted shape, by one regular expression (and the configured patterns after it)."""
    n = len(values)
    if n == 0:
        return pa.array([], pa.int64())
    parts = pc.extract_regex(values, _ISO)
    matched = pc.is_valid(parts).to_numpy(zero_copy_only=False)
    y, _ = _ints(parts.field("y"), 1970)
    mo, _ = _ints(parts.field("mo"), 1)
    d, _ = _ints(parts.field("d"), 1)
    h, _ = _ints(parts.field("h"))  # an optional group that did not take part is "" -> 0
    mi, _ = _ints(parts.field("mi"))
    s, _ = _ints(parts.field("s"))
    mo_ok = (mo >= 1) & (mo <= 12)
    mo_idx = np.where(mo_ok, mo, 1)
    dim = _DAYS[mo_idx] + ((mo_idx == 2) & _is_leap(y))
    ok = matched & mo_ok & (d >= 1) & (d <= dim) & (h <= 23) & (mi <= 59) & (s <= 59)
    days = days_from_civil(y, mo_idx, np.where(ok, d, 1))
    wall = days * 86400 + h * 3600 + mi * 60 + s
    z = parts.field("z")
    has_zone = pc.and_(pc.is_valid(z), pc.not_equal(z, "")).to_numpy(zero_copy_only=False)
    zs = pc.fill_null(z, "")
    sign = np.where(pc.starts_with(zs, "-").to_numpy(zero_copy_only=False), -1, 1)
    digits = pc.replace_substring(pc.replace_substring(pc.replace_substring(zs, ":", ""), "+", ""), "-", "")
    zh, _ = _ints(pc.if_else(pc.greater_equal(pc.utf8_length(digits), 2), pc.utf8_slice_codeunits(digits, 0, 2),
                             pa.scalar(None, pa.string())))
    zm, _ = _ints(pc.if_else(pc.greater_equal(pc.utf8_length(digits), 4), pc.utf8_slice_codeunits(digits, 2, 4),
                             pa.scalar(None, pa.string())))
    zsec, _ = _ints(pc.if_else(pc.equal(pc.utf8_length(digits), 6), pc.utf8_slice_codeunits(digits, 4, 6),
                               pa.scalar(None, pa.string())))
    ok &= (zh <= 18) & (zm <= 59) & (zsec <= 59)
    offset = sign * (zh * 3600 + zm * 60 + zsec)
    epoch = _local_to_utc(wall - np.where(has_zone, offset, 0), ok & ~has_zone, zone)
    ok &= _in_range(epoch)
    result = pa.array(epoch, pa.int64(), mask=~ok)
    if formats and not ok.all():
        result = _with_formats(values, result, ok, zone, formats)
    return result


def _with_formats(values: pa.Array, result: pa.Array, ok: np.ndarray, zone: str, formats: Sequence[str]) -> pa.Array:
    """The configured patterns, each on the rows nothing before it matched."""
    out = _np(pc.fill_null(result, 0))
    ok = ok.copy()
    for fmt in formats:
        todo = np.flatnonzero(~ok)
        if not len(todo):
            break
        secs, got = _strptime(values.take(pa.array(todo)), fmt, zone)
        out[todo[got]] = secs[got]
        ok[todo[got]] = True
    return pa.array(out, pa.int64(), mask=~ok)


_MAX_OFFSET = 18 * 3600  # what the ISO path accepts
# directives whose fields glibc's strptime range-checks (but for the day against its month, and second 60-61)
# and Arrow keeps: a row they parse can only have been changed where that day or second overflowed
_RANGE_CHECKED = frozenset({"%Y", "%m", "%d", "%e", "%H", "%M", "%S", "%b", "%B", "%h", "%a", "%A", "%y", "%z",
                            "%p", "%I", "%T", "%R", "%D", "%n", "%t", "%%"})


def _strptime(values: pa.Array, fmt: str, zone: str) -> tuple[np.ndarray, np.ndarray]:
    """One strptime pattern -> (epoch seconds, where it matched), with the ISO path's rules.

    Arrow's strptime takes a field out of its range (31 Feb, 31/04, second 60, an offset of +25:00) and
    normalises the date (2 Mar, 1 May, the next minute). Formatting a parsed value back with the same
    pattern shows where that cannot have happened: the text comes back unchanged. The rows that could have
    been changed and do not come back unchanged (an impossible date, or a spelling the pattern writes
    differently: no zero padding, `+01:00` for `%z`) are decided by Python's strptime, which rejects
    impossible dates, one row at a time."""
    directives = set(re.findall(r"%.", fmt))
    has_offset = "%z" in directives
    parsed = pc.strptime(values, format=fmt, unit="s", error_is_null=True)
    got = _valid(parsed)
    secs = _np(pc.fill_null(pc.cast(parsed, pa.int64()), 0))
    if not got.any():
        return secs, got
    if has_offset:  # the wall clock (%Z skips the offset), hence each row's offset
        wall_parsed = pc.strptime(values, format=fmt.replace("%z", "%Z"), unit="s", error_is_null=True)
        wall = _np(pc.fill_null(pc.cast(wall_parsed, pa.int64()), 0))
        offset = wall - secs
        suspect = got & ~(_valid(wall_parsed) & (np.abs(offset) <= _MAX_OFFSET) & (offset % 60 == 0))
    else:
        wall, offset, suspect = secs, np.zeros_like(secs), ~got
    if directives <= _RANGE_CHECKED:
        # an out-of-range day (29-31) or second (60, 61) normalises into days 1-3 or seconds 0-1: only those
        # rows can have been changed, only they are formatted back
        day = _np(pc.day(pa.array(wall, pa.timestamp("s"))))
        suspect |= got & ((day <= 3) | (wall % 60 <= 1))
    else:
        suspect = got
    same = _formats_back(values, secs, offset, suspect & got, fmt, zoned=has_offset)
    recheck = np.flatnonzero(suspect & got & ~same)
    is_wall = np.full(len(secs), not has_offset)
    for i, text in zip(recheck.tolist(), values.take(pa.array(recheck)).to_pylist(), strict=True):
        secs[i], is_wall[i], got[i] = _python_strptime(text, fmt)
    if not fmt.endswith(("GMT", "UTC", "Z")):  # a pattern that ends in a UTC designator gives UTC already
        secs = _local_to_utc(secs, got & is_wall, zone)
    return secs, got & _in_range(secs)


def _formats_back(values: pa.Array, secs: np.ndarray, offset: np.ndarray, rows: np.ndarray, fmt: str,
                  zoned: bool) -> np.ndarray:
    """Where `values` is what `fmt` writes for the parsed value (an instant shown in its own offset when
    `zoned`, else a wall clock), one pass per distinct offset."""
    same = np.zeros(len(secs), dtype=bool)
    fits = rows & (np.abs(offset) <= _MAX_OFFSET) & (offset % 60 == 0)
    for off in np.unique(offset[fits]).tolist():
        at = np.flatnonzero(fits & (offset == off))
        sign, minutes = "-" if off < 0 else "+", abs(off) // 60
        tz = pa.timestamp("s", f"{sign}{minutes // 60:02d}:{minutes % 60:02d}" if zoned else None)
        try:
            text = pc.strftime(pa.array(secs[at], tz), format=fmt)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a directive Arrow cannot write: Python decides
            return same
        same[at] = _np(pc.fill_null(pc.equal(text, values.take(pa.array(at))), False))
    return same


def _python_strptime(text: str, fmt: str) -> tuple[int, bool, bool]:
    """(seconds, whether they are a wall clock still to be placed in the zone, whether it parsed)."""
    try:
        parsed = datetime.strptime(text, fmt)
    except ValueError:
        return 0, False, False
    seconds = (parsed.replace(tzinfo=None) - _EPOCH_NAIVE) // timedelta(seconds=1)
    offset = parsed.utcoffset()
    if offset is None:
        return seconds, True, True
    offset_seconds = offset // timedelta(seconds=1)
    return seconds - offset_seconds, False, abs(offset_seconds) <= _MAX_OFFSET


_PLAIN_INT = r"^-?\d{1,18}$"  # what DynamoDB writes for a whole number that fits: Arrow's cast reads it as is


def _numbers(values: pa.Array, unit: int, whole: bool) -> pa.Array:
    """DynamoDB N strings -> floor(value / unit) as int64 (null where not a number by DynamoDB's grammar,
    past int64 or, with `whole`, not a whole number).

    A plain integer of up to 18 digits (what an export holds) is cast as is; the other shapes are split by
    the grammar's regular expression and read column-wise, except the ones with an exponent, a long integer
    part or a long fraction (which DynamoDB never writes: it stores numbers normalised), which go through
    `decimal`, exactly, one value at a time."""
    values = pc.cast(values, pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    ok = _np(pc.fill_null(pc.match_substring_regex(values, _PLAIN_INT), False))
    plain = values if ok.all() else pc.if_else(pa.array(ok), values, "0")
    out = np.floor_divide(_np(pc.cast(plain, pa.int64())), unit)
    rest = np.flatnonzero(~ok & _valid(values))
    if len(rest):
        shaped, shaped_ok = _shaped_numbers(values.take(pa.array(rest)), unit, whole)
        out[rest], ok[rest] = shaped, shaped_ok
    return pa.array(out, pa.int64(), mask=~ok)


def _shaped_numbers(values: pa.Array, unit: int, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """`_numbers` for what is not a plain integer: (floor(value / unit), where it is one)."""
    parts = pc.extract_regex(values, _NUM)
    ok = _valid(parts)
    i_part = pc.fill_null(pc.utf8_ltrim(parts.field("i"), "0"), "")
    f_part = pc.fill_null(parts.field("f"), "")
    i_len, f_len = _np(pc.utf8_length(i_part)), _np(pc.utf8_length(f_part))
    raw_len = _np(pc.fill_null(pc.utf8_length(parts.field("i")), 0))
    ok &= (raw_len + f_len) > 0
    exponent = _np(pc.fill_null(pc.not_equal(parts.field("e"), ""), False))
    slow = ok & ((i_len > 18) | (i_len + f_len > _NUM_DIGITS) | exponent)
    fast = ok & ~slow
    ip = _np(pc.cast(pc.if_else(pa.array(fast & (i_len > 0)), i_part, "0"), pa.int64()))
    negative = _np(pc.fill_null(pc.equal(parts.field("s"), "-"), False))
    frac = _np(pc.match_substring_regex(f_part, "[1-9]"))
    ip = np.where(negative, -ip, ip)
    if whole:
        ok &= ~(fast & frac)
    # floor(i.f / unit): the fraction only matters when i is an exact multiple of the unit and negative
    out = np.floor_divide(ip, unit) - ((ip % unit == 0) & negative & frac)
    rows = np.flatnonzero(slow)
    for r, text in zip(rows.tolist(), values.take(pa.array(rows)).to_pylist(), strict=True):
        value = _decimal_floor(text, unit, whole)
        ok[r] = value is not None and -(2**63) <= value < 2**63
        out[r] = value if ok[r] else 0
    return out, ok


def _decimal_floor(text: str, unit: int, whole: bool) -> int | None:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return None
    sign, digits, exponent = number.as_tuple()
    significant = "".join(map(str, digits)).strip("0")
    if not significant:
        return 0
    assert isinstance(exponent, int)  # a finite number: the grammar has no NaN or Infinity
    if len(significant) > _NUM_DIGITS or not _NUM_EXPONENTS[0] <= number.adjusted() <= _NUM_EXPONENTS[1]:
        return None
    if number.adjusted() > 40:  # past int64 in any unit, and not worth the big integer
        return None
    mantissa = -int("".join(map(str, digits))) if sign else int("".join(map(str, digits)))
    if exponent >= 0:
        return mantissa * 10**exponent // unit
    if whole and mantissa % 10**-exponent:
        return None
    return mantissa // (unit * 10**-exponent)


_UNITS = {"s": 1, "ms": 1000}


def parse_epoch_numbers(values: pa.Array, unit: str = "s") -> pa.Array:
    """DynamoDB N strings (epoch seconds or milliseconds) -> floor epoch seconds; null outside years
    0001..9999 (a 13-digit millisecond value read as seconds is year 48,000: not a date)."""
    out = _numbers(values, _UNITS[unit], whole=False)
    return pc.if_else(pa.array(_in_range(_np(pc.fill_null(out, 0)))), out, pa.scalar(None, pa.int64()))


def parse_integers(values: pa.Array) -> pa.Array:
    """DynamoDB N strings -> int64: null where not a whole number or past int64 (`5.0` and `1E2` are whole,
    as DynamoDB itself stores them as `5` and `100`)."""
    return _numbers(values, 1, whole=True)


def ttl(epoch: pa.Array, ttl_seconds: int) -> pa.Array:
    """epoch + ttl_seconds; null where either is null or the sum leaves years 0001..9999 (never wrapped)."""
    if isinstance(epoch, pa.ChunkedArray):
        epoch = epoch.combine_chunks()
    low, high = max(MIN_EPOCH, MIN_EPOCH - ttl_seconds), min(MAX_EPOCH, MAX_EPOCH - ttl_seconds)
    if low > high:  # a TTL longer than the whole range: no sum fits (and ttl_seconds may not fit int64)
        return pa.nulls(len(epoch), pa.int64())
    secs = _np(pc.fill_null(pc.cast(epoch, pa.int64()), 0))
    ok = _valid(epoch) & (secs >= low) & (secs <= high)
    return pa.array(np.where(ok, secs, 0) + np.int64(ttl_seconds), pa.int64(), mask=~ok)


def to_epoch_seconds(value: str | int | float | datetime, zone: str = "UTC", formats: Sequence[str] = ()) -> int:
    """One value, for the forward writer: the same rules as the transform."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a naive datetime is ambiguous: give it a tzinfo")
        value = value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        out = parse_epoch_numbers(pa.array([repr(value) if isinstance(value, float) else str(value)]))
    else:
        out = parse_datetimes(pa.array([str(value)]), zone, formats)
    result = out[0].as_py()
    if result is None:
        raise ValueError(f"not a date-time this pipeline understands: {value!r}")
    return int(result)

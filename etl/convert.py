"""Dates and TTL: strings and numbers to exact whole epoch seconds, vectorised over Arrow arrays.

One place computes the epoch and the TTL: the transform and the live forward writer both call it.

Accepted, per value:
  * ISO-8601 / Joda `DateTime.toString()`: `2016-04-12T10:15:30.123-07:00`, `...Z`, `+HH:MM`, `+HHMM`,
    `+HH`, 0-9 fraction digits, `T` or a space between date and time, seconds optional;
  * date-only `yyyy-MM-dd`: midnight in the configured zone (default UTC);
  * a date-time without an offset: local time in the configured zone;
  * extra strptime patterns from config (e.g. RFC 1123 `%a, %d %b %Y %H:%M:%S GMT`), tried on what
    the built-in grammar rejected;
  * numbers (DynamoDB N): epoch seconds or milliseconds, fractions floored.
The result is floor(instant) in seconds; a value that matches nothing is null (the caller quarantines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_ISO = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<z>Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)?\s*$"
)
_NUM = r"^\s*(?P<i>[+-]?\d{1,19})(?:\.(?P<f>\d*))?\s*$"
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


def _local_to_utc(seconds: np.ndarray, mask: np.ndarray, zone: str) -> np.ndarray:
    """Wall-clock seconds in `zone` -> UTC seconds (an overlap takes the earlier instant, a gap the first
    instant after it, as Python and java.time do)."""
    if zone in ("UTC", "Etc/UTC", "GMT") or not mask.any():
        return seconds
    naive = pa.array(seconds, pa.timestamp("s"))
    aware = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="latest")
    return np.asarray(pc.cast(aware, pa.int64()).to_numpy(zero_copy_only=False))


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
    out = fast.to_numpy(zero_copy_only=False)
    mask = np.asarray(pc.is_null(fast).to_numpy(zero_copy_only=False), dtype=bool)
    slow_vals = np.asarray(pc.fill_null(slow, 0).to_numpy(zero_copy_only=False))
    slow_ok = np.asarray(pc.is_valid(slow).to_numpy(zero_copy_only=False), dtype=bool)
    positions = np.asarray(idx.to_numpy(zero_copy_only=False))
    out = np.where(mask, 0, np.nan_to_num(out, nan=0)).astype(np.int64) if out.dtype != np.int64 else out
    out[positions[slow_ok]] = slow_vals[slow_ok]
    mask[positions[slow_ok]] = False
    return pa.array(out, pa.int64(), mask=mask)


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
    epoch = wall - np.where(has_zone, offset, 0)
    local = ok & ~has_zone
    if local.any():
        converted = _local_to_utc(np.where(local, wall, 0), local, zone)
        epoch = np.where(local, converted, epoch)
    result = pa.array(epoch, pa.int64(), mask=~ok)
    if formats and not ok.all():
        result = _with_formats(values, result, ok, zone, formats)
    return result


def _with_formats(values: pa.Array, result: pa.Array, ok: np.ndarray, zone: str, formats: Sequence[str]) -> pa.Array:
    out = result.to_numpy(zero_copy_only=False).astype(object)
    todo = ~ok
    for fmt in formats:
        if not todo.any():
            break
        idx = np.nonzero(todo)[0]
        sub = values.take(pa.array(idx))
        ts = pc.strptime(sub, format=fmt, unit="s", error_is_null=True)
        if "%z" not in fmt and zone not in ("UTC", "GMT") and not fmt.endswith(("GMT", "UTC", "Z")):
            ts = pc.assume_timezone(ts, zone, ambiguous="earliest", nonexistent="latest")
        secs = pc.cast(ts, pa.int64())
        got = pc.is_valid(secs).to_numpy(zero_copy_only=False)
        vals = pc.fill_null(secs, 0).to_numpy(zero_copy_only=False)
        out[idx[got]] = vals[got]
        todo[idx[got]] = False
    return pa.array([None if todo[i] else int(out[i]) for i in range(len(out))], pa.int64())


def parse_epoch_numbers(values: pa.Array, unit: str = "s") -> pa.Array:
    """DynamoDB N strings (epoch seconds or milliseconds) -> floor epoch seconds."""
    values = pc.cast(values, pa.string())
    parts = pc.extract_regex(values, _NUM)
    ok = pc.is_valid(parts).to_numpy(zero_copy_only=False)
    ip, _ = _ints(pc.if_else(pc.is_valid(parts), parts.field("i"), pa.scalar("0")))
    frac = pc.fill_null(parts.field("f"), "")
    frac_nonzero = pc.match_substring_regex(frac, "[1-9]").to_numpy(zero_copy_only=False)
    negative = ip < 0
    if unit == "ms":
        # floor(i.f / 1000): the fraction only matters when i is an exact negative multiple
        secs = np.floor_divide(ip, 1000) - ((ip % 1000 == 0) & negative & frac_nonzero)
    else:
        secs = ip - (negative & frac_nonzero)
    return pa.array(secs, pa.int64(), mask=~ok)


def ttl(epoch: pa.Array, ttl_seconds: int) -> pa.Array:
    return pc.add(epoch, pa.scalar(ttl_seconds, pa.int64()))


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

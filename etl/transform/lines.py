"""Reading an export data file: decompressed in chunks of whole lines, each chunk parsed into rows of the
mapping's parse schema, and every line that is not one row said why.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
from arro3 import io as aio

CHUNK = 8 * 1024 * 1024
_BLANK = b" \t\r"  # JSON whitespace besides the newline: a line of only these is blank (skipped)
_CONTROL = re.compile(rb"[\x00-\x1f]")  # raw control bytes: legal in JSON only as whitespace between tokens
# an escaped high surrogate of a character from U+20000 up: arrow-rs (in arro3-io 0.9) decodes those pairs
# wrongly (it ORs in the 0x10000 instead of adding it: "\ud840\udc00" reads as U+10000, not U+20000), so such
# lines are re-encoded with orjson (exact, raw UTF-8) before the decoder sees them
_ASTRAL = re.compile(rb"\\u[dD](?:8[4-9a-fA-F]|9[0-9a-fA-F]|[abAB][0-9a-fA-F])")
# DynamoDB JSON's type tags besides S and N, each as the decoder reads it: L's elements and M's attributes are
# objects, read as structs of no field (their contents are skipped)
OTHER_TAGS = (("B", pa.string()), ("BOOL", pa.bool_()), ("NULL", pa.bool_()), ("SS", pa.list_(pa.string())),
              ("NS", pa.list_(pa.string())), ("BS", pa.list_(pa.string())), ("L", pa.list_(pa.struct([]))),
              ("M", pa.struct([])))


@functools.cache
def with_every_tag(schema: pa.Schema) -> pa.Schema:
    """The parse schema with every DynamoDB type tag declared on each attribute, beside its S and N.

    The decoder skips the keys it is not told of, so a value with S and another tag (`{"S":"O-1","BOOL":true}`)
    would read as a plain S: declared, every tag a value carries is seen, whatever the pair (a value has exactly
    one). The fast and the slow path both decode with it; declaring them costs a little decoding time (a
    column of nulls per tag and attribute), not a pass over the bytes."""
    item = schema.field("Item")
    attrs = [pa.field(a.name, pa.struct([*a.type, *(t for t in OTHER_TAGS if a.type.get_field_index(t[0]) < 0)]))
             for a in item.type]
    return pa.schema([pa.field("Item", pa.struct(attrs))])


def _lines(chunk: bytes | memoryview) -> list[bytes]:
    return [line for line in bytes(chunk).split(b"\n") if line.strip(_BLANK)]


def _decode(data: bytes | memoryview, schema: pa.Schema) -> pa.Table:
    """arrow-rs's JSON decoder (arro3-io) against the explicit schema; raises pa.ArrowInvalid.

    It checks what pyarrow's reader checks for the mapped attributes (a value of the wrong JSON type
    refuses the line), nesting, colons, escapes and UTF-8, releases the GIL, and parses twice as fast
    (BENCHMARKS.md). It reads commas as separators and does not check number syntax (neither matters in
    DynamoDB JSON, which has no bare numbers); raw control bytes and the surrogate pairs it decodes wrongly
    are dealt with by `parse`."""
    # a buffer, not a file object: a file object is read through ~1,000 Python calls per 8 MB, each needing the
    # GIL (3.5 s instead of 13 ms per chunk while another thread runs Python); a buffer needs none
    return pa.table(aio.read_json(memoryview(data), schema))


@dataclass
class Parsed:
    table: pa.Table
    lines: list[bytes] | None  # the raw line behind each row (slow path), or None: found from `ends`
    ends: np.ndarray | None  # the position of each line's newline in the chunk
    malformed: list[tuple[bytes, str]]  # (raw line, why)
    line_of_row: np.ndarray | None = None  # with `ends`: the line of each row (None: row i is line i)
    newlines: int = 0  # lines the chunk holds (blank ones too): where in the file a later line is

    def raw_lines(self, chunk: bytes | memoryview, rows: np.ndarray) -> list[bytes]:
        if self.lines is not None:
            return [self.lines[i] for i in rows.tolist()]
        assert self.ends is not None
        at = rows if self.line_of_row is None else self.line_of_row[rows]
        view = memoryview(chunk)
        ends = self.ends[at]
        starts = np.where(at > 0, self.ends[np.maximum(at - 1, 0)] + 1, 0)
        return [bytes(view[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def parse(chunk: bytes | memoryview, schema: pa.Schema, attrs: list[str]) -> Parsed:
    """Parse a chunk of lines into rows of the explicit schema, one row per line, or say why a line is not one.

    Fast path (the whole chunk in one call) when the chunk is plainly one object per line: every line
    starts with `{` and ends with `}`, no control byte but the newlines, no escaped surrogate the decoder
    gets wrong, and the decoder gives exactly one row per line. Otherwise, line by line: blank lines are
    skipped, a line with a raw control byte or such an escape must be strict JSON (orjson; the escape is
    re-encoded), and the lines are decoded in halves until every refused line stands alone, so one bad line
    in an 8 MB chunk costs a few decodes of it, not one per line. Raw lines are always the file's bytes. Every
    type tag is declared (`with_every_tag`), so a value's tags are all seen on either path."""
    schema = with_every_tag(schema)
    buf = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(buf < 32)  # the control bytes: in a clean chunk, only its newlines (one pass, not two)
    clean = bool(len(ends) > 0 and ends[-1] == len(buf) - 1 and (buf[ends] == 10).all()
                 and not (_has_backslash(chunk, buf) and _ASTRAL.search(chunk)))
    if not clean:
        ends = np.flatnonzero(buf == 10)
    if (clean and buf[0] == 123 and bool((buf[ends - 1] == 125).all())
            and bool((buf[ends[:-1] + 1] == 123).all())):
        try:
            table = _decode(chunk, schema)
            if table.num_rows == len(ends):
                return Parsed(table, None, ends, [], newlines=len(ends))
        except pa.ArrowInvalid:
            pass
    if clean and not _has_blank_line(buf, ends):
        return _bisect_in_place(chunk, ends, schema, attrs)
    bad: list[tuple[bytes, str]] = []
    lines: list[bytes] = []  # as in the file
    texts: list[bytes] = []  # what the decoder reads
    for line in _lines(chunk):
        text = line
        astral = b"\\" in line and _ASTRAL.search(line)
        if astral or _CONTROL.search(line):  # the decoder would take a raw tab or CR inside a string
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as err:
                bad.append((line, _not_json(line, err)))
                continue
            if astral:
                text = orjson.dumps(obj)
        lines.append(line)
        texts.append(text)
    done, refused = _bisect(len(lines), lambda lo, hi: b"\n".join(texts[lo:hi]), lines.__getitem__,
                            texts.__getitem__, schema, attrs)
    bad += refused
    if not done:
        return Parsed(pa.table({"Item": pa.array([], schema.field("Item").type)}), [], None, bad,
                      newlines=len(ends))
    good = [line for lo, hi, _ in done for line in lines[lo:hi]]
    return Parsed(pa.concat_tables([t for _, _, t in done]), good, None, bad, newlines=len(ends))


def _has_backslash(chunk: bytes | memoryview, buf: np.ndarray) -> bool:
    """Some byte is a backslash. A chunk is a view of the block read (bytes): when the whole block has none
    (memchr: 0.1 ms per 8 MB), neither has the view; otherwise the view itself is counted (1.4 ms)."""
    whole = chunk.obj if isinstance(chunk, memoryview) else chunk
    if isinstance(whole, bytes) and whole.find(b"\\") < 0:
        return False
    return bool(np.count_nonzero(buf == 92))


def _has_blank_line(buf: np.ndarray, ends: np.ndarray) -> bool:
    """Some line is empty or spaces only (the decoder skips it, so line and row counts would not match)."""
    content = np.cumsum((buf != 32) & (buf != 10))  # bytes that are neither space nor newline, so far
    starts = np.concatenate([[0], ends[:-1] + 1])
    before = np.where(starts > 0, content[np.maximum(starts - 1, 0)], 0)
    return bool(np.any(content[ends] - before == 0))


def _bisect(count: int, piece: Callable[[int, int], bytes | memoryview], line: Callable[[int], bytes],
            text: Callable[[int], bytes], schema: pa.Schema,
            attrs: list[str]) -> tuple[list[tuple[int, int, pa.Table]], list[tuple[bytes, str]]]:
    """Lines 0..count decoded in ranges, halved until every refused line stands alone, so one bad line in an
    8 MB chunk costs a few decodes of it, not one per line: the ranges that decoded to one row per line
    (lo, hi, rows), in file order, and each refused line with why. `piece(lo, hi)` is what the decoder reads for
    a range, `line(i)` a line as in the file, `text(i)` what the decoder read of it."""
    done: list[tuple[int, int, pa.Table]] = []
    bad: list[tuple[bytes, str]] = []
    todo = [(0, count)]  # line ranges, taken in file order
    while todo:
        lo, hi = todo.pop()
        if hi == lo:
            continue
        try:
            t = _decode(piece(lo, hi), schema)
            if t.num_rows == hi - lo:
                done.append((lo, hi, t))
                continue
            if hi - lo == 1:
                bad.append((line(lo), "more than one JSON value on the line"))
                continue
        except pa.ArrowInvalid as exc:
            if hi - lo == 1:
                bad.append((line(lo), _refused(text(lo), attrs, exc)))
                continue
        mid = (lo + hi) // 2
        todo += [(mid, hi), (lo, mid)]
    return done, bad


def _bisect_in_place(chunk: bytes | memoryview, ends: np.ndarray, schema: pa.Schema, attrs: list[str]) -> Parsed:
    """A chunk without control bytes, blank lines or escapes the decoder gets wrong, in which some line is not
    one object: line ranges are decoded straight from the chunk's bytes (no copies)."""
    view = memoryview(chunk)
    starts = np.concatenate([[0], ends[:-1] + 1])

    def piece(lo: int, hi: int) -> memoryview:
        return view[int(starts[lo]) : int(ends[hi - 1]) + 1]

    def line(i: int) -> bytes:
        return bytes(view[int(starts[i]) : int(ends[i])])

    done, bad = _bisect(len(ends), piece, line, line, schema, attrs)
    if not done:
        return Parsed(pa.table({"Item": pa.array([], schema.field("Item").type)}), [], None, bad,
                      newlines=len(ends))
    return Parsed(pa.concat_tables([t for _, _, t in done]), None, ends, bad,
                  np.concatenate([np.arange(lo, hi) for lo, hi, _ in done]), newlines=len(ends))


def _not_json(line: bytes, err: Exception) -> str:
    """Why a line is not JSON; bytes that are not UTF-8 said as such (orjson calls them surrogates)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 text: byte 0x{line[bad.start]:02x} at position {bad.start}"
    return f"not JSON: {err}"


def _refused(line: bytes, attrs: list[str], exc: Exception) -> str:
    """Why the decoder refused a line, said the way a user can act on."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return _not_json(line, err)
    if not isinstance(obj, dict) or not isinstance(obj.get("Item"), dict):
        return "no Item object"
    item = obj["Item"]
    wrong = [a for a in attrs if a in item and not isinstance(item[a], dict)]
    if wrong:
        return f"attribute {wrong[0]} is not DynamoDB JSON (a {{type: value}} object)"
    for a in attrs:
        for kind, value in item.get(a, {}).items():
            should_be = _wrong_json_type(kind, value)
            if should_be:
                return f"attribute {a}: its {kind} value is a JSON {type(value).__name__}, not {should_be}"
    return "not DynamoDB JSON: " + str(exc).split("Json error: ", 1)[-1]


def _wrong_json_type(tag: str, value: Any) -> str:
    """What a tag's value must be in JSON, when `value` is not that ("" when it is, or the tag is unknown)."""
    if tag in ("S", "N", "B"):
        return "" if isinstance(value, str) else "a string"
    if tag in ("BOOL", "NULL"):
        return "" if isinstance(value, bool) else "true or false"
    if tag in ("SS", "NS", "BS"):
        return "" if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of strings"
    if tag == "L":
        return "" if isinstance(value, list) and all(isinstance(v, dict) for v in value) else "a list of values"
    if tag == "M":
        return "" if isinstance(value, dict) else "an object"
    return ""




class Truncated(Exception):
    """The compressed data ends before its end: `carried` whole lines read before the damage were not yet
    handed out (the chunks handed out say how many lines they hold: `Parsed.newlines`)."""

    def __init__(self, cause: BaseException, carried: int) -> None:
        super().__init__(str(cause))
        self.carried = carried


def chunks(stream: IO[bytes], size: int | None = None) -> Iterator[tuple[bytes | memoryview, int]]:
    """(chunk of whole lines, uncompressed bytes read for it). The line a block boundary cut goes in front of
    the next block (one copy of the block, a fraction of a millisecond), so every chunk is a full one: a
    one-line chunk would cost a conversion call of its own. A last line without a newline gets one. Damaged
    compressed data raises `Truncated` with the lines read before it."""
    size = size or CHUNK
    carry = b""
    while True:
        try:
            block: Any = stream.read(size)
        except (OSError, EOFError) as exc:
            raise Truncated(exc, carry.count(b"\n")) from None
        if not block:
            if carry.strip():
                yield carry + b"\n", len(carry)
            return
        cut = block.rfind(b"\n")
        if cut < 0:
            carry += block
            continue
        if carry:
            block, cut = carry + block, cut + len(carry)
        body = memoryview(block)[: cut + 1]
        yield body, len(body)
        carry = block[cut + 1 :]

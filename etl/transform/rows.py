"""Converting rows: a parsed chunk -> the output table, its filtered counts and its quarantined lines.

Row outcome, first match wins: malformed_line > type_mismatch > filtered > missing_attribute >
bad_datetime / bad_int. Whole columns at a time: pass 1 classifies every row with cheap validity checks,
pass 2 converts only the rows still standing (dates, ints), which can fail per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from etl import convert
from etl.config import Config
from etl.mapping import REASONS, expected_types, source_attributes
from etl.transform.lines import Parsed, parse

TTL_PAST_RANGE = "a date-time whose TTL fits"  # `expected` of a row whose TTL would pass year 9999
TWO_TAGS = "one type tag"  # `expected` of a value with two type tags or more (S and N, S and BOOL, ...)


@dataclass
class ChunkResult:
    table: pa.Table
    items_in: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)  # (reason, message, raw line)
    newlines: int = 0  # lines in the chunk
    fingerprints: np.ndarray | None = None  # of the table's keys (`collisions.fingerprints`), once made


def _np(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as False: its bits unpacked (10x cheaper than a cast)."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    if len(a) == 0:
        return np.zeros(0, dtype=bool)
    if a.null_count:
        a = pc.fill_null(a, False)
    bits = np.unpackbits(np.frombuffer(a.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[a.offset : a.offset + len(a)].view(bool)


def _empty(strings: pa.Array) -> np.ndarray:
    """Where a string array holds "" (nulls: False), from its offsets: a fifth of the cost of comparing."""
    if len(strings) == 0:
        return np.zeros(0, dtype=bool)
    if strings.type != pa.string():
        return _np(pc.fill_null(pc.equal(strings, ""), False))
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=strings.offset * 4)
    empty = offsets[1:] == offsets[:-1]
    return empty & _np(pc.is_valid(strings)) if strings.null_count else empty


def _actual_type(line: bytes, source: str) -> str:
    """The DynamoDB type of a rejected value that has no S or N string, read from its raw line: its tag(s), an
    S or N tag with a JSON null, or an empty object."""
    try:
        value = orjson.loads(line)["Item"][source]
    except (orjson.JSONDecodeError, KeyError, TypeError):  # e.g. nested past orjson's depth: the tag is first
        tag = re.search(rb'"' + re.escape(source.encode()) + rb'"\s*:\s*\{\s*"(\w+)"', line)
        return tag.group(1).decode() if tag else "another type"
    if not isinstance(value, dict):
        return type(value).__name__
    if not value:
        return "an empty object {}"
    return "/".join(f"{k} with a JSON null" if k in ("S", "N") and value[k] is None else k for k in value)


def _messages(kind: str, source: str, attr: pa.Array, rows: np.ndarray, expected: str,
              lines: list[bytes], epoch_unit: str) -> list[str]:
    """Messages for rejected rows sharing one reason and attribute, a column at a time."""
    if kind == "missing_attribute":
        return [f"{source} is missing"] * len(rows)
    at = pa.array(rows, pa.int64())
    if expected == TWO_TAGS:
        return _two_tags(source, attr, at)
    kinds = [k for k in ("S", "N") if attr.type.get_field_index(k) >= 0]
    if kind == "type_mismatch":  # the few distinct messages, by which of S and N each row has
        code = np.zeros(len(rows), dtype=np.int64)
        for bit, k in enumerate(kinds):
            code |= _np(pc.is_valid(attr.field(k).take(at))).astype(np.int64) << bit
        head = f"{source}: expected {expected}, got "
        text = {c: head + "/".join(k for bit, k in enumerate(kinds) if c >> bit & 1) for c in np.unique(code).tolist()}
        return [text[c] if c else head + _actual_type(line, source)
                for c, line in zip(code.tolist(), lines, strict=True)]
    values = pc.coalesce(*[attr.field(k).take(at) for k in kinds]).to_pylist()
    if expected == TTL_PAST_RANGE:
        return [f"{source}: {v!r} plus ttl_seconds is past 9999-12-31, the last expiry DynamoDB can hold"
                for v in values]
    if kind == "bad_int":
        return [f"{source}: {v!r} is not a whole number within int64" for v in values]
    is_s = _np(pc.is_valid(attr.field("S").take(at))) if "S" in kinds else np.zeros(len(rows), dtype=bool)
    unit = {"s": "seconds", "ms": "milliseconds"}[epoch_unit]
    return [f"{source}: {v!r} is not a date-time (ISO-8601, yyyy-MM-dd or a configured pattern)" if s else
            f"{source}: {v!r} is not epoch {unit} within years 0001-9999 (transform.epoch_unit = {epoch_unit!r})"
            for v, s in zip(values, is_s.tolist(), strict=True)]


def _tags_set(attr: pa.StructArray, at: pa.Array | None = None) -> list[tuple[str, np.ndarray]]:
    """Each type tag of the attribute's values, and where it is set (`at`: those rows only)."""
    out = []
    for i in range(attr.type.num_fields):
        child = attr.field(i)
        out.append((attr.type.field(i).name, _np(pc.is_valid(child if at is None else child.take(at)))))
    return out


def _two_tags(source: str, attr: pa.StructArray, at: pa.Array) -> list[str]:
    """`X has two type tags (S and BOOL)`, naming the tags each row's value carries."""
    tags = _tags_set(attr, at)
    said = []
    for row in range(len(at)):
        names = [name for name, set_ in tags if set_[row]]
        listed = f"{', '.join(names[:-1])} and {names[-1]}"
        count = "two" if len(names) == 2 else str(len(names))
        said.append(f"{source} has {count} type tags ({listed}); a DynamoDB value has exactly one")
    return said


class _Outcomes:
    """Per row of a chunk: the reason it is rejected (index into REASONS, -1 = fine) and what to say about it,
    or the filter that dropped it."""

    def __init__(self, n: int, epoch_unit: str = "s") -> None:
        self.epoch_unit = epoch_unit  # what an N date-time is read as, for the messages
        self.reason = np.full(n, -1, dtype=np.int8)
        self.why: list[tuple[str, pa.Array, str]] = []  # (attribute, values, expected) behind `info`
        self.info = np.full(n, -1, dtype=np.int32)  # index into why
        self.filtered = np.zeros(n, dtype=bool)
        self.filter_code = np.full(n, -1, dtype=np.int16)
        self.filter_names: list[str] = []

    def mark(self, mask: np.ndarray, kind: str, source: str, attr: pa.Array, expected: str) -> None:
        """Set a reason where none of higher priority is set yet."""
        code = REASONS.index(kind)
        free = mask & ((self.reason < 0) | (self.reason > code))
        self.reason[free] = code
        self.why.append((source, attr, expected))
        self.info[free] = len(self.why) - 1

    def filter(self, mask: np.ndarray, label: str) -> None:
        if mask.any():
            self.filter_names.append(label)
            self.filter_code[mask] = len(self.filter_names) - 1
        self.filtered |= mask

    def filtered_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.filter_code[self.filtered], return_counts=True)
        return {self.filter_names[c]: int(k) for c, k in zip(codes, counts, strict=True)}


def _classify(cfg: Config, item: pa.StructArray, out: _Outcomes) -> dict[str, np.ndarray]:
    """Pass 1, every row: malformed, type_mismatch, filtered, missing_attribute. Returns where each checked
    attribute is present."""
    t = cfg.transform
    n = len(item)
    has_item = _np(pc.is_valid(item))
    out.reason[~has_item] = REASONS.index("malformed_line")
    checks = expected_types(cfg)
    present_of: dict[str, np.ndarray] = {}
    for name, expected in checks.items():
        a = item.field(name)
        present = _np(pc.is_valid(a)) & has_item
        present_of[name] = present
        tags = dict(_tags_set(a))
        s_set, n_set = tags["S"], tags["N"]
        out.mark(present & (np.sum(list(tags.values()), axis=0) > 1), "malformed_line", name, a, TWO_TAGS)
        ok = (s_set if "S" in expected else np.zeros(n, dtype=bool)) | (n_set if "N" in expected else False)
        out.mark(present & ~ok, "type_mismatch", name, a, expected)
    for name in t.non_empty:  # rows that are not orders are filtered, not errors
        empty = _empty(item.field(name).field("S"))
        mask = (~present_of[name] | empty) & has_item & (out.reason < 0) & ~out.filtered
        out.filter(mask & empty, f"empty_{name}")
        out.filter(mask & ~empty, f"missing_{name}")
    for col in t.columns:
        if col.converter != "ttl" and col.required:
            out.mark(~present_of[col.source] & has_item & ~out.filtered, "missing_attribute", col.source,
                     item.field(col.source), checks[col.source])
    return present_of


def _convert(cfg: Config, item: pa.StructArray, out: _Outcomes, present_of: dict[str, np.ndarray],
             cand: np.ndarray) -> dict[str, pa.Array]:
    """Pass 2, the rows `cand` still standing: each mapped column converted; failures marked per row."""
    t = cfg.transform
    n = len(item)
    checks = expected_types(cfg)
    idx = pa.array(cand, pa.int64())
    values: dict[str, pa.Array] = {}
    for col in t.columns:
        if col.converter == "ttl":
            continue
        a = item.field(col.source)  # take only the S/N children needed, never the whole struct
        if col.converter == "string":
            values[col.name] = a.field("S").take(idx)
            continue
        if col.converter == "int":
            conv = convert.parse_integers(a.field("N").take(idx))
            kind = "bad_int"
        else:
            conv = convert.parse_datetimes(a.field("S").take(idx), t.date_zone, t.date_formats)
            n_val = a.field("N")
            if n_val.null_count < len(n_val):  # epoch numbers only where some row has one
                conv = pc.coalesce(conv, convert.parse_epoch_numbers(n_val.take(idx), t.epoch_unit))
            kind = "bad_datetime"
        values[col.name] = conv
        bad = np.zeros(n, dtype=bool)
        bad[cand[present_of[col.source][cand] & ~_np(pc.is_valid(conv))]] = True
        out.mark(bad, kind, col.source, a, checks[col.source])
    sources = {c.name: c.source for c in t.columns}
    for col in t.columns:  # a TTL past the accepted range (year 9999) would wrap: the row is quarantined
        if col.converter == "ttl":
            base = values[col.base]
            values[col.name] = expiry = convert.ttl(base, t.ttl_seconds)
            bad = np.zeros(n, dtype=bool)
            bad[cand[_np(pc.is_valid(base)) & ~_np(pc.is_valid(expiry))]] = True
            out.mark(bad, "bad_datetime", sources[col.base], item.field(sources[col.base]), TTL_PAST_RANGE)
    return values


def _rejections(parsed: Parsed, chunk: bytes | memoryview, out: _Outcomes) -> list[tuple[str, str, bytes]]:
    """(reason, message, raw line) of every rejected row, the messages made a reason and attribute at a time."""
    rejected_rows = np.flatnonzero(out.reason >= 0)
    if not len(rejected_rows):
        return []
    lines = parsed.raw_lines(chunk, rejected_rows)
    kinds = [REASONS[c] for c in out.reason[rejected_rows].tolist()]
    messages = ["no Item object"] * len(rejected_rows)
    infos = out.info[rejected_rows]
    for w in np.unique(infos[infos >= 0]).tolist():
        at = np.flatnonzero(infos == w)
        source, attr, expected = out.why[w]
        texts = _messages(kinds[at[0]], source, attr, rejected_rows[at], expected, [lines[j] for j in at.tolist()],
                          out.epoch_unit)
        for j, text in zip(at.tolist(), texts, strict=True):
            messages[j] = text
    return list(zip(kinds, messages, lines, strict=True))


def convert_chunk(chunk: bytes | memoryview, cfg: Config, schema: pa.Schema, out_schema: pa.Schema) -> ChunkResult:
    """Classify and convert one chunk of lines, whole columns at a time."""
    t = cfg.transform
    parsed = parse(chunk, schema, source_attributes(cfg))
    table = parsed.table
    result = ChunkResult(table=pa.Table.from_batches([], out_schema))
    result.newlines = parsed.newlines
    result.rejected.extend(("malformed_line", msg, line) for line, msg in parsed.malformed)
    n = table.num_rows
    result.items_in = n + len(parsed.malformed)
    if n == 0:
        return result
    item = table.column("Item").combine_chunks()
    out = _Outcomes(n, t.epoch_unit)
    present_of = _classify(cfg, item, out)
    cand = np.flatnonzero((out.reason < 0) & ~out.filtered)
    values = _convert(cfg, item, out, present_of, cand)
    result.rejected.extend(_rejections(parsed, chunk, out))
    result.filtered = out.filtered_counts()
    keep_in_cand = pa.array(out.reason[cand] < 0)
    cols = {c.name: pc.filter(values[c.name], keep_in_cand) for c in t.columns}
    result.table = pa.table([cols[c.name] for c in t.columns], schema=out_schema)
    return result

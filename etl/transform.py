"""Stage 2: export data files -> projected, converted Parquet; rows that fail go to quarantine.

Plan: one task per export data file (part NNNNN = its index). A task streams the gzip file in
chunks, parses each chunk with arrow-rs's JSON decoder (arro3-io) against an explicit schema of only
the mapped attributes, converts whole columns at once (`etl.convert`), and writes
`transformed/month=M/part-NNNNN.parquet` plus `rejected/month=M/part-NNNNN.jsonl.gz`.
Commit: per-part counts, `items_in = written + filtered + rejected` (checked), key collisions, and the
manifest last.

Row outcome, first match wins: malformed_line > type_mismatch > filtered > missing_attribute >
bad_datetime / bad_int. Key collisions (two rows, one (CustomerID, CreationDateTime)) stay in the
Parquet; the losers are listed in `_state/month=M/transform-collisions.parquet` and the load skips
them. The winner is the row with the greatest OrderID (then the first in file order).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from arro3 import io as aio
from isal import igzip

from etl import convert, staging
from etl.config import Config
from etl.engine import run_months
from etl.errors import EtlError, StageNotReady
from etl.progress import QUIET, Reporter, Task

CHUNK = 8 * 1024 * 1024
REASONS = ("malformed_line", "type_mismatch", "missing_attribute", "bad_datetime", "bad_int")
COLLISIONS = "transform-collisions.parquet"
# The parse schema declares only S and/or N per attribute: every other type ({"BOOL": ..}, {"L": [..]}, ...)
# parses as a valid struct with nothing set (a type mismatch), and pyarrow parses 2x faster than with a
# struct of every DynamoDB type.


def output_schema(cfg: Config) -> pa.Schema:
    fields = [pa.field(c.name, pa.string() if c.converter == "string" else pa.int64(),
                       nullable=not (c.required or c.name in (cfg.destination.partition_key, cfg.destination.sort_key)))
              for c in cfg.transform.columns]
    return pa.schema(fields)


def source_attributes(cfg: Config) -> list[str]:
    names = [c.source for c in cfg.transform.columns if c.converter != "ttl"]
    return list(dict.fromkeys([*names, *cfg.transform.non_empty]))


def parse_schema(cfg: Config) -> pa.Schema:
    """Only what the mapping reads: S for strings and filters, N for ints, both for datetimes. Every other
    type still parses (a valid struct with nothing set: a type mismatch), and a narrower struct parses
    faster (S and N where only S is needed costs pyarrow 15% more)."""
    kinds: dict[str, set[str]] = {}
    for c in cfg.transform.columns:
        if c.converter != "ttl":
            kinds.setdefault(c.source, set()).update({"string": "S", "int": "N", "datetime": "SN"}[c.converter])
    for name in cfg.transform.non_empty:
        kinds.setdefault(name, set()).add("S")
    return pa.schema([("Item", pa.struct([
        (a, pa.struct([(k, pa.string()) for k in ("S", "N") if k in ks])) for a, ks in kinds.items()]))])


def parquet_options(cfg: Config) -> dict[str, Any]:
    """zstd, and a dictionary only for the partition key: it repeats, an OrderID never does, and
    building a dictionary that is then dropped costs 40% of the write (143k rows: 22 ms and 2.5 MB against
    36 ms and 3.2 MB with pyarrow's defaults). Encodings stay PLAIN/RLE_DICTIONARY, which every reader
    knows (delta-encoding the epochs would save another 5 ms but older Spark and Athena engine v2 readers
    refuse DELTA_BINARY_PACKED)."""
    return {"compression": "zstd", "use_dictionary": [cfg.destination.partition_key]}


def load_hook(spec: str | None) -> Callable[[pa.Table], pa.Table] | None:
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise EtlError(f"transform hook {spec!r} cannot be loaded: {exc}",
                       hint="hook = \"module:function\", with the module importable (on PYTHONPATH)") from None
    if not callable(fn):
        raise EtlError(f"transform hook {spec!r} is not a function")
    return fn


# --------------------------------------------------------------------------- one chunk


@dataclass
class ChunkResult:
    table: pa.Table
    items_in: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)  # (reason, message, raw line)


_BLANK = b" \t\r"  # JSON whitespace besides the newline: a line of only these is blank (skipped)
_CONTROL = re.compile(rb"[\x00-\x1f]")  # raw control bytes: legal in JSON only as whitespace between tokens
# an escaped high surrogate of a character from U+20000 up: arrow-rs (in arro3-io 0.9) decodes those pairs
# wrongly (it ORs in the 0x10000 instead of adding it: "\ud840\udc00" reads as U+10000, not U+20000), so such
# lines are re-encoded with orjson (exact, raw UTF-8) before the decoder sees them
_ASTRAL = re.compile(rb"\\u[dD](?:8[4-9a-fA-F]|9[0-9a-fA-F]|[abAB][0-9a-fA-F])")


def _lines(chunk: bytes | memoryview) -> list[bytes]:
    return [line for line in bytes(chunk).split(b"\n") if line.strip(_BLANK)]


def _decode(data: bytes | memoryview, schema: pa.Schema) -> pa.Table:
    """arrow-rs's JSON decoder (arro3-io) against the explicit schema; raises pa.ArrowInvalid.

    It checks what pyarrow's reader checks for the mapped attributes (a value of the wrong JSON type
    refuses the line), nesting, colons, escapes and UTF-8, releases the GIL, and parses twice as fast
    (BENCHMARKS.md). It reads commas as separators and does not check number syntax (neither matters in
    DynamoDB JSON, which has no bare numbers); raw control bytes and the surrogate pairs it decodes wrongly
    are dealt with by `_parse`."""
    # a buffer, not a file object: a file object is read through ~1,000 Python calls per 8 MB, each needing the
    # GIL (3.5 s instead of 13 ms per chunk while another thread runs Python); a buffer needs none
    return pa.table(aio.read_json(memoryview(data), schema))


@dataclass
class Parsed:
    table: pa.Table
    lines: list[bytes] | None  # the raw line behind each row (slow path), or None: row i is line i (`ends`)
    ends: np.ndarray | None  # fast path: the position of each line's newline
    malformed: list[tuple[bytes, str]]  # (raw line, why)

    def raw_lines(self, chunk: bytes | memoryview, rows: np.ndarray) -> list[bytes]:
        if self.lines is not None:
            return [self.lines[i] for i in rows.tolist()]
        assert self.ends is not None
        view = memoryview(chunk)
        ends = self.ends[rows]
        starts = np.where(rows > 0, self.ends[np.maximum(rows - 1, 0)] + 1, 0)
        return [bytes(view[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _parse(chunk: bytes | memoryview, schema: pa.Schema, attrs: list[str]) -> Parsed:
    """Parse a chunk of lines into rows of the explicit schema, one row per line, or say why a line is not one.

    Fast path (the whole chunk in one call) when the chunk is plainly one object per line: every line
    starts with `{` and ends with `}`, no control byte but the newlines, no escaped surrogate the decoder
    gets wrong, and the decoder gives exactly one row per line. Otherwise, line by line: blank lines are
    skipped, a line with a raw control byte or such an escape must be strict JSON (orjson; the escape is
    re-encoded), and the lines are decoded in halves until every refused line stands alone, so one bad line
    in an 8 MB chunk costs a few decodes of it, not one per line. Raw lines are always the file's bytes."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if (len(ends) and ends[-1] == len(buf) - 1 and buf[0] == 123 and np.count_nonzero(buf < 32) == len(ends)
            and bool((buf[ends - 1] == 125).all()) and bool((buf[ends[:-1] + 1] == 123).all())
            and not (np.count_nonzero(buf == 92) and _ASTRAL.search(chunk))):
        try:
            table = _decode(chunk, schema)
            if table.num_rows == len(ends):
                return Parsed(table, None, ends, [])
        except pa.ArrowInvalid:
            pass
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
                bad.append((line, f"not JSON: {err}"))
                continue
            if astral:
                text = orjson.dumps(obj)
        lines.append(line)
        texts.append(text)
    tables: list[pa.Table] = []
    good: list[bytes] = []
    todo = [(0, len(lines))]  # line ranges, taken in file order
    while todo:
        lo, hi = todo.pop()
        if hi == lo:
            continue
        try:
            t = _decode(b"\n".join(texts[lo:hi]), schema)
            if t.num_rows == hi - lo:
                tables.append(t)
                good.extend(lines[lo:hi])
                continue
            if hi - lo == 1:
                bad.append((lines[lo], "more than one JSON value on the line"))
                continue
        except pa.ArrowInvalid as exc:
            if hi - lo == 1:
                bad.append((lines[lo], _refused(texts[lo], attrs, exc)))
                continue
        mid = (lo + hi) // 2
        todo += [(mid, hi), (lo, mid)]
    if not tables:
        return Parsed(pa.table({"Item": pa.array([], schema.field("Item").type)}), [], None, bad)
    return Parsed(pa.concat_tables(tables), good, None, bad)


def _refused(line: bytes, attrs: list[str], exc: Exception) -> str:
    """Why the decoder refused a line, said the way a user can act on."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return f"not JSON: {err}"
    if not isinstance(obj, dict) or not isinstance(obj.get("Item"), dict):
        return "no Item object"
    item = obj["Item"]
    wrong = [a for a in attrs if a in item and not isinstance(item[a], dict)]
    if wrong:
        return f"attribute {wrong[0]} is not DynamoDB JSON (a {{type: value}} object)"
    for a in attrs:
        for kind, value in item.get(a, {}).items():
            if kind in ("S", "N") and not isinstance(value, str):
                return f"attribute {a}: its {kind} value is a JSON {type(value).__name__}, not a string"
    return "not DynamoDB JSON: " + str(exc).split("Json error: ", 1)[-1]


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
    """The DynamoDB type of a rejected value that is neither S nor N, read from its raw line."""
    try:
        value = orjson.loads(line)["Item"][source]
        return "/".join(value) if isinstance(value, dict) else type(value).__name__
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "another type"


def _messages(kind: str, source: str, attr: pa.Array, rows: np.ndarray, expected: str,
              lines: list[bytes]) -> list[str]:
    """Messages for rejected rows sharing one reason and attribute, a column at a time."""
    if kind == "missing_attribute":
        return [f"{source} is missing"] * len(rows)
    at = pa.array(rows, pa.int64())
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
    if kind == "bad_int":
        return [f"{source}: {v!r} is not an integer" for v in values]
    return [f"{source}: {v!r} is not a date-time (ISO-8601, yyyy-MM-dd, epoch or a configured pattern)"
            for v in values]


def convert_chunk(chunk: bytes | memoryview, cfg: Config, schema: pa.Schema, out_schema: pa.Schema) -> ChunkResult:
    """Classify and convert one chunk of lines, whole columns at a time.

    Pass 1 (every row, cheap validity checks): malformed, type_mismatch, filtered, missing_attribute.
    Pass 2 (only the rows still standing): the conversions (dates, ints), which can fail per row."""
    attrs = source_attributes(cfg)
    t = cfg.transform
    parsed = _parse(chunk, schema, attrs)
    table = parsed.table
    result = ChunkResult(table=pa.Table.from_batches([], out_schema))
    result.rejected.extend(("malformed_line", msg, line) for line, msg in parsed.malformed)
    n = table.num_rows
    result.items_in = n + len(parsed.malformed)
    if n == 0:
        return result
    item = table.column("Item").combine_chunks()
    reason = np.full(n, -1, dtype=np.int8)  # index into REASONS, -1 = fine
    why: list[tuple[str, pa.Array, str]] = []  # (attribute, values, expected) behind reason_info
    reason_info = np.full(n, -1, dtype=np.int32)  # index into why
    filtered = np.zeros(n, dtype=bool)
    filter_code = np.full(n, -1, dtype=np.int16)
    filter_names: list[str] = []
    has_item = _np(pc.is_valid(item))

    def mark(mask: np.ndarray, kind: str, source: str, attr: pa.Array, expected: str) -> None:
        """Set a reason where none of higher priority is set yet."""
        code = REASONS.index(kind)
        free = mask & ((reason < 0) | (reason > code))
        reason[free] = code
        why.append((source, attr, expected))
        reason_info[free] = len(why) - 1

    reason[~has_item] = REASONS.index("malformed_line")
    # type mismatches of every mapped or filtered attribute
    expected_of = {"string": "S", "int": "N", "datetime": "S or N"}
    checks: dict[str, str] = {c.source: expected_of[c.converter] for c in t.columns if c.converter != "ttl"}
    for name in t.non_empty:
        checks.setdefault(name, "S")
    present_of: dict[str, np.ndarray] = {}
    for name, expected in checks.items():
        a = item.field(name)
        present = _np(pc.is_valid(a)) & has_item
        present_of[name] = present
        ok = _np(pc.is_valid(a.field("S"))) if "S" in expected else np.zeros(n, dtype=bool)
        if "N" in expected:
            ok |= _np(pc.is_valid(a.field("N")))
        mark(present & ~ok, "type_mismatch", name, a, expected)
    # filters: rows that are not orders are not errors
    for name in t.non_empty:
        s_val = item.field(name).field("S")
        empty = _empty(s_val)
        mask = (~present_of[name] | empty) & has_item & (reason < 0) & ~filtered
        for label, m in ((f"empty_{name}", mask & empty), (f"missing_{name}", mask & ~empty)):
            if m.any():
                filter_names.append(label)
                filter_code[m] = len(filter_names) - 1
        filtered |= mask
    for col in t.columns:
        if col.converter != "ttl" and col.required:
            a = item.field(col.source)
            mark(~present_of[col.source] & has_item & ~filtered, "missing_attribute", col.source, a,
                 checks[col.source])
    # pass 2: convert what is left
    cand = np.flatnonzero((reason < 0) & ~filtered)
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
            n_val = a.field("N").take(idx)
            conv = convert.parse_epoch_numbers(n_val)
            whole = pc.fill_null(pc.match_substring_regex(n_val, r"^\s*[+-]?\d+\s*$"), False)
            conv = pc.if_else(whole, conv, pa.scalar(None, pa.int64()))
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
        mark(bad, kind, col.source, a, checks[col.source])
    rejected_rows = np.flatnonzero(reason >= 0)
    if len(rejected_rows):
        lines = parsed.raw_lines(chunk, rejected_rows)
        kinds = [REASONS[c] for c in reason[rejected_rows].tolist()]
        messages = ["no Item object"] * len(rejected_rows)
        infos = reason_info[rejected_rows]
        for w in np.unique(infos[infos >= 0]).tolist():
            at = np.flatnonzero(infos == w)
            source, attr, expected = why[w]
            texts = _messages(kinds[at[0]], source, attr, rejected_rows[at], expected, [lines[j] for j in at.tolist()])
            for j, text in zip(at.tolist(), texts, strict=True):
                messages[j] = text
        result.rejected.extend(zip(kinds, messages, lines, strict=True))
    codes, counts = np.unique(filter_code[filtered], return_counts=True)
    result.filtered = {filter_names[c]: int(k) for c, k in zip(codes, counts, strict=True)}
    keep_in_cand = pa.array(reason[cand] < 0)
    cols: dict[str, pa.Array] = {}
    for col in t.columns:
        if col.converter != "ttl":
            cols[col.name] = pc.filter(values[col.name], keep_in_cand)
    for col in t.columns:
        if col.converter == "ttl":
            cols[col.name] = convert.ttl(cols[col.base], t.ttl_seconds)
    result.table = pa.table([cols[c.name] for c in t.columns], schema=out_schema)
    return result


# --------------------------------------------------------------------------- one task (one data file)


@contextlib.contextmanager
def _open_data(uri: str, cfg: Config) -> Iterator[Any]:
    """A readable stream of the data file's decompressed bytes. Decompression is ISA-L's igzip
    (zlib-compatible, 2.8x faster here than zlib: BENCHMARKS.md); S3 objects stream, never land on disk."""
    if uri.startswith("s3://"):
        bucket, key = staging.split_s3(uri)
        store = staging.open_store(f"s3://{bucket}", cfg.staging)
        raw: Any = store.s3.get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[attr-defined]
    else:
        raw = open(uri, "rb")  # noqa: SIM115 (closed below)
    try:
        if uri.endswith(".gz"):
            with igzip.IGzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        else:
            yield raw
    finally:
        raw.close()


def transform_file(cfg: Config, store: staging.Store, month: str, part: int, uri: str,
                   hook: Callable[[pa.Table], pa.Table] | None, task: Task | None = None,
                   kept: KeptKeys | None = None, helpers: int = 0) -> dict[str, Any]:
    """One export data file -> one Parquet part (+ its quarantine file); what it writes also goes to `kept`
    (the collision check's keys) when given.

    `helpers` > 0 (a month of fewer files than workers): chunks are converted on helpers + 1 threads while
    this one decompresses, and their results are taken in file order, so the output is the same."""
    schema = parse_schema(cfg)
    out_schema = output_schema(cfg)
    counts: dict[str, Any] = {"items_in": 0, "written": 0, "filtered": 0, "rejected": 0,
                              "filtered_by": {}, "rejected_by": {}}
    rej_key = staging.rejected_key(month, part)
    out_key = staging.transformed_key(month, part)
    rej_buf = io.BytesIO()
    rej_gz = igzip.IGzipFile(fileobj=rej_buf, mode="wb", mtime=0, compresslevel=1)
    with store.open_write(out_key) as sink, _open_data(uri, cfg) as stream:
        writer = pq.ParquetWriter(sink, out_schema, **parquet_options(cfg))
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush(final: bool = False) -> None:
            nonlocal pending, pending_rows
            while pending_rows >= cfg.transform.row_group_rows or (final and pending_rows):
                t = pa.concat_tables(pending)
                take = min(cfg.transform.row_group_rows, t.num_rows)
                writer.write_table(t.slice(0, take), row_group_size=take)
                if kept is not None:
                    kept.add(part, t.slice(0, take))
                rest = t.slice(take)
                pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

        ahead: collections.deque[tuple[Future[ChunkResult], int]] = collections.deque()
        converters = ThreadPoolExecutor(helpers + 1, thread_name_prefix=f"part{part}") if helpers > 0 else None

        def submit(chunk: bytes | memoryview) -> None:
            if converters is None:
                handle(convert_chunk(chunk, cfg, schema, out_schema), len(chunk))
                return
            ahead.append((converters.submit(convert_chunk, chunk, cfg, schema, out_schema), len(chunk)))
            drain(keep=helpers + 1)

        def drain(keep: int = 0) -> None:
            """Handle the oldest results, in file order, until at most `keep` are in flight."""
            while len(ahead) > keep:
                fut, size = ahead.popleft()
                handle(fut.result(), size)

        def handle(r: ChunkResult, size: int) -> None:
            nonlocal pending_rows
            if hook is not None and r.table.num_rows:
                r.table = _apply_hook(hook, cfg, r.table, out_schema, counts)
            counts["items_in"] += r.items_in
            counts["written"] += r.table.num_rows
            for k, v in r.filtered.items():
                counts["filtered_by"][k] = counts["filtered_by"].get(k, 0) + v
                counts["filtered"] += v
            for reason, _, _ in r.rejected:
                counts["rejected_by"][reason] = counts["rejected_by"].get(reason, 0) + 1
            counts["rejected"] += len(r.rejected)
            if r.rejected:
                rej_gz.write(b"".join(orjson.dumps({"reason": reason, "message": message, "file": uri,
                                                    "line": line.decode("utf-8", "replace")}) + b"\n"
                                      for reason, message, line in r.rejected))
            if r.table.num_rows:
                pending.append(r.table)
                pending_rows += r.table.num_rows
                flush()
            if task is not None:  # items of the known total, and uncompressed MB read by every task together
                task.advance(r.items_in, add={"MB": size / 1e6})

        try:
            carry = b""
            while True:
                try:
                    block = stream.read(CHUNK)
                except (OSError, EOFError) as exc:
                    drain()
                    reached = counts["items_in"] + carry.count(b"\n")
                    raise EtlError(
                        f"{uri}: the gzip data ends early ({exc}) after line {reached}; "
                        f"{counts['items_in']} items were read before it",
                        hint="the export file is damaged: re-export the month (`etl export --month "
                        f"{month} --force`)",
                    ) from None
                counts["bytes"] = counts.get("bytes", 0) + len(block)
                if not block:
                    if carry.strip():
                        submit(carry + b"\n")
                    break
                first = block.find(b"\n")
                if first < 0:
                    carry += block
                    continue
                start = 0
                if carry:  # finish the line the last block cut on its own: the big block is never copied
                    submit(carry + block[: first + 1])
                    start = first + 1
                cut = block.rfind(b"\n")
                if cut >= start:
                    submit(memoryview(block)[start : cut + 1])
                carry = block[cut + 1 :]
            drain()
            flush(final=True)
        finally:
            if converters is not None:
                converters.shutdown(wait=True, cancel_futures=True)
            writer.close()
    rej_gz.close()
    if counts["rejected"]:
        store.write(rej_key, rej_buf.getvalue())
    if counts["items_in"] != counts["written"] + counts["filtered"] + counts["rejected"]:
        raise EtlError(f"{uri}: counts do not reconcile: {counts}")
    info = store.head(out_key)
    return {"part": part, "input": uri, "output": out_key, "rows": counts["written"],
            "bytes": info.size if info else None, "rejected_key": rej_key if counts["rejected"] else None,
            "uncompressed_bytes": counts.pop("bytes", 0), **counts}


def _apply_hook(hook: Callable[[pa.Table], pa.Table], cfg: Config, table: pa.Table, schema: pa.Schema,
                counts: dict[str, Any]) -> pa.Table:
    name = cfg.transform.hook
    try:
        out = hook(table)
    except Exception as exc:
        raise EtlError(f"transform hook {name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, pa.Table):
        raise EtlError(f"transform hook {name} returned {type(out).__name__}, not a pyarrow.Table")
    if out.num_rows > table.num_rows:
        raise EtlError(f"transform hook {name} added rows ({table.num_rows} -> {out.num_rows}); it may only "
                       "change or drop rows")
    for key in (cfg.destination.partition_key, cfg.destination.sort_key):
        if key not in out.column_names or out.column(key).null_count:
            raise EtlError(f"transform hook {name} dropped or nulled the key column {key}")
    dropped = table.num_rows - out.num_rows
    if dropped:
        counts["filtered_by"]["hook"] = counts["filtered_by"].get("hook", 0) + dropped
        counts["filtered"] += dropped
    try:
        return out.select(schema.names).cast(schema) if set(out.column_names) >= set(schema.names) else out
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise EtlError(f"transform hook {name} returned columns that do not fit the schema: {exc}") from None


# --------------------------------------------------------------------------- collisions and the stage


COLLISION_BUCKET_ROWS = int(os.environ.get("ETL_COLLISION_BUCKET_ROWS", 1_000_000))


def _batches(store: staging.Store, key: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Those columns of a Parquet part, a row group at a time (a local file reads just those column chunks)."""
    if isinstance(store, staging.LocalStore):
        source: Any = store.key_uri(key)
    else:
        with store.open_read(key) as f:
            source = pa.BufferReader(f.read())
    yield from pq.ParquetFile(source).iter_batches(batch_size=1 << 17, columns=columns)


def _duplicate_rows(pks: list[pa.Array], sks: np.ndarray) -> np.ndarray:
    """Positions (ascending) of rows whose (pk, sk) occurs more than once; the rows are the parts' `pks`
    one after another, `sks` their sort keys (int64, nulls as 0).

    Two steps, so the common case stays cheap: sort the int64 sort keys alone, keep the rows whose sort key
    repeats, and only for those dictionary-encode the partition key and compare both."""
    empty = np.array([], dtype=np.int64)
    cand = _repeated(sks)
    if len(cand) == 0:
        return empty
    codes = np.asarray(pc.dictionary_encode(_take(pks, cand)).indices.to_numpy(zero_copy_only=False), np.int64)
    csk = sks[cand]
    lo, span = int(csk.min()), int(csk.max()) - int(csk.min()) + 1
    if span < 2**31 and len(codes) < 2**31:
        return cand[_repeated(codes * span + (csk - lo))]
    order = np.lexsort((csk, codes))  # a key span too wide to pack: compare both columns
    return cand[_in_runs(order, (codes[order][1:] == codes[order][:-1]) & (csk[order][1:] == csk[order][:-1]))]


def _take(arrays: list[pa.Array], positions: np.ndarray) -> pa.Array:
    """Rows `positions` (ascending) of the arrays one after another, without joining them first."""
    bounds = np.cumsum([0] + [len(a) for a in arrays])
    cuts = np.searchsorted(positions, bounds)
    pieces = [a.take(pa.array(positions[cuts[i]:cuts[i + 1]] - bounds[i]))
              for i, a in enumerate(arrays) if cuts[i + 1] > cuts[i]]
    return pa.concat_arrays(pieces) if pieces else arrays[0].slice(0, 0)


def _repeated(values: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the values that occur more than once.

    The position rides in the low bits of each value, so a plain sort (numpy's SIMD quicksort) stands in
    for an argsort and a gather (16 -> 7 ms per 860k keys, measured alone); an argsort when the values
    span too widely to pack."""
    n = len(values)
    if n < 2:
        return np.array([], dtype=np.int64)
    lo = int(values.min())
    bits = (n - 1).bit_length()
    if int(values.max()) - lo < 2 ** (62 - bits):
        packed = np.sort(((values - lo) << bits) | np.arange(n, dtype=np.int64))
        v, order = packed >> bits, packed & ((1 << bits) - 1)
    else:
        order = np.argsort(values)
        v = values[order]
    return _in_runs(order, v[1:] == v[:-1])


def _in_runs(order: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Given a sorting `order` and `same[i]` = sorted item i+1 equals item i: the positions (ascending)
    that have an equal neighbour."""
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    return np.sort(order[dup])


def _sort_keys(batch: pa.RecordBatch, sk: str) -> np.ndarray:
    """The sort key column as int64 numpy, nulls as 0."""
    skc = batch.column(sk)
    return np.asarray((pc.fill_null(skc, 0) if skc.null_count else skc).to_numpy(), np.int64)


class KeyBudget:
    """Rows of keys that all the months of a run may keep in memory at once (months run side by side); and
    one thread (`checker`) that runs the months' collision checks one at a time, so that their memory does not
    add up (nor stay behind in each month thread's malloc arena: 12 months peaked at 706 MB that way)."""

    def __init__(self, rows: int) -> None:
        self.free = rows
        self._lock = threading.Lock()
        self._checker: ThreadPoolExecutor | None = None

    @property
    def checker(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._checker is None:
                self._checker = ThreadPoolExecutor(1, thread_name_prefix="collisions")
            return self._checker

    def close(self) -> None:
        with self._lock:
            checker, self._checker = self._checker, None
        if checker is not None:
            checker.shutdown(wait=True)

    def take(self, rows: int) -> bool:
        with self._lock:
            if rows > self.free:
                return False
            self.free -= rows
            return True

    def give(self, rows: int) -> None:
        with self._lock:
            self.free += rows


class KeptKeys:
    """The key columns (and OrderID) of a month's parts as they are written, with the sort keys as numpy, made
    on the transform's workers, so that the collision check after the last file reads nothing back.

    Kept only while the month fits one collision bucket (COLLISION_BUCKET_ROWS) and `budget` (shared by the
    months of a run) has room; otherwise dropped, and the check reads the parts back."""

    def __init__(self, columns: list[str], sort_key: str, limit: int, budget: KeyBudget | None = None) -> None:
        self.columns, self.sort_key, self.limit = columns, sort_key, limit
        self.budget = budget or KeyBudget(limit)
        self.rows = 0  # rows held
        self.dropped = False
        self.parts: dict[int, list[tuple[pa.RecordBatch, np.ndarray]]] = {}
        self._lock = threading.Lock()

    def add(self, part: int, table: pa.Table) -> None:
        if self.dropped:
            return
        pieces = [(b, _sort_keys(b, self.sort_key)) for b in table.select(self.columns).to_batches()]
        with self._lock:
            if self.dropped:
                return
            if self.rows + table.num_rows > self.limit or not self.budget.take(table.num_rows):
                self.release_locked()
                self.dropped = True
                return
            self.rows += table.num_rows
            self.parts.setdefault(part, []).extend(pieces)

    def release_locked(self) -> None:
        self.parts.clear()
        self.budget.give(self.rows)
        self.rows = 0

    def release(self) -> None:
        with self._lock:
            self.release_locked()
            self.dropped = True

    def of(self, part: int, rows: int) -> list[tuple[pa.RecordBatch, np.ndarray]] | None:
        """The part's pieces in file order, or None when they were not (all) kept."""
        with self._lock:
            got = None if self.dropped else list(self.parts.get(part, []))
        return got if got is not None and sum(len(s) for _, s in got) == rows else None


def find_collisions(cfg: Config, store: staging.Store, month: str, parts: list[dict[str, Any]],
                    pool: ThreadPoolExecutor | None = None, kept: KeptKeys | None = None) -> dict[str, Any]:
    """Rows of the month that land on one destination key; the losers go to a small Parquet file.

    Memory stays bounded: keys are processed in buckets of CreationDateTime modulo K (equal keys share
    a bucket), about COLLISION_BUCKET_ROWS rows each, re-reading only the key columns (and OrderID) per
    bucket; a month of one bucket takes them from `kept` instead, when given. The parts are read on `pool`
    when given (the transform's workers are idle by then)."""
    run: Callable[..., Iterator[Any]] = pool.map if pool is not None else map
    pk, sk = cfg.destination.partition_key, cfg.destination.sort_key
    order_col = "OrderID" if any(c.name == "OrderID" for c in cfg.transform.columns) else None
    columns = [pk, sk, *([order_col] if order_col else [])]
    total = sum(p["rows"] for p in parts)
    k = math.ceil(total / COLLISION_BUCKET_ROWS)  # buckets; none for a month without rows
    found: list[pa.Table] = []
    for bucket in range(k):

        def keys_of(p: dict[str, Any], bucket: int = bucket) -> list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]]:
            """This bucket's rows of a part, a row group at a time: (columns, sort keys, row numbers)."""
            out, start = [], 0
            held = kept.of(p["part"], p["rows"]) if kept is not None and k == 1 else None
            mine: Iterable[tuple[pa.RecordBatch, np.ndarray]] = (
                held if held is not None else ((b, _sort_keys(b, sk)) for b in _batches(store, p["output"], columns)))
            for b, skv in mine:
                n = b.num_rows
                rows = np.arange(start, start + n, dtype=np.int64)
                if k > 1:
                    keep = np.flatnonzero(np.abs(skv) % k == bucket)
                    b, skv, rows = b.take(pa.array(keep)), skv[keep], rows[keep]
                out.append((b, skv, rows))
                start += n
            return out

        got = [(p["part"], piece) for p, pieces in zip(parts, run(keys_of, parts), strict=True) for piece in pieces]
        skv = np.concatenate([s for _, (_, s, _) in got]) if got else np.zeros(0, np.int64)
        cols = {c: [b.column(c) for _, (b, _, _) in got] for c in columns}
        dup = _duplicate_rows(cols[pk], skv) if got else skv
        if len(dup):
            part_of = np.concatenate([np.full(len(r), part, np.int32) for part, (_, _, r) in got])
            row_of = np.concatenate([r for _, (_, _, r) in got])
            found.append(pa.table({**{c: _take(cols[c], dup) for c in columns},
                                   "_part": pa.array(part_of[dup]), "_row": pa.array(row_of[dup])}))
        del got, skv, cols
    if not found:
        store.delete(staging.state_key(month, COLLISIONS))
        return {"rows": 0, "keys": 0, "losers": 0, "examples": []}
    rows = pa.concat_tables(found)
    sort = [(pk, "ascending"), (sk, "ascending")]
    if order_col:
        sort.append((order_col, "descending"))
    sort += [("_part", "ascending"), ("_row", "ascending")]
    rows = rows.sort_by(sort).combine_chunks()
    first = np.ones(rows.num_rows, dtype=bool)
    if rows.num_rows > 1:
        pkc, skc = rows[pk].chunk(0), rows[sk].chunk(0)
        first[1:] = ~_np(pc.and_(pc.equal(pkc[1:], pkc[:-1]), pc.equal(skc[1:], skc[:-1])))
    starts = np.flatnonzero(first)
    ends = [*starts[1:6].tolist(), rows.num_rows]
    examples = []
    for lo, hi in zip(starts[:5].tolist(), ends, strict=False):
        group = rows.slice(lo, hi - lo)
        examples.append({pk: group[pk][0].as_py(), sk: group[sk][0].as_py(),
                         "orders": group[order_col].to_pylist() if order_col else None})
    losers = rows.filter(pa.array(~first))
    buf = io.BytesIO()
    pq.write_table(losers, buf, compression="zstd")
    store.write(staging.state_key(month, COLLISIONS), buf.getvalue())
    return {"rows": rows.num_rows, "keys": len(starts), "losers": losers.num_rows,
            "losers_file": staging.state_key(month, COLLISIONS),
            "winner_rule": "greatest OrderID, then first in file order", "examples": examples}


def transform_month(cfg: Config, store: staging.Store, month: str, pool: ThreadPoolExecutor, reporter: Reporter,
                    budget: KeyBudget, force: bool = False) -> dict[str, Any]:
    export = staging.read_manifest(store, month, "export")
    if export is None:
        raise StageNotReady(f"month {month} has no committed export",
                            hint=f"run `etl export --month {month}` first")
    done = staging.read_manifest(store, month, "transform")
    cfg_hash = cfg.hash_of("transform")
    if done and not force:
        if done.get("upstream_run") == export.get("run_id") and done.get("config_hash") == cfg_hash:
            reporter.info(f"transform {month}: already committed, skipped; --force redoes it")
            return {**done, "skipped": True}
        reporter.info(f"transform {month}: the export or the mapping changed since the last transform; redoing it")
    hook = load_hook(cfg.transform.hook)
    started = time.time()
    store.delete_prefix(f"transformed/{staging.month_dir(month)}/")
    store.delete_prefix(f"rejected/{staging.month_dir(month)}/")
    files = sorted(export["files"], key=lambda f: f["uri"])
    total = export.get("item_count") or export.get("describe_item_count")
    task = reporter.task(f"transform {month}", total, "items")
    names = output_schema(cfg).names
    kept = KeptKeys([c for c in (cfg.destination.partition_key, cfg.destination.sort_key, "OrderID") if c in names],
                    cfg.destination.sort_key, COLLISION_BUCKET_ROWS, budget)
    # a month of fewer files than workers converts each file's chunks on the idle ones too
    helpers = max(0, cfg.transform.concurrency - len(files)) // max(1, len(files))
    futures = [pool.submit(transform_file, cfg, store, month, i, f["uri"], hook, task, kept, helpers)
               for i, f in enumerate(files)]
    try:  # the kept keys go back to the run's budget however the month ends
        parts = [f.result() for f in futures]
        task.finish()
        totals = {k: sum(p[k] for p in parts) for k in ("items_in", "written", "filtered", "rejected")}
        by: dict[str, dict[str, int]] = {"filtered_by": {}, "rejected_by": {}}
        for p in parts:
            for group in by:
                for k, v in p[group].items():
                    by[group][k] = by[group].get(k, 0) + v
        if totals["items_in"] != totals["written"] + totals["filtered"] + totals["rejected"]:
            raise EtlError(f"transform {month}: counts do not reconcile: {totals}")
        if total is not None and totals["items_in"] != total:
            raise EtlError(
                f"transform {month}: read {totals['items_in']} items, but the export says {total}",
                hint=f"the export looks incomplete: `etl export --month {month} --force`",
            )
        collisions = kept.budget.checker.submit(find_collisions, cfg, store, month, parts, pool, kept).result()
    finally:
        kept.release()
    if collisions["keys"]:
        reporter.warn(f"transform {month}: {collisions['rows']} rows share {collisions['keys']} destination keys; "
                      f"{collisions['losers']} will not be loaded ({collisions['winner_rule']} wins)")
    return staging.commit_manifest(store, month, "transform", {
        **totals, **by,
        "reconciles": "items_in = written + filtered + rejected",
        "collisions": collisions,
        "inputs": [{"uri": f["uri"], "size": f.get("size"), "etag": f.get("etag")} for f in files],
        "parts": parts,
        "schema": {f.name: str(f.type) for f in output_schema(cfg)},
        "upstream_run": export.get("run_id"),
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg_hash,
    })


def run_transform(cfg: Config, months: list[str], *, force: bool = False,
                  reporter: Reporter = QUIET) -> list[dict[str, Any]]:
    store = staging.open_store(cfg.staging.root, cfg.staging)
    # the system allocator gives freed chunk memory back at once (jemalloc holds on to it: +25% peak RSS)
    pa.set_memory_pool(pa.system_memory_pool())
    budget = KeyBudget(COLLISION_BUCKET_ROWS)  # keys kept for the collision checks, all months together
    try:
        with ThreadPoolExecutor(max_workers=cfg.transform.concurrency, thread_name_prefix="transform") as pool:
            return run_months("transform", months, store,
                              lambda m: transform_month(cfg, store, m, pool, reporter, budget, force),
                              max(1, len(months)), reporter)
    finally:
        budget.close()


__all__ = ["run_transform", "transform_month", "transform_file", "convert_chunk", "REASONS"]

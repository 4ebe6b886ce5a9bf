"""Key collisions: rows of a month that land on one destination key.

They all stay in the Parquet; the losers are listed in the month's collisions file (`staging`), which the
load skips. The winner is the row with the greatest OrderID (when the mapping has one), then the first in
file order. Keys may be strings or numbers, and the table may have no sort key.

Memory stays bounded: rows are processed in buckets of a value derived from the key (equal keys share a
bucket), about `collision_bucket_rows` rows each, re-reading only the key columns (and OrderID) per bucket.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import staging
from etl.config import Config
from etl.mapping import collision_columns, key_columns, order_column


def _batches(store: staging.Store, key: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Those columns of a Parquet part, a row group at a time (a local file reads just those column chunks)."""
    if isinstance(store, staging.LocalStore):
        source: Any = store.key_uri(key)
    else:
        with store.open_read(key) as f:
            source = pa.BufferReader(f.read())
    yield from pq.ParquetFile(source).iter_batches(batch_size=1 << 17, columns=columns)


def _ints(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer column as int64 numpy, nulls as 0."""
    return np.asarray((pc.fill_null(a, 0) if a.null_count else a).to_numpy(zero_copy_only=False), np.int64)


def _is_int(a: pa.Array | pa.ChunkedArray) -> bool:
    return pa.types.is_integer(a.type)


def bucket_values(batch: pa.RecordBatch, keys: list[str]) -> np.ndarray:
    """One int64 per row, equal for equal keys: the first integer key column (the usual epoch sort key), else a
    CRC-32 of the first key column's strings (computed once per distinct string)."""
    for k in keys:
        if _is_int(batch.column(k)):
            return _ints(batch.column(k))
    enc = pc.dictionary_encode(batch.column(keys[0]))
    crcs = np.array([zlib.crc32(s.encode()) if s is not None else 0 for s in enc.dictionary.to_pylist()],
                    dtype=np.int64)
    idx = np.asarray(pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False), np.int64)
    return crcs[idx] if len(crcs) else np.zeros(len(idx), np.int64)


def _codes(arrays: list[pa.Array]) -> np.ndarray:
    """Equal values -> equal int64 codes, for the arrays one after another."""
    joined = pa.chunked_array(arrays) if arrays else pa.chunked_array([], pa.int64())
    if _is_int(joined):
        return _ints(joined)
    enc = pc.dictionary_encode(joined).combine_chunks()
    return np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)


def duplicate_rows(cols: dict[str, list[pa.Array]], keys: list[str], first: np.ndarray) -> np.ndarray:
    """Positions (ascending) of rows whose key occurs more than once; the rows are the parts' arrays one after
    another, `first` their bucket values (equal keys, equal values).

    Two steps, so the common case stays cheap: keep the rows whose `first` value repeats, and only for those
    encode every key column and compare them all."""
    cand = _repeated(first)
    if len(cand) == 0:
        return cand
    codes = [_codes([_take(cols[k], cand)]) for k in keys]
    packed = codes[0]
    for c in codes[1:]:
        lo, span = int(c.min()), int(c.max()) - int(c.min()) + 1
        top = int(packed.max()) - int(packed.min()) + 1
        if top * span >= 2**62:
            order = np.lexsort(codes[::-1])  # a key span too wide to pack: compare every column
            same = np.ones(len(order) - 1, dtype=bool)
            for col in codes:
                s = col[order]
                same &= s[1:] == s[:-1]
            return cand[_in_runs(order, same)]
        packed = (packed - int(packed.min())) * span + (c - lo)
    return cand[_repeated(packed)]


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
    for an argsort and a gather (half the time: BENCHMARKS.md); an argsort when the values
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
        order = np.argsort(values, kind="stable")
        v = values[order]
    return _in_runs(order, v[1:] == v[:-1])


def _in_runs(order: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Given a sorting `order` and `same[i]` = sorted item i+1 equals item i: the positions (ascending)
    that have an equal neighbour."""
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    return np.sort(order[dup])


def _bucket_rows(cfg: Config, store: staging.Store, columns: list[str], k: int, bucket: int,
                 part: dict[str, Any]) -> list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]]:
    """One bucket's rows of a part, a row group at a time: (columns, bucket values, row numbers in the part)."""
    keys = key_columns(cfg)
    out, start = [], 0
    for b in _batches(store, part["output"], columns):
        n = b.num_rows
        first = bucket_values(b, keys)
        rows = np.arange(start, start + n, dtype=np.int64)
        if k > 1:
            keep = np.flatnonzero(np.abs(first) % k == bucket)
            b, first, rows = b.take(pa.array(keep)), first[keep], rows[keep]
        out.append((b, first, rows))
        start += n
    return out


def _summary(cfg: Config, rows: pa.Table) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Sorted colliding rows -> where each key's group starts (its winner), and a few example groups."""
    keys, order = key_columns(cfg), order_column(cfg)
    first = np.ones(rows.num_rows, dtype=bool)
    if rows.num_rows > 1:
        same = np.ones(rows.num_rows - 1, dtype=bool)
        for k in keys:
            col = rows[k].chunk(0)
            same &= np.asarray(pc.fill_null(pc.equal(col[1:], col[:-1]), False).to_numpy(zero_copy_only=False))
        first[1:] = ~same
    starts = np.flatnonzero(first)
    ends = [*starts[1:6].tolist(), rows.num_rows]
    examples = []
    for lo, hi in zip(starts[:5].tolist(), ends, strict=False):
        group = rows.slice(lo, hi - lo)
        examples.append({**{k: group[k][0].as_py() for k in keys},
                         "orders": group[order].to_pylist() if order else None})
    return first, examples


def find_collisions(cfg: Config, store: staging.Store, month: str, parts: list[dict[str, Any]],
                    pool: ThreadPoolExecutor | None = None) -> dict[str, Any]:
    """Rows of the month that land on one destination key; the losers go to the month's collisions file.
    The parts are read on `pool` when given."""
    run: Callable[..., Iterator[Any]] = pool.map if pool is not None else map
    keys, order = key_columns(cfg), order_column(cfg)
    columns = collision_columns(cfg)
    total = sum(p["rows"] for p in parts)
    k = math.ceil(total / cfg.transform.collision_bucket_rows)  # buckets; none for a month without rows
    found: list[pa.Table] = []
    for bucket in range(k):
        pieces = run(lambda p, b=bucket: _bucket_rows(cfg, store, columns, k, b, p), parts)
        got = [(p["part"], piece) for p, ps in zip(parts, pieces, strict=True) for piece in ps]
        if not got:
            continue
        first = np.concatenate([f for _, (_, f, _) in got])
        cols = {c: [b.column(c) for _, (b, _, _) in got] for c in columns}
        dup = duplicate_rows(cols, keys, first)
        if len(dup):
            part_of = np.concatenate([np.full(len(r), part, np.int32) for part, (_, _, r) in got])
            row_of = np.concatenate([r for _, (_, _, r) in got])
            found.append(pa.table({**{c: _take(cols[c], dup) for c in columns},
                                   "_part": pa.array(part_of[dup]), "_row": pa.array(row_of[dup])}))
        del got, first, cols
    if not found:
        staging.write_collisions(store, month, pa.table({"_part": pa.array([], pa.int32())}))
        return {"rows": 0, "keys": 0, "losers": 0, "examples": []}
    rows = pa.concat_tables(found)
    sort = [(c, "ascending") for c in keys]
    if order and order not in keys:
        sort.append((order, "descending"))
    sort += [("_part", "ascending"), ("_row", "ascending")]
    rows = rows.sort_by(sort).combine_chunks()
    first_of_group, examples = _summary(cfg, rows)
    losers = rows.filter(pa.array(~first_of_group))
    rule = ("greatest OrderID, then first in file order" if order and order not in keys else "first in file order")
    return {"rows": rows.num_rows, "keys": int(first_of_group.sum()), "losers": losers.num_rows,
            "losers_file": staging.write_collisions(store, month, losers),
            "winner_rule": rule, "examples": examples}

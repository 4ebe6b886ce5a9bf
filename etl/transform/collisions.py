"""Key collisions: rows of a month that land on one destination key.

They all stay in the Parquet; the losers are listed in the month's collisions file (`staging`), which the
load skips. The winner is chosen by `etl.winner`'s rule (the greatest OrderID, then the smallest row), the
catch-up's too; of rows equal in every column, the first in file order. Keys may be strings or numbers, and
the table may have no sort key.

Two steps, so the common case costs little:
- a task writes a fingerprint of each row's key beside its part (`fingerprints`: equal keys, equal
  fingerprints) while the rows are still in memory;
- the commit finds the fingerprints that repeat in the month, in buckets of about `collision_bucket_rows`
  rows (memory stays bounded), then reads the columns the winner rule compares of only those rows, from only
  the row groups that hold them, and compares the keys themselves: unequal keys that share a fingerprint (40 bits:
  a pair in about a trillion) are never taken for one key.
A part without a fingerprint file (or with one of another length) has its fingerprints made from its key
columns.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import as_strided

from etl import staging, winner
from etl.config import Config
from etl.mapping import collision_columns, key_columns, order_column, output_schema

SCHEME = "fp1"  # names how `fingerprints` makes a print: a change to it takes a new name
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
# a string's print: its length and four little-endian 8-byte words of it (from its start, 8 bytes in, 16 and 8
# before its end; bytes outside the string masked off), each times its own odd constant: strings up to 16 bytes
# are covered whole, longer ones by their first and last 16 bytes (strings that differ only between those share
# a print, and the keys are compared anyway)
_WORD_MUL = np.array([0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0x27D4EB2F165667C5],
                     dtype=np.uint64)
_LEN_MUL = np.uint64(0x94D049BB133111EB)
_LOW_BYTES = np.array([(1 << (8 * v)) - 1 for v in range(8)] + [2**64 - 1], dtype=np.uint64)  # mask of v bytes


def scheme(cfg: Config) -> str:
    """The fingerprint files' scheme for this mapping: how prints are made and of which key columns (prints of
    another destination key are never read as this one's: its key can change between a stopped run and its
    resume)."""
    return f"{SCHEME}-" + hashlib.sha256(",".join(key_columns(cfg)).encode()).hexdigest()[:8]


def _parquet(store: staging.Store, key: str) -> pq.ParquetFile:
    """A Parquet part (a local file reads just the column chunks asked for)."""
    if isinstance(store, staging.LocalStore):
        return pq.ParquetFile(store.key_uri(key))
    with store.open_read(key) as f:
        return pq.ParquetFile(pa.BufferReader(f.read()))


def _batches(store: staging.Store, key: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Those columns of a Parquet part, a row group at a time."""
    yield from _parquet(store, key).iter_batches(batch_size=1 << 17, columns=columns)


def _ints(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer column as int64 numpy, nulls as 0."""
    return np.asarray((pc.fill_null(a, 0) if a.null_count else a).to_numpy(zero_copy_only=False), np.int64)


def _is_int(a: pa.Array | pa.ChunkedArray) -> bool:
    return pa.types.is_integer(a.type)


def _string_prints(a: pa.Array) -> np.ndarray:
    """One uint64 per string, equal for equal strings (see `_WORD_MUL`); whole columns at a time, a few numpy
    gathers per row and none per byte (a byte-wise sum cost 5x more: BENCHMARKS.md)."""
    if not any(f(a.type) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                     pa.types.is_large_binary)):
        a = pc.cast(a, pa.string())
    if a.null_count:
        a = pc.fill_null(a, "")
    n = len(a)
    wide = pa.types.is_large_string(a.type) or pa.types.is_large_binary(a.type)
    offsets = np.frombuffer(a.buffers()[1], np.int64 if wide else np.int32, count=n + 1,
                            offset=a.offset * (8 if wide else 4)).astype(np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.zeros(hi - lo + 8, np.uint8)  # the bytes, and 8 zeros so a word can start at any byte
    buf = a.buffers()[2]
    if buf is not None and hi > lo:
        data[: hi - lo] = np.frombuffer(buf, np.uint8)[lo:hi]
    offsets -= lo
    # the 8-byte little-endian word starting at each byte
    words = as_strided(data, shape=(len(data) - 7, 8), strides=(1, 1)).view(np.dtype("<u8"))[:, 0]
    start, end = offsets[:-1], offsets[1:]
    out = (end - start).astype(np.uint64) * _LEN_MUL
    for mul, at in zip(_WORD_MUL, (start, start + 8, np.maximum(end - 16, start), np.maximum(end - 8, start)),
                       strict=True):
        at = np.minimum(at, hi - lo)
        out += (words[at] & _LOW_BYTES[np.clip(end - at, 0, 8)]) * mul
    return out


def fingerprints(rows: pa.Table | pa.RecordBatch, keys: list[str]) -> np.ndarray:
    """One int64 in [0, 2^40) per row, equal for equal keys (integer or string key columns, in `keys` order)."""
    h = np.zeros(rows.num_rows, np.uint64)
    for k in keys:
        col = rows.column(k)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        v = _ints(col).view(np.uint64) if _is_int(col) else _string_prints(col)
        h = (h ^ v) * _MIX
    h ^= h >> np.uint64(31)
    h *= _MIX2
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(24)).view(np.int64)


def _codes(arrays: list[pa.Array]) -> np.ndarray:
    """Equal values -> equal int64 codes, for the arrays one after another."""
    joined = pa.chunked_array(arrays) if arrays else pa.chunked_array([], pa.int64())
    if _is_int(joined):
        return _ints(joined)
    enc = pc.dictionary_encode(joined).combine_chunks()
    return np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)


def duplicate_rows(cols: dict[str, list[pa.Array]], keys: list[str], first: np.ndarray) -> np.ndarray:
    """Positions (ascending) of rows whose key occurs more than once; the rows are the parts' arrays one after
    another, `first` their fingerprints (equal keys, equal values).

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


def _part_prints(cfg: Config, store: staging.Store, month: str, part: dict[str, Any]) -> np.ndarray:
    """A part's key fingerprints: the file its task wrote, else made from its key columns."""
    prints = staging.read_key_fingerprints(store, month, part["part"], scheme(cfg))
    if prints is not None and len(prints) == part["rows"]:
        return prints
    keys = key_columns(cfg)
    made = [fingerprints(b, keys) for b in _batches(store, part["output"], keys)]
    return np.concatenate(made) if made else np.zeros(0, np.int64)


def _bucket(cfg: Config, store: staging.Store, month: str, part: dict[str, Any], k: int,
            bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """One bucket's rows of a part: (their fingerprints, their row numbers in the part)."""
    prints = _part_prints(cfg, store, month, part)
    if k == 1:
        return prints, np.arange(len(prints), dtype=np.int64)
    rows = np.flatnonzero(prints % k == bucket)
    return prints[rows], rows


def _rows_of(store: staging.Store, part: dict[str, Any], rows: np.ndarray, columns: list[str]) -> pa.Table:
    """`columns` of the rows `rows` (ascending) of a part, with `_part` and `_row`; only the row groups that
    hold them are read."""
    pf = _parquet(store, part["output"])
    bounds = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
    cuts = np.searchsorted(rows, bounds)
    pieces = [pf.read_row_group(g, columns=columns).take(pa.array(rows[cuts[g]:cuts[g + 1]] - bounds[g]))
              for g in range(pf.num_row_groups) if cuts[g + 1] > cuts[g]]
    t = pa.concat_tables(pieces)  # plain columns: parts written under another mapping still concatenate
    return pa.table({**{c: t[c].combine_chunks() for c in columns},
                     "_part": pa.array(np.full(t.num_rows, part["part"], np.int32)),
                     "_row": pa.array(rows, pa.int64())})


def _examples(cfg: Config, rows: pa.Table, first: np.ndarray) -> list[dict[str, Any]]:
    """A few example groups of the colliding rows, sorted by key with `first` marking where each group starts."""
    keys, order = key_columns(cfg), order_column(cfg)
    starts = np.flatnonzero(first)
    ends = [*starts[1:6].tolist(), rows.num_rows]
    examples = []
    for lo, hi in zip(starts[:5].tolist(), ends, strict=False):
        group = rows.slice(lo, hi - lo)
        examples.append({**{k: group[k][0].as_py() for k in keys},
                         "orders": group[order].to_pylist() if order else None})
    return examples


def find_collisions(cfg: Config, store: staging.Store, month: str, parts: list[dict[str, Any]],
                    pool: ThreadPoolExecutor | None = None) -> dict[str, Any]:
    """Rows of the month that land on one destination key; the losers go to the month's collisions file.
    The parts are read on `pool` when given."""
    run: Callable[..., Iterator[Any]] = pool.map if pool is not None else map
    keys, order = key_columns(cfg), order_column(cfg)
    columns = collision_columns(cfg)
    ranked = columns + [n for n in output_schema(cfg).names if n not in columns]  # what the winner rule compares
    total = sum(p["rows"] for p in parts)
    k = math.ceil(total / cfg.transform.collision_bucket_rows)  # buckets; none for a month without rows
    shared: dict[int, list[np.ndarray]] = {}  # index in `parts` -> rows whose fingerprint repeats in the month
    for bucket in range(k):
        got = list(run(lambda p, b=bucket: _bucket(cfg, store, month, p, k, b), parts))
        prints = np.concatenate([g[0] for g in got])
        owner = np.concatenate([np.full(len(g[1]), i, np.int32) for i, g in enumerate(got)])
        rows = np.concatenate([g[1] for g in got])
        rep = _repeated(prints)
        for i in np.unique(owner[rep]).tolist():
            shared.setdefault(i, []).append(rows[rep[owner[rep] == i]])
        del got, prints, owner, rows
    found = list(run(lambda i: _rows_of(store, parts[i], np.sort(np.concatenate(shared[i])), ranked),
                     sorted(shared)))
    if found:
        cand = pa.concat_tables(found)
        dup = duplicate_rows({c: cand[c].chunks for c in keys}, keys, fingerprints(cand, keys))
        found = [cand.take(pa.array(dup))] if len(dup) else []
    if not found:
        staging.write_collisions(store, month, pa.table({"_part": pa.array([], pa.int32())}))
        return {"rows": 0, "keys": 0, "losers": 0, "examples": []}
    rows, first_of_group = winner.first_of_each_key(pa.concat_tables(found), keys, order, then=("_part", "_row"))
    losers = rows.filter(pa.array(~first_of_group)).select([*columns, "_part", "_row"])
    return {"rows": rows.num_rows, "keys": int(first_of_group.sum()), "losers": losers.num_rows,
            "losers_file": staging.write_collisions(store, month, losers),
            "winner_rule": winner.describe(cfg), "examples": _examples(cfg, rows, first_of_group)}

"""What a load task sends: its task, the rows of its Parquet part kept (collision losers and expired rows
counted, not sent), what DynamoDB would refuse (quarantined before sending), and the batches of <= 25 distinct
keys with the ticket each carries (rows [start, end) of the part, for the low-water mark).

Shared by the load stage and catch-up (a catch-up window's part has puts and deletes, in the `op` column)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import capacity, expiry, items, mapping, staging
from etl.config import Config
from etl.engine import TaskContext
from etl.errors import EtlError


class IndexSpec(NamedTuple):
    """A global secondary index as the load needs it: a write reaches it when the item has every key
    attribute; it is charged for the projected attributes (None: ALL)."""

    name: str
    keys: tuple[str, ...]
    projected: tuple[str, ...] | None


def index_specs(desc: dict[str, Any], table_keys: list[str]) -> tuple[IndexSpec, ...]:
    out = []
    for g in capacity.gsis(desc):
        keys = tuple(k["AttributeName"] for k in g["KeySchema"])
        proj = g.get("Projection") or {}
        kind = proj.get("ProjectionType", "ALL")
        projected = None if kind == "ALL" else tuple(dict.fromkeys(
            [*table_keys, *keys, *(proj.get("NonKeyAttributes") or [] if kind == "INCLUDE" else [])]))
        out.append(IndexSpec(g["IndexName"], keys, projected))
    return tuple(out)


def write_units(batch: pa.RecordBatch, sizes: np.ndarray, indexes: tuple[IndexSpec, ...]) -> dict[str, int]:
    """The write units `batch` costs: "" for the table (ceil(size / 1 KB) per item), and each index's."""
    out = {"": int(np.maximum(1, -(-sizes // 1024)).sum())}
    names = set(batch.schema.names)
    for ix in indexes:
        if not set(ix.keys) <= names:
            out[ix.name] = 0  # no item carries the index's key: never written there
            continue
        reached = np.ones(batch.num_rows, dtype=bool)
        for k in ix.keys:
            reached &= np.asarray(pc.is_valid(batch.column(k)).to_numpy(zero_copy_only=False), dtype=bool)
        cols = [c for c in (ix.projected or batch.schema.names) if c in names]
        isz = items.item_sizes(batch.select(cols)) if ix.projected else sizes
        out[ix.name] = int(np.where(reached, np.maximum(1, -(-isz // 1024)), 0).sum())
    return out


@dataclass(frozen=True, kw_only=True)
class WriteTarget:
    """What every part task of one writing run shares: the table, the cut-off for expired rows, the run."""

    table: str
    now: int  # rows whose TTL is at or before this are expired
    include_expired: bool
    dry_run: bool = False
    deadline: float | None = None  # wall-clock time.time()
    indexes: tuple[IndexSpec, ...] = ()
    budget_wcu: float = 0.0  # the budget's full rate, for progress (what the task attains against it)
    destination: tuple[str, str] = ("", "")  # the table's ARN and creation time, recorded with the progress
    key_types: tuple[tuple[str, str], ...] = ()  # the table's key attributes and types (checked before sending)
    run: tuple[str, float] = ("", 0.0)  # this run's id and start (time.time())


@dataclass(frozen=True, kw_only=True)
class LoadPartTask:
    """One Parquet part to write into the destination: a month's transformed part, or a catch-up window's
    changes (puts and deletes; no collision losers apply: `apply_losers=False`)."""

    month: str
    part: int
    key: str  # the Parquet part
    rows: int
    transform_run: str
    target: WriteTarget
    checkpoint: str  # written once every item is acknowledged
    progress: str  # the low-water mark while it loads
    rejected: str  # the quarantine file
    apply_losers: bool = True  # drop the rows the transform's collision check lost


@dataclass
class Counters:
    written: int = 0
    deletes: int = 0  # of `written`: a catch-up part's deletes
    skipped_expired: int = 0
    deduplicated: int = 0
    quarantined: int = 0
    wcu: float = 0.0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    wcu_by: dict[str, float] = field(default_factory=dict)  # dry run: estimated units, "" the table
    wcu_indexes: dict[str, float] = field(default_factory=dict)  # consumed on each GSI (within `wcu`)


@dataclass
class _Ticket:
    """Rows [start, end) of a part: the items of one batch as first read, and the rows before them that were not
    sent (deduplicated, expired, quarantined before sending). Done when every item is acknowledged or refused.
    The part's low-water mark is the start of its oldest ticket not done: every row below it is accounted for,
    whatever order the batches were answered in."""

    start: int
    end: int
    skipped: dict[str, int]  # skipped_expired, deduplicated, quarantined (before sending), deletes (of the items)
    pending: int = 1  # its requests not answered for good: a retry replaces one, a split makes two
    written: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)  # quarantine records of items DynamoDB refused


@dataclass
class _Batch:
    puts: list[bytes]
    cost: float  # estimated units: ceil(size / 1 KB) per item
    attempt: int = 0
    rows: list[int] = field(default_factory=list)  # each put's row in the part (empty: not known)
    deletes: int = 0
    ticket: _Ticket | None = None


BELOW = ("written", "skipped_expired", "deduplicated", "quarantined", "deletes")
RECONCILED = ("written", "skipped_expired", "deduplicated", "quarantined")


class _Batches:
    """Accumulates puts into batches of <= 25 items with distinct keys, under the request size limit."""

    def __init__(self) -> None:
        self.puts: list[bytes] = []
        self.rows: list[int] = []
        self.cost = 0.0
        self.keys: set[tuple[Any, ...]] = set()
        self.bytes = 0
        self.deletes = 0

    def add(self, put: bytes, size: int, key: tuple[Any, ...], row: int, delete: bool = False) -> _Batch | None:
        """Add a put; returns the batch it closed, if any."""
        full = len(self.puts) == items.MAX_BATCH or self.bytes + len(put) > items.MAX_REQUEST_BYTES - 4096
        out = self.flush() if key in self.keys or full else None
        self.puts.append(put)
        self.rows.append(row)
        self.cost += max(1, -(-size // 1024))
        self.keys.add(key)
        self.bytes += len(put)
        self.deletes += delete
        return out

    def flush(self) -> _Batch | None:
        out = _Batch(self.puts, self.cost, rows=self.rows, deletes=self.deletes) if self.puts else None
        self.puts, self.rows, self.cost, self.keys, self.bytes, self.deletes = [], [], 0.0, set(), 0, 0
        return out


def _kept(rb: pa.RecordBatch, row0: int, losers: np.ndarray | None, ttl_col: str | None,
          target: WriteTarget, deletes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which rows of a record batch to write, which were collision losers and which expired (puts only)."""
    n = rb.num_rows
    dedup = np.zeros(n, dtype=bool)
    if losers is not None:
        dedup = np.isin(np.arange(row0, row0 + n), losers)
    keep = ~dedup
    expired = np.zeros(n, dtype=bool)
    if ttl_col and not target.include_expired:
        expired = keep & expiry.expired(rb.column(ttl_col), target.now)
        if deletes is not None:
            expired &= ~deletes
        keep &= ~expired
    return keep, dedup, expired

def _plain(v: Any) -> Any:
    """A key value as the quarantine file holds it (JSON: numbers that are not integers as text, bytes in base64)."""
    if isinstance(v, Decimal | float):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


MAX_KEY_BYTES = (2048, 1024)  # DynamoDB's limits on a partition key value and a sort key value
KEY_KINDS = {"S": (pa.types.is_string, pa.types.is_large_string),
             "N": (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal),
             "B": (pa.types.is_binary, pa.types.is_large_binary)}


def _check_key_types(schema: pa.Schema, task: LoadPartTask) -> None:
    """A key column of another type than the table's key is every item refused: the part fails, with why."""
    for name, kind in task.target.key_types:
        if name not in schema.names:
            raise EtlError(f"load {task.month} part {task.part}: the Parquet has no column {name}, a key of "
                           f"{task.target.table}", hint="transform the month again with the current mapping")
        t = schema.field(name).type
        if not any(f(t) for f in KEY_KINDS.get(kind, ())):
            raise EtlError(f"load {task.month} part {task.part}: key {name} is {t} in the Parquet, but "
                           f"{task.target.table} keys it as {kind}: DynamoDB would refuse every item",
                           hint="fix the mapping ([destination] keys, the transform's types) or point at the "
                                "right table")


def _refusals(sel: pa.RecordBatch, sizes: np.ndarray, deletes: np.ndarray,
              keys: list[str]) -> dict[int, tuple[str, str]]:
    """Items DynamoDB would refuse, found before sending: row in `sel` -> (reason, message). What a message
    says is sizes and names, never a value."""
    out: dict[int, tuple[str, str]] = {}
    for j in np.flatnonzero((sizes > items.MAX_ITEM_BYTES) & ~deletes).tolist():
        out[j] = ("item_too_large", f"{int(sizes[j]):,} bytes > 400 KB")
    for pos, name in enumerate(keys):
        col = sel.column(name)
        what = "partition key" if pos == 0 else "sort key"
        for j in np.flatnonzero(np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)).tolist():
            out.setdefault(j, ("missing_key", f"{what} {name} has no value"))
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or \
                pa.types.is_large_binary(t):
            lengths = np.asarray(pc.fill_null(pc.binary_length(col), -1).to_numpy(zero_copy_only=False))
            for j in np.flatnonzero(lengths == 0).tolist():
                out.setdefault(j, ("empty_key", f"{what} {name} is empty"))
            limit = MAX_KEY_BYTES[min(pos, 1)]
            for j in np.flatnonzero(lengths > limit).tolist():
                out.setdefault(j, ("key_too_long", f"{what} {name} is {int(lengths[j]):,} bytes, over DynamoDB's "
                                                   f"{limit:,}"))
        elif pa.types.is_floating(t):
            finite = np.asarray(pc.fill_null(pc.is_finite(col), True).to_numpy(zero_copy_only=False), dtype=bool)
            for j in np.flatnonzero(~finite).tolist():
                out.setdefault(j, ("key_not_a_number", f"{what} {name} is NaN or infinite"))
    return out


@dataclass
class Selected:
    """One record batch of a part, judged by the load's rules: which rows are sent (`send`: kept, fresh and not
    quarantined), as what (`puts`: a put or delete fragment per kept row), and what is not sent (counted in
    `counts`, over the record batch's rows at or above the resume point)."""

    row0: int  # the record batch's first row in the part
    n: int
    idx: np.ndarray  # the kept rows' positions in the record batch
    sel: pa.RecordBatch  # the kept rows
    sizes: np.ndarray  # each kept row's item size (a delete: 1)
    puts: list[bytes]  # each kept row's `{"PutRequest":...}` or `{"DeleteRequest":...}` fragment
    deletes: np.ndarray  # which kept rows are deletes
    fresh: np.ndarray  # the record batch's rows at or above the resume point
    bad: np.ndarray  # the record batch's rows quarantined before sending
    counts: dict[str, np.ndarray]  # deduplicated, skipped_expired, quarantined: masks over the record batch
    key_values: list[tuple[Any, ...]]  # each kept row's key

    @property
    def send(self) -> list[bool]:
        """Per kept row: sent (fresh and not quarantined)."""
        return list((self.fresh & ~self.bad)[self.idx].tolist())


def select(cfg: Config, store: staging.Store, task: LoadPartTask, ctx: TaskContext, c: Counters,
           quarantine: list[bytes], start: int = 0) -> Iterator[Selected]:
    """The part's rows by record batch, judged as BatchWriteItem and bulk put both write them: collision losers
    and expired rows left out (counted), what DynamoDB would refuse quarantined (a line in `quarantine`, counted).
    Rows below `start` (a resumed part's low-water mark) are not counted; only their quarantine lines are made
    again (the same rows, the same rules, the same cut-off time)."""
    ttl_col = mapping.ttl_column(cfg)
    keys = mapping.key_columns(cfg)
    losers = None if not task.apply_losers else staging.read_losers(store, task.month).get(task.part)
    pf = pq.ParquetFile(pa.BufferReader(store.read(task.key)))
    schema = pf.schema_arrow
    _check_key_types(schema.remove(schema.get_field_index(mapping.OP)) if mapping.OP in schema.names else schema, task)
    row0 = 0
    for rb in pf.iter_batches(batch_size=10_000):
        n = rb.num_rows
        fresh = np.arange(row0, row0 + n) >= start
        is_del = np.zeros(n, dtype=bool)
        if mapping.OP in rb.schema.names:  # a catch-up part: puts and deletes, in one batch stream
            is_del = np.asarray(pc.fill_null(pc.equal(rb.column(mapping.OP), mapping.DELETE), False)
                                .to_numpy(zero_copy_only=False), dtype=bool)
            rb = rb.drop_columns([mapping.OP])
        keep, dedup, expired = _kept(rb, row0, losers, ttl_col, task.target, is_del)
        idx = np.flatnonzero(keep)  # the kept rows' positions in `rb`
        sel = rb.filter(pa.array(keep))
        sizes = items.item_sizes(sel)
        puts = items.to_puts(sel)
        sel_del = is_del[keep]
        dels = np.flatnonzero(sel_del)
        if len(dels):  # a delete costs 1 WCU per KB of the item it removes: estimated 1, settled by the reply
            for i, frag in zip(dels.tolist(), items.to_deletes(sel.take(pa.array(dels)), keys), strict=True):
                puts[i], sizes[i] = frag, 1
        refused = _refusals(sel, sizes, sel_del, keys)
        key_values = list(zip(*(sel.column(k).to_pylist() for k in keys), strict=True))
        bad = np.zeros(n, dtype=bool)
        for j, (reason, message) in refused.items():
            bad[idx[j]] = True
            quarantine.append(orjson.dumps({"reason": reason, "message": message, "row": row0 + int(idx[j]),
                                            "key": {k: _plain(v) for k, v in zip(keys, key_values[j], strict=True)}}))
        counts = {"deduplicated": dedup & fresh, "skipped_expired": expired & fresh, "quarantined": bad & fresh}
        c.deletes += int((sel_del & ~bad[keep] & fresh[keep]).sum())
        for k, mask in counts.items():
            setattr(c, k, getattr(c, k) + int(mask.sum()))
        ctx.progress(int(sum(int(m.sum()) for m in counts.values())))
        yield Selected(row0, n, idx, sel, sizes, puts, sel_del, fresh, bad, counts, key_values)
        row0 += n


def _read(cfg: Config, store: staging.Store, task: LoadPartTask, ctx: TaskContext, c: Counters,
          quarantine: list[bytes], start: int = 0) -> Iterator[_Batch]:
    """The part's batches to send, in row order, each with its ticket; counts what is not sent (and, in a dry
    run, what would be). Rows below `start` (a resumed part's low-water mark) are neither sent nor counted;
    only their quarantine lines are made again (the same rows, the same rules, the same cut-off time)."""
    batches = _Batches()
    end = 0  # the rows read so far
    tstart = start  # where the ticket being filled starts
    carried = {"deduplicated": 0, "skipped_expired": 0, "quarantined": 0}  # rows not sent, from `tstart` on

    def ticket(b: _Batch, end: int, counts: dict[str, int]) -> _Batch:
        b.ticket = _Ticket(tstart, end, {**counts, "deletes": b.deletes})
        return b

    for s in select(cfg, store, task, ctx, c, quarantine, start):
        n, row0 = s.n, s.row0
        end = row0 + n
        cum = {k: np.concatenate([[0], np.cumsum(mask)]) for k, mask in s.counts.items()}
        mark = min(max(tstart - row0, 0), n)  # this record batch's rows from here on are not carried yet
        if task.target.dry_run:
            fits = np.zeros(n, dtype=bool)
            fits[s.idx] = True
            fits &= ~s.bad & s.fresh
            sent = fits[s.idx]
            for k, v in write_units(s.sel.filter(pa.array(sent)), s.sizes[sent], task.target.indexes).items():
                c.wcu_by[k] = c.wcu_by.get(k, 0.0) + v
            c.written += int(fits.sum())
            ctx.progress(int(fits.sum()))
            continue
        send = s.send
        positions, size_list, delete_list = s.idx.tolist(), s.sizes.tolist(), s.deletes.tolist()
        for j, li in enumerate(positions):
            if not send[j]:
                continue
            done = batches.add(s.puts[j], size_list[j], s.key_values[j], row0 + li, delete_list[j])
            if done is not None:
                yield ticket(done, row0 + li, {k: carried[k] + int(cum[k][li] - cum[k][mark]) for k in carried})
                tstart, mark = row0 + li, li
                carried = dict.fromkeys(carried, 0)
        for k in carried:
            carried[k] += int(cum[k][n] - cum[k][mark])
    last = batches.flush()
    if last is not None:
        yield ticket(last, end, carried)

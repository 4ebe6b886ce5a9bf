"""The transform of a window's changes: change lines -> puts and deletes on the index, and the state after it.

A change line is `{"Metadata":{"WriteTimestampMicros":{"N":..}},"Keys":{..},"OldImage":{..},"NewImage":{..}}`
(a new item has no OldImage, a deleted one no NewImage). Each image is converted by the transform's own code
(`rows.convert_chunk` on `{"Item": image}` lines), so an image becomes exactly the row (or the filter, or the
quarantine reason) the full transform would have made of that item.

For every index key the window touches, its rows before the window are the staged month's rows for that key
(`transformed/month=M/*.parquet`, each as often as it occurs: two items may give the same row) or, once an
earlier window touched it, that window's rows file (a row as often as it is held). The changes are applied in
write-time order: the OldImage's row leaves its key, the NewImage's row joins its key. The key's winner is
chosen by the full transform's rule (`etl.winner`: the greatest OrderID, then the smallest row). A put is
emitted when the winner changed or appeared, a delete when the key has no row left (the item was deleted, or
its OrderID removed or emptied).

NEW_IMAGE view: the old row is not in the line. The item's key is its NewImage's (or, for a delete or a
filtered image, its Keys converted with the key columns alone); the change applies when that key holds at
most one row (that row is the item's), and is quarantined as `ambiguous_new_image` otherwise.

Counts reconcile and are checked: changes_in = before_sync + applied + filtered + rejected, and
keys_touched = puts + deletes + unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from isal import igzip

from etl import mapping, staging
from etl.config import Config
from etl.engine import TaskContext
from etl.errors import EtlError
from etl.mapping import DELETE, OP, PUT
from etl.transform.rows import convert_chunk
from etl.winner import winners

NONE = "_none"  # in a rows file: the key has no row left
AMBIGUOUS = "ambiguous_new_image"
Row = tuple[Any, ...]
Key = tuple[Any, ...]


@dataclass(frozen=True)
class ChangesTask:
    month: str
    window: int
    files: tuple[str, ...]  # the window's data file URIs, in manifest order
    view: str  # NEW_AND_OLD_IMAGES | NEW_IMAGE
    since_micros: int  # lines written before this are already in the state (skipped, counted)
    snapshot_parts: tuple[str, ...]  # the month's transformed Parquet keys
    previous_rows: tuple[str, ...]  # the rows files of the earlier windows, oldest first
    output: str
    rejected: str
    rows: str
    # lines written before this may already be in the snapshot (a stream's times are rounded down): their row
    # joins a key only if the key does not hold it yet, so replaying them changes nothing
    replay_until_micros: int = 0


def changes_schema(cfg: Config) -> pa.Schema:
    """The output columns (nullable: a delete carries the row it removes) and the operation."""
    return pa.schema([f.with_nullable(True) for f in mapping.output_schema(cfg)] + [pa.field(OP, pa.string(), False)])


def rows_schema(cfg: Config) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in mapping.output_schema(cfg)] + [pa.field(NONE, pa.bool_(), False)])


# --------------------------------------------------------------------------- reading change lines


@dataclass
class Change:
    ts: int
    file: int
    line_no: int
    raw: bytes
    uri: str
    keys: dict[str, Any]
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    old_out: tuple[str, Any] | None = None  # ("row", row) | ("filtered", reason) | ("rejected", (reason, message))
    new_out: tuple[str, Any] | None = None
    key: Key | None = None  # NEW_IMAGE: the item's index key when its new image gives none


def _open(uri: str, cfg: Config) -> Iterator[bytes]:
    with staging.open_uri(uri, cfg.staging) as raw:
        stream: Any = igzip.IGzipFile(fileobj=raw, mode="rb") if uri.endswith(".gz") else raw
        for line in stream:
            if line.strip():
                yield line.rstrip(b"\r\n")


def parse_line(raw: bytes, view: str) -> tuple[int, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """(write time in micros, Keys, OldImage, NewImage) of a change line; ValueError says why it is not one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "Item" in obj and "Keys" not in obj:
        raise ValueError("an `Item` line of a full export, not a change line of an incremental export")
    keys, old, new = obj.get("Keys"), obj.get("OldImage"), obj.get("NewImage")
    if not isinstance(keys, dict) or not keys:
        raise ValueError("no Keys object")
    for name, image in (("OldImage", old), ("NewImage", new)):
        if image is not None and not isinstance(image, dict):
            raise ValueError(f"{name} is not an object")
    if old is None and new is None and view != "NEW_IMAGE":
        raise ValueError("neither OldImage nor NewImage")
    _check_keys(keys, old, new)
    return _write_time(obj.get("Metadata")), keys, old, new


_MICROS = re.compile(r"^[0-9]{1,19}$")
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def _write_time(metadata: Any) -> int:
    """`Metadata.WriteTimestampMicros` as DynamoDB writes it (`{"N": "<digits>"}`): the order changes apply in, so
    anything else (a bare number, a fraction, a boolean) is not guessed at."""
    if not isinstance(metadata, dict):
        raise ValueError("Metadata is not an object" if metadata is not None else "no Metadata object")
    if "WriteTimestampMicros" not in metadata:
        raise ValueError("no Metadata.WriteTimestampMicros")
    value = metadata["WriteTimestampMicros"]
    n = value.get("N") if isinstance(value, dict) and len(value) == 1 else None
    if not isinstance(n, str) or not _MICROS.match(n):
        raise ValueError("Metadata.WriteTimestampMicros is not a whole number of microseconds as DynamoDB JSON "
                         '({"N": "<digits>"})')
    return int(n)


def _check_keys(keys: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """Each key attribute a DynamoDB JSON value of a key type (S, N or B, not empty), of the type the item's images
    hold it as: a key of another type is another item (NEW_IMAGE deletes find their index key by it)."""
    for name, value in keys.items():
        kind, v = next(iter(value.items())) if isinstance(value, dict) and len(value) == 1 else (None, None)
        if kind not in ("S", "N", "B"):
            raise ValueError(f"Keys.{name} is not a key attribute value in DynamoDB JSON ({{\"S\"|\"N\"|\"B\": ...}})")
        if not isinstance(v, str) or not v:
            raise ValueError(f"Keys.{name} is not a non-empty {kind} value")
        if kind == "N" and not _NUMBER.match(v):
            raise ValueError(f"Keys.{name} is not a number")
        if kind == "B" and not _is_base64(v):
            raise ValueError(f"Keys.{name} is not base64")
        for side, image in (("OldImage", old), ("NewImage", new)):
            held = image.get(name) if image is not None else None
            if isinstance(held, dict) and kind not in held:
                raise ValueError(f"Keys.{name} is of type {kind}, but the {side} holds it as {'/'.join(held) or '{}'}")


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- converting images


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _filter_reason(cfg: Config, image: dict[str, Any]) -> str | None:
    """The full transform's filter label for an image without a non-empty attribute it requires."""
    for name in cfg.transform.non_empty:
        if name not in image:
            return f"missing_{name}"
        if image[name] == {"S": ""}:
            return f"empty_{name}"
    return None


def convert_images(cfg: Config, images: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Each image -> ("row", row) | ("filtered", label) | ("rejected", (reason, message)), by `convert_chunk`.

    `convert_chunk` says which lines it rejected (by their bytes; a line's outcome depends only on its bytes)
    but not which it filtered, so the images that a non-empty filter will drop are converted apart from the
    rest: of those, every line not rejected is filtered; of the rest, every line not rejected is a row, in
    order. A hook runs on each row alone, so a row it drops is known too."""
    schema, out_schema = mapping.parse_schema(cfg), mapping.output_schema(cfg)
    hook = mapping.load_hook(cfg.transform.hook)
    out: list[tuple[str, Any]] = [("filtered", "")] * len(images)
    groups: dict[bool, list[int]] = {True: [], False: []}
    reasons: dict[int, str] = {}
    for i, image in enumerate(images):
        why = _filter_reason(cfg, image)
        if why:
            reasons[i] = why
        groups[why is None].append(i)
    for kept, idx in groups.items():
        if not idx:
            continue
        lines = [orjson.dumps({"Item": images[i]}, default=_json_default) for i in idx]
        result = convert_chunk(b"\n".join(lines) + b"\n", cfg, schema, out_schema)
        rejected = {line: (reason, message) for reason, message, line in result.rejected}
        rows = iter(result.table.to_pylist())
        for i, line in zip(idx, lines, strict=True):
            if line in rejected:
                out[i] = ("rejected", rejected[line])
            elif not kept:
                out[i] = ("filtered", reasons[i])
            else:
                row = next(rows)
                if hook is not None:
                    one, dropped = mapping.apply_hook(hook, cfg, pa.Table.from_pylist([row], out_schema), out_schema)
                    if dropped:
                        out[i] = ("filtered", "hook")
                        continue
                    row = one.to_pylist()[0]
                out[i] = ("row", tuple(row[n] for n in out_schema.names))
    return out


def item_keys(cfg: Config, keys: list[dict[str, Any]]) -> list[Key | None]:
    """Each item's index key from its Keys alone (the key columns' conversion), None where they do not give it."""
    key_cols = mapping.key_columns(cfg)
    narrow = dataclasses.replace(cfg, transform=dataclasses.replace(
        cfg.transform, columns=tuple(c for c in cfg.transform.columns if c.name in key_cols), non_empty=(), hook=None))
    order = [c.name for c in narrow.transform.columns]
    return [tuple(o[1][order.index(k)] for k in key_cols) if o[0] == "row" else None
            for o in convert_images(narrow, keys)]


# --------------------------------------------------------------------------- the state of touched keys


def _key_text(key: Key) -> str:
    return "\x1f".join(str(v) for v in key)


def _key_texts(table: pa.Table, keys: list[str]) -> pa.Array:
    cols = [pc.cast(table[k], pa.string()) for k in keys]
    joined = pc.binary_join_element_wise(*cols, "\x1f") if len(cols) > 1 else cols[0]
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _touched_rows(store: staging.Store, key: str, keys: list[str], wanted: pa.Array,
                  columns: list[str]) -> list[dict[str, Any]]:
    table = pq.read_table(pa.BufferReader(store.read(key)))
    if table.num_rows == 0:
        return []
    hit = pc.is_in(_key_texts(table, keys), value_set=wanted)
    return list(table.filter(hit).select(columns).to_pylist())


def state_before(cfg: Config, store: staging.Store, task: ChangesTask,
                 touched: set[Key]) -> dict[Key, Counter[Row]]:
    """Every touched key's rows (with how many items hold each) before the window: the snapshot's, replaced by the
    latest earlier window's."""
    names = mapping.output_schema(cfg).names
    keys = mapping.key_columns(cfg)
    pos = [names.index(k) for k in keys]
    wanted = pa.array(sorted(_key_text(k) for k in touched), pa.string())
    state: dict[Key, Counter[Row]] = {k: Counter() for k in touched}
    for part in task.snapshot_parts:
        for r in _touched_rows(store, part, keys, wanted, names):
            row = tuple(r[n] for n in names)
            state[tuple(row[p] for p in pos)][row] += 1
    for rows_key in task.previous_rows:
        replaced: dict[Key, Counter[Row]] = {}
        for r in _touched_rows(store, rows_key, keys, wanted, [*names, NONE]):
            row = tuple(r[n] for n in names)
            got = replaced.setdefault(tuple(row[p] for p in pos), Counter())
            if not r[NONE]:
                got[row] += 1
        state.update(replaced)
    return state


# --------------------------------------------------------------------------- the task


@dataclass
class _Counts:
    changes_in: int = 0
    before_sync: int = 0
    applied: int = 0
    filtered: int = 0
    rejected: int = 0
    filtered_by: dict[str, int] = field(default_factory=dict)
    rejected_by: dict[str, int] = field(default_factory=dict)

    def filter(self, label: str) -> None:
        self.filtered += 1
        self.filtered_by[label] = self.filtered_by.get(label, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1


def read_changes(cfg: Config, task: ChangesTask, counts: _Counts,
                 quarantine: list[bytes]) -> list[Change]:
    """The window's changes written since `since_micros`, in write-time order (file order breaks ties, so a
    stream shard's order is kept); malformed lines quarantined."""
    changes: list[Change] = []
    for f, uri in enumerate(task.files):
        for n, raw in enumerate(_open(uri, cfg)):
            counts.changes_in += 1
            try:
                ts, keys, old, new = parse_line(raw, task.view)
            except ValueError as exc:
                counts.reject("malformed_line")
                quarantine.append(_quarantined("malformed_line", str(exc), uri, raw))
                continue
            if ts < task.since_micros:
                counts.before_sync += 1
                continue
            changes.append(Change(ts, f, n, raw, uri, keys, old if task.view != "NEW_IMAGE" else None, new))
    changes.sort(key=lambda c: (c.ts, c.file, c.line_no))
    return changes


def _quarantined(reason: str, message: str, uri: str, raw: bytes) -> bytes:
    return orjson.dumps({"reason": reason, "message": message, "file": uri,
                         "line": raw.decode("utf-8", "replace")})


def _convert(cfg: Config, changes: list[Change], view: str) -> None:
    images: list[dict[str, Any]] = []
    slots: list[tuple[Change, str]] = []
    for c in changes:
        for side, image in (("old_out", c.old), ("new_out", c.new)):
            if image is not None:
                images.append(image)
                slots.append((c, side))
    for (c, side), outcome in zip(slots, convert_images(cfg, images), strict=True):
        setattr(c, side, outcome)
    if view == "NEW_IMAGE":
        lost = [c for c in changes if c.new_out is None or c.new_out[0] != "row"]
        for c, key in zip(lost, item_keys(cfg, [c.keys for c in lost]), strict=True):
            c.key = key


def run_task(cfg: Config, task: ChangesTask, ctx: TaskContext) -> dict[str, Any]:
    """One window's changes -> `changes/month=M/window-NNNNN.parquet` (puts and deletes), the window's rows file
    and its quarantine; returns the counts."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    names = mapping.output_schema(cfg).names
    key_pos = [names.index(k) for k in mapping.key_columns(cfg)]
    order = names.index(o) if (o := mapping.order_column(cfg)) else None
    counts = _Counts()
    quarantine: list[bytes] = []
    changes = read_changes(cfg, task, counts, quarantine)
    ctx.check()
    _convert(cfg, changes, task.view)

    def key_of(row: Row) -> Key:
        return tuple(row[p] for p in key_pos)

    touched: set[Key] = set()
    for c in changes:
        for out in (c.old_out, c.new_out):
            if out is not None and out[0] == "row":
                touched.add(key_of(out[1]))
        if c.key is not None:
            touched.add(c.key)
    state = state_before(cfg, store, task, touched)
    before = winners({k: +rows for k, rows in state.items()}, order)
    ctx.check()
    for c in changes:
        old_row = c.old_out[1] if c.old_out is not None and c.old_out[0] == "row" else None
        new_row = c.new_out[1] if c.new_out is not None and c.new_out[0] == "row" else None
        effect = False
        if task.view == "NEW_IMAGE":
            key = key_of(new_row) if new_row is not None else c.key
            held = +state.get(key, Counter()) if key is not None else Counter()
            others = sum(n for r, n in held.items() if r != new_row)
            if key is None or others > 1 or (others and new_row is not None and held[new_row]):
                why = ("its Keys do not give the index key" if key is None else
                       f"the key holds {sum(held.values())} rows and the view NEW_IMAGE does not say which was "
                       "this item's")
                counts.reject(AMBIGUOUS)
                quarantine.append(_quarantined(AMBIGUOUS, why, c.uri, c.raw))
                continue
            effect = bool(held) or new_row is not None
            state[key] = Counter({new_row: 1}) if new_row is not None else Counter()
        else:
            replay = c.ts < task.replay_until_micros  # may already be in the snapshot: idempotent
            if old_row is not None:
                held = state[key_of(old_row)]
                if held[old_row] > 0:
                    held[old_row] -= 1
                effect = True
            if new_row is not None:
                held = state[key_of(new_row)]
                if not (replay and held[new_row] > 0):
                    held[new_row] += 1
                effect = True
        if c.new_out is not None and c.new_out[0] == "rejected":
            reason, message = c.new_out[1]
            counts.reject(reason)  # the item has no row now, as a fresh backfill would have none: removal applied
            quarantine.append(_quarantined(reason, message, c.uri, c.raw))
        elif effect:
            counts.applied += 1
        else:
            decided = c.new_out or c.old_out
            counts.filter(str(decided[1]) if decided is not None and decided[0] == "filtered" else "no_row")
    ops: list[tuple[Row, str]] = []
    unchanged = 0
    after = winners({k: +rows for k, rows in state.items()}, order)
    for key in sorted(state, key=_key_text):
        now, was = after[key], before[key]
        if now is not None and now != was:
            ops.append((now, PUT))
        elif now is None and was is not None:
            ops.append((was, DELETE))
        else:
            unchanged += 1
    puts = sum(1 for _, op in ops if op == PUT)
    result = {"window": task.window, **dataclasses.asdict(counts), "keys_touched": len(state), "puts": puts,
              "deletes": len(ops) - puts, "unchanged": unchanged, "output": task.output, "rows": len(ops),
              "rows_file": task.rows, "rejected_key": task.rejected if quarantine else None}
    _check(result)
    _write(cfg, store, task, ops, state, quarantine)
    ctx.progress(counts.changes_in)
    return result


def _check(r: dict[str, Any]) -> None:
    if r["changes_in"] != r["before_sync"] + r["applied"] + r["filtered"] + r["rejected"]:
        raise EtlError(f"catch-up window {r['window']}: changes do not reconcile: {r}")
    if r["keys_touched"] != r["puts"] + r["deletes"] + r["unchanged"]:
        raise EtlError(f"catch-up window {r['window']}: keys touched do not reconcile: {r}")


def _write(cfg: Config, store: staging.Store, task: ChangesTask, ops: list[tuple[Row, str]],
           state: dict[Key, Counter[Row]], quarantine: list[bytes]) -> None:
    names = mapping.output_schema(cfg).names
    key_pos = [names.index(k) for k in mapping.key_columns(cfg)]
    table = pa.Table.from_pylist([{**dict(zip(names, row, strict=True)), OP: op} for row, op in ops],
                                 changes_schema(cfg))
    _write_parquet(cfg, store, task.output, table)
    records: list[dict[str, Any]] = []
    for key in sorted(state, key=_key_text):
        rows = sorted((+state[key]).elements(), key=lambda r: tuple((v is None, "" if v is None else v) for v in r))
        records += [{**dict(zip(names, r, strict=True)), NONE: False} for r in rows]
        if not rows:
            records.append({**{names[p]: v for p, v in zip(key_pos, key, strict=True)}, NONE: True})
    _write_parquet(cfg, store, task.rows, pa.Table.from_pylist(records, rows_schema(cfg)))
    if quarantine:
        store.write(task.rejected, gzip.compress(b"\n".join(quarantine) + b"\n", mtime=0))
    else:
        store.delete(task.rejected)


def _write_parquet(cfg: Config, store: staging.Store, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, **mapping.parquet_options(cfg))
    store.write(key, buf.getvalue())

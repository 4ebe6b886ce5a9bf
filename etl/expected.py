"""What the index must hold of a loaded month: one rule, asked by both verifies (the read-back and the export).

A month's load meant to write each transformed part's rows, minus the rows that lost a key collision and, when
the load skipped them, minus the rows already expired at its time. After a catch-up of that load, the keys its
windows touched hold their final state instead (`_state/month=M/catchup/final.parquet`): a put is the key's
final winner, a delete a key that must be absent; the parts' rows of those keys are not expected any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import expiry, mapping, staging
from etl.config import Config
from etl.errors import StageNotReady


@dataclass(frozen=True, kw_only=True)
class Source:
    """One file of what a month's load (and the catch-up after it) meant: a transformed part, or the catch-up's
    final state (`part` None)."""

    month: str
    key: str
    part: int | None
    catchup: str  # the catch-up's final.parquet when windows were applied after the load, else ""
    include_expired: bool
    expired_before: int  # the load's time: rows whose TTL is at or before it were skipped (unless included)


def catchup_final(store: staging.Store, month: str, load: dict[str, Any]) -> str:
    """The month's catch-up final state, when a catch-up was applied to this very load (else "")."""
    c = staging.read_manifest(store, month, "catchup")
    key = staging.catchup_final_key(month)
    return key if c and c.get("load_run") == load.get("run_id") and store.exists(key) else ""


def sources(store: staging.Store, month: str, load: dict[str, Any]) -> list[Source]:
    """Every file of the month's expected state: its transformed parts, then its catch-up final state."""
    t = staging.read_manifest(store, month, "transform") or {}
    final = catchup_final(store, month, load)
    common: dict[str, Any] = {"month": month, "include_expired": bool(load.get("include_expired")),
                              "expired_before": int(load.get("expired_before", 0)), "catchup": final}
    out = [Source(key=p["output"], part=int(p["part"]), **common) for p in t.get("parts", [])]
    if final:
        out.append(Source(key=final, part=None, **common))
    return out


def key_texts(table: pa.Table, keys: list[str]) -> pa.Array:
    """Each row's key as one string (columns as text, joined by a unit separator): equal keys, equal texts."""
    cols = [pc.cast(table[k], pa.string()) for k in keys]
    return pc.binary_join_element_wise(*cols, "\x1f") if len(cols) > 1 else cols[0]


def _mask(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)


def expected(cfg: Config, store: staging.Store, src: Source) -> tuple[pa.Table, pa.Table, int]:
    """(the rows that must be in the table, the keys that must not be, the file's row count). The rows have the
    output schema's columns; the absent keys only the key columns (the catch-up's deletes)."""
    table = pq.read_table(pa.BufferReader(store.read(src.key)))
    keys = mapping.key_columns(cfg)
    keep = np.ones(table.num_rows, dtype=bool)
    absent = table.schema.empty_table().select(keys)
    if src.part is None:  # the catch-up's final state: its puts are expected, its deletes absent
        puts = _mask(pc.equal(table[mapping.OP], mapping.PUT))
        absent = table.filter(pa.array(~puts)).select(keys)
        keep &= puts
        table = table.drop_columns([mapping.OP])
    else:
        if src.catchup:  # keys a catch-up window touched hold their final state, expected from that file
            final = pq.read_table(pa.BufferReader(store.read(src.catchup)), columns=keys)
            keep &= ~_mask(pc.is_in(key_texts(table, keys), value_set=key_texts(final, keys)))
        losers = staging.read_losers(store, src.month).get(src.part)
        if losers is not None:
            keep[losers] = False
    ttl_col = mapping.ttl_column(cfg)
    if ttl_col and not src.include_expired:
        keep &= ~expiry.expired(table[ttl_col], src.expired_before)
    return table.filter(pa.array(keep)), absent, table.num_rows


def loaded_into(store: staging.Store, month: str, destination: staging.Destination | None) -> dict[str, Any]:
    """The month's committed load, refused when there is none or it went to another table than `destination`
    (the table as described now: one dropped and created again is another table). Both verifies start here."""
    load = staging.read_manifest(store, month, "load")
    if load is None:
        raise StageNotReady(f"month {month} has no committed load", hint=f"run `etl load --month {month}` first")
    if destination is not None and not destination.holds(load):
        raise StageNotReady(f"month {month} is not loaded into {destination.describe()}: its load went to "
                            f"{staging.elsewhere(load)}", hint=f"run `etl load --month {month}` first")
    return load

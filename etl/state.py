"""The typed records a stage keeps in `_state/` while it works, each knowing what it is valid for.

A record is a JSON object in the staging store; what a rerun may trust of it is decided here, once per kind,
so a stage never reads a checkpoint's fields to decide by itself:

- `TransformPartCheckpoint`: a transformed part, valid for the export run, transform config and tool version
  that made it (and while its output exists);
- `LoadPartCheckpoint`: a loaded part, valid for the transform run it loaded and the very destination table
  (its ARN and creation time: a table dropped and created again is another table);
- `LoadProgress`: a part's low-water mark while it loads, valid for the same transform run, rows, table and
  expiry choice, and only when its counts reconcile with its mark;
- `ScanSegment`: a scan export's segment checkpoint, valid for the same source table, source config and
  segment count, and while its files exist;
- `BulkPutRecord`: a month's bulk put (its input run and operations), valid for the transform run, the very
  destination table and the expiry choice it was written for;
- `BulkPutPart`: one part's bulk put input objects, valid for the same input run;
- `CatchupWindow`: a catch-up window's record, valid for the steps it has passed (captured, transformed,
  loaded).

Manifests (a stage's committed output) are judged by `etl.freshness`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from etl import staging

R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    body: dict[str, Any]

    @classmethod
    def read(cls: type[R], store: staging.Store, key: str) -> R | None:
        return cls(dict(store.read_json(key))) if store.exists(key) else None

    def get(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default)


@dataclass(frozen=True)
class TransformPartCheckpoint(Record):
    def valid_for(self, upstream_run: str, config_hash: str, tool_version: str, input_uri: str,
                  output_exists: bool) -> bool:
        return output_exists and (self.get("upstream_run"), self.get("config_hash"), self.get("tool_version"),
                                  self.get("input")) == (upstream_run, config_hash, tool_version, input_uri)


@dataclass(frozen=True)
class LoadPartCheckpoint(Record):
    def valid_for(self, transform_run: str, destination: staging.Destination) -> bool:
        return self.get("transform_run") == transform_run and destination.holds(self.body)


@dataclass(frozen=True)
class LoadProgress(Record):
    RECONCILED: ClassVar[tuple[str, ...]] = ("written", "skipped_expired", "deduplicated", "quarantined")

    def valid_for(self, transform_run: str, rows: int, destination: tuple[str, str], include_expired: bool) -> bool:
        same = (self.get("transform_run") == transform_run and self.get("rows") == rows
                and (self.get("table_arn"), self.get("table_created")) == destination
                and self.get("include_expired") == include_expired)
        below = self.get("below") or {}
        return same and sum(int(below.get(k, 0)) for k in self.RECONCILED) == int(self.get("low_water_mark", -1))


@dataclass(frozen=True)
class ScanSegment(Record):
    def valid_for(self, identity: dict[str, Any], export_id: str, files_exist: bool) -> bool:
        return (files_exist and self.get("export_id") == export_id
                and {k: self.get(k) for k in identity} == identity)


@dataclass(frozen=True)
class BulkPutRecord(Record):
    """A month's bulk put. An operation's ARN is recorded before it is polled, so a rerun re-attaches to it."""

    TERMINAL: ClassVar[tuple[str, ...]] = ("COMPLETED", "COMPLETED_WITH_ERRORS", "CANCELLED", "FAILED")

    def valid_for(self, transform_run: str, destination: tuple[str, str], include_expired: bool) -> bool:
        """Whether a rerun may go on with this record's input and operations: made from the same transform, for
        the very same table (ARN and creation time), with the same expiry choice, and not ended for good (a
        committed, failed or cancelled bulk put starts over with new input)."""
        same = (self.get("transform_run") == transform_run
                and (self.get("table_arn"), self.get("table_created")) == destination
                and self.get("include_expired") == include_expired)
        ended = any(op.get("status") in ("FAILED", "CANCELLED") for op in self.get("operations") or [])
        return same and not ended and not self.get("committed")


@dataclass(frozen=True)
class BulkPutPart(Record):
    def valid_for(self, run: str) -> bool:
        return self.get("run") == run


@dataclass(frozen=True)
class CatchupWindow(Record):
    PHASES: ClassVar[tuple[str, ...]] = ("captured", "transformed", "loaded")

    def valid_for(self, step: str) -> bool:
        """Whether the window has passed `step` (captured, transformed or loaded): a rerun does not redo it."""
        phase = self.get("phase")
        return phase in self.PHASES and self.PHASES.index(phase) >= self.PHASES.index(step)


def bulk_put_progress(store: staging.Store, month: str) -> str | None:
    """A month's bulk put operations not committed yet, as last polled: status, counts, rate and ETA (for
    `etl status`; DynamoDB goes on with an operation while nothing polls it)."""
    r = BulkPutRecord.read(store, staging.bulkput_state_key(month))
    if r is None or r.get("committed"):
        return None
    lines = []
    for op in r.get("operations") or []:
        if not op.get("arn"):
            continue
        eta = f", ETA {op['eta_s']:,.0f} s" if op.get("eta_s") is not None else ""
        lines.append(f"bulk put operation {op['operation']} {op.get('status')}: {op.get('processed', 0):,} of "
                     f"{op.get('items', 0):,} items processed, {op.get('failed', 0):,} failed, "
                     f"{op.get('rate_items_per_s', 0):,} items/s{eta} (polled {op.get('polled_at')}; {op['arn']})")
    return "\n".join(lines) or None

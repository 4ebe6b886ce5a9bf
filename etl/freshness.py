"""One rule for "is this stage's output current?", asked by the Runner (skip what is current) and by `etl status`
(show what is not), so the two never disagree.

A stage's output is current when its manifest is committed and it was made
- from the previous stage's current output (`upstream_run` is that manifest's `run_id`),
- with what shapes it unchanged (the transform's config hash: the mapping, the TTL),
- for the tables it is about: the month's source table as it is now (an export of a table dropped and created
  again is of another table), the destination as it is now (a load into another table, or into this name before
  it was dropped and created again, is no load of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etl import staging

# the order of the backfill's stages; catch-up comes after the load, beside verify
ORDER = ("export", "transform", "load", "verify")
UPSTREAM = {"transform": "export", "load": "transform", "verify": "load", "catchup": "load"}
# what shapes a stage's output, as config sections: a change makes the output stale
SHAPED_BY = {"transform": ("transform",)}


@dataclass(frozen=True)
class Current:
    """What the outputs must have been made for, now."""

    hashes: dict[str, str] = field(default_factory=dict)  # stage -> hash of the config sections that shape it
    table: str | None = None  # the destination's name (from the config)
    destination: staging.Destination | None = None  # the destination as described now (None: not described)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # month -> source (ARN, created), described

    @classmethod
    def of(cls, cfg: Any, destination: staging.Destination | None = None,
           sources: dict[str, tuple[str, str]] | None = None) -> Current:
        return cls({s: cfg.hash_of(*sections) for s, sections in SHAPED_BY.items()}, cfg.destination_table(),
                   destination, dict(sources or {}))


@dataclass(frozen=True)
class Verdict:
    state: str  # done | stale | absent | failed (a committed verify that found differences)
    why: str = ""
    manifest: dict[str, Any] | None = None

    @property
    def current(self) -> bool:
        return self.state == "done"


def _elsewhere(m: dict[str, Any], now: Current) -> str:
    if now.destination is not None and not now.destination.holds(m):
        return f"loaded into {staging.elsewhere(m)}, not into {now.destination.describe()}"
    if now.destination is None and now.table and m.get("table") and m.get("table") != now.table:
        return f"loaded into {m.get('table')}, not into {now.table}"
    return ""


def verdict(store: staging.Store, month: str, stage: str, now: Current) -> Verdict:
    """Whether `stage`'s committed output for `month` is current, and why not."""
    m = staging.read_manifest(store, month, stage)
    if m is None:
        return Verdict("absent")
    if stage == "export":
        source = now.sources.get(month)
        if source and m.get("table_created") and (m.get("table_arn"), m.get("table_created")) != source:
            return Verdict("stale", f"exported from {m.get('table_arn')} created {m.get('table_created')}; the "
                                    f"source table now was created {source[1]} (dropped and created again)", m)
        return Verdict("done", "", m)
    up = staging.read_manifest(store, month, UPSTREAM[stage])
    if up is None or m.get("upstream_run") != up.get("run_id"):
        return Verdict("stale", f"made from an older run of the {UPSTREAM[stage]}", m)
    if stage in SHAPED_BY and stage in now.hashes and m.get("config_hash") != now.hashes[stage]:
        return Verdict("stale", f"made with another [{'/'.join(SHAPED_BY[stage])}] config (the mapping or TTL "
                                "changed since)", m)
    if stage == "load":
        if m.get("dry_run"):
            return Verdict("absent", "", m)
        if why := _elsewhere(m, now):
            return Verdict("stale", why, m)
        if m.get("partly_done"):  # a bulk put that ended COMPLETED_WITH_ERRORS
            return Verdict("failed", f"bulk put wrote it partly: {m.get('failed', 0):,} item(s) failed", m)
    if stage == "verify":
        if now.table and m.get("table") and m.get("table") != now.table:
            return Verdict("stale", f"verified {m.get('table')}, not {now.table}", m)
        if (load := up) is not None and (why := _elsewhere(load, now)):
            return Verdict("stale", f"verified a load {why}", m)
        if not m.get("ok"):
            return Verdict("failed", "found missing or different items", m)
    if stage == "catchup" and (why := _elsewhere(up, now)):
        return Verdict("stale", f"applied to a load {why}", m)
    return Verdict("done", "", m)

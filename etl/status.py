"""Months x stages, read from the `_state/` manifests (and, when the caller gives it, the destination table as
described now: a month loaded into another table, or into this name before it was dropped and created again,
is not loaded into it)."""

from __future__ import annotations

from typing import Any

from etl import freshness, staging
from etl.commands import render
from etl.lease import gone
from etl.state import bulk_put_progress

FAILURE_STATES = staging.FAILURE_KINDS  # a failure record's kind, shown as the stage's state


def _summary(stage: str, m: dict[str, Any]) -> str:
    if stage == "export":
        n = m.get("item_count") or m.get("describe_item_count")
        files = len(m.get("files", []))
        tail = "" if m.get("verified") else " unverified"
        return f"{n:,} items, {files} file(s){tail}" if n is not None else f"{files} file(s){tail}"
    if stage == "transform":
        return f"{m.get('written', 0):,} rows, {m.get('rejected', 0):,} rejected"
    if stage == "load":
        failed = f", {m['failed']:,} failed (report {', '.join(m.get('reports', []))})" if m.get("failed") else ""
        return f"{m.get('written', 0):,} written, {m.get('skipped_expired', 0):,} expired{failed}"
    if stage == "verify":
        return "ok" if m.get("ok") else f"{m.get('missing', 0):,} missing, {m.get('different', 0):,} different"
    return ""


def month_status(store: staging.Store, month: str, stages: tuple[str, ...] = staging.STAGES,
                 destination: staging.Destination | None = None, table: str | None = None,
                 now: freshness.Current | None = None) -> dict[str, Any]:
    """`now`: what outputs must be made for (the config's hashes, the destination and source tables as
    described now); without it, `destination` (else `table`, its name, when known). Done and stale are
    `etl.freshness`'s verdicts, the rule `etl run` skips by; a stage after one that is not current is not
    current either (the run redoes it after)."""
    now = now or freshness.Current(table=table, destination=destination)
    row: dict[str, Any] = {"month": month, "stages": {}}
    before = ""  # the first stage before this one that is not current
    for stage in stages:
        v = freshness.verdict(store, month, stage, now)
        manifest = v.manifest
        failure = _failure(store, month, stage, manifest)
        cell: dict[str, Any]
        if failure:
            cell = _failure_cell(failure)
        elif v.state == "failed":
            cell = {"state": "failed", "error": _summary(stage, manifest or {}),
                    "at": (manifest or {}).get("committed_at"), "rerun": render("load", "--month", month, "--force")}
        elif v.state == "stale" or (v.state == "done" and before):
            why = v.why if v.state == "stale" else f"the {before} runs again first"
            cell = {"state": "stale", "summary": f"{_summary(stage, manifest or {})} ({why})",
                    "at": (manifest or {}).get("committed_at")}
        elif v.state == "done" and manifest is not None:
            cell = {"state": "done", "summary": _summary(stage, manifest), "at": manifest.get("committed_at"),
                    "duration_s": manifest.get("duration_s")}
        elif stage == "export" and store.exists(staging.pending_export_key(month)):
            pending = store.read_json(staging.pending_export_key(month))
            cell = {"state": "running", "summary": f"export {pending.get('export_arn', 'starting')}",
                    "at": pending.get("started_at")}
        else:
            cell = {"state": "-"}
        cell = _with_lease(store, month, stage, cell)
        if stage == "load" and cell["state"] != "done" and (bulk := bulk_put_progress(store, month)):
            cell["summary"] = f"{cell.get('summary') or ''}\n{bulk}".strip()
        if cell["state"] != "done" and not before:
            before = stage
        row["stages"][stage] = cell
    row["next"] = next_command(row, stages)
    row["catchup"] = catchup_status(store, month, staging.read_manifest(store, month, "load"))
    return row


def _failure(store: staging.Store, month: str, stage: str, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stage's failure record when it is newer than the stage's manifest (a commit deletes it; one left
    beside a manifest was written after it)."""
    key = staging.failed_key(month, stage)
    failure = store.read_json(key) if store.exists(key) else None
    if failure and (not manifest or failure.get("failed_at", "") >= manifest.get("committed_at", "")):
        return dict(failure)
    return None


def _failure_cell(failure: dict[str, Any]) -> dict[str, Any]:
    kind = failure.get("kind")
    return {"state": kind if kind in FAILURE_STATES else "failed", "error": failure.get("error"),
            "rerun": failure.get("rerun"), "at": failure.get("failed_at")}


def forget(store: staging.Store, month: str) -> list[str]:
    """Delete the month's failure records (every stage and the catch-up): what `etl status --forget-month`
    does for a month typed wrong, whose failure would otherwise be listed for good. Manifests, checkpoints and
    staged data are kept, so a month with committed stages still shows them. Returns the stages cleared."""
    cleared = []
    for stage in (*staging.STAGES, "catchup"):
        key = staging.failed_key(month, stage)
        if store.exists(key):
            store.delete(key)
            cleared.append(stage)
    return cleared


def _with_lease(store: staging.Store, month: str, stage: str, cell: dict[str, Any]) -> dict[str, Any]:
    """A run holding the stage's lease: running (who, since when), or interrupted when its holder is gone."""
    key = staging.lease_key(month, stage)
    if not store.exists(key):
        return cell
    try:
        holder = store.read_json(key)
    except Exception:  # released between the two calls
        return cell
    who = f"{holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"
    if gone(holder):
        if cell["state"] in ("done", "stale"):
            return cell
        return {"state": "interrupted", "error": f"interrupted: the run ({who}) is gone before it committed",
                "rerun": holder.get("command") or _next(stage, month), "at": holder.get("since")}
    return {"state": "running", "summary": f"by {who}", "at": holder.get("since")}


def catchup_status(store: staging.Store, month: str, load: dict[str, Any] | None) -> dict[str, Any]:
    """The time up to which the month's index is in sync, and its catch-up runs (windows)."""
    m = staging.read_manifest(store, month, "catchup")
    failure = _failure(store, month, "catchup", m)
    if failure:
        return {**_failure_cell(failure), "synced_to": m.get("synced_to") if m else None}
    if not m:
        return {"state": "-"}
    windows = m.get("windows", [])
    cell: dict[str, Any] = {"state": "done", "synced_to": m.get("synced_to"), "windows": len(windows),
                            "at": m.get("committed_at"),
            "runs": [{k: w.get(k) for k in ("window", "mode", "from", "to", "puts", "deletes", "rejected")}
                     for w in windows],
            "summary": f"in sync to {m.get('synced_to')}\n{len(windows)} window(s): {m.get('puts', 0):,} puts, "
                       f"{m.get('deletes', 0):,} deletes"}
    if load is not None and load.get("run_id") != m.get("load_run"):
        cell.update(state="stale", rerun=render("catch-up", "--month", month),
                    summary=cell["summary"] + " (loaded again since: `etl catch-up` applies the windows again)")
    return cell


def _next(stage: str, month: str) -> str:
    return render(stage, "--month", month)


def next_command(row: dict[str, Any], stages: tuple[str, ...]) -> str | None:
    """The first stage not done: its recorded rerun command when it failed or was interrupted, else its command."""
    month = row["month"]
    for stage in stages:
        cell = row["stages"][stage]
        if cell["state"] in FAILURE_STATES:
            return str(cell.get("rerun") or _next(stage, month))
        if cell["state"] in ("-", "running", "stale"):
            return _next(stage, month)
    return None


def collect(store: staging.Store, months: list[str] | None = None, stages: tuple[str, ...] = staging.STAGES,
            destination: staging.Destination | None = None, table: str | None = None,
            now: freshness.Current | None = None) -> list[dict[str, Any]]:
    return [month_status(store, m, stages, destination, table, now) for m in (months or staging.known_months(store))]

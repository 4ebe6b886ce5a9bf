"""Months x stages, read from the `_state/` manifests alone."""

from __future__ import annotations

from typing import Any

from etl import staging

NEXT = {"export": "etl export", "transform": "etl transform", "load": "etl load", "verify": "etl verify"}


def _summary(stage: str, m: dict[str, Any]) -> str:
    if stage == "export":
        n = m.get("item_count") or m.get("describe_item_count")
        files = len(m.get("files", []))
        tail = "" if m.get("verified") else " unverified"
        return f"{n:,} items, {files} file(s){tail}" if n is not None else f"{files} file(s){tail}"
    if stage == "transform":
        return f"{m.get('written', 0):,} rows, {m.get('rejected', 0):,} rejected"
    if stage == "load":
        return f"{m.get('written', 0):,} written, {m.get('skipped_expired', 0):,} expired"
    if stage == "verify":
        return "ok" if m.get("ok") else f"{m.get('missing', 0):,} missing, {m.get('different', 0):,} different"
    return ""


def month_status(store: staging.Store, month: str, stages: tuple[str, ...] = staging.STAGES) -> dict[str, Any]:
    row: dict[str, Any] = {"month": month, "stages": {}}
    previous: dict[str, Any] | None = None
    for stage in stages:
        manifest = staging.read_manifest(store, month, stage)
        failed_key = staging.failed_key(month, stage)
        failure = store.read_json(failed_key) if store.exists(failed_key) else None
        cell: dict[str, Any]
        if failure and (not manifest or failure.get("failed_at", "") >= manifest.get("committed_at", "")):
            cell = {"state": "failed", "error": failure.get("error"), "rerun": failure.get("rerun"),
                    "at": failure.get("failed_at")}
        elif manifest and stage == "verify" and not manifest.get("ok"):
            cell = {"state": "failed", "error": _summary(stage, manifest), "at": manifest.get("committed_at"),
                    "rerun": f"etl load --month {month} --force"}
        elif manifest:
            cell = {"state": "done", "summary": _summary(stage, manifest), "at": manifest.get("committed_at"),
                    "duration_s": manifest.get("duration_s")}
            if previous is not None and manifest.get("upstream_run") != previous.get("run_id"):
                cell["state"] = "stale"
                cell["summary"] += " (made from an older run of the previous stage)"
        elif stage == "export" and store.exists(staging.pending_export_key(month)):
            pending = store.read_json(staging.pending_export_key(month))
            cell = {"state": "running", "summary": f"export {pending.get('export_arn', 'starting')}",
                    "at": pending.get("started_at")}
        else:
            cell = {"state": "-"}
        previous = manifest
        row["stages"][stage] = cell
    row["next"] = next_command(row, stages)
    return row


def next_command(row: dict[str, Any], stages: tuple[str, ...]) -> str | None:
    month = row["month"]
    for stage in stages:
        cell = row["stages"][stage]
        if cell["state"] == "failed":
            return str(cell.get("rerun") or f"{NEXT[stage]} --month {month}")
        if cell["state"] == "stale":
            return f"{NEXT[stage]} --month {month}"
        if cell["state"] in ("-", "running"):
            return f"{NEXT[stage]} --month {month}"
    return None


def collect(store: staging.Store, months: list[str] | None = None,
            stages: tuple[str, ...] = staging.STAGES) -> list[dict[str, Any]]:
    return [month_status(store, m, stages) for m in (months or staging.known_months(store))]

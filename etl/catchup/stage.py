"""The catch-up stage: after a month's full export is loaded, its later changes become puts and deletes on the
index, window after window, each applied in order and committed before the next.

plan:     the month's windows, in order: windows to apply again (the month was loaded again since), a window a
          failed run left, then the new ones (`--mode pitr`: chained incremental exports of 15 minutes to
          24 hours from the last synced time to `--to`; `--mode stream`: one window, the stream from its stored
          position; `--use-existing`: the adopted export's own window).
run:      per window (a task on the Runner, the windows in order), three steps, each recorded in
          `_state/month=M/catchup/window-NNNNN.json` as it ends, so a rerun continues where it stopped: `capture`
          (the source: a wait, on the driver, like the export), `changes.run_task` (the transform of the changes,
          on the engine) and the writing task the load uses (`etl.load.pump.run_task`, on the engine) on the
          window's part (puts and deletes in the same batches, within the destination's shared budget and under
          its writing lease, checkpointed in `_state/month=M/catchup/load-NNNNN.done`).
commit:   after every window, the month's `_state/month=M/catchup.json` (windows, in sync up to, counts, the
          stream's positions) and `final.parquet` (every touched key's final winner or delete, for verify).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl import aws, mapping, staging, times, winner
from etl.catchup import changes, source
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.errors import EtlError, StageNotReady
from etl.freshness import Verdict
from etl.load import preflight as load_preflight
from etl.load import pump
from etl.load.rows import LoadPartTask
from etl.progress import QUIET, Reporter
from etl.runner import StageBase
from etl.state import CatchupWindow

NAME = "catchup"
SUMS = ("changes_in", "before_sync", "applied", "filtered", "rejected", "keys_touched", "puts", "deletes",
        "unchanged")
LOAD_SUMS = ("written", "skipped_expired", "quarantined")


@dataclass(frozen=True)
class WindowTask:
    month: str
    window: int
    mode: str  # pitr | stream | adopt | recorded (captured before: apply again or finish)
    start: str = ""  # pitr: the window
    end: str = ""
    use_existing: str | None = None
    adopt_other_table: bool = False


@dataclass
class Options:
    mode: str = "pitr"
    to: datetime | None = None
    use_existing: str | None = None
    adopt_other_table: bool = False
    yes: bool = False
    include_expired: bool | None = None
    now: int | None = None
    confirm: Any = None


# --------------------------------------------------------------------------- the month's state


def upstream(store: staging.Store, month: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The committed export, transform and load the catch-up applies changes after (each of the one before)."""
    e, t, ld = (staging.read_manifest(store, month, s) for s in ("export", "transform", "load"))
    if e is None or t is None or ld is None or ld.get("dry_run"):
        raise StageNotReady(f"month {month} is not loaded yet: catch-up applies the changes made after its full "
                            "export was loaded", hint=f"run `etl run --month {month}` first")
    if t.get("upstream_run") != e.get("run_id") or ld.get("transform_run") != t.get("run_id"):
        raise StageNotReady(f"month {month}: its load is not of its current export and transform",
                            hint=f"run `etl run --month {month}` first")
    return e, t, ld


def synced_since(e: dict[str, Any], month: str) -> str:
    if not e.get("export_time"):
        raise EtlError(f"month {month}: the export's manifest records no export time, so the time the index is in "
                       "sync from is unknown", hint="export the month with a manifest that has exportTime")
    return times.iso_ms(times.parse(str(e["export_time"])))


def prepare(store: staging.Store, month: str, reporter: Reporter = QUIET) -> dict[str, Any]:
    """The month's catch-up manifest body to build on. A new export starts over (nothing applied); a new load of
    the same export puts the snapshot back, so every window is applied again on top of it."""
    e, t, ld = upstream(store, month)
    body = staging.read_manifest(store, month, NAME) or {}
    if body and body.get("export_run") != e.get("run_id"):
        reporter.info(f"catch-up {month}: the month was exported again: starting over from the new export")
        for prefix in (staging.catchup_prefix(month), staging.changes_prefix(month)):
            store.delete_prefix(prefix)
        for o in store.list(staging.rejected_prefix(month)):
            if "changes-" in o.key:
                store.delete(o.key)
        store.delete(staging.manifest_key(month, NAME))
        body = {}
    fresh = {"export_run": e.get("run_id"), "transform_run": t.get("run_id"), "load_run": ld.get("run_id"),
             "upstream_run": ld.get("run_id"), "synced_from": synced_since(e, month)}
    if not body:
        return {**fresh, "synced_to": fresh["synced_from"], "windows": [], "reapply": []}
    if body.get("load_run") != ld.get("run_id"):
        n = len(body.get("windows", []))
        reporter.info(f"catch-up {month}: the month was loaded again: applying its {n} window(s) again")
        for o in store.list(staging.catchup_prefix(month)):
            name = o.key.rsplit("/", 1)[-1]
            if name.startswith(("rows-", "load-")) or name == "final.parquet":
                store.delete(o.key)
        for w in body.get("windows", []):
            rec = store.read_json(staging.catchup_window_key(month, w["window"]))
            store.write_json(staging.catchup_window_key(month, w["window"]),
                             {k: v for k, v in rec.items() if k not in ("changes", "load")} | {"phase": "captured"})
        return {**body, **fresh, "reapply": [w["window"] for w in body.get("windows", [])], "windows": []}
    return {**body, "reapply": []}


# --------------------------------------------------------------------------- plan


def plan(cfg: Config, store: staging.Store, month: str, body: dict[str, Any], opts: Options) -> MonthPlan:
    tasks = [WindowTask(month, w, "recorded") for w in body["reapply"]]
    nxt = len(body["windows"]) + len(tasks) + 1
    if store.exists(staging.catchup_window_key(month, nxt)):
        tasks.append(WindowTask(month, nxt, "recorded"))
        return MonthPlan(tasks, None, "windows", note=f"finishing window {nxt}, which a run left unfinished; "
                                                       "run again for newer changes")
    synced = times.parse(body["synced_to"])
    if opts.use_existing:
        tasks.append(WindowTask(month, nxt, "adopt", use_existing=opts.use_existing,
                                adopt_other_table=opts.adopt_other_table))
    elif opts.mode == "stream":
        tasks.append(WindowTask(month, nxt, "stream"))
    else:
        to = opts.to or datetime.now(UTC)
        for i, (a, b) in enumerate(source.pitr_windows(synced, to)):
            tasks.append(WindowTask(month, nxt + i, "pitr", times.iso_ms(a), times.iso_ms(b)))
    until = times.iso_ms(opts.to or datetime.now(UTC))
    note = "" if tasks else (f"in sync up to {body['synced_to']}; less than 15 minutes to {until}: an incremental "
                             "export needs a window of 15 minutes to 24 hours")
    return MonthPlan(tasks, None, "windows", note=note)


# --------------------------------------------------------------------------- run


def capture(cfg: Config, store: staging.Store, task: WindowTask, body: dict[str, Any],
            reporter: Reporter) -> dict[str, Any] | None:
    """The window's source, recorded (`phase: captured`); None: an adopted window that is already applied."""
    key = staging.catchup_window_key(task.month, task.window)
    saved = CatchupWindow.read(store, key)
    if saved is not None and saved.valid_for("captured"):
        return saved.body
    record: dict[str, Any] = saved.body if saved is not None else {}

    def save(r: dict[str, Any]) -> None:
        store.write_json(key, r)

    synced = times.parse(body["synced_to"])
    mode = record.get("mode", task.mode)
    if mode == "adopt":
        got = source.adopt(cfg, task.month, str(task.use_existing), synced, adopt_other_table=task.adopt_other_table)
        if got["already_applied"]:
            reporter.info(f"catch-up {task.month}: {got['source']} ({got['from']} to {got['to']}) is already applied "
                          f"(in sync up to {body['synced_to']}), skipped")
            return None
        since = source.micros(synced)
    elif mode == "stream":
        got = source.read_stream(cfg, store, task.month, task.window, synced, body.get("stream"), reporter)
        # every window skips what the full export already holds (a shard is read from its start until a record of
        # it was read, in whichever window): a record's ApproximateCreationDateTime is rounded down (to the second
        # by DynamoDB, to the minute by DynamoDB Local), so from the export's second (minute); replaying an item's
        # changes from before the snapshot ends in the same rows.
        exported = times.parse(body["synced_from"])
        floor = exported.replace(microsecond=0)
        floor = floor.replace(second=0) if got["times_in_minutes"] else floor
        since = source.micros(floor)
        # a record stamped at or before the export's time may already be in the snapshot: applied idempotently
        replay = source.micros(exported) + 1
    else:
        start, end = times.parse(record.get("from", task.start)), times.parse(record.get("to", task.end))
        record = {**record, "window": task.window, "mode": "pitr", "from": times.iso_ms(start), "to": times.iso_ms(end),
                  "phase": "exporting"}
        save(record)
        got = source.export_window(cfg, store, task.month, task.window, start, end, record, save, reporter)
        since = source.micros(start)
    record = {**record, **got, "window": task.window, "since_micros": since,
              "replay_until_micros": replay if mode == "stream" else 0, "phase": "captured",
              "captured_at": times.iso_seconds()}
    save(record)
    return record


def changes_task(cfg: Config, store: staging.Store, month: str, record: dict[str, Any]) -> changes.ChangesTask:
    t = staging.read_manifest(store, month, "transform") or {}
    w = int(record["window"])
    return changes.ChangesTask(
        month, w, tuple(f["uri"] for f in record["files"]), str(record.get("view") or "NEW_AND_OLD_IMAGES"),
        int(record.get("since_micros", 0)), tuple(p["output"] for p in t.get("parts", [])),
        tuple(staging.catchup_rows_key(month, i) for i in range(1, w)), staging.changes_key(month, w),
        staging.changes_rejected_key(month, w), staging.catchup_rows_key(month, w),
        int(record.get("replay_until_micros", 0)))


def load_task(cfg: Config, month: str, w: int, rows: int, setup: load_preflight.Setup) -> LoadPartTask:
    return LoadPartTask(month=month, part=w, key=staging.changes_key(month, w), rows=rows,
                        transform_run=f"catchup-{w:05d}", target=setup.target(),
                        checkpoint=staging.catchup_checkpoint_key(month, w),
                        progress=staging.catchup_progress_key(month, w),
                        rejected=staging.catchup_load_rejected_key(month, w), apply_losers=False)


# --------------------------------------------------------------------------- commit


def window_summary(record: dict[str, Any]) -> dict[str, Any]:
    c, ld = record["changes"], record["load"]
    return {"window": record["window"], "mode": record["mode"], "from": record["from"], "to": record["to"],
            "view": record.get("view"), "files": len(record["files"]), "verified": record.get("verified"),
            **{k: c[k] for k in SUMS}, "filtered_by": c["filtered_by"], "rejected_by": c["rejected_by"],
            **{k: ld.get(k, 0) for k in LOAD_SUMS}, "wcu": ld.get("wcu", 0.0),
            **{k: record[k] for k in ("table_check", "adopted_other_table") if k in record}}


def write_final(cfg: Config, store: staging.Store, month: str, windows: int) -> str:
    """Every key a window touched, with its final winner (op put) or the row it lost (op delete): what verify
    expects of those keys."""
    names = mapping.output_schema(cfg).names
    key_pos = [names.index(k) for k in mapping.key_columns(cfg)]
    order = names.index(o) if (o := mapping.order_column(cfg)) else None
    final: dict[tuple[Any, ...], set[tuple[Any, ...]]] = {}
    for w in range(1, windows + 1):
        rows = pq.read_table(pa.BufferReader(store.read(staging.catchup_rows_key(month, w)))).to_pylist()
        seen: dict[tuple[Any, ...], set[tuple[Any, ...]]] = {}
        for r in rows:
            row = tuple(r[n] for n in names)
            got = seen.setdefault(tuple(row[p] for p in key_pos), set())
            if not r[changes.NONE]:
                got.add(row)
        final.update(seen)
    records = []
    for key, win in winner.winners(final, order).items():
        records.append({**(dict(zip(names, win, strict=True)) if win is not None
                           else {names[p]: v for p, v in zip(key_pos, key, strict=True)}),
                        mapping.OP: mapping.PUT if win is not None else mapping.DELETE})
    out = staging.catchup_final_key(month)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, changes.changes_schema(cfg)), buf, compression="zstd")
    store.write(out, buf.getvalue())
    return out


def commit(cfg: Config, store: staging.Store, month: str, body: dict[str, Any], record: dict[str, Any],
           started: float, setup: load_preflight.Setup) -> dict[str, Any]:
    """One more window applied: the month's manifest, written last (what makes the window count)."""
    ld = record["load"]
    if record["changes"]["rows"] != ld.get("written", 0) + ld.get("skipped_expired", 0) + ld.get("quarantined", 0):
        raise EtlError(f"catch-up {month} window {record['window']}: the load does not reconcile with the window's "
                       f"puts and deletes: {ld}")
    windows = [w for w in body.get("windows", []) if w["window"] != record["window"]] + [window_summary(record)]
    windows.sort(key=lambda w: w["window"])
    totals = {k: sum(w[k] for w in windows) for k in (*SUMS, *LOAD_SUMS)}
    stream = ({"stream_arn": record["stream_arn"], "positions": record["positions"]} if record["mode"] == "stream"
              else body.get("stream"))
    synced_to = max(body.get("synced_to", record["to"]), record["to"], key=times.parse)
    return staging.commit_manifest(store, month, NAME, {
        "mode": record["mode"], "synced_from": body.get("synced_from"), "synced_to": synced_to,
        "windows": windows, **totals,
        "reconciles": "changes_in = before_sync + applied + filtered + rejected; keys_touched = puts + deletes + "
                      "unchanged; puts + deletes = written + skipped_expired + quarantined",
        "stream": stream, "final": write_final(cfg, store, month, len(windows)),
        "export_run": body.get("export_run"), "transform_run": body.get("transform_run"),
        "load_run": body.get("load_run"), "upstream_run": body.get("load_run"), "table": setup.table,
        "duration_s": round(time.time() - started, 3),
    })


# --------------------------------------------------------------------------- on the Runner


class CatchupStage(StageBase):
    """Catch-up on the Runner: a month's windows are its tasks, run in order and each committed before the next.
    A window's capture is a wait on AWS (on the driver, like the export); its changes and its load run on the
    engine (local threads or Ray), the load within the destination's shared budget and under its writing lease,
    as the load's are."""

    name = NAME
    verb = "catch-up"
    pool = "catchup"
    on_driver = True
    ordered = True
    cumulative = True
    writes_destination = True

    def __init__(self, cfg: Config, store: staging.Store, reporter: Reporter, opts: Options,
                 desc: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, store)
        self.reporter, self.opts, self.desc = reporter, opts, desc
        self.setup: load_preflight.Setup | None = None
        self._bodies: dict[str, dict[str, Any]] = {}

    def skip(self, month: str, verdict: Verdict) -> str | None:
        return None  # there may always be newer changes: the plan says when there are none

    def preflight(self, months: list[str]) -> None:
        for m in months:
            upstream(self.store, m)
        cfg, opts = self.cfg, self.opts
        ddb = aws.client(cfg.destination, "dynamodb")
        desc = self.desc or load_preflight.check_destination(cfg, ddb)
        setup = load_preflight.Setup(
            desc["TableName"], cfg.destination.aws_region, aws.account_of(cfg.destination),
            load_preflight.write_budget(cfg, desc, ddb), int(opts.now if opts.now is not None else time.time()),
            cfg.load.include_expired if opts.include_expired is None else opts.include_expired, False,
            time.time() + cfg.load.deadline_seconds if cfg.load.deadline_seconds else None,
            destination=staging.destination_of(desc), key_types=load_preflight.key_types(desc))
        if cfg.destination.production and not opts.yes and (opts.confirm is None or not opts.confirm(
                f"apply the changes of months {', '.join(months)} to {setup.table}?")):
            raise EtlError("not confirmed: nothing was written", hint="pass --yes to write without asking")
        self.setup = setup
        setup.watch()

    def _setup(self) -> load_preflight.Setup:
        if self.setup is None:
            raise EtlError("catch-up: planned before its preflight")
        return self.setup

    def plan(self, month: str) -> MonthPlan:
        body = prepare(self.store, month, self.reporter)
        self._bodies[month] = body
        return plan(self.cfg, self.store, month, body, self.opts)

    def run_task(self, cfg: Config, task: WindowTask, ctx: TaskContext) -> dict[str, Any]:
        """One window: captured (on this driver thread), its changes transformed and loaded (on the engine)."""
        store, month, w = self.store, task.month, task.window
        reporter: Reporter = ctx.reporter or QUIET
        record = capture(cfg, store, task, self._bodies[month], reporter)
        if record is None:
            return {"window": w, "skipped": "the adopted export is already applied"}
        key = staging.catchup_window_key(month, w)
        if not CatchupWindow(record).valid_for("transformed"):
            [result] = ctx.engine.run("catchup", 1, changes.run_task, cfg, [changes_task(cfg, store, month, record)],
                                      ctx)
            record = {**record, "changes": result, "phase": "transformed"}
            store.write_json(key, record)
        if not CatchupWindow(record).valid_for("loaded"):
            record = {**record, "load": self._load(cfg, month, record, ctx, reporter), "phase": "loaded"}
            store.write_json(key, record)
        return record

    def _load(self, cfg: Config, month: str, record: dict[str, Any], ctx: TaskContext,
              reporter: Reporter) -> dict[str, Any]:
        w = int(record["window"])
        rows = int(record["changes"]["rows"])
        cp = staging.catchup_checkpoint_key(month, w)
        if not rows:
            return {"rows": 0, "written": 0, "deletes": 0, "skipped_expired": 0, "quarantined": 0, "wcu": 0.0}
        if self.store.exists(cp):
            return dict(self.store.read_json(cp))
        progress = reporter.task(f"catch-up {month} window {w}", rows, "items")
        ctx.progress = progress.advance
        try:
            [result] = ctx.engine.run("load", 1, pump.run_task, cfg, [load_task(cfg, month, w, rows, self._setup())],
                                      ctx)
        finally:
            progress.finish()
        return dict(result)

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        """After each window: the month's manifest with it (what makes the window count)."""
        body = self._bodies[month]
        if results and not results[-1].get("skipped"):
            record = results[-1]
            if record["window"] in body["reapply"]:
                body["reapply"].remove(record["window"])
            manifest = commit(self.cfg, self.store, month, body, record, plan.started, self._setup())
            self._bodies[month] = {**manifest, "reapply": body["reapply"]}
        manifest = staging.read_manifest(self.store, month, NAME) or {}
        skipped = [r["skipped"] for r in results if r.get("skipped")]
        return {**manifest, "windows_this_run": len(results) - len(skipped), "windows_skipped": skipped,
                "month": month}

    def budget(self) -> Any:
        return self._setup().budget.bucket

    def close(self) -> None:
        if self.setup is not None:
            self.setup.close()

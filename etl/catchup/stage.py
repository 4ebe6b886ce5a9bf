"""The catch-up stage: after a month's full export is loaded, its later changes become puts and deletes on the
index, window after window, each applied in order and committed before the next.

plan:     the month's windows, in order: windows to apply again (the month was loaded again since), a window a
          failed run left, then the new ones (`--mode pitr`: chained incremental exports of 15 minutes to
          24 hours from the last synced time to `--to`; `--mode stream`: one window, the stream from its stored
          position; `--use-existing`: the adopted export's own window).
run:      per window, three tasks, each recorded in `_state/month=M/catchup/window-NNNNN.json` as it ends, so a
          rerun continues where it stopped: `capture` (the source: a wait, on the driver, like the export),
          `changes.run_task` (the transform of the changes) and the load's own `run_task` on the window's part
          (puts and deletes in the same batches, within the destination's shared budget, checkpointed in
          `_state/month=M/catchup/load-NNNNN.done`).
commit:   after every window, the month's `_state/month=M/catchup.json` (windows, in sync up to, counts, the
          stream's positions) and `final.parquet` (every touched key's final winner or delete, for verify).
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl import aws, mapping, staging
from etl.catchup import changes, source
from etl.config import Config
from etl.engine import LocalEngine, MonthPlan, TaskContext
from etl.errors import EtlError, StageNotReady
from etl.load import preflight as load_preflight
from etl.load import pump
from etl.load.rows import LoadPartTask
from etl.progress import QUIET, Reporter

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
    return source.iso(source.parse_time(str(e["export_time"])))


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
    synced = source.parse_time(body["synced_to"])
    if opts.use_existing:
        tasks.append(WindowTask(month, nxt, "adopt", use_existing=opts.use_existing,
                                adopt_other_table=opts.adopt_other_table))
    elif opts.mode == "stream":
        tasks.append(WindowTask(month, nxt, "stream"))
    else:
        to = opts.to or datetime.now(UTC)
        for i, (a, b) in enumerate(source.pitr_windows(synced, to)):
            tasks.append(WindowTask(month, nxt + i, "pitr", source.iso(a), source.iso(b)))
    until = source.iso(opts.to or datetime.now(UTC))
    note = "" if tasks else (f"in sync up to {body['synced_to']}; less than 15 minutes to {until}: an incremental "
                             "export needs a window of 15 minutes to 24 hours")
    return MonthPlan(tasks, None, "windows", note=note)


# --------------------------------------------------------------------------- run


def capture(cfg: Config, store: staging.Store, task: WindowTask, body: dict[str, Any],
            reporter: Reporter) -> dict[str, Any] | None:
    """The window's source, recorded (`phase: captured`); None: an adopted window that is already applied."""
    key = staging.catchup_window_key(task.month, task.window)
    record: dict[str, Any] = store.read_json(key) if store.exists(key) else {}
    if record.get("phase") in ("captured", "transformed", "loaded"):
        return record

    def save(r: dict[str, Any]) -> None:
        store.write_json(key, r)

    synced = source.parse_time(body["synced_to"])
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
        exported = source.parse_time(body["synced_from"])
        floor = exported.replace(microsecond=0)
        floor = floor.replace(second=0) if got["times_in_minutes"] else floor
        since = source.micros(floor)
        # a record stamped at or before the export's time may already be in the snapshot: applied idempotently
        replay = source.micros(exported) + 1
    else:
        start, end = source.parse_time(record.get("from", task.start)), source.parse_time(record.get("to", task.end))
        record = {**record, "window": task.window, "mode": "pitr", "from": source.iso(start), "to": source.iso(end),
                  "phase": "exporting"}
        save(record)
        got = source.export_window(cfg, store, task.month, task.window, start, end, record, save, reporter)
        since = source.micros(start)
    record = {**record, **got, "window": task.window, "since_micros": since,
              "replay_until_micros": replay if mode == "stream" else 0, "phase": "captured",
              "captured_at": staging.utcnow_iso()}
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


@dataclass
class Driver:
    """Runs a month's windows in order on an engine, within the destination's shared budget."""

    cfg: Config
    store: staging.Store
    setup: load_preflight.Setup
    engine: LocalEngine
    reporter: Reporter = QUIET
    contexts: list[TaskContext] = field(default_factory=list)

    def _ctx(self) -> TaskContext:
        ctx = TaskContext()
        self.contexts.append(ctx)
        return ctx

    def window(self, task: WindowTask, body: dict[str, Any]) -> dict[str, Any] | None:
        store, cfg, month, w = self.store, self.cfg, task.month, task.window
        record = capture(cfg, store, task, body, self.reporter)
        if record is None:
            return None
        key = staging.catchup_window_key(month, w)
        if record["phase"] == "captured":
            [result] = self.engine.run("catchup", 1, changes.run_task, cfg, [changes_task(cfg, store, month, record)],
                                       self._ctx())
            record = {**record, "changes": result, "phase": "transformed"}
            store.write_json(key, record)
        if record["phase"] == "transformed":
            rows = int(record["changes"]["rows"])
            cp = staging.catchup_checkpoint_key(month, w)
            if rows and store.exists(cp):
                result = store.read_json(cp)
            elif rows:
                ctx = self._ctx()
                ctx.budget = self.setup.budget.bucket
                task_ = self.reporter.task(f"catch-up {month} window {w}", rows, "items")
                ctx.progress = task_.advance
                try:
                    [result] = self.engine.run("load", 1, pump.run_task, cfg, [load_task(cfg, month, w, rows,
                                                                                          self.setup)], ctx)
                finally:
                    task_.finish()
            else:
                result = {"rows": 0, "written": 0, "deletes": 0, "skipped_expired": 0, "quarantined": 0, "wcu": 0.0}
            record = {**record, "load": result, "phase": "loaded"}
            store.write_json(key, record)
        return record

    def month(self, month: str, opts: Options) -> dict[str, Any]:
        started = time.time()
        body = prepare(self.store, month, self.reporter)
        p = plan(self.cfg, self.store, month, body, opts)
        if p.note:
            self.reporter.info(f"catch-up {month}: {p.note}")
        manifest = staging.read_manifest(self.store, month, NAME) or {}
        for task in p.tasks:
            record = self.window(task, body)
            if record is None:
                continue
            if task.window in body["reapply"]:
                body["reapply"].remove(task.window)
            manifest = commit(self.cfg, self.store, month, body, record, started, self.setup)
            body = {**manifest, "reapply": body["reapply"]}
        return {**manifest, "windows_this_run": len(p.tasks), "month": month}


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
    for key, rows_ in final.items():
        win = changes.winner(rows_, order)
        records.append({**(dict(zip(names, win, strict=True)) if win is not None
                           else {names[p]: v for p, v in zip(key_pos, key, strict=True)}),
                        changes.OP: "put" if win is not None else "delete"})
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
    synced_to = max(body.get("synced_to", record["to"]), record["to"], key=lambda s: source.parse_time(s))
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


# --------------------------------------------------------------------------- the months


def run(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, **options: Any) -> list[dict[str, Any]]:
    """Catch up every month (each on its own driver thread, all within the destination's one budget)."""
    if not months:
        raise EtlError("no month given to catch-up", hint="pass --month YYYYMM or --months FIRST-LAST")
    opts = Options(**options)
    if opts.use_existing and len(months) != 1:
        raise EtlError("--use-existing adopts one incremental export: give exactly one --month")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    for m in months:
        upstream(store, m)
    ddb = aws.client(cfg.destination, "dynamodb")
    desc = load_preflight.check_destination(cfg, ddb)
    setup = load_preflight.Setup(desc["TableName"], cfg.destination.aws_region, aws.account_of(cfg.destination),
                       load_preflight.write_budget(cfg, desc, ddb),
                       int(opts.now if opts.now is not None else time.time()),
                       cfg.load.include_expired if opts.include_expired is None else opts.include_expired, False,
                       time.time() + cfg.load.deadline_seconds if cfg.load.deadline_seconds else None,
                       destination=staging.destination_of(desc), key_types=load_preflight.key_types(desc))
    if cfg.destination.production and not opts.yes and (opts.confirm is None or not opts.confirm(
            f"apply the changes of months {', '.join(months)} to {setup.table}?")):
        raise EtlError("not confirmed: nothing was written", hint="pass --yes to write without asking")
    driver = Driver(cfg, store, setup, LocalEngine(cfg.engine.task_retries), reporter)
    setup.watch()
    failures: list[tuple[str, BaseException]] = []

    def one(month: str) -> dict[str, Any] | None:
        try:
            return driver.month(month, opts)
        except Exception as exc:
            failures.append((month, exc))
            msg = exc.message if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
            staging.record_failure(store, month, NAME, msg, f"etl catch-up --month {month}")
            return None

    try:
        with ThreadPoolExecutor(max(1, len(months)), thread_name_prefix="catchup") as pool:
            results = list(pool.map(one, months))
    except BaseException:
        for ctx in driver.contexts:
            ctx.stop.set()
        raise
    finally:
        setup.close()
        driver.engine.close()
    if failures:
        month, exc = failures[0]
        if len(failures) == 1 and len(months) == 1 and isinstance(exc, EtlError):
            exc.hint = exc.hint or f"fix the cause, then `etl catch-up --month {month}` continues"
            raise exc
        listed = "; ".join(f"{m}: {e}" for m, e in failures)
        raise EtlError(f"catch-up failed for {len(failures)} of {len(months)} month(s): {listed}",
                       hint=f"fix the cause, then rerun e.g. `etl catch-up --month {month}`")
    return [r for r in results if r is not None]

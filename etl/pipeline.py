"""The library's entry points: which stages a command runs, built and handed to the one Runner (`etl.runner`).

`run` takes a backfill's stages (export -> transform -> load -> verify, or the one a command names) over months;
`run_catchup` takes catch-up. Both describe what the stages' skip rules need (the destination as it is now, the
months' source tables), build the stages with the command's options and run them on the engine the config
names (local threads or Ray).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import botocore.exceptions

from etl import aws, freshness, staging
from etl.catchup import stage as catchup
from etl.config import LOAD_METHODS, VERIFY_METHODS, Config
from etl.engine import make_engine
from etl.errors import EtlError
from etl.export.stage import ExportStage
from etl.load import preflight as load_preflight
from etl.load.bulkput import BulkPutStage
from etl.load.stage import LoadStage
from etl.progress import QUIET, Reporter
from etl.runner import Options as RunnerOptions
from etl.runner import Runner, Stage, months_needed
from etl.transform.stage import TransformStage
from etl.verify import VerifyStage
from etl.verify_export import VerifyExportStage

ORDER = freshness.ORDER


@dataclass
class Options:
    force: bool = False
    mode: str | None = None  # export
    use_existing: str | None = None
    adopt_other_table: bool = False
    enable_pitr: bool = False
    yes: bool = False  # load
    dry_run: bool = False
    include_expired: bool | None = None
    now: int | None = None
    confirm: Callable[[str], bool] | None = None
    break_lease: bool = False  # take over a lease another run left behind
    method: str | None = None  # load: batch-write | bulk-put; verify: read | export (None: the config's)
    verify_existing: str | None = None  # verify --method export: adopt this export of the destination


def source_tables(cfg: Config, months: list[str]) -> dict[str, tuple[str, str]]:
    """Each month's source table as it is now (ARN, creation time), for the export's freshness; one that cannot
    be described (no such table, no network, no names configured) is left out: the export says why, if it runs."""
    out: dict[str, tuple[str, str]] = {}
    try:
        ddb = aws.client(cfg.source, "dynamodb", retries={"mode": "standard", "max_attempts": 2}, connect_timeout=3)
    except EtlError:
        return out
    for m in months:
        with contextlib.suppress(EtlError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            d = staging.destination_of(ddb.describe_table(TableName=cfg.source_table(m))["Table"])
            out[m] = (d.arn, d.created)
    return out


def _stages(cfg: Config, store: staging.Store, names: tuple[str, ...], opts: Options, reporter: Reporter,
            desc: dict[str, Any] | None, destination: staging.Destination | None) -> list[Stage]:
    bulk = (opts.method if opts.method in LOAD_METHODS else cfg.load.method) == "bulk-put"
    made: dict[str, Stage] = {
        "export": ExportStage(cfg, store, mode=opts.mode, use_existing=opts.use_existing, force=opts.force,
                              enable_pitr=opts.enable_pitr, adopt_other_table=opts.adopt_other_table),
        "transform": TransformStage(cfg, store, force=opts.force),
        "load": (BulkPutStage if bulk else LoadStage)(
            cfg, store, reporter, force=opts.force, dry_run=opts.dry_run, yes=opts.yes,
            include_expired=opts.include_expired, now=opts.now, confirm=opts.confirm, desc=desc),
        "verify": (VerifyExportStage(cfg, store, reporter, force=opts.force, destination=destination, desc=desc,
                                     use_existing=opts.verify_existing, enable_pitr=opts.enable_pitr)
                   if (opts.method if opts.method in VERIFY_METHODS else cfg.verify.method) == "export" else
                   VerifyStage(cfg, store, force=opts.force, destination=destination)),
    }
    return [made[n] for n in names]


def skip_reason(cfg: Config, store: staging.Store, stage: str, month: str, force: bool = False,
                destination: staging.Destination | None = None) -> str | None:
    """Why a stage need not run again for a month (None: it must run): `etl.freshness`'s rule, as the Runner
    asks it."""
    if force:
        return None
    [s] = _stages(cfg, store, (stage,), Options(), QUIET, None, destination)
    return s.skip(month, freshness.verdict(store, month, stage, freshness.Current.of(cfg, destination)))


def _open(cfg: Config) -> staging.Store:
    store = staging.open_store(cfg.staging.root, cfg.staging)
    store.check()
    return store


def run(cfg: Config, months: list[str], stages: tuple[str, ...] = ORDER, *, reporter: Reporter = QUIET,
        **options: Any) -> dict[str, list[dict[str, Any]]]:
    """The stages for the months, each month on as soon as its previous stage committed; returns every
    stage's manifests (skipped ones marked), in month order."""
    months_needed(months, "/".join(stages))
    opts = Options(**options)
    if opts.use_existing and len(months) != 1:
        raise EtlError("--use-existing adopts one export: give exactly one --month")
    store = _open(cfg)
    desc = destination = None
    if "load" in stages or "verify" in stages:  # which table: a month loaded into another one is not loaded here
        desc = load_preflight.describe_destination(cfg)
        destination = staging.destination_of(desc)
    sources = source_tables(cfg, months) if "export" in stages and not opts.use_existing else {}
    runner = Runner(cfg, store, reporter, RunnerOptions(opts.force, opts.break_lease, opts.dry_run),
                    make_engine(cfg), freshness.Current.of(cfg, destination, sources))
    return runner.run(months, _stages(cfg, store, stages, opts, reporter, desc, destination))


def run_export(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, **options: Any) -> list[dict[str, Any]]:
    return run(cfg, months, ("export",), reporter=reporter, **options)["export"]


def run_transform(cfg: Config, months: list[str], *, reporter: Reporter = QUIET,
                  **options: Any) -> list[dict[str, Any]]:
    return run(cfg, months, ("transform",), reporter=reporter, **options)["transform"]


def run_load(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, **options: Any) -> list[dict[str, Any]]:
    return run(cfg, months, ("load",), reporter=reporter, **options)["load"]


def run_verify(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, break_lease: bool = False,
               method: str | None = None, use_existing: str | None = None,
               enable_pitr: bool = False) -> list[dict[str, Any]]:
    """Asked for alone, verify always checks the table again (the table may have changed since): `method` read
    (BatchGetItem of every loaded key) or export (a PITR export of the table, or `use_existing`, compared)."""
    if use_existing and (method or cfg.verify.method) != "export":
        raise EtlError("--use-existing adopts an export of the destination: it needs --method export")
    return run(cfg, months, ("verify",), reporter=reporter, force=True, break_lease=break_lease, method=method,
               verify_existing=use_existing, enable_pitr=enable_pitr)["verify"]


def run_catchup(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, mode: str = "pitr",
                to: datetime | None = None, use_existing: str | None = None, adopt_other_table: bool = False,
                yes: bool = False,
                include_expired: bool | None = None, now: int | None = None,
                confirm: Callable[[str], bool] | None = None, break_lease: bool = False,
                method: str | None = None) -> list[dict[str, Any]]:
    """Catch up every month (each on its own driver thread, all within the destination's one budget, under its
    writing lease: a catch-up and a load never write one destination at once). Always with BatchWriteItem: its
    windows delete as well as put, and bulk put only puts."""
    if method == "bulk-put":
        raise EtlError("catch-up cannot use bulk put: its windows delete keys as well as put them, and bulk put "
                       "only puts", hint="drop --method bulk-put: catch-up writes with batch-write (BatchWriteItem)")
    months_needed(months, "catch-up")
    if cfg.load.method == "bulk-put":
        reporter.info("catch-up writes with batch-write (puts and deletes); [load] method = bulk-put is the load's")
    if use_existing and len(months) != 1:
        raise EtlError("--use-existing adopts one incremental export: give exactly one --month")
    store = _open(cfg)
    desc = load_preflight.describe_destination(cfg)
    destination = staging.destination_of(desc)
    opts = catchup.Options(mode=mode, to=to, use_existing=use_existing, adopt_other_table=adopt_other_table, yes=yes,
                           include_expired=include_expired, now=now, confirm=confirm)
    runner = Runner(cfg, store, reporter, RunnerOptions(break_lease=break_lease), make_engine(cfg),
                    freshness.Current.of(cfg, destination))
    return runner.run(months, [catchup.CatchupStage(cfg, store, reporter, opts, desc)])[catchup.NAME]

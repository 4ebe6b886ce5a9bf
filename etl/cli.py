"""`etl`: a thin command line over the library. Parse, call, print.

Errors a user can act on are one red line (and a hint) with exit code 1; `--debug` shows the traceback. Under
`--json`, an error is also one JSON object on stdout (`{"command", "error": {"message", "hint", "exit_code"}}`), a
usage error included (exit code 2). Every command line printed comes from `etl.commands.render`, so it carries the
`--config` in use.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from etl import __version__, commands, times
from etl.commands import render
from etl.config import Config, load_config, require_staging_root, unknown_env_variables
from etl.errors import EtlError, Interrupted, PartlyDone
from etl.months import month_range, parse_month, resolve_months
from etl.progress import QUIET, Reporter


class Ctx:
    def __init__(self, config_path: str | None, debug: bool, progress: str, as_json: bool = False) -> None:
        self.config_path = config_path
        self.debug = debug
        self.json = as_json
        self.reporter = Reporter(progress)
        self._cfg: Config | None = None

    def config(self, **overrides: dict[str, Any]) -> Config:
        if self._cfg is None or overrides:
            self._cfg = load_config(self.config_path, overrides=overrides or None)
        return self._cfg


def _say(exc: EtlError, exit_code: int) -> None:
    click.secho(f"error: {exc.message}", fg="red", err=True)
    if exc.hint:
        click.echo(f"  -> {exc.hint}", err=True)
    _json_error(exc.message, exc.hint, exit_code)


def _json_error(message: str, hint: str | None, exit_code: int) -> None:
    """Under --json, the error as the command's one JSON object on stdout (the red line stays on stderr)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Ctx) if ctx else None
    if obj is None or not obj.json:
        return
    assert ctx is not None
    command = ctx.command_path.partition(" ")[2] or ctx.command_path
    click.echo(json.dumps({"command": command, "error": {"message": message, "hint": hint,
                                                          "exit_code": exit_code}}))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx)
        debug = bool(ctx and ctx.debug)
        try:
            return fn(*args, **kwargs)
        except (Interrupted, KeyboardInterrupt) as exc:
            resume = f"resume with `{_this_command()}`"
            click.secho(f"interrupted: what was acknowledged is kept; {resume}", fg="yellow", err=True)
            if isinstance(exc, Interrupted) and exc.hint:  # e.g. a bulk put operation that goes on running on AWS
                click.echo(f"  -> {exc.hint}", err=True)
            _json_error("interrupted: what was acknowledged is kept", resume, 130)
            sys.exit(130)
        except EtlError as exc:
            if debug:
                traceback.print_exc()
            code = 3 if isinstance(exc, PartlyDone) else 1
            _say(exc, code)
            sys.exit(code)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:
            from etl import aws

            if debug:
                traceback.print_exc()
            explained = aws.explain(exc, ctx._cfg if ctx else None)
            if explained is not None:
                _say(explained, 1)
                sys.exit(1)
            hint = "this is a bug or an unhandled case: rerun with --debug for the full traceback, and report it"
            if not debug:
                click.secho(f"error: an unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
                click.echo(f"  -> {hint}", err=True)
            _json_error(f"an unexpected {type(exc).__name__}: {exc}", hint, 1)
            sys.exit(1)

    return wrapper


def _this_command() -> str:
    """The command line this process was started with, as `etl ...` (what resumes an interrupted run), with
    the config in use when the command line did not name it (it came from $ETL_CONFIG), and without --force."""
    import shlex

    # --force starts over: pasted again it would rewrite everything; without it, the command resumes
    args = [a for a in sys.argv[1:] if a != "--force"]
    config = commands.config_in_use()
    named = any(a == "--config" or a.startswith("--config=") for a in args)
    return shlex.join(["etl", *(["--config", config] if config and not named else []), *args])


BULKY = ("parts", "files", "inputs", "schema")  # per-file detail: in the manifest, not in a summary


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in BULKY}


def _reasons(by: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))


def say(obj: Ctx, command: str, result: Any, text: Callable[[], str]) -> None:
    """A command's result: one JSON object under --json, else its text."""
    if obj.json:
        click.echo(json.dumps({"command": command, "result": result}, default=str))
    else:
        click.echo(text())


def report(obj: Ctx, command: str, results: list[dict[str, Any]], line: Callable[[dict[str, Any]], str]) -> None:
    """The command's result: one JSON object with every month's counts under --json, else a line per month."""
    if obj.json:
        click.echo(json.dumps({"command": command, "months": [_counts(r) for r in results]}, default=str))
        return
    for r in results:
        if not r.get("skipped"):  # the progress output said so
            click.echo(line(r))


def _checked(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, tuple[str, ...]],
                                                     tuple[str, ...]]:
    """A month option's values checked as they are parsed: a wrong one is a usage error (exit code 2)."""
    import re

    def check(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            for token in filter(None, re.split(r"[\s,]+", value.strip())):
                try:
                    parse(token)
                except EtlError as exc:
                    raise click.BadParameter(exc.message, ctx, param) from None
        return values

    return check


def method_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--method", type=click.Choice(["batch-write", "bulk-put"]), default=None,
                        help="How the load writes: batch-write (BatchWriteItem, the default) or bulk-put (DynamoDB's "
                             "managed StartBulkPutItems; default from [load] method).")(fn)


def month_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--months", "month_ranges", multiple=True, metavar="FIRST-LAST", callback=_checked(month_range),
                      help="An inclusive range, e.g. 201505-201705 (repeatable).")(fn)
    fn = click.option("--month", "months", multiple=True, metavar="YYYYMM", callback=_checked(parse_month),
                      help="A month, e.g. 201604 (repeatable; a comma list works too).")(fn)
    return fn


def break_lease_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--break-lease", is_flag=True,
                        help="Take over the lease of a run that died on another machine (a run refuses to start "
                             "while another one holds its month and stage, or its destination).")(fn)


def engine_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
                        help="Where the tasks run: thread pools here (local) or a Ray cluster (ray; [engine] "
                             "address). Default: [engine] kind.")(fn)


def _months(months: tuple[str, ...], ranges: tuple[str, ...]) -> list[str]:
    out = resolve_months(months, ranges)
    if not out:
        raise click.UsageError("no month given: pass --month YYYYMM (repeatable) or --months FIRST-LAST")
    return out


class Group(click.Group):
    """A command group whose usage errors (a missing or wrong option) are also one JSON object under --json."""

    group_class = type  # its subgroups (local, ttl, ...) are such groups too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            obj = ctx.find_object(Ctx)
            if obj is not None and obj.json and not getattr(exc, "said_as_json", False):
                path = (exc.ctx or ctx).command_path
                click.echo(json.dumps({"command": path.partition(" ")[2] or path, "error": {
                    "message": exc.format_message(), "hint": None, "exit_code": exc.exit_code}}))
                exc.said_as_json = True  # type: ignore[attr-defined]  # a subgroup said it: its parent does not
            raise


def _warn_unknown_env() -> None:
    """One line on stderr per ETL_* variable that no config key reads: a misspelling is otherwise silent."""
    import os

    for name, nearest in unknown_env_variables(os.environ):
        guess = f" (did you mean {nearest}?)" if nearest else ""
        click.secho(f"warning: {name} is not a setting of etl{guess}; it is ignored", fg="yellow", err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="FILE", envvar="ETL_CONFIG",
              help="Pipeline TOML config (default: $ETL_CONFIG, else ./pipeline.toml).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the command's result as one JSON object on stdout (progress stays on stderr).")
@click.option("--progress", type=click.Choice(["auto", "rich", "json", "quiet"]), default="auto",
              show_default=True, help="Progress display: rich bars on a terminal, JSON lines otherwise.")
@click.version_option(__version__, prog_name="etl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, as_json: bool, progress: str) -> None:
    """Backfill monthly DynamoDB tables into one index table, staged in S3.

    \b
    Exit codes: 0 done, 1 refused or failed (one line says why), 2 a usage error,
    3 partly done (some months failed: `etl status` shows which), 130 interrupted.

    \b
    Stages (each restartable; state lives in the staging store's _state/ manifests):
      export     monthly table -> S3 (point-in-time export, or --mode scan)
      transform  export -> projected Parquet, bad rows quarantined with a reason
      load       Parquet -> destination table, within a write budget, checkpointed
    `etl status` shows every month and the command to run next.
    """
    ctx.obj = Ctx(config_path, debug, progress, as_json)
    commands.use_config(config_path)  # every command line printed from here on carries it
    ctx.call_on_close(lambda: commands.use_config(None))
    _warn_unknown_env()
    if debug:  # the engines' own logs too (Ray's, which otherwise stay in its log files)
        logging.getLogger("etl").setLevel(logging.DEBUG)


# --------------------------------------------------------------------------- local AWS


@cli.group()
def local() -> None:
    """Embedded local AWS (moto server on 127.0.0.1) and sample data, for demos and tests."""


@local.command("up")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: [local] port).")
@click.option("--foreground", is_flag=True, help="Run in the foreground instead of in the background.")
@click.pass_obj
@handle_errors
def local_up(obj: Ctx, port: int | None, foreground: bool) -> None:
    """Start moto's server (S3, DynamoDB with export, Glue) on 127.0.0.1; a pid file records it."""
    from etl import local as local_mod

    got = local_mod.server_up(obj.config(), port, background=not foreground,
                              reporter=QUIET if obj.json else Reporter("rich"))
    if obj.json:
        say(obj, "local up", {"pid": got}, str)


@local.command("down")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: [local] port).")
@click.pass_obj
@handle_errors
def local_down(obj: Ctx, port: int | None) -> None:
    """Stop the moto server that `etl local up` started (only that process)."""
    from etl import local as local_mod

    stopped = local_mod.server_down(obj.config(), port, reporter=QUIET if obj.json else Reporter("rich"))
    if obj.json:
        say(obj, "local down", {"stopped": stopped}, str)


@local.command("seed")
@month_options
@click.option("--rows-per-month", type=click.IntRange(1, 50_000_000), default=20_000, show_default=True)
@click.option("--seed", "seed_value", type=int, default=7, show_default=True, help="Random seed: same seed, same rows.")
@click.pass_obj
@handle_errors
def local_seed(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], rows_per_month: int,
               seed_value: int) -> None:
    """Create monthly source tables (PITR on), the staging bucket and the destination table, and fill
    each month with synthetic rows (about 2% dirty, for the transform to quarantine)."""
    from etl import local as local_mod

    r = local_mod.seed(obj.config(), _months(months, month_ranges), rows_per_month, seed_value, obj.reporter)
    if obj.json:
        say(obj, "local seed", r, str)


@local.command("change")
@click.option("--month", required=True, metavar="YYYYMM")
@click.pass_obj
@handle_errors
def local_change(obj: Ctx, month: str) -> None:
    """Demo: change the month's source table after its backfill: cancel one order, add one."""
    from etl import local as local_mod

    r = local_mod.change(obj.config(), month)
    c, a = r["cancelled"], r["added"]
    say(obj, "local change", r, lambda: (
        f"changed {r['table']}: cancelled order {c['OrderID']} of {c['CustomerID']} ({c['DateTime']}), "
        f"added order {a['OrderID']} of {a['CustomerID']} ({a['DateTime']})"))


@local.command("lookups")
@month_options
@click.pass_obj
@handle_errors
def local_lookups(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...]) -> None:
    """Demo: ask the checkout question for three seeded customers (loyal, anniversary, none)."""
    from etl import aws
    from etl import local as local_mod
    from etl.promo import discount_for

    cfg = obj.config()
    ddb = aws.client(cfg.destination, "dynamodb")
    found = [(label, customer, discount_for(customer, None, cfg, ddb))
             for label, customer in local_mod.sample_customers(cfg, _months(months, month_ranges))]
    say(obj, "local lookups", [{"customer": c, "label": label, "percent": d.percent, "kind": d.kind,
                                "evidence": d.evidence} for label, c, d in found],
        lambda: "\n".join(f"{label:>24}  {c}: {d.describe()}" for label, c, d in found))


# --------------------------------------------------------------------------- stages


@cli.command()
@month_options
@click.option("--mode", type=click.Choice(["pitr", "scan"]), help="pitr (default from config) or scan.")
@click.option("--use-existing", metavar="URI", help="Adopt an existing export folder (.../AWSDynamoDB/<id>).")
@click.option("--adopt-other-table", is_flag=True,
              help="With --use-existing: adopt an export of another table than the month's (recorded).")
@click.option("--force", is_flag=True, help="Export again even if the month is committed.")
@click.option("--enable-pitr", is_flag=True, help="Turn on point-in-time recovery where it is off.")
@break_lease_option
@click.pass_obj
@handle_errors
def export(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], mode: str | None,
           use_existing: str | None, adopt_other_table: bool, force: bool, enable_pitr: bool,
           break_lease: bool) -> None:
    """Export monthly tables to the staging store (no read capacity used in pitr mode)."""
    from etl.pipeline import run_export

    cfg = obj.config()
    require_staging_root(cfg)
    results = run_export(cfg, _months(months, month_ranges), mode=mode, use_existing=use_existing,
                         adopt_other_table=adopt_other_table, force=force,
                         enable_pitr=enable_pitr, break_lease=break_lease, reporter=obj.reporter)
    report(obj, "export", results, lambda r: (
        f"export {r['month']}: {r.get('item_count') or r.get('describe_item_count') or '?'} items, "
        f"{len(r['files'])} file(s), {'verified' if r['verified'] else 'unverified'}"))


@cli.command()
@month_options
@click.option("--force", is_flag=True, help="Transform again even if the month is committed and unchanged.")
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def transform(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], force: bool, break_lease: bool,
              engine: str | None) -> None:
    """Committed exports -> projected Parquet (transformed/month=M/), bad rows to rejected/ with a reason.

    Counts reconcile (items_in = written + filtered + rejected) before the manifest is committed. A month
    whose export and mapping did not change since its last transform is skipped."""
    from etl.pipeline import run_transform

    cfg = obj.config(engine={"kind": engine})
    require_staging_root(cfg)
    results = run_transform(cfg, _months(months, month_ranges), force=force, break_lease=break_lease,
                            reporter=obj.reporter)
    report(obj, "transform", results, lambda r: (
        f"transform {r['month']}: {r['items_in']:,} items -> {r['written']:,} rows written, "
        f"{r['filtered']:,} filtered, {r['rejected']:,} rejected"
        + (f" ({_reasons(r['rejected_by'])})" if r["rejected_by"] else "")
        + f", {r['collisions']['keys']:,} colliding keys"))


@cli.command()
@month_options
@click.option("--yes", is_flag=True, help="Write without asking (for scripts).")
@click.option("--dry-run", is_flag=True, help="Plan, read and count everything, but write nothing.")
@click.option("--include-expired", is_flag=True, default=None,
              help="Also write items whose ExpirationTimestamp has passed (skipped and counted by default).")
@click.option("--force", is_flag=True, help="Ignore the part checkpoints and write every part again.")
@method_option
@click.option("--cancel", is_flag=True,
              help="bulk-put: cancel the months' operations in progress (what they wrote stays).")
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def load(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], yes: bool, dry_run: bool,
         include_expired: bool | None, force: bool, method: str | None, cancel: bool, break_lease: bool,
         engine: str | None) -> None:
    """Committed Parquet -> the destination table with BatchWriteItem, within the write budget.

    Shows the destination, account, item count, budget (each index's share, an on-demand table's warm
    throughput and how to pre-warm it), the write units and their cost, and the estimated duration, and
    asks before writing to a production table (--yes skips the question). --dry-run prints the same plan,
    then the counts it would write, skip and deduplicate with the exact write units and cost.
    Each finished part is checkpointed; rerunning the same command resumes.

    --method bulk-put writes the same items as DynamoDB JSON objects to the staging bucket and has DynamoDB's
    StartBulkPutItems load them (docs/load-methods.md); a rerun re-attaches to its operation,
    --cancel cancels it."""
    from etl.pipeline import run_load

    cfg = obj.config(engine={"kind": engine}, load={"method": method})
    require_staging_root(cfg)
    ms = _months(months, month_ranges)
    if cancel:
        from etl.load.bulkput import cancel as cancel_bulk_put

        report(obj, "load", cancel_bulk_put(cfg, ms), _cancel_line)
        return
    results = run_load(cfg, ms, yes=yes, dry_run=dry_run, include_expired=include_expired, force=force,
                       break_lease=break_lease,
                       confirm=lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False,
                       reporter=obj.reporter)
    report(obj, "load", results, _load_line)
    _partly_done(results)


def _cancel_line(r: dict[str, Any]) -> str:
    if not r["cancelled"]:
        return f"load {r['month']}: no bulk put operation in progress"
    return "\n".join(f"load {r['month']}: bulk put operation {c['arn']}: {c['status']} (what it wrote stays; "
                     f"`etl load --month {r['month']} --method bulk-put` starts over)" for c in r["cancelled"])


def _partly_done(results: list[dict[str, Any]]) -> None:
    """A bulk put that ended COMPLETED_WITH_ERRORS: the month is partly done (exit 3), its report named."""
    partly = [r for r in results if r.get("partly_done") and not r.get("skipped")]
    if partly:
        listed = "; ".join(f"{r['month']}: {r['failed']:,} item(s) failed (report under {', '.join(r['reports'])})"
                           for r in partly)
        raise PartlyDone(f"bulk put wrote {len(partly)} month(s) partly: {listed}",
                         hint="`etl status` shows them; fix the cause the report gives, then "
                              "`etl load --month M --method bulk-put --force` writes the month again")


def _bulk_line(r: dict[str, Any]) -> str:
    if r.get("dry_run"):
        b = r["batch_write"]
        hours = f"{b['hours_at_budget']:,.2f} h at {b['budget_wcu_per_s']:,.0f} WCU/s" if b["hours_at_budget"] \
            is not None else "time unknown"
        return (f"load {r['month']}: dry run, nothing written: bulk put of {r['written']:,} items "
                f"({r['skipped_expired']:,} expired skipped, {r['deduplicated']:,} deduplicated, "
                f"{r['quarantined']:,} quarantined): {r['bytes'] / 1e9:,.3f} GB in {r['objects']:,} object(s), "
                f"{r['operations']} operation(s), {r['tier']} tier, ${r['cost_usd']:,.2f} at "
                f"${r['price_per_gb']:g}/GB; "
                f"batch-write instead: {b['wcu_estimated_total']:,.0f} WCU, {hours}, ${b['cost_usd']:,.2f} at "
                f"${b['price_per_million_wcu']:g} per million write units"
                + ("" if b["on_demand"] else " on demand (provisioned: within the capacity paid by the hour)"))
    failed = (f", {r['failed']:,} failed (report under {', '.join(r['reports'])})" if r.get("failed") else "")
    why = f" ({_reasons(r['quarantined_by'])})" if r.get("quarantined_by") else ""
    return (f"load {r['month']}: bulk put: {r['written']:,} written{failed}, {r['skipped_expired']:,} expired skipped, "
            f"{r['deduplicated']:,} deduplicated, {r['quarantined']:,} quarantined{why}; {r['processed']:,} processed "
            f"by {len(r['operations'])} operation(s) ({r['tier']}), {r['bytes'] / 1e9:,.3f} GB in {r['objects']:,} "
            "object(s)")


def _load_line(r: dict[str, Any]) -> str:
    if r.get("method") == "bulk-put":
        return _bulk_line(r)
    if r.get("dry_run"):
        units = " + ".join(f"{v:,.0f} on {'index ' + k if k != 'table' else 'the table'}"
                           for k, v in r["wcu_estimated"].items())
        cost = f"${r['cost_usd']:,.2f} at ${r['price_per_million_wcu']:g} per million write units" + (
            "" if r["on_demand"] else " on demand (provisioned: within the capacity paid by the hour)")
        return (f"load {r['month']}: dry run, nothing written: {r['written']:,} would be written, "
                f"{r['skipped_expired']:,} expired skipped, {r['deduplicated']:,} deduplicated, "
                f"{r['quarantined']:,} quarantined; {r['wcu_estimated_total']:,.0f} WCU ({units or 'none'}), {cost}")
    share = f" ({r['budget_share']:.0%} of the budget)" if r.get("budget_share") is not None else ""
    why = (f" ({_reasons(r['quarantined_by'])}; in rejected/month={r['month']}/load-part-*.jsonl.gz)"
           if r.get("quarantined_by") else "")
    totals = r.get("totals") or {}
    runs = (f"; {totals['runs']} runs: {totals['acknowledged']:,} acknowledged, {totals['rewritten']:,} rewritten "
            f"on resuming" if totals.get("runs", 0) > 1 else "")
    return (f"load {r['month']}: {r['written']:,} written, {r['skipped_expired']:,} expired skipped, "
            f"{r['deduplicated']:,} deduplicated, {r['quarantined']:,} quarantined{why}, "
            f"{r['wcu_consumed']:,} WCU at {r['average_wcu_per_s']:,} WCU/s{share}{runs}")


@cli.command()
@month_options
@click.option("--method", type=click.Choice(["read", "export"]), default=None,
              help="read: BatchGetItem of every loaded key, within a read budget; export: a PITR export of the "
                   "table compared with the staged rows (no read capacity). Default: [verify] method.")
@click.option("--use-existing", metavar="URI", help="--method export: adopt this export of the destination "
                                                    "(.../AWSDynamoDB/<id>) instead of taking one.")
@click.option("--enable-pitr", is_flag=True, help="--method export: turn on point-in-time recovery on the "
                                                  "destination where it is off.")
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def verify(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], method: str | None,
           use_existing: str | None, enable_pitr: bool, break_lease: bool, engine: str | None) -> None:
    """Check that the destination holds what the months loaded: read every key back, or compare an export."""
    from etl.pipeline import run_verify

    cfg = obj.config(engine={"kind": engine})
    require_staging_root(cfg)
    results = run_verify(cfg, _months(months, month_ranges), break_lease=break_lease, reporter=obj.reporter,
                         method=method, use_existing=use_existing, enable_pitr=enable_pitr)
    bad = [r for r in results if not r["ok"]]
    report(obj, "verify", results, _verify_line)
    if bad:
        raise EtlError(f"verify found differences in {len(bad)} month(s)",
                       hint=f"`{render('load', '--month', 'M', '--force')}` writes the month again (puts are "
                            "idempotent)")


def _verify_line(r: dict[str, Any]) -> str:
    where = f" (examples in _state/month={r['month']}/verify.json)"
    if r.get("method") != "export":
        return (f"verify {r['month']}: {r['checked']:,} checked, {r['missing']:,} missing, {r['different']:,} "
                f"different" + (f", {r['undeleted']:,} not deleted" if r.get("undeleted") else "")
                + ("" if r["ok"] else where))
    found = f"; differences in {r['differences']}" if r.get("differences") else ""
    return (f"verify {r['month']} (export): {r['checked']:,} checked, {r['missing']:,} missing, {r['different']:,} "
            f"different, {r['extra']:,} extra" + (f", {r['expired']:,} expired and gone" if r.get("expired") else "")
            + (f", {r['unreadable']:,} export lines unreadable" if r.get("unreadable") else "")
            + f"; {r['not_backfilled']:,} item(s) in the table no backfilled month produced"
            + ("" if r["ok"] else where) + found)


def _at(value: str | None) -> Any:
    if value is None:
        return None
    try:
        at = times.parse(value, assume=None)
    except ValueError:
        raise EtlError(f"--at {value!r} is not ISO-8601 (e.g. 2017-05-31T12:00:00+02:00)") from None
    if at.tzinfo is None:
        raise EtlError(f"--at {value!r} has no time zone: add Z or an offset such as +02:00")
    return at


@cli.command()
@click.argument("customer_id")
@click.option("--at", "at_text", metavar="ISO8601", help="Decide as of this instant (with an offset); default now.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.pass_obj
@handle_errors
def lookup(obj: Ctx, customer_id: str, at_text: str | None, as_json: bool) -> None:
    """The checkout question, asked once: which discount does CUSTOMER_ID get, and on which order?

    One Query on the index table: this customer's newest unexpired order since the anniversary window
    started. Loyalty if it falls in the last loyalty_months, anniversary if in the last
    anniversary_months, else none ([promo] in the config)."""
    as_json = as_json or obj.json
    from etl import aws
    from etl.promo import discount_for

    cfg = obj.config()
    d = discount_for(customer_id, _at(at_text), cfg, aws.client(cfg.destination, "dynamodb"))
    if as_json:
        click.echo(json.dumps({"customer_id": customer_id, "percent": d.percent, "kind": d.kind,
                               "evidence": d.evidence, "at": d.at.isoformat()}))
    else:
        click.echo(f"{customer_id}: {d.describe()}")


@cli.group()
def ttl() -> None:
    """Time to live on the index table: enable it, preview what will expire."""


@ttl.command("enable")
@click.pass_obj
@handle_errors
def ttl_enable(obj: Ctx) -> None:
    """Turn on TTL for the mapping's ttl attribute (idempotent; shows the status, ENABLING included)."""
    from etl.ttl import enable

    r = enable(obj.config())
    verb = "enabled" if r["changed"] else "already"
    say(obj, "ttl enable", r, lambda: f"TTL on {r['table']}: {verb} {r['status']} on {r['attribute']}")


@ttl.command("preview")
@click.option("--at", "at_text", required=True, metavar="DATE", help="An ISO-8601 instant with an offset.")
@click.pass_obj
@handle_errors
def ttl_preview(obj: Ctx, at_text: str) -> None:
    """Count, per month of the staged Parquet, the rows whose TTL will have passed by DATE (no table scan)."""
    from etl.ttl import preview

    rows = preview(obj.config(), _at(at_text))
    say(obj, "ttl preview", rows, lambda: "\n".join(
        f"{r['month']}: {r['expired_by']:,} of {r['rows']:,} rows expired by {at_text}, {r['remaining']:,} remain"
        for r in rows) or "no transformed months staged yet")


@cli.group()
def catalog() -> None:
    """The staged datasets in the Glue catalog, for Athena."""


@catalog.command("register")
@click.option("--database", default="dynamodb_backfill", show_default=True)
@click.option("--table", "table_name", default="anniversary_promo_staged", show_default=True,
              help="The table over transformed/.")
@click.option("--export-table", default="anniversary_promo_export", show_default=True)
@click.option("--rejected-table", default="anniversary_promo_rejected", show_default=True)
@click.option("--verify-table", default="anniversary_promo_verify", show_default=True,
              help="The table over verify/: what `etl verify --method export` found.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@handle_errors
def catalog_register(obj: Ctx, database: str, table_name: str, export_table: str, rejected_table: str,
                     verify_table: str, as_json: bool) -> None:
    """Create (or replace) the Glue tables over export/, transformed/, rejected/ and verify/, partitioned by
    month with partition projection (new months need no repair); idempotent. Prints Athena queries to try."""
    as_json = as_json or obj.json
    from etl.catalog import register, summary

    r = register(obj.config(), database, table_name, export_table=export_table, rejected_table=rejected_table,
                 verify_table=verify_table)
    click.echo(json.dumps(r, indent=2, default=str) if as_json else summary(r))


@cli.group("config")
def config_group() -> None:
    """The effective configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {key, value, source}.")
@click.pass_obj
@handle_errors
def config_show(obj: Ctx, as_json: bool) -> None:
    """Every setting with its effective value and where it came from: the config file, an ETL_* or AWS_*
    variable, the command line, or the default. Secrets are never shown."""
    as_json = as_json or obj.json
    from etl.config import effective

    cfg = obj.config()
    rows = effective(cfg)
    if as_json:
        click.echo(json.dumps({"config_file": cfg.path, "settings": rows}, indent=2))
        return
    width = max(len(r["key"]) for r in rows)
    click.echo(f"config file: {cfg.path}")
    for r in rows:
        click.echo(f"{r['key']:<{width}}  {json.dumps(r['value'])}  ({r['source']})")


@cli.command("iam-policy")
@month_options
@click.option("--role", type=click.Choice(["all", "export", "catch-up", "staging", "loader", "bulk-put-loader",
                                           "verify", "ttl", "live-service"]), default="all", show_default=True)
@click.option("--account", help="Account id for the ARNs (default: the account of each side's credentials).")
@click.option("--mode", type=click.Choice(["pitr", "scan"]), help="Export mode (default from config).")
@click.option("--enable-pitr", is_flag=True, help="Include UpdateContinuousBackups (for `export --enable-pitr`).")
@click.option("--catch-up", "catch_up", type=click.Choice(["pitr", "stream"]), default="pitr", show_default=True)
@click.option("--export-role-arn", help="Also print the staging bucket policy a cross-account export needs.")
@click.pass_obj
@handle_errors
def iam_policy(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], role: str, account: str | None,
               mode: str | None, enable_pitr: bool, catch_up: str, export_role_arn: str | None) -> None:
    """Print least-privilege IAM policy documents, one per role (attach each to the role that runs those
    commands): only the actions each command calls in the configured mode.

    With --month/--months the source policies name exactly those monthly tables; without, the template
    with a wildcard for the month."""
    from etl import aws
    from etl.iam import bucket_policy, key_policy_statement, policies

    cfg = obj.config()
    if account is None:
        account = aws.account_of(cfg.destination)
        if account == "?":
            raise EtlError("cannot tell the account from the credentials",
                           hint="pass --account 123456789012 (or run with credentials of that account)")
    docs = policies(cfg, resolve_months(months, month_ranges) or None, account, mode=mode, enable_pitr=enable_pitr,
                    catch_up=catch_up)
    out: dict[str, Any] = docs if role == "all" else docs[role]
    if export_role_arn:
        out = {"roles": out, "staging_bucket_policy": bucket_policy(cfg, export_role_arn),
               "kms_key_policy_statement": key_policy_statement(cfg, [export_role_arn])}
    click.echo(json.dumps(out, indent=2))


def _destination_now(cfg: Config) -> tuple[str | None, Any]:
    """The destination table's name and identity as described now, for status; what cannot be known (no names
    configured, the table or the network unreachable) is None, and status falls back to the name."""
    from etl import aws, staging

    try:
        table = cfg.destination_table()
    except EtlError:
        return None, None
    try:
        ddb = aws.client(cfg.destination, "dynamodb", retries={"mode": "standard", "max_attempts": 1})
        return table, staging.destination_of(ddb.describe_table(TableName=table)["Table"])
    except Exception:  # status reads the store; the table is a refinement
        return table, None


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: {staging, months: [{month, stages, catchup, next}]}.")
@month_options
@click.option("--forget-month", "forget", multiple=True, metavar="YYYYMM", callback=_checked(parse_month),
              help="Clear the failures recorded for the month (repeatable): for a month typed wrong, or a "
                   "failure you have dealt with. Its manifests and staged data are kept; a month with nothing "
                   "else staged is no longer listed.")
@click.pass_obj
@handle_errors
def status(obj: Ctx, as_json: bool, months: tuple[str, ...], month_ranges: tuple[str, ...],
           forget: tuple[str, ...]) -> None:
    """Months x stages from the staging store's manifests: state, counts, times, failures, next step.

    \b
    States: done, running, stale (made from an older run of the stage before it: rerun it),
    failed (the error and the command that reruns it), interrupted (Ctrl-C, SIGTERM or a
    run that is gone: the command resumes it), - (not started)."""
    as_json = as_json or obj.json
    from etl import staging
    from etl.status import collect
    from etl.status import forget as forget_month

    cfg = obj.config()
    store = staging.open_store(require_staging_root(cfg), cfg.staging)
    store.check()
    forgotten = {month: forget_month(store, month) for month in resolve_months(forget, ())}
    name, destination = _destination_now(cfg)
    from etl import freshness
    from etl.pipeline import source_tables

    listed = resolve_months(months, month_ranges) or staging.known_months(store)
    now = freshness.Current.of(cfg, destination, source_tables(cfg, listed))
    rows = collect(store, listed, destination=destination, table=name, now=now)
    if as_json:
        click.echo(json.dumps({"command": "status", "staging": store.uri, "months": rows,
                               **({"forgotten": forgotten} if forget else {})}, indent=2))
        return
    for month, cleared in forgotten.items():
        click.echo(f"{month}: cleared the failure recorded for {', '.join(cleared)}" if cleared else
                   f"{month}: no failure recorded")
    if not rows:
        click.echo(f"nothing staged under {store.uri} yet; start with `{render('export', '--month', 'YYYYMM')}`")
        return
    _print_status(store.uri, rows)


STATE_COLOUR = {"done": "green", "failed": "red", "interrupted": "yellow", "running": "yellow", "stale": "yellow",
                "-": "dim"}


def _cell_text(c: dict[str, Any]) -> str:
    """A stage's cell: its state, then its summary, duration and error (the error cut at 200 characters)."""
    text = c["state"]
    if c.get("summary"):
        text += f"\n{c['summary']}"
    if c.get("duration_s") is not None:
        text += f"\n{c['duration_s']:.1f}s"
    if c.get("error"):
        text += f"\n{c['error'][:200]}"
    return text


def _table_width(rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]],
                 ) -> int:
    """The narrowest the status table can be without cutting a word: each stage column as wide as its longest
    word (a timestamp, a count), the month and the next command whole, plus rich's borders and padding."""
    widths = [max(len(r["month"]) for r in rows), max(len(r["next"] or "complete") for r in rows)]
    for i in range(len(cells(rows[0]))):
        words = [w for r in rows for w in _cell_text(cells(r)[i][1]).split()]
        widths.append(max([len("transform"), *map(len, words)]))
    return sum(widths) + 3 * len(widths) + 1


def _print_status(uri: str, rows: list[dict[str, Any]]) -> None:
    """The months as a table when it fits the terminal (rich's width: 80 columns when not a terminal), folding
    long words rather than cutting them; else one block per month, a line per stage. The next command is
    never cut or broken: pasted, it runs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from etl import staging

    console = Console()
    catchup = any(r["catchup"]["state"] != "-" for r in rows)
    columns = [*staging.STAGES, *(["catch-up"] if catchup else [])]

    def cells(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return [(s, row["stages"][s]) for s in staging.STAGES] + ([("catch-up", row["catchup"])] if catchup else [])

    def coloured(c: dict[str, Any], text: str) -> str:
        return f"[{STATE_COLOUR.get(c['state'], 'white')}]{escape(text)}[/]"

    table = Table(title=f"staging: {uri}")
    table.add_column("month", no_wrap=True)
    for name in columns:
        table.add_column(name, overflow="fold")
    table.add_column("next", no_wrap=True)
    for row in rows:
        table.add_row(row["month"], *[coloured(c, _cell_text(c)) for _, c in cells(row)],
                      escape(row["next"]) if row["next"] else "[green]complete[/]")
    if _table_width(rows, cells) <= console.width:
        console.print(table)
        return
    console.print(f"staging: {escape(uri)}", soft_wrap=True)
    for row in rows:
        console.print(f"\n[bold]{row['month']}[/]  next: " + (escape(row["next"]) if row["next"] else
                                                              "[green]complete[/]"), soft_wrap=True)
        for name, c in cells(row):
            console.print(f"  {name:<10} " + coloured(c, _cell_text(c).replace("\n", "; ")))


@cli.command()
@month_options
@click.option("--mode", type=click.Choice(["pitr", "scan"]), help="Export mode (default from config).")
@click.option("--yes", is_flag=True, help="Do not ask before writing to the destination.")
@click.option("--catch-up", "catch_up", type=click.Choice(["pitr", "stream"]), default=None,
              help="End with a catch-up of every month in this mode (see `etl catch-up --help`).")
@method_option
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def run(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], mode: str | None, yes: bool,
        catch_up: str | None, method: str | None, break_lease: bool, engine: str | None) -> None:
    """Every stage in order for the months, skipping what is already committed (resumes a backfill).

    Each month moves to its next stage as soon as its previous one committed, so months overlap: one loads
    while the next transforms and a third exports. A production destination is confirmed once, first."""
    from etl.pipeline import run as run_pipeline

    cfg = obj.config(engine={"kind": engine}, load={"method": method})
    require_staging_root(cfg)
    ms = _months(months, month_ranges)
    confirm = lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False  # noqa: E731
    out = run_pipeline(cfg, ms, mode=mode, yes=yes, break_lease=break_lease, reporter=obj.reporter, confirm=confirm)
    _partly_done(out.get("load", []))
    if obj.json and not catch_up:
        click.echo(json.dumps({"command": "run", "stages": {stage: [_counts(r) for r in rs]
                                                            for stage, rs in out.items()}}, default=str))
        return
    obj.reporter.info(f"run: every stage committed for {len(ms)} month(s); `{render('status')}` shows them")
    if catch_up:
        from etl.pipeline import run_catchup

        _print_catchup(obj, run_catchup(cfg, ms, mode=catch_up, yes=yes, confirm=confirm, reporter=obj.reporter))


def _print_catchup(obj: Ctx, results: list[dict[str, Any]]) -> None:
    if obj.json:
        click.echo(json.dumps({"command": "catch-up", "months": [_counts(r) for r in results]}, default=str))
        return
    for r in results:
        if not r.get("windows"):
            click.echo(f"catch-up {r['month']}: nothing applied yet")
            continue
        if r.get("windows_skipped") and not r.get("windows_this_run"):
            click.echo(f"catch-up {r['month']}: nothing applied this run ({'; '.join(r['windows_skipped'])}, "
                       f"skipped); in sync up to {r['synced_to']} ({len(r['windows'])} window(s))")
            continue
        click.echo(f"catch-up {r['month']}: in sync up to {r['synced_to']} ({len(r['windows'])} window(s), "
                   f"{r['windows_this_run']} this run): {r['changes_in'] - r['before_sync']:,} changes after the "
                   f"export ({r['before_sync']:,} older skipped) -> {r['applied']:,} applied, "
                   f"{r['filtered']:,} filtered, {r['rejected']:,} rejected; {r['keys_touched']:,} keys: "
                   f"{r['puts']:,} puts, {r['deletes']:,} deletes, {r['unchanged']:,} unchanged; "
                   f"{r['written']:,} written, {r['skipped_expired']:,} expired skipped")


@cli.command("catch-up")
@month_options
@click.option("--to", "to_text", metavar="ISO8601", help="pitr: catch up to this instant (default: now).")
@click.option("--mode", type=click.Choice(["pitr", "stream"]), default="pitr", show_default=True,
              help="pitr: incremental exports (PITR on, S3 staging); stream: the table's stream "
                   "(NEW_AND_OLD_IMAGES), which keeps records for 24 hours only: catch up at least daily.")
@click.option("--use-existing", metavar="URI", help="Adopt an incremental export (.../AWSDynamoDB/<id>).")
@click.option("--adopt-other-table", is_flag=True,
              help="With --use-existing: adopt an export of another table than the month's (recorded).")
@click.option("--yes", is_flag=True, help="Do not ask before writing to the destination.")
@click.option("--include-expired", is_flag=True, default=None, help="Also write puts whose TTL has passed.")
@method_option
@click.pass_obj
@handle_errors
def catch_up(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], to_text: str | None, mode: str,
             use_existing: str | None, adopt_other_table: bool, yes: bool, include_expired: bool | None,
             method: str | None) -> None:
    """Apply the changes made to loaded months since they were last in sync: puts and deletes on the index.

    The first catch-up starts at the full export's time, each next one where the last ended. pitr chains
    incremental exports (ExportType=INCREMENTAL_EXPORT) of 15 minutes to 24 hours up to --to; stream reads
    every shard of the table's stream from the stored position (a stream keeps 24 hours of records); both write
    the incremental-export layout under export/month=M/changes/. Changes are applied in write-time order with
    the full transform's winner rule, and loaded within the write budget, checkpointed per window.
    `etl status` shows the time each month is in sync up to."""
    from etl.pipeline import run_catchup

    cfg = obj.config()
    require_staging_root(cfg)
    results = run_catchup(cfg, _months(months, month_ranges), mode=mode, to=_at(to_text), use_existing=use_existing,
                          adopt_other_table=adopt_other_table,
                          yes=yes, include_expired=include_expired, reporter=obj.reporter, method=method,
                          confirm=lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False)
    _print_catchup(obj, results)


def configure_process() -> None:
    """What the `etl` process (not the library) sets: Arrow's system allocator, which gives freed chunk memory
    back at once (jemalloc holds on to it: +25% peak RSS in the transform); one OpenBLAS thread (nothing here
    multiplies matrices, yet its idle threads spun for 2.5% of the transform's CPU), unless the user set it; and
    SIGTERM handled as Ctrl-C is, so a run stopped by a scheduler or `kill` stops its tasks at once and keeps
    their progress (exit 130)."""
    import os
    import signal

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read when numpy is first imported, just below
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    _keep_freed_blocks()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _keep_freed_blocks() -> None:
    """glibc's malloc: blocks up to 32 MB come from the heap, freed ones stay there for the next block, and the
    threads share 2 heaps ("arenas") per core instead of 8.

    By default a block of 8 MB (a transform chunk, a decompressed block) is mapped fresh from the kernel and
    unmapped when freed, so every chunk paid ~2,000 page faults; and each of a run's many threads could keep a
    heap of its own. Together: the transform's page faults halve (161k to 82k for a 1 GB export), it takes
    ~0.25 CPU-s less per GB, and six months transformed at once peak at ~390 MB instead of ~510 (BENCHMARKS.md).
    Other platforms' allocators are left as they are."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt  # glibc only (musl has none)
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    mallopt(m_mmap_threshold, 32 << 20)  # the largest glibc accepts
    mallopt(m_trim_threshold, 32 << 20)  # free heap kept for reuse before any is given back
    mallopt(m_arena_max, 2 * (os.cpu_count() or 1))


def main() -> None:
    configure_process()
    cli(prog_name="etl")

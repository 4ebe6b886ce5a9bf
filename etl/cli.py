"""`etl`: a thin command line over the library. Parse, call, print.

Errors a user can act on are one red line (and a hint) with exit code 1; `--debug` shows the traceback.
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

from etl import __version__
from etl.config import Config, load_config, require_staging_root
from etl.errors import EtlError, Interrupted, PartlyDone
from etl.months import resolve_months
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


def _say(exc: EtlError) -> None:
    click.secho(f"error: {exc.message}", fg="red", err=True)
    if exc.hint:
        click.echo(f"  -> {exc.hint}", err=True)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx)
        debug = bool(ctx and ctx.debug)
        try:
            return fn(*args, **kwargs)
        except (Interrupted, KeyboardInterrupt):
            click.secho(f"interrupted: what was acknowledged is kept; resume with `{_this_command()}`", fg="yellow",
                        err=True)
            sys.exit(130)
        except EtlError as exc:
            if debug:
                traceback.print_exc()
            _say(exc)
            sys.exit(3 if isinstance(exc, PartlyDone) else 1)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:
            from etl import aws

            if debug:
                traceback.print_exc()
            explained = aws.explain(exc, ctx._cfg if ctx else None)
            if explained is not None:
                _say(explained)
                sys.exit(1)
            if not debug:
                click.secho(f"error: an unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
                click.echo("  -> this is a bug or an unhandled case: rerun with --debug for the full traceback, and "
                           "report it", err=True)
            sys.exit(1)

    return wrapper


def _this_command() -> str:
    """The command line this process was started with, as `etl ...` (what resumes an interrupted run)."""
    import shlex

    return shlex.join(["etl", *sys.argv[1:]])


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


def month_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--months", "month_ranges", multiple=True, metavar="FIRST-LAST",
                      help="An inclusive range, e.g. 201505-201705 (repeatable).")(fn)
    fn = click.option("--month", "months", multiple=True, metavar="YYYYMM",
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
        raise EtlError("no month given", hint="pass --month YYYYMM (repeatable) or --months FIRST-LAST")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--force", is_flag=True, help="Export again even if the month is committed.")
@click.option("--enable-pitr", is_flag=True, help="Turn on point-in-time recovery where it is off.")
@break_lease_option
@click.pass_obj
@handle_errors
def export(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], mode: str | None,
           use_existing: str | None, force: bool, enable_pitr: bool, break_lease: bool) -> None:
    """Export monthly tables to the staging store (no read capacity used in pitr mode)."""
    from etl.pipeline import run_export

    cfg = obj.config()
    require_staging_root(cfg)
    results = run_export(cfg, _months(months, month_ranges), mode=mode, use_existing=use_existing, force=force,
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
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def load(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], yes: bool, dry_run: bool,
         include_expired: bool | None, force: bool, break_lease: bool, engine: str | None) -> None:
    """Committed Parquet -> the destination table with BatchWriteItem, within the write budget.

    Shows the destination, account, item count, budget (each index's share, an on-demand table's warm
    throughput and how to pre-warm it), the write units and their cost, and the estimated duration, and
    asks before writing to a production table (--yes skips the question). --dry-run prints the same plan,
    then the counts it would write, skip and deduplicate with the exact write units and cost.
    Each finished part is checkpointed; rerunning the same command resumes."""
    from etl.pipeline import run_load

    cfg = obj.config(engine={"kind": engine})
    require_staging_root(cfg)
    ms = _months(months, month_ranges)
    results = run_load(cfg, ms, yes=yes, dry_run=dry_run, include_expired=include_expired, force=force,
                       break_lease=break_lease,
                       confirm=lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False,
                       reporter=obj.reporter)
    report(obj, "load", results, _load_line)


def _load_line(r: dict[str, Any]) -> str:
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
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def verify(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], break_lease: bool,
           engine: str | None) -> None:
    """Read every loaded key back (BatchGetItem, within a read budget) and compare values with the Parquet."""
    from etl.pipeline import run_verify

    cfg = obj.config(engine={"kind": engine})
    require_staging_root(cfg)
    results = run_verify(cfg, _months(months, month_ranges), break_lease=break_lease, reporter=obj.reporter)
    bad = [r for r in results if not r["ok"]]
    report(obj, "verify", results, lambda r: (
        f"verify {r['month']}: {r['checked']:,} checked, {r['missing']:,} missing, {r['different']:,} different"
        + (f", {r['undeleted']:,} not deleted" if r.get("undeleted") else "")
        + ("" if r["ok"] else f" (examples in _state/month={r['month']}/verify.json)")))
    if bad:
        raise EtlError(f"verify found differences in {len(bad)} month(s)",
                       hint="`etl load --month M --force` writes the month again (puts are idempotent)")


def _at(value: str | None) -> Any:
    if value is None:
        return None
    from datetime import datetime

    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@handle_errors
def catalog_register(obj: Ctx, database: str, table_name: str, export_table: str, rejected_table: str,
                     as_json: bool) -> None:
    """Create (or replace) the Glue tables over export/, transformed/ and rejected/, partitioned by month with
    partition projection (new months need no repair); idempotent. Prints Athena queries to try."""
    as_json = as_json or obj.json
    from etl.catalog import register, summary

    r = register(obj.config(), database, table_name, export_table=export_table, rejected_table=rejected_table)
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
@click.option("--role", type=click.Choice(["all", "export", "catch-up", "staging", "loader", "verify", "ttl",
                                           "live-service"]), default="all", show_default=True)
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@month_options
@click.pass_obj
@handle_errors
def status(obj: Ctx, as_json: bool, months: tuple[str, ...], month_ranges: tuple[str, ...]) -> None:
    """Months x stages from the staging store's manifests: state, counts, times, failures, next step."""
    as_json = as_json or obj.json
    from etl import staging
    from etl.status import collect

    cfg = obj.config()
    store = staging.open_store(require_staging_root(cfg), cfg.staging)
    store.check()
    name, destination = _destination_now(cfg)
    rows = collect(store, resolve_months(months, month_ranges) or None, destination=destination, table=name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"nothing staged under {store.uri} yet; start with `etl export --month YYYYMM`")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colour = {"done": "green", "failed": "red", "running": "yellow", "stale": "yellow", "-": "dim"}
    table = Table(title=f"staging: {store.uri}")
    table.add_column("month")
    for stage in staging.STAGES:
        table.add_column(stage)
    if any(r["catchup"]["state"] != "-" for r in rows):
        table.add_column("catch-up")
    table.add_column("next")
    for row in rows:
        cells = []
        for stage in staging.STAGES:
            c = row["stages"][stage]
            text = c["state"]
            if c.get("summary"):
                text += f"\n{c['summary']}"
            if c.get("duration_s") is not None:
                text += f"\n{c['duration_s']:.1f}s"
            if c.get("error"):
                text += f"\n{c['error'][:200]}"
            cells.append(f"[{colour.get(c['state'], 'white')}]{escape(text)}[/]")
        if any(r["catchup"]["state"] != "-" for r in rows):
            c = row["catchup"]
            text = c["state"] + (f"\n{c['summary']}" if c.get("summary") else "") + \
                (f"\n{c['error'][:200]}" if c.get("error") else "")
            cells.append(f"[{colour.get(c['state'], 'white')}]{escape(text)}[/]")
        table.add_row(row["month"], *cells, row["next"] or "[green]complete[/]")
    Console(width=max(120, Console().width)).print(table)


@cli.command()
@month_options
@click.option("--mode", type=click.Choice(["pitr", "scan"]), help="Export mode (default from config).")
@click.option("--yes", is_flag=True, help="Do not ask before writing to the destination.")
@click.option("--catch-up", "catch_up", type=click.Choice(["pitr", "stream"]), default=None,
              help="End with a catch-up of every month in this mode (see `etl catch-up --help`).")
@break_lease_option
@engine_option
@click.pass_obj
@handle_errors
def run(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], mode: str | None, yes: bool,
        catch_up: str | None, break_lease: bool, engine: str | None) -> None:
    """Every stage in order for the months, skipping what is already committed (resumes a backfill).

    Each month moves to its next stage as soon as its previous one committed, so months overlap: one loads
    while the next transforms and a third exports. A production destination is confirmed once, first."""
    from etl.pipeline import run as run_pipeline

    cfg = obj.config(engine={"kind": engine})
    require_staging_root(cfg)
    ms = _months(months, month_ranges)
    confirm = lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False  # noqa: E731
    out = run_pipeline(cfg, ms, mode=mode, yes=yes, break_lease=break_lease, reporter=obj.reporter, confirm=confirm)
    if obj.json and not catch_up:
        click.echo(json.dumps({"command": "run", "stages": {stage: [_counts(r) for r in rs]
                                                            for stage, rs in out.items()}}, default=str))
        return
    obj.reporter.info(f"run: every stage committed for {len(ms)} month(s); `etl status` shows them")
    if catch_up:
        from etl.catchup.stage import run as run_catchup

        _print_catchup(obj, run_catchup(cfg, ms, mode=catch_up, yes=yes, confirm=confirm, reporter=obj.reporter))


def _print_catchup(obj: Ctx, results: list[dict[str, Any]]) -> None:
    if obj.json:
        click.echo(json.dumps({"command": "catch-up", "months": [_counts(r) for r in results]}, default=str))
        return
    for r in results:
        if not r.get("windows"):
            click.echo(f"catch-up {r['month']}: nothing applied yet")
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
@click.option("--yes", is_flag=True, help="Do not ask before writing to the destination.")
@click.option("--include-expired", is_flag=True, default=None, help="Also write puts whose TTL has passed.")
@click.pass_obj
@handle_errors
def catch_up(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], to_text: str | None, mode: str,
             use_existing: str | None, yes: bool, include_expired: bool | None) -> None:
    """Apply the changes made to loaded months since they were last in sync: puts and deletes on the index.

    The first catch-up starts at the full export's time, each next one where the last ended. pitr chains
    incremental exports (ExportType=INCREMENTAL_EXPORT) of 15 minutes to 24 hours up to --to; stream reads
    every shard of the table's stream from the stored position (a stream keeps 24 hours of records); both write
    the incremental-export layout under export/month=M/changes/. Changes are applied in write-time order with
    the full transform's winner rule, and loaded within the write budget, checkpointed per window.
    `etl status` shows the time each month is in sync up to."""
    from etl.catchup.stage import run as run_catchup

    cfg = obj.config()
    require_staging_root(cfg)
    results = run_catchup(cfg, _months(months, month_ranges), mode=mode, to=_at(to_text), use_existing=use_existing,
                          yes=yes, include_expired=include_expired, reporter=obj.reporter,
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

"""`etl`: a thin command line over the library. Parse, call, print.

Errors a user can act on are one red line (and a hint) with exit code 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from etl import __version__
from etl.config import Config, load_config, require_staging_root
from etl.errors import EtlError
from etl.months import resolve_months
from etl.progress import Reporter


class Ctx:
    def __init__(self, config_path: str | None, debug: bool, progress: str) -> None:
        self.config_path = config_path
        self.debug = debug
        self.reporter = Reporter(progress)
        self._cfg: Config | None = None

    def config(self, **overrides: dict[str, Any]) -> Config:
        if self._cfg is None or overrides:
            self._cfg = load_config(self.config_path, overrides=overrides or None)
        return self._cfg


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx)
        debug = bool(ctx and ctx.debug)
        try:
            return fn(*args, **kwargs)
        except EtlError as exc:
            if debug:
                traceback.print_exc()
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  -> {exc.hint}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted: committed work is kept; rerun the same command to resume", fg="yellow",
                        err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:
            if debug:
                traceback.print_exc()
            else:
                click.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
                click.echo("  -> rerun with --debug for the full traceback", err=True)
            sys.exit(2)

    return wrapper


def month_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--months", "month_ranges", multiple=True, metavar="FIRST-LAST",
                      help="An inclusive range, e.g. 201505-201705 (repeatable).")(fn)
    fn = click.option("--month", "months", multiple=True, metavar="YYYYMM",
                      help="A month, e.g. 201604 (repeatable; a comma list works too).")(fn)
    return fn


def _months(months: tuple[str, ...], ranges: tuple[str, ...]) -> list[str]:
    out = resolve_months(months, ranges)
    if not out:
        raise EtlError("no month given", hint="pass --month YYYYMM (repeatable) or --months FIRST-LAST")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="FILE", envvar="ETL_CONFIG",
              help="Pipeline TOML config (default: $ETL_CONFIG, else ./pipeline.toml).")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--progress", type=click.Choice(["auto", "rich", "json", "quiet"]), default="auto",
              show_default=True, help="Progress display: rich bars on a terminal, JSON lines otherwise.")
@click.version_option(__version__, prog_name="etl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, progress: str) -> None:
    """Backfill monthly DynamoDB tables into one index table, staged in S3.

    \b
    Stages (each restartable; state lives in the staging store's _state/ manifests):
      export     monthly table -> S3 (point-in-time export, or --mode scan)
      transform  export -> projected Parquet, bad rows quarantined with a reason
      load       Parquet -> destination table, within a write budget, checkpointed
    `etl status` shows every month and the command to run next.
    """
    ctx.obj = Ctx(config_path, debug, progress)


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

    local_mod.server_up(obj.config(), port, background=not foreground, reporter=Reporter("rich"))


@local.command("down")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: [local] port).")
@click.pass_obj
@handle_errors
def local_down(obj: Ctx, port: int | None) -> None:
    """Stop the moto server that `etl local up` started (only that process)."""
    from etl import local as local_mod

    local_mod.server_down(obj.config(), port, reporter=Reporter("rich"))


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

    local_mod.seed(obj.config(), _months(months, month_ranges), rows_per_month, seed_value, obj.reporter)


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
    for label, customer in local_mod.sample_customers(cfg, _months(months, month_ranges)):
        d = discount_for(customer, None, cfg, ddb)
        click.echo(f"{label:>24}  {customer}: {d.describe()}")


# --------------------------------------------------------------------------- stages


@cli.command()
@month_options
@click.option("--mode", type=click.Choice(["pitr", "scan"]), help="pitr (default from config) or scan.")
@click.option("--use-existing", metavar="URI", help="Adopt an existing export folder (.../AWSDynamoDB/<id>).")
@click.option("--force", is_flag=True, help="Export again even if the month is committed.")
@click.option("--enable-pitr", is_flag=True, help="Turn on point-in-time recovery where it is off.")
@click.pass_obj
@handle_errors
def export(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], mode: str | None,
           use_existing: str | None, force: bool, enable_pitr: bool) -> None:
    """Export monthly tables to the staging store (no read capacity used in pitr mode)."""
    from etl.pipeline import run_export

    cfg = obj.config()
    require_staging_root(cfg)
    results = run_export(cfg, _months(months, month_ranges), mode=mode, use_existing=use_existing, force=force,
                         enable_pitr=enable_pitr, reporter=obj.reporter)
    for r in results:
        if not r.get("skipped"):
            click.echo(f"export {r['month']}: {r.get('item_count') or r.get('describe_item_count') or '?'} items, "
                       f"{len(r['files'])} file(s), {'verified' if r['verified'] else 'unverified'}")


@cli.command()
@month_options
@click.option("--force", is_flag=True, help="Transform again even if the month is committed and unchanged.")
@click.pass_obj
@handle_errors
def transform(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], force: bool) -> None:
    """Committed exports -> projected Parquet (transformed/month=M/), bad rows to rejected/ with a reason.

    Counts reconcile (items_in = written + filtered + rejected) before the manifest is committed. A month
    whose export and mapping did not change since its last transform is skipped."""
    from etl.pipeline import run_transform

    cfg = obj.config()
    require_staging_root(cfg)
    for r in run_transform(cfg, _months(months, month_ranges), force=force, reporter=obj.reporter):
        if not r.get("skipped"):
            c = r["collisions"]
            click.echo(f"transform {r['month']}: {r['items_in']:,} items -> {r['written']:,} rows written, "
                       f"{r['filtered']:,} filtered, {r['rejected']:,} rejected {r['rejected_by']}, "
                       f"{c['keys']} colliding keys")


@cli.command()
@month_options
@click.option("--yes", is_flag=True, help="Write without asking (for scripts).")
@click.option("--dry-run", is_flag=True, help="Plan, read and count everything, but write nothing.")
@click.option("--include-expired", is_flag=True, default=None,
              help="Also write items whose ExpirationTimestamp has passed (skipped and counted by default).")
@click.option("--force", is_flag=True, help="Ignore the part checkpoints and write every part again.")
@click.pass_obj
@handle_errors
def load(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], yes: bool, dry_run: bool,
         include_expired: bool | None, force: bool) -> None:
    """Committed Parquet -> the destination table with BatchWriteItem, within the write budget.

    Shows the destination, account, item count, budget (each index's share, an on-demand table's warm
    throughput and how to pre-warm it), the write units and their cost, and the estimated duration, and
    asks before writing to a production table (--yes skips the question). --dry-run prints the same plan,
    then the counts it would write, skip and deduplicate with the exact write units and cost.
    Each finished part is checkpointed; rerunning the same command resumes."""
    from etl.pipeline import run_load

    cfg = obj.config()
    require_staging_root(cfg)
    ms = _months(months, month_ranges)
    results = run_load(cfg, ms, yes=yes, dry_run=dry_run, include_expired=include_expired, force=force,
                       confirm=lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False,
                       reporter=obj.reporter)
    for r in results:
        if r.get("dry_run"):
            units = " + ".join(f"{v:,.0f} on {'index ' + k if k != 'table' else 'the table'}"
                               for k, v in r["wcu_estimated"].items())
            cost = f"${r['cost_usd']:,.2f} at ${r['price_per_million_wcu']:g} per million write units" + (
                "" if r["on_demand"] else " on demand (provisioned: within the capacity paid by the hour)")
            click.echo(f"load {r['month']}: dry run, nothing written: {r['written']:,} would be written, "
                       f"{r['skipped_expired']:,} expired skipped, {r['deduplicated']:,} deduplicated, "
                       f"{r['quarantined']:,} quarantined; {r['wcu_estimated_total']:,.0f} WCU ({units or 'none'}), "
                       f"{cost}")
        elif not r.get("skipped"):
            share = f" ({r['budget_share']:.0%} of the budget)" if r.get("budget_share") is not None else ""
            click.echo(f"load {r['month']}: {r['written']:,} written, {r['skipped_expired']:,} expired skipped, "
                       f"{r['deduplicated']:,} deduplicated, {r['quarantined']:,} quarantined, "
                       f"{r['wcu_consumed']:,} WCU at {r['average_wcu_per_s']} WCU/s{share}")


@cli.command()
@month_options
@click.pass_obj
@handle_errors
def verify(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...]) -> None:
    """Read every loaded key back (BatchGetItem, within a read budget) and compare values with the Parquet."""
    from etl.pipeline import run_verify

    cfg = obj.config()
    require_staging_root(cfg)
    results = run_verify(cfg, _months(months, month_ranges), reporter=obj.reporter)
    bad = [r for r in results if not r["ok"]]
    for r in results:
        click.echo(f"verify {r['month']}: {r['checked']:,} checked, {r['missing']:,} missing, "
                   f"{r['different']:,} different"
                   + ("" if r["ok"] else f" (examples in _state/month={r['month']}/verify.json)"))
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
    click.echo(f"TTL on {r['table']}: {verb} {r['status']} on {r['attribute']}")


@ttl.command("preview")
@click.option("--at", "at_text", required=True, metavar="DATE", help="An ISO-8601 instant with an offset.")
@click.pass_obj
@handle_errors
def ttl_preview(obj: Ctx, at_text: str) -> None:
    """Count, per month of the staged Parquet, the rows whose TTL will have passed by DATE (no table scan)."""
    from etl.ttl import preview

    rows = preview(obj.config(), _at(at_text))
    if not rows:
        click.echo("no transformed months staged yet")
    for r in rows:
        click.echo(f"{r['month']}: {r['expired_by']:,} of {r['rows']:,} rows expired by {at_text}, "
                   f"{r['remaining']:,} remain")


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
    from etl.catalog import register, summary

    r = register(obj.config(), database, table_name, export_table=export_table, rejected_table=rejected_table)
    click.echo(json.dumps(r, indent=2, default=str) if as_json else summary(r))


@cli.command("iam-policy")
@month_options
@click.option("--side", type=click.Choice(["source", "staging", "destination", "all"]), default="all",
              show_default=True)
@click.option("--account", default="*", show_default=True, help="Account id for the table ARNs.")
@click.pass_obj
@handle_errors
def iam_policy(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], side: str, account: str) -> None:
    """Print least-privilege IAM policy documents for each side (attach each to that side's role).

    With --month/--months the source policy names exactly those monthly tables; without, the template
    with a wildcard for the month. The lookup's Query/PutItem statement is for the live service's role."""
    from etl.iam import policies

    docs = policies(obj.config(), resolve_months(months, month_ranges) or None, account)
    click.echo(json.dumps(docs if side == "all" else docs[side], indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@month_options
@click.pass_obj
@handle_errors
def status(obj: Ctx, as_json: bool, months: tuple[str, ...], month_ranges: tuple[str, ...]) -> None:
    """Months x stages from the staging store's manifests: state, counts, times, failures, next step."""
    from etl import staging
    from etl.status import collect

    cfg = obj.config()
    store = staging.open_store(require_staging_root(cfg), cfg.staging)
    rows = collect(store, resolve_months(months, month_ranges) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"nothing staged under {store.uri} yet; start with `etl export --month YYYYMM`")
        return
    from rich.console import Console
    from rich.table import Table

    colour = {"done": "green", "failed": "red", "running": "yellow", "stale": "yellow", "-": "dim"}
    table = Table(title=f"staging: {store.uri}")
    table.add_column("month")
    for stage in staging.STAGES:
        table.add_column(stage)
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
            cells.append(f"[{colour.get(c['state'], 'white')}]{text}[/]")
        table.add_row(row["month"], *cells, row["next"] or "[green]complete[/]")
    Console(width=max(120, Console().width)).print(table)


@cli.command()
@month_options
@click.option("--mode", type=click.Choice(["pitr", "scan"]), help="Export mode (default from config).")
@click.option("--yes", is_flag=True, help="Do not ask before writing to the destination.")
@click.pass_obj
@handle_errors
def run(obj: Ctx, months: tuple[str, ...], month_ranges: tuple[str, ...], mode: str | None, yes: bool) -> None:
    """Every stage in order for the months, skipping what is already committed (resumes a backfill).

    Each month moves to its next stage as soon as its previous one committed, so months overlap: one loads
    while the next transforms and a third exports. A production destination is confirmed once, first."""
    from etl.pipeline import run as run_pipeline

    cfg = obj.config()
    require_staging_root(cfg)
    ms = _months(months, month_ranges)
    run_pipeline(cfg, ms, mode=mode, yes=yes, reporter=obj.reporter,
                 confirm=lambda q: click.confirm(q, default=False, err=True) if sys.stdin.isatty() else False)
    obj.reporter.info(f"run: every stage committed for {len(ms)} month(s); `etl status` shows them")


def configure_process() -> None:
    """What the `etl` process (not the library) sets: Arrow's system allocator, which gives freed chunk memory
    back at once (jemalloc holds on to it: +25% peak RSS in the transform)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def main() -> None:
    configure_process()
    cli(prog_name="etl")

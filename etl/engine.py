"""Runs one stage over many months: a bounded local pool, failures recorded in the staging store.

Each month is independent: one failing month does not stop the others; each failure is written to
`_state/month=M/<stage>.failed.json` with the command that reruns it, and reported together at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from etl import staging
from etl.errors import EtlError
from etl.progress import Reporter


def rerun_command(stage: str, month: str, extra: str = "") -> str:
    return f"etl {stage} --month {month}{' ' + extra if extra else ''}"


def run_months(
    stage: str,
    months: list[str],
    store: staging.Store,
    fn: Callable[[str], dict[str, Any]],
    concurrency: int,
    reporter: Reporter,
    rerun_extra: str = "",
) -> list[dict[str, Any]]:
    if not months:
        raise EtlError(f"no month given to {stage}", hint="pass --month YYYYMM or --months FIRST-LAST")
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, BaseException] = {}

    def one(month: str) -> None:
        try:
            results[month] = fn(month)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # recorded per month, re-raised together below
            failures[month] = exc
            message = str(exc) if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
            try:
                staging.record_failure(store, month, stage, message, rerun_command(stage, month, rerun_extra))
            except Exception as rec_exc:  # the store itself may be what failed
                reporter.warn(f"could not record the failure of {stage} {month}: {rec_exc}")
            reporter.warn(f"{stage} {month} failed: {message}", month=month, stage=stage)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(months)))) as pool:
        list(pool.map(one, months))
    if failures:
        if len(failures) == 1 and len(months) == 1:
            exc = next(iter(failures.values()))
            if isinstance(exc, EtlError):
                raise exc
        listed = "; ".join(
            f"{m}: {e if isinstance(e, EtlError) else type(e).__name__ + ': ' + str(e)}"
            for m, e in sorted(failures.items())
        )
        first = sorted(failures)[0]
        raise EtlError(
            f"{stage} failed for {len(failures)} of {len(months)} month(s): {listed}",
            hint=f"fix the cause, then rerun e.g. `{rerun_command(stage, first, rerun_extra)}` "
            "(committed months are skipped); `etl status` shows every month",
        ) from next(iter(failures.values()))
    return [results[m] for m in months]

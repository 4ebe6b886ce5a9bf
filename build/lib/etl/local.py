"""Embedded local AWS (moto's server on 127.0.0.1) and realistic sample monthly tables."""

from __future__ import annotations

import calendar
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.exceptions

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError
from etl.progress import QUIET, Reporter

# --------------------------------------------------------------------------- the server


def _pid_file(cfg: Config, port: int) -> Path:
    return Path(cfg.local.state_dir) / f"moto-{port}.pid"


def _alive(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"moto.server" in cmd


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1) as r:
            return bool(r.status == 200)
    except Exception:
        return False


def server_up(cfg: Config, port: int | None = None, background: bool = True, reporter: Reporter = QUIET) -> int:
    """Start moto's server on 127.0.0.1; returns its pid (background) or never returns (foreground)."""
    port = port or cfg.local.port
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    pid_file = _pid_file(cfg, port)
    if pid_file.exists():
        pid = int(pid_file.read_text().strip() or 0)
        if _alive(pid) and _answers(port):
            reporter.info(f"local AWS already running on 127.0.0.1:{port} (pid {pid})")
            return pid
        pid_file.unlink()
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise EtlError(
                f"port {port} on 127.0.0.1 is taken by another process",
                hint="set [local] port in the config or pass --port",
            )
    if not background:
        os.execv(sys.executable, cmd)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log = open(pid_file.with_suffix(".log"), "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise EtlError(f"moto server did not start on 127.0.0.1:{port}; see {pid_file.with_suffix('.log')}")
        time.sleep(0.2)
    pid_file.write_text(str(proc.pid))
    reporter.info(f"local AWS (moto) on http://127.0.0.1:{port}, pid {proc.pid}; `etl local down` stops it")
    return proc.pid


def server_down(cfg: Config, port: int | None = None, reporter: Reporter = QUIET) -> bool:
    """Stop only the process our pid file names, and only if it is a moto server."""
    port = port or cfg.local.port
    pid_file = _pid_file(cfg, port)
    if not pid_file.exists():
        reporter.info(f"no local AWS started by etl on port {port}")
        return False
    pid = int(pid_file.read_text().strip() or 0)
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    reporter.info(f"local AWS on port {port} stopped (pid {pid})")
    return True


# --------------------------------------------------------------------------- sample data

_ZONES = [("-07:00", -7 * 60), ("-08:00", -8 * 60), ("Z", 0), ("+00:00", 0), ("+01:00", 60),
          ("+05:30", 330), ("+09:00", 540), ("-04:00", -4 * 60)]
REFS = ("mail", "ad", "home")
# dirty kind -> what the transform must make of it (a filter reason or a quarantine reason)
DIRTY_KINDS = {"empty_order": "filtered:empty_OrderID", "bad_datetime": "rejected:bad_datetime",
               "order_as_number": "rejected:type_mismatch", "order_as_bool": "rejected:type_mismatch",
               "order_as_list": "rejected:type_mismatch"}


def customer_ids(seed: int, n: int) -> list[str]:
    rng = random.Random(f"customers-{seed}")
    return [f"C{rng.randrange(10**9):09d}" for _ in range(n)]


def _joda(local: datetime, zone: str, millis: int | None) -> str:
    frac = f".{millis:03d}" if millis is not None else ""
    return local.strftime("%Y-%m-%dT%H:%M:%S") + frac + zone


def generate_month(month: str, rows: int, seed: int, customers: int | None = None) -> list[dict[str, Any]]:
    """Synthetic CustomerTracker rows as the Java service writes them (low-level DynamoDB items).

    About a third carry an OrderID; DateTime is Joda's `toString()` in assorted zones, some without
    millis, a few date-only; ~2% are dirty (one of DIRTY_KINDS, recorded in `_dirty` for tests).
    A few orders share a customer's second with another order (a key collision after flooring).
    """
    rng = random.Random(f"{seed}-{month}")
    pool = customer_ids(seed, customers or max(20, rows // 6))
    y, m = int(month[:4]), int(month[4:])
    days = calendar.monthrange(y, m)[1]
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, Any]] = []
    last_order: dict[str, tuple[datetime, str]] = {}
    while len(out) < rows:
        loyal = rng.random() < 0.3  # a few customers come back often
        cid = pool[min(int(rng.paretovariate(1.2)) - 1, len(pool) - 1)] if loyal else rng.choice(pool)
        zone, minutes = rng.choice(_ZONES)
        local = datetime(y, m, rng.randint(1, days), rng.randrange(24), rng.randrange(60), rng.randrange(60))
        roll = rng.random()
        is_order = rng.random() < 1 / 3
        if roll < 0.05:
            dt = local.strftime("%Y-%m-%d")
        elif roll < 0.25:
            dt = _joda(local, zone, None)
        else:
            dt = _joda(local, zone, rng.randrange(1000))
        if is_order and cid in last_order and rng.random() < 0.02:
            # same second as this customer's previous order, other millis: collides once floored
            prev_local, prev_zone = last_order[cid]
            dt = _joda(prev_local, prev_zone, rng.randrange(1000))
        if (cid, dt) in seen:
            continue
        seen.add((cid, dt))
        item: dict[str, Any] = {
            "CustomerID": {"S": cid},
            "DateTime": {"S": dt},
            "URLClicked": {"S": f"https://shop.example.com/p/{rng.randrange(5000)}?ref={rng.choice(REFS)}"},
            "ProductID": {"S": f"P{rng.randrange(10000):05d}"},
        }
        if is_order:
            item["OrderID"] = {"S": f"O{rng.randrange(10**12):012d}"}
            if "T" in dt:
                last_order[cid] = (local, zone)
        if rng.random() < 0.02:
            kind = rng.choice(sorted(DIRTY_KINDS))
            if kind == "empty_order":
                item["OrderID"] = {"S": ""}
            elif kind == "bad_datetime":
                seen.discard((cid, dt))
                dt = rng.choice(["not-a-date", f"{y}-{m:02d}-32T10:00:00Z", f"{y}/{m:02d}/05 10:00", "yesterday"])
                if (cid, dt) in seen:
                    continue
                seen.add((cid, dt))
                item["DateTime"] = {"S": dt}
                item["OrderID"] = {"S": f"O{rng.randrange(10**12):012d}"}
            elif kind == "order_as_number":
                item["OrderID"] = {"N": str(rng.randrange(10**9))}
            elif kind == "order_as_bool":
                item["OrderID"] = {"BOOL": True}
            elif kind == "order_as_list":
                item["OrderID"] = {"L": [{"S": "O1"}, {"N": "2"}]}
            item["_dirty"] = kind
        out.append(item)
    return out


STREAM = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}


def _ensure_table(ddb: Any, name: str, key: list[tuple[str, str, str]], provisioned: int | None,
                  stream: bool = False) -> bool:
    try:
        d = ddb.describe_table(TableName=name)["Table"]
        if stream and not (d.get("StreamSpecification") or {}).get("StreamEnabled"):
            ddb.update_table(TableName=name, StreamSpecification=STREAM)
        return False
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [{"AttributeName": a, "KeyType": k} for a, _, k in key],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": t} for a, t, _ in key],
    }
    if provisioned:
        kwargs["ProvisionedThroughput"] = {"ReadCapacityUnits": provisioned, "WriteCapacityUnits": provisioned}
    else:
        kwargs["BillingMode"] = "PAY_PER_REQUEST"
    if stream:
        kwargs["StreamSpecification"] = STREAM
    ddb.create_table(**kwargs)
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return True


def _write_items(ddb: Any, table: str, items: list[dict[str, Any]], threads: int = 8) -> None:
    batches = [items[i : i + 25] for i in range(0, len(items), 25)]

    def put(batch: list[dict[str, Any]]) -> None:
        request = {table: [{"PutRequest": {"Item": it}} for it in batch]}
        for attempt in range(20):
            r = ddb.batch_write_item(RequestItems=request)
            request = r.get("UnprocessedItems") or {}
            if not request:
                return
            time.sleep(min(2.0, 0.05 * 2**attempt))
        raise EtlError(f"seeding {table}: items stayed unprocessed after 20 attempts")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, batches))


def seed(
    cfg: Config,
    months: list[str],
    rows_per_month: int,
    seed_value: int = 7,
    reporter: Reporter = QUIET,
    destination_wcu: int = 4000,
) -> dict[str, Any]:
    """Create the monthly source tables (PITR on, a NEW_AND_OLD_IMAGES stream for `etl catch-up --mode stream`),
    the staging bucket and the destination table; fill each month with synthetic rows. Rerunning replaces the
    months' rows (same seed, same rows)."""
    for side in (cfg.source, cfg.staging, cfg.destination):
        if not aws.is_loopback(side.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")):
            raise EtlError(
                "`etl local seed` only writes to a local emulator: an endpoint_url on 127.0.0.1 is "
                "required for source, staging and destination",
                hint="use the demo config (--config demo.toml)",
            )
    ddb = aws.client(cfg.source, "dynamodb", max_pool=16, parameter_validation=False)
    if cfg.staging.root.startswith("s3://"):
        s3 = aws.client(cfg.staging, "s3")
        bucket, _ = staging.split_s3(cfg.staging.root)
        try:
            s3.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError:
            if cfg.staging.aws_region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(
                    Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": cfg.staging.aws_region}
                )
    dest = aws.client(cfg.destination, "dynamodb")
    dkey = [(cfg.destination.partition_key, "S", "HASH"), (cfg.destination.sort_key, "N", "RANGE")]
    _ensure_table(dest, cfg.destination_table(), dkey, destination_wcu)
    summary: dict[str, Any] = {"months": {}, "destination": cfg.destination_table()}
    for month in months:
        t0 = time.monotonic()
        table = cfg.source_table(month)
        created = _ensure_table(ddb, table, [("CustomerID", "S", "HASH"), ("DateTime", "S", "RANGE")], None)
        ddb.update_continuous_backups(
            TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
        rows = generate_month(month, rows_per_month, seed_value)
        dirty: dict[str, int] = {}
        for r in rows:
            kind = r.pop("_dirty", None)
            if kind:
                dirty[kind] = dirty.get(kind, 0) + 1
        # the rows go in before the stream is on, as in a table whose stream came later: a first catch-up does
        # not read the whole table back from the stream (moto's streams are slow)
        if created or ddb.describe_table(TableName=table)["Table"].get("ItemCount", 0) < len(rows):
            _write_items(ddb, table, rows)
        else:  # seeded before: rewriting the same rows would only fill the stream
            reporter.info(f"{table} already holds the seeded rows; left as it is")
        _ensure_table(ddb, table, [("CustomerID", "S", "HASH"), ("DateTime", "S", "RANGE")], None, stream=True)
        seconds = time.monotonic() - t0
        summary["months"][month] = {"table": table, "rows": len(rows), "dirty": dirty, "created": created,
                                    "seconds": round(seconds, 2)}
        reporter.info(f"seeded {table}: {len(rows):,} rows ({sum(dirty.values())} dirty) in {seconds:.1f}s")
    return summary


def change(cfg: Config, month: str, at: datetime | None = None) -> dict[str, Any]:
    """Demo of what a catch-up is for: after the backfill, one order of the month is cancelled (its OrderID
    removed) and one is added (a new customer ordering now)."""
    ddb = aws.client(cfg.source, "dynamodb")
    table = cfg.source_table(month)
    cancelled = None
    kwargs: dict[str, Any] = {"TableName": table, "Limit": 500}
    while cancelled is None:
        page = ddb.scan(**kwargs)
        orders = [it for it in page["Items"] if it.get("OrderID", {}).get("S", "").startswith("O")
                  and "T" in it["DateTime"].get("S", "")]  # the greatest customer: not the lookups' sample
        cancelled = max(orders, key=lambda it: it["CustomerID"]["S"]) if orders else None
        if cancelled is None and "LastEvaluatedKey" not in page:
            raise EtlError(f"{table} holds no order to cancel", hint="seed it first: `etl local seed`")
        kwargs["ExclusiveStartKey"] = page.get("LastEvaluatedKey")
    key = {"CustomerID": cancelled["CustomerID"], "DateTime": cancelled["DateTime"]}
    ddb.update_item(TableName=table, Key=key, UpdateExpression="REMOVE OrderID")
    when = (at or datetime.now().astimezone()).replace(microsecond=0).isoformat()
    added = {"CustomerID": {"S": "C-DEMO-NEW"}, "DateTime": {"S": when}, "OrderID": {"S": f"O-DEMO-{month}"},
             "URLClicked": {"S": "https://shop.example.com/p/1?ref=mail"}, "ProductID": {"S": "P00001"}}
    ddb.put_item(TableName=table, Item=added)
    return {"table": table, "cancelled": {k: v["S"] for k, v in cancelled.items() if "S" in v},
            "added": {k: v["S"] for k, v in added.items()}}


def sample_customers(cfg: Config, months: list[str]) -> list[tuple[str, str]]:
    """From the staged Parquet: a customer whose newest order is in the newest month (loyal), one who
    ordered only in the oldest month (anniversary, when that month is 3+ months back), and one unknown."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = staging.open_store(cfg.staging.root, cfg.staging)
    seen: dict[str, set[str]] = {}
    for month in months:
        t = staging.read_manifest(store, month, "transform") or {}
        for part in t.get("parts", []):
            with store.open_read(part["output"]) as f:
                ids = pq.read_table(pa.BufferReader(f.read()), columns=["CustomerID"])["CustomerID"].to_pylist()
            for cid in ids:
                seen.setdefault(cid, set()).add(month)
    newest, oldest = max(months), min(months)
    loyal = sorted(c for c, ms in seen.items() if newest in ms)
    anniversary = sorted(c for c, ms in seen.items() if ms == {oldest})
    out = []
    if loyal:
        out.append((f"ordered in {newest}", loyal[0]))
    if anniversary:
        out.append((f"ordered only in {oldest}", anniversary[0]))
    out.append(("never ordered", "C-NOBODY-0000"))
    return out

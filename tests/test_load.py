"""The loader against DynamoDB Local (the real engine's validation), with faults injected by a proxy."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl import staging
from etl.config import Config
from etl.errors import EtlError
from etl.load.writer import BatchWriter, proxy_for
from etl.pipeline import run_export, run_load, run_transform, run_verify
from tests.conftest import ddb_client
from tests.faultproxy import FaultProxy
from tests.helpers import write_real_export
from tests.httpproxy import ForwardProxy, tls_front

M = "201604"
NOW = int(datetime(2016, 6, 1, tzinfo=UTC).timestamp())  # the 2016 rows are not expired yet
FAST = "[load]\nmax_wcu = 100000\nmax_rcu = 100000\nconcurrency = 4\n"


def orders(n: int, start: int = 0, day: int = 12) -> list[dict[str, Any]]:
    return [{"CustomerID": {"S": f"C{i % 997:05d}"}, "DateTime": {"S": f"2016-04-{day:02d}T10:{i // 60 % 60:02d}:"
             f"{i % 60:02d}.{i % 1000:03d}-07:00"}, "OrderID": {"S": f"O{i:07d}"}} for i in range(start, start + n)]


def staged(cfg: Config, tmp_path: Path, files: list[list[dict[str, Any]]]) -> dict[str, Any]:
    folder = write_real_export(tmp_path / "ext", files)
    run_export(cfg, [M], use_existing=str(folder))
    [t] = run_transform(cfg, [M])
    return t


def table_items(endpoint: str, table: str) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for page in ddb_client(endpoint).get_paginator("scan").paginate(TableName=table):
        for it in page["Items"]:
            out[(it["CustomerID"]["S"], int(it["CreationDateTime"]["N"]))] = it
    return out


@pytest.fixture()
def proxy(ddb_local: str) -> Iterator[Callable[..., FaultProxy]]:
    made: list[FaultProxy] = []

    def make(**weights: float) -> FaultProxy:
        p = FaultProxy(ddb_local, weights or None)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_load_writes_exact_items_and_verify_passes(ddb_local: str, dest_table: Callable[..., str],
                                                   make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST)
    files = [orders(400), orders(300, 400)]
    files[0].append({"CustomerID": {"S": "C00001"}, "DateTime": {"S": "2016-04-12T10:00:01.999-07:00"},
                     "OrderID": {"S": "OZZZ"}})  # collides with O0000001 (same second): OZZZ wins
    t = staged(cfg, tmp_path, files)
    [m] = run_load(cfg, [M], now=NOW)
    assert m["written"] == 700 and m["deduplicated"] == 1 and m["skipped_expired"] == 0
    assert m["written"] + m["deduplicated"] + m["skipped_expired"] + m["quarantined"] == t["written"] == 701
    assert m["wcu_consumed"] >= 700  # DynamoDB Local reports real consumed capacity
    items = table_items(ddb_local, table)
    assert len(items) == 700
    exp = int(datetime(2016, 4, 12, 17, 0, 1, tzinfo=UTC).timestamp())
    assert items[("C00001", exp)] == {"CustomerID": {"S": "C00001"}, "CreationDateTime": {"N": str(exp)},
                                      "OrderID": {"S": "OZZZ"}, "ExpirationTimestamp": {"N": str(exp + 31536000)}}
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["checked"] == 700
    ddb_client(ddb_local).delete_item(TableName=table, Key={"CustomerID": {"S": "C00001"},
                                                            "CreationDateTime": {"N": str(exp)}})
    [v] = run_verify(cfg, [M])
    assert not v["ok"] and v["missing"] == 1 and v["missing_examples"] == [{"CustomerID": "C00001",
                                                                             "CreationDateTime": exp}]


def test_expired_items_are_skipped_and_counted_unless_included(ddb_local: str, dest_table: Callable[..., str],
                                                               make_config: Callable[..., Config],
                                                               tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST)
    staged(cfg, tmp_path, [orders(50)])
    [m] = run_load(cfg, [M])  # now: 2016 + one year is long past
    assert (m["written"], m["skipped_expired"]) == (0, 50)
    assert table_items(ddb_local, table) == {}
    from etl.load.stage import reset_checkpoints

    reset_checkpoints(cfg, [M])
    [m] = run_load(cfg, [M], include_expired=True)
    assert (m["written"], m["skipped_expired"]) == (50, 0) and len(table_items(ddb_local, table)) == 50


def test_faults_are_retried_until_every_item_is_acknowledged(ddb_local: str, dest_table: Callable[..., str],
                                                             make_config: Callable[..., Config], tmp_path: Path,
                                                             proxy: Callable[..., FaultProxy]) -> None:
    p = proxy(ok=0.45, partial=0.2, throttle=0.15, error500=0.1, drop=0.1)
    table = dest_table()
    cfg = make_config(dest_endpoint=p.url, dest_table=table, extra=FAST + "max_backoff_seconds = 0.5\n")
    staged(cfg, tmp_path, [orders(1500), orders(1000, 1500)])
    [m] = run_load(cfg, [M], now=NOW)
    assert m["written"] == 2500 and m["retries"] > 0 and m["throttles"] > 0
    assert {"partial", "throttle", "error500", "drop"} <= set(p.faults)
    assert len(table_items(ddb_local, table)) == 2500
    assert max(s["items"] for s in p.seen) <= 25
    assert all(s["items"] == s["distinct_keys"] for s in p.seen)  # no two items with one key in a request


def test_refusals_before_any_write(ddb_local: str, dest_table: Callable[..., str],
                                   make_config: Callable[..., Config], tmp_path: Path) -> None:
    wrong_key = dest_table(key=("CustomerID", "S", "OrderTime", "N"))
    cfg = make_config(dest_endpoint=ddb_local, dest_table=wrong_key, extra=FAST)
    staged(cfg, tmp_path, [orders(5)])
    with pytest.raises(EtlError, match="refusing to write"):
        run_load(cfg, [M], now=NOW)
    on_demand = dest_table(wcu=None)
    cfg = make_config(dest_endpoint=ddb_local, dest_table=on_demand, extra="[load]\nwrite_capacity_fraction = 0.5\n")
    with pytest.raises(EtlError, match="on-demand") as e:
        run_load(cfg, [M], now=NOW)
    assert "max_wcu" in (e.value.hint or "")
    cfg = make_config(dest_endpoint=ddb_local, dest_table=on_demand)
    with pytest.raises(EtlError, match="no write budget"):
        run_load(cfg, [M], now=NOW)
    prod = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=prod, extra=FAST, production=True)
    with pytest.raises(EtlError, match="not confirmed"):
        run_load(cfg, [M], now=NOW, confirm=lambda q: False)
    assert table_items(ddb_local, prod) == {}
    [m] = run_load(cfg, [M], now=NOW, dry_run=True)
    assert m["dry_run"] and table_items(ddb_local, prod) == {}
    [m] = run_load(cfg, [M], now=NOW, yes=True)
    assert m["written"] == 5


def test_items_over_400kb_are_quarantined(ddb_local: str, dest_table: Callable[..., str],
                                          make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table,
                      extra='[transform]\nhook = "tests.hooks_example:giant_first_order"\n' + FAST)
    staged(cfg, tmp_path, [orders(30)])
    [m] = run_load(cfg, [M], now=NOW)
    assert (m["written"], m["quarantined"]) == (29, 1)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    [q] = [json.loads(x) for x in gzip.decompress(store.read("rejected/month=201604/load-part-00000.jsonl.gz"))
           .splitlines()]
    assert q["reason"] == "item_too_large" and q["key"]["CustomerID"] == "C00000"


def test_resume_skips_finished_parts(ddb_local: str, dest_table: Callable[..., str],
                                     make_config: Callable[..., Config], tmp_path: Path,
                                     proxy: Callable[..., FaultProxy]) -> None:
    table = dest_table()
    p = proxy()
    cfg = make_config(dest_endpoint=p.url, dest_table=table, extra=FAST)
    t = staged(cfg, tmp_path, [orders(100, i * 100) for i in range(4)])
    store = staging.open_store(cfg.staging.root, cfg.staging)
    here = staging.destination_of(ddb_client(ddb_local).describe_table(TableName=table)["Table"]).record()
    for part in (0, 2, 3):  # parts finished in an earlier run: 0 and 2 into this table, 3 with no table recorded
        store.write_json(staging.load_part_checkpoint_key(M, part), {"part": part, "rows": 100, "written": 100,
                         "skipped_expired": 0, "deduplicated": 0, "quarantined": 0, "wcu": 100.0,
                         "requests": 4, "retries": 0, "throttles": 0, "transform_run": t["run_id"],
                         **(here if part != 3 else {})})
    [m] = run_load(cfg, [M], now=NOW)
    assert m["written"] == 400  # the manifest sums every checkpoint
    assert sum(s["items"] for s in p.seen) == 200  # only the parts not known to be in this table were sent


def test_checkpoints_of_an_older_transform_are_not_trusted(ddb_local: str, dest_table: Callable[..., str],
                                                            make_config: Callable[..., Config], tmp_path: Path,
                                                            proxy: Callable[..., FaultProxy]) -> None:
    table = dest_table()
    p = proxy()
    cfg = make_config(dest_endpoint=p.url, dest_table=table, extra=FAST)
    staged(cfg, tmp_path, [orders(100, i * 100) for i in range(3)])
    run_load(cfg, [M], now=NOW)
    sent = sum(s["items"] for s in p.seen)
    [t2] = run_transform(cfg, [M], force=True)  # the month is transformed again: parts may differ
    [m] = run_load(cfg, [M], now=NOW)
    assert sum(s["items"] for s in p.seen) - sent == 300  # every part loaded again
    assert m["written"] == 300 and m["transform_run"] == t2["run_id"]


def test_sigkill_mid_load_then_rerun_leaves_the_table_exact(ddb_local: str, dest_table: Callable[..., str],
                                                             make_config: Callable[..., Config],
                                                             tmp_path: Path) -> None:
    """kill -9 mid-part, then the same command: the resume starts each unfinished part at its saved low-water
    mark, so it rewrites at most the window that was in flight (4 batches of 25 per part, two parts at a time),
    not whole parts; the manifest keeps both runs. Items are counted as they go out, by a proxy in front of
    DynamoDB Local."""
    import os
    import signal
    import subprocess
    import sys
    import time

    now = datetime.now(UTC)
    month = f"{now.year - (now.month == 1)}{(now.month - 2) % 12 + 1:02d}"  # last month: not expired
    rows = [[{"CustomerID": {"S": f"K{i % 500:04d}"}, "DateTime": {"S": f"{month[:4]}-{month[4:]}-10T08:"
              f"{i // 60 % 60:02d}:{i % 60:02d}Z"}, "OrderID": {"S": f"O{i}"}} for i in range(f * 400, f * 400 + 400)]
            for f in range(6)]
    table = dest_table()
    window = 4
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table,
                      extra=f"[load]\nmax_wcu = 250\nmax_rcu = 10000\nconcurrency = {window}\ncheckpoint_seconds = 0\n")
    folder = write_real_export(tmp_path / "ext", rows)
    run_export(cfg, [month], use_existing=str(folder))
    run_transform(cfg, [month])
    store = staging.open_store(cfg.staging.root, cfg.staging)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [sys.executable, "-m", "etl", "--config", cfg.path, "--progress", "json", "load", "--month", month, "--yes"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (store.list(staging.state_key(month, "load/")) and store.list(staging.progress_prefix(month))) \
            and time.monotonic() < deadline:  # a part finished, and another one has saved its progress
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [store.read_json(o.key) for o in store.list(staging.state_key(month, "load/"))]
    assert 1 <= len(done) < 6, "the kill should land mid-run"
    assert staging.read_manifest(store, month, "load") is None
    marks = {p["part"]: p["low_water_mark"] for p in (store.read_json(o.key)
                                                      for o in store.list(staging.progress_prefix(month)))}
    assert marks and all(0 < m < 400 for m in marks.values()), "a part in flight has saved its progress"
    present = len(table_items(ddb_local, table))
    counting = FaultProxy(ddb_local)
    try:
        r = subprocess.run(cmd, env={**env, "ETL_LOAD_MAX_WCU": "100000", "ETL_DESTINATION_ENDPOINT_URL": counting.url},
                           capture_output=True, text=True, timeout=120)
    finally:
        counting.close()
    assert r.returncode == 0, r.stderr
    sent = sum(s["items"] for s in counting.seen)
    unfinished = 6 - len(done)
    assert sent == unfinished * 400 - sum(marks.values())  # every unfinished part from its mark on, nothing below
    rewritten = sent - (2400 - present)  # items already in the table that the resume wrote again
    part_grain = unfinished * 400 - (2400 - present)  # what replaying whole unfinished parts would have rewritten
    print(f"\nkill -9 then resume: {rewritten} item(s) rewritten (window {window} x 25 per part in flight; "
          f"whole parts would have rewritten {part_grain})")
    assert 0 <= rewritten <= 2 * window * 25
    m = staging.read_manifest(store, month, "load")
    assert m is not None and m["written"] == 2400
    assert m["written"] + m["skipped_expired"] + m["deduplicated"] + m["quarantined"] == 2400
    assert [len(m["runs"]), m["totals"]["runs"]] == [2, 2] and m["runs"][0]["acknowledged"] > 0
    assert m["totals"]["acknowledged"] == sum(run["acknowledged"] for run in m["runs"]) >= 2400
    assert m["totals"]["rewritten"] == m["totals"]["acknowledged"] - 2400
    assert m["runs"][1]["acknowledged"] == sent  # what the resume wrote, by the proxy's count
    assert not store.list(staging.progress_prefix(month))  # done parts keep their checkpoint only
    [v] = run_verify(cfg, [month])
    assert v["ok"] and v["checked"] == 2400
    assert len(table_items(ddb_local, table)) == 2400


def test_the_first_real_error_is_reported_not_the_stops_it_caused(ddb_local: str, dest_table: Callable[..., str],
                                                                  make_config: Callable[..., Config],
                                                                  tmp_path: Path,
                                                                  proxy: Callable[..., FaultProxy]) -> None:
    """Many batches retrying when the deadline passes: the ones that only saw the stop must not hide it."""
    p = proxy(ok=0.2, throttle=0.8)
    table = dest_table()
    cfg = make_config(dest_endpoint=p.url, dest_table=table,
                      extra="[load]\nmax_wcu = 100000\ndeadline_seconds = 1.5\nconcurrency = 8\n"
                            "max_backoff_seconds = 0.05\n")
    staged(cfg, tmp_path, [orders(400, i * 400) for i in range(4)])
    with pytest.raises(EtlError) as e:
        run_load(cfg, [M], now=NOW)
    assert "deadline" in str(e.value) and "load stopped: load stopped" not in str(e.value)


def test_deadline_stops_with_checkpoints_and_the_resume_command(ddb_local: str, dest_table: Callable[..., str],
                                                                make_config: Callable[..., Config],
                                                                tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table,
                      extra="[load]\nmax_wcu = 100\ndeadline_seconds = 1.5\nconcurrency = 1\n")
    staged(cfg, tmp_path, [orders(50, i * 50) for i in range(8)])
    with pytest.raises(EtlError, match="deadline") as e:
        run_load(cfg, [M], now=NOW)
    assert "etl load --month 201604" in (e.value.hint or "")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert 0 < len(store.list(staging.state_key(M, "load/"))) < 8


# --------------------------------------------------------------------------- through a proxy


def _proxy_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


BOUNDED = FAST + "deadline_seconds = 60\n"  # a writer that ignored the proxy would retry until this


def test_https_goes_through_the_proxy_tunnel_with_its_credentials(ddb_local: str, dest_table: Callable[..., str],
                                                                  make_config: Callable[..., Config], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint (https://localhost:1) is reachable only through the proxy, as behind a corporate one;
    the proxy wants credentials; the CA bundle is the one AWS_CA_BUNDLE names."""
    front, cert = tls_front(ddb_local, tmp_path)
    port = int(front.url.rsplit(":", 1)[1])
    proxy = ForwardProxy(credentials="Basic " + base64.b64encode(b"loader:p@ss").decode(), routes={"localhost:1": port})
    table = dest_table()
    try:
        _proxy_env(monkeypatch, HTTPS_PROXY=f"http://loader:p%40ss@127.0.0.1:{proxy.port}",
                   AWS_CA_BUNDLE=str(cert))
        cfg = make_config(dest_endpoint="https://localhost:1", dest_table=table, extra=BOUNDED)
        staged(cfg, tmp_path, [orders(300)])
        [m] = run_load(cfg, [M], now=NOW)
        assert m["written"] == 300 and len(table_items(ddb_local, table)) == 300
        tunnels = [s for s in proxy.seen if s[0] == "CONNECT"]
        assert tunnels and all(target == "localhost:1" and sent for _, target, sent in tunnels)
        # wrong credentials: the writer says the proxy refused, once, instead of retrying for ever
        _proxy_env(monkeypatch, HTTPS_PROXY=f"http://loader:wrong@127.0.0.1:{proxy.port}",
                   AWS_CA_BUNDLE=str(cert))
        writer = BatchWriter(cfg.destination, table)
        with pytest.raises(EtlError, match=r"proxy 127.0.0.1:\d+ refused to open a tunnel to localhost:1: .*407"):
            writer.write([orjson.dumps({"PutRequest": {"Item": {"CustomerID": {"S": "x"},
                                                                "CreationDateTime": {"N": "1"}}}})])
    finally:
        proxy.close()
        front.close()


def test_http_goes_to_the_proxy_in_absolute_form_and_no_proxy_bypasses_it(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ddb_port = int(ddb_local.rsplit(":", 1)[1])
    proxy = ForwardProxy(routes={"127.0.0.1:1": ddb_port})
    table = dest_table()
    try:
        _proxy_env(monkeypatch, HTTP_PROXY=proxy.url)
        cfg = make_config(dest_endpoint="http://127.0.0.1:1", dest_table=table, extra=BOUNDED)
        staged(cfg, tmp_path, [orders(200)])
        [m] = run_load(cfg, [M], now=NOW)
        assert m["written"] == 200
        _proxy_env(monkeypatch)
        assert len(table_items(ddb_local, table)) == 200
        assert ("POST", "http://127.0.0.1:1/", False) in proxy.seen
        _proxy_env(monkeypatch, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        assert proxy_for(ddb_local) is None
        _proxy_env(monkeypatch, HTTPS_PROXY="https://proxy.example:443")
        with pytest.raises(EtlError, match="http://host:port only"):
            proxy_for("https://dynamodb.eu-west-1.amazonaws.com")
        _proxy_env(monkeypatch, HTTPS_PROXY="proxy.example:3128")
        assert str(proxy_for("https://dynamodb.eu-west-1.amazonaws.com")) == "proxy.example:3128"
    finally:
        proxy.close()

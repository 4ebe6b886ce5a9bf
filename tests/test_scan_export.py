"""Scan export writes exactly the AWS export layout, to S3 and to a local directory."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from etl import staging
from etl.config import Config
from etl.errors import EtlError
from etl.export.inspect import inspect_export
from etl.local import seed
from etl.pipeline import run_export
from etl.progress import Reporter
from tests.conftest import ddb_client, s3_client

MONTH = "201605"
SUMMARY_KEYS = ["version", "exportArn", "startTime", "endTime", "tableArn", "tableId", "exportTime", "s3Bucket",
                "s3Prefix", "s3SseAlgorithm", "s3SseKmsKeyId", "manifestFilesS3Key", "billedSizeBytes",
                "itemCount", "outputFormat"]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def check_layout(read: Callable[[str], bytes], names: list[str], bucket_key_of: Callable[[str], str],
                 expected_items: set[str]) -> dict:
    assert "_started" in names and read("_started") == b""
    summary_raw = read("manifest-summary.json")
    assert b"\n" not in summary_raw and b" " not in summary_raw  # one compact line
    assert read("manifest-summary.md5").decode() == b64md5(summary_raw)  # base64, no newline
    summary = json.loads(summary_raw)
    assert list(summary) == SUMMARY_KEYS
    assert summary["version"] == "2020-06-30" and summary["outputFormat"] == "DYNAMODB_JSON"
    for k in ("startTime", "endTime", "exportTime"):
        assert ISO_MS.match(summary[k]), summary[k]
    assert summary["s3SseKmsKeyId"] is None
    files_raw = read("manifest-files.json")
    assert read("manifest-files.md5").decode() == b64md5(files_raw)
    assert summary["manifestFilesS3Key"] == bucket_key_of("manifest-files.json")
    entries = [json.loads(line) for line in files_raw.decode().splitlines()]
    seen: set[str] = set()
    for line, e in zip(files_raw.decode().splitlines(), entries, strict=True):
        assert list(e) == ["itemCount", "md5Checksum", "etag", "dataFileS3Key"]
        assert " " not in line
        rel = "data/" + e["dataFileS3Key"].split("/data/")[1]
        assert e["dataFileS3Key"] == bucket_key_of(rel)
        assert re.match(r"^data/[a-z2-7]{26}\.json\.gz$", rel)
        data = read(rel)
        assert b64md5(data) == e["md5Checksum"]
        lines = gzip.decompress(data).decode().splitlines()
        assert len(lines) == e["itemCount"]
        for raw in lines:
            obj = json.loads(raw)
            assert list(obj) == ["Item"]
            seen.add(obj["Item"]["CustomerID"]["S"] + "|" + obj["Item"]["DateTime"]["S"])
    assert sum(e["itemCount"] for e in entries) == summary["itemCount"] == len(expected_items)
    assert seen == expected_items
    return summary


def table_keys(endpoint: str, table: str) -> set[str]:
    ddb = ddb_client(endpoint)
    keys: set[str] = set()
    for page in ddb.get_paginator("scan").paginate(TableName=table):
        keys.update(i["CustomerID"]["S"] + "|" + i["DateTime"]["S"] for i in page["Items"])
    return keys


def test_scan_export_to_local_directory_is_the_aws_layout(moto: str, make_config: Callable[..., Config],
                                                           tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root=str(tmp_path / "stage"),
                      extra="scan_segments = 3\nscan_items_per_file = 150\nscan_max_rcu = 100000\n")
    seed(make_config(endpoint=moto, root="s3://seed-bucket/x"), [MONTH], 700, 3)
    [m] = run_export(cfg, [MONTH], mode="scan")
    assert m["verified"] and m["item_count"] == 700 and m["mode"] == "scan"
    folders = list((tmp_path / "stage" / "export" / f"month={MONTH}" / "AWSDynamoDB").iterdir())
    assert len(folders) == 1 and re.match(r"^\d{14}-[0-9a-f]{8}$", folders[0].name)
    folder = folders[0]
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    rel_root = f"export/month={MONTH}/AWSDynamoDB/{folder.name}"
    summary = check_layout(lambda k: (folder / k).read_bytes(), names, lambda k: f"{rel_root}/{k}",
                           table_keys(moto, "CustomerTracker_shop_eu_201605"))
    assert summary["s3Bucket"] is None and summary["s3Prefix"] == f"export/month={MONTH}"
    assert len([n for n in names if n.startswith("data/")]) >= 5  # 700 items, 150 a file, 3 segments
    # an AWS-layout reader (ours, the same that checks real exports) accepts it as verified
    assert inspect_export(staging.LocalStore(folder))["verified"] is True


def test_scan_export_to_s3_is_the_aws_layout(moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill", extra="scan_max_rcu = 100000\n")
    seed(cfg, [MONTH], 400, 4)
    [m] = run_export(cfg, [MONTH], mode="scan")
    s3 = s3_client(moto)
    objs = s3.list_objects_v2(Bucket="stage-bucket", Prefix="backfill/export/")["Contents"]
    head, tail = objs[0]["Key"].split("/AWSDynamoDB/")
    base = f"{head}/AWSDynamoDB/{tail.split('/')[0]}"
    names = [o["Key"][len(base) + 1:] for o in objs]
    etags = {o["Key"]: o["ETag"].strip('"') for o in objs}

    def read(k: str) -> bytes:
        return s3.get_object(Bucket="stage-bucket", Key=f"{base}/{k}")["Body"].read()

    summary = check_layout(read, names, lambda k: f"{base}/{k}", table_keys(moto, "CustomerTracker_shop_eu_201605"))
    assert summary["s3Bucket"] == "stage-bucket" and summary["s3Prefix"] == f"backfill/export/month={MONTH}"
    for line in read("manifest-files.json").decode().splitlines():
        e = json.loads(line)
        assert e["etag"] == etags[e["dataFileS3Key"]]
    assert m["verified"]


def test_scan_on_demand_table_needs_an_absolute_budget(moto: str, make_config: Callable[..., Config],
                                                       tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root=str(tmp_path / "stage"))
    seed(make_config(endpoint=moto, root="s3://seed-bucket/x"), [MONTH], 10)
    with pytest.raises(EtlError, match="on-demand") as e:
        run_export(cfg, [MONTH], mode="scan")
    assert "scan_max_rcu" in (e.value.hint or "")


def test_scan_rerun_replaces_its_output(moto: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root=str(tmp_path / "stage"), extra="scan_max_rcu = 100000\n")
    seed(make_config(endpoint=moto, root="s3://seed-bucket/x"), [MONTH], 50)
    run_export(cfg, [MONTH], mode="scan")
    run_export(cfg, [MONTH], mode="scan", force=True)
    folders = list((tmp_path / "stage" / "export" / f"month={MONTH}" / "AWSDynamoDB").iterdir())
    assert len(folders) == 1


def test_an_interrupted_scan_export_stops_at_once_with_130(moto: str, make_config: Callable[..., Config],
                                                           tmp_path: Path) -> None:
    """SIGINT during a scan held back by its read budget: the scan stops at its next page (not when the table has
    been read), exit 130, one line with the command that resumes, nothing committed, and `status` shows it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from etl.status import collect

    seed(make_config(endpoint=moto, root="s3://seed-bucket/x"), [MONTH], 2000)  # pages of 500, each waits for budget
    cfg = make_config(endpoint=moto, root=str(tmp_path / "stage"), extra="scan_max_rcu = 1\n")  # the same file
    args = ["--config", cfg.path, "--progress", "quiet", "export", "--month", MONTH, "--mode", "scan"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "etl", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    deadline = time.monotonic() + 60
    while not any(o.key.endswith("_started") for o in store.list(staging.export_prefix(MONTH) + "/")) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)  # a guard against a hang
    assert proc.returncode == 130, err
    assert [x for x in err.splitlines() if x.strip()] == \
        [f"interrupted: what was acknowledged is kept; resume with `etl {' '.join(args)}`"]
    assert "Traceback" not in out + err
    assert staging.read_manifest(store, MONTH, "export") is None
    [row] = collect(store, [MONTH])
    assert row["stages"]["export"]["state"] == "interrupted" and row["stages"]["export"]["error"].startswith(
        "interrupted")
    fast = make_config(endpoint=moto, root=str(tmp_path / "stage"), extra="scan_max_rcu = 100000\n")
    [m] = run_export(fast, [MONTH], mode="scan")  # the rerun: the files of the interrupted scan are not counted
    assert m["verified"] and m["item_count"] == 2000


def _interrupt_after_first_checkpoint(moto: str, cfg: Config, *more: str) -> None:
    """`etl export --mode scan` in a process of its own, Ctrl-C once a segment saved its first checkpoint (the
    read budget of 1 RCU/s holds the next page back)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--config", cfg.path, "--progress", "quiet", "export", "--month", MONTH, "--mode", "scan", *more]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "etl", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    deadline = time.monotonic() + 60
    while not store.list(staging.scan_state_prefix(MONTH)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert staging.read_manifest(store, MONTH, "export") is None


SLOW_SCAN = "scan_max_rcu = 1\nscan_segments = 1\nscan_items_per_file = 500\n"
FAST_SCAN = "scan_max_rcu = 100000\nscan_segments = 1\nscan_items_per_file = 500\n"


def _stopped_scan(moto: str, make_config: Callable[..., Config],
                  tmp_path: Path) -> tuple[Path, staging.Store, dict[str, Any]]:
    """2,000 seeded items, a scan export stopped after its first checkpoint: (staging root, store, checkpoint)."""
    seed(make_config(endpoint=moto, root="s3://seed-bucket/x"), [MONTH], 2000)
    root = tmp_path / "stage"
    _interrupt_after_first_checkpoint(moto, make_config(endpoint=moto, root=str(root), extra=SLOW_SCAN))
    store = staging.open_store(str(root), make_config(endpoint=moto, root=str(root)).staging)
    [saved] = [store.read_json(o.key) for o in store.list(staging.scan_state_prefix(MONTH))]
    return root, store, saved


def _rerun(moto: str, make_config: Callable[..., Config], root: Path, **options: Any) -> dict[str, Any]:
    [m] = run_export(make_config(endpoint=moto, root=str(root), extra=FAST_SCAN), [MONTH], mode="scan", **options)
    return m


def test_a_stopped_scan_goes_on_from_its_checkpoint(moto: str, make_config: Callable[..., Config],
                                                    tmp_path: Path) -> None:
    """Ctrl-C after the first file: the rerun keeps that file (its name and bytes), scans only the rest, and the
    export holds every item exactly once; the checkpoints go once the export is committed."""
    root, store, saved = _stopped_scan(moto, make_config, tmp_path)
    assert not saved["done"] and saved["next_key"] and saved["entries"]
    kept = {e["rel"]: e["md5Checksum"] for e in saved["entries"]}
    folder = root / "export" / f"month={MONTH}" / "AWSDynamoDB" / saved["export_id"]
    (folder / "data" / "zzzzzzzzzzzzzzzzzzzzzzzzzz.json.gz").write_bytes(gzip.compress(b"{}\n"))  # after a checkpoint
    m = _rerun(moto, make_config, root)
    assert m["verified"] and m["item_count"] == 2000
    assert m["resumed"] == {"items_kept": sum(e["itemCount"] for e in saved["entries"]),
                            "files_kept": len(saved["entries"])}
    assert m["export_folder"].endswith(saved["export_id"])
    listed = {f["uri"].split(saved["export_id"] + "/")[1]: f["md5"] for f in m["files"]}
    assert kept.items() <= listed.items()  # the first run's files, unchanged
    check_layout(lambda rel: (folder / rel).read_bytes(), [p.name for p in folder.iterdir()],
                 lambda rel: f"{staging.export_folder_key(MONTH, saved['export_id'])}/{rel}",
                 table_keys(moto, f"CustomerTracker_shop_eu_{MONTH}"))
    assert not store.list(staging.scan_state_prefix(MONTH))


def test_a_stopped_scan_starts_over_when_its_table_changed_or_forced(moto: str, make_config: Callable[..., Config],
                                                                     tmp_path: Path) -> None:
    root, store, saved = _stopped_scan(moto, make_config, tmp_path)
    another = {**saved, "table_created": "2001-01-01T00:00:00+00:00"}  # another table of that name
    store.write_json(staging.scan_segment_key(MONTH, 0), another)
    said = io.StringIO()
    m = _rerun(moto, make_config, root, reporter=Reporter(stream=said))
    assert "resumed" not in m and not m["export_folder"].endswith(saved["export_id"]) and m["item_count"] == 2000
    assert "the table, the source config or the number of segments changed since: scanning from the start" in \
        said.getvalue()
    _interrupt_after_first_checkpoint(moto, make_config(endpoint=moto, root=str(root), extra=SLOW_SCAN), "--force")
    [o] = store.list(staging.scan_state_prefix(MONTH))
    stopped = store.read_json(o.key)["export_id"]
    m = _rerun(moto, make_config, root, force=True)
    assert "resumed" not in m and not m["export_folder"].endswith(stopped) and m["item_count"] == 2000


def test_a_stopped_scan_whose_kept_file_is_gone_starts_over(moto: str, make_config: Callable[..., Config],
                                                            tmp_path: Path) -> None:
    root, store, saved = _stopped_scan(moto, make_config, tmp_path)
    folder = root / "export" / f"month={MONTH}" / "AWSDynamoDB" / saved["export_id"]
    (folder / saved["entries"][0]["rel"]).unlink()
    said = io.StringIO()
    m = _rerun(moto, make_config, root, reporter=Reporter(stream=said))
    assert "resumed" not in m and m["verified"] and m["item_count"] == 2000
    assert "some of its files are gone: scanning from the start" in said.getvalue()

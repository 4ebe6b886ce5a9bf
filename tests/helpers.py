"""Test data builders that do not use the code under test."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def write_real_export(folder: Path, files: list[list[dict[str, Any]]], prefix: str = "pfx",
                      table_arn: str | None = None) -> Path:
    """An export folder as DynamoDB writes it: manifests, md5 files, _started, data/*.json.gz (the summary's
    tableArn only when given)."""
    raw = [gzip.compress("".join(json.dumps({"Item": it}) + "\n" for it in items).encode()) for items in files]
    return write_raw_export(folder, raw, [len(items) for items in files], prefix, table_arn)


def write_raw_export(folder: Path, stored: list[bytes], counts: list[int], prefix: str = "pfx",
                     table_arn: str | None = None) -> Path:
    """The same layout from each data file's bytes exactly as stored (normally gzip) and its manifest itemCount,
    so a test can put any bytes in a data file and still have manifests that match them."""
    export_id = "01690000000000-abcdef12"
    root = folder / "AWSDynamoDB" / export_id
    (root / "data").mkdir(parents=True)
    (root / "_started").write_bytes(b"")
    lines = []
    for i, (data, count) in enumerate(zip(stored, counts, strict=True)):
        name = f"file{i:02d}aaaaaaaaaaaaaaaaaaaa.json.gz"
        (root / "data" / name).write_bytes(data)
        lines.append(json.dumps({"itemCount": count, "md5Checksum": b64md5(data),
                                 "etag": hashlib.md5(data).hexdigest(),
                                 "dataFileS3Key": f"{prefix}/AWSDynamoDB/{export_id}/data/{name}"}))
    mf = ("\n".join(lines) + "\n").encode()
    (root / "manifest-files.json").write_bytes(mf)
    (root / "manifest-files.md5").write_text(b64md5(mf))
    summary = json.dumps({"version": "2020-06-30", "exportArn": "arn:aws:dynamodb:us-east-1:1:table/T/export/x",
                          "itemCount": sum(counts), "outputFormat": "DYNAMODB_JSON",
                          "manifestFilesS3Key": f"{prefix}/AWSDynamoDB/{export_id}/manifest-files.json",
                          **({"tableArn": table_arn} if table_arn else {})}).encode()
    (root / "manifest-summary.json").write_bytes(summary)
    (root / "manifest-summary.md5").write_text(b64md5(summary))
    return root


def item(i: int) -> dict[str, Any]:
    return {"CustomerID": {"S": f"C{i:05d}"}, "DateTime": {"S": "2016-04-12T10:15:30.123-07:00"},
            "OrderID": {"S": f"O{i}"}}

"""Reading an export folder: AWS's layout (manifest-summary.json, manifest-files.json, checksums, gzip data
files) validated where present, the data files listed where not (moto writes no manifests), with what was
checked said in the result. Used by the export stage and by catch-up's incremental exports."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions

from etl import staging
from etl.config import Config
from etl.errors import ValidationFailed


def _err_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))



def inspect_export(folder: staging.Store) -> dict[str, Any]:
    """Check an `AWSDynamoDB/<exportId>/` folder and list its data files.

    With `manifest-summary.json` and `manifest-files.json` (the real layout): every listed file
    exists, its md5 matches `md5Checksum`, the item counts add up to the summary, no data file is
    unlisted, and the manifests match their `.md5` files. Without them (moto writes only one data
    file), the data files are listed and the export is recorded as unverified.

    An incremental export (`exportType: INCREMENTAL_EXPORT`) keeps its data files under the prefix's shared
    `AWSDynamoDB/data/`, beside the export's folder, not in it: they are looked up there (and files of
    other incremental exports in that shared folder are not "unlisted"). Its window and view are returned.
    """
    if folder.exists("manifest-summary.json") or folder.exists("manifest-files.json"):
        return _inspect_manifests(folder)
    data = [o for o in folder.list("data/") if o.key.endswith((".gz", ".json"))]
    if not data:
        raise ValidationFailed(f"{folder.uri} holds neither manifest files nor data files: not an export folder")
    files = [{"uri": folder.key_uri(o.key), "size": o.size, "etag": o.etag, "md5": None, "item_count": None}
             for o in data]
    return {
        "verified": False,
        "verification": "no manifest-summary.json/manifest-files.json (an emulator's export?): "
        f"{len(files)} data file(s) listed, checksums and counts not verified",
        "item_count": None,
        "table_arn": None,
        "files": files,
    }


def _inspect_manifests(folder: staging.Store) -> dict[str, Any]:
    """An export folder with manifests: every check of `inspect_export`, every problem found said at once."""
    problems: list[str] = []
    has_summary = folder.exists("manifest-summary.json")
    summary, entries = _read_manifests(folder, has_summary, problems)
    if summary.get("outputFormat", "DYNAMODB_JSON") != "DYNAMODB_JSON":
        raise ValidationFailed(
            f"{folder.uri}: outputFormat {summary.get('outputFormat')!r} is not supported; "
            "export with ExportFormat=DYNAMODB_JSON"
        )
    incremental = summary.get("exportType") == "INCREMENTAL_EXPORT"
    data_root = _parent(folder) if incremental else folder
    todo, listed = _listed_files(entries, problems)
    files = _check_data_files(data_root, todo, problems)
    counts = [_count(e.get("itemCount")) for e in entries]
    total = sum(c for c in counts if c is not None)
    if has_summary and None not in counts and total != _count(summary.get("itemCount")):
        problems.append(
            f"item counts in manifest-files.json add up to {total}, "
            f"but manifest-summary.json says {summary.get('itemCount')}"
        )
    unlisted = [] if incremental else [o.key for o in folder.list("data/") if o.key not in listed]
    if unlisted:
        problems.append(f"{len(unlisted)} data file(s) not listed in manifest-files.json, e.g. {unlisted[0]}")
    if problems:
        raise ValidationFailed(
            f"export at {folder.uri} failed validation: " + "; ".join(problems),
            hint="re-export the month (`etl export --month M --force`) or adopt an intact copy",
        )
    return {
        "verified": True,
        "verification": "manifest-files.json checked: files present, md5 match, item counts add up"
        if has_summary else "manifest-summary.json is missing: each listed file's md5 and item count checked",
        "export_arn": summary.get("exportArn"),
        "table_arn": summary.get("tableArn"),
        "export_time": summary.get("exportTime"),
        "item_count": total,
        "files": files,
        **({"export_type": "INCREMENTAL_EXPORT", "export_from_time": summary.get("exportFromTime"),
            "export_to_time": summary.get("exportToTime"), "output_view": summary.get("outputView")}
           if incremental else {}),
    }


_TABLE_ARN = re.compile(r"^arn:[\w-]+:dynamodb:(?P<region>[\w-]+):(?P<account>\d*):table/(?P<name>[\w.-]+)$")
_ROLE_ACCOUNT = re.compile(r"^arn:[\w-]+:iam::(\d{12}):role/")


def check_source_table(cfg: Config, month: str, checked: dict[str, Any], uri: str,
                       adopt_other_table: bool) -> dict[str, Any]:
    """An adopted export must be of the month's source table: an export of another table would put another table's
    items (or, for catch-up, its deletes) in the index, and verify would not notice (it checks against what was
    staged). Compared: the table name in the export's `tableArn`, its region (the config's source region, where
    the tool reads the table) and its account when the config names one (`[source] role_arn`'s: a table name
    resolves in the assumed role's account). Returns the fields the manifest records; refuses a mismatch unless
    `adopt_other_table`, which the manifest then records."""
    table, region = cfg.source_table(month), cfg.source.aws_region
    role = _ROLE_ACCOUNT.match(cfg.source.role_arn or "")
    account = role.group(1) if role else None
    arn = checked.get("table_arn")
    if not arn:
        return {"table_check": f"not checked: {uri} has no manifest-summary.json with a tableArn (an emulator's "
                               f"export?), so its table is unknown; adopted as an export of {table}, the month's "
                               "source table, on the word of --use-existing"}
    m = _TABLE_ARN.match(str(arn))
    wrong = [] if m is None else [what for what, got, want in (("table name", m["name"], table),
                                                                ("region", m["region"], region),
                                                                ("account", m["account"], account))
                                  if want is not None and got != want]
    month_table = f"{table} ({region}{f', account {account}' if account else ''})"
    if m is not None and not wrong:
        return {"table_check": f"tableArn {arn} is the month's source table {month_table}"}
    why = ("not a DynamoDB table ARN" if m is None
           else " and ".join(wrong) + (" differ" if len(wrong) > 1 else " differs"))
    if not adopt_other_table:
        raise ValidationFailed(
            f"the export at {uri} is of table {arn}, not of month {month}'s source table {month_table} ({why}): "
            "nothing was adopted",
            hint=f"adopt an export of {table}, or pass --adopt-other-table to adopt it anyway "
                 "(the month's manifest records that choice)")
    return {"table_check": f"tableArn {arn} is not the month's source table {month_table} ({why}); adopted anyway "
                           "(--adopt-other-table)",
            "adopted_other_table": {"export_table": arn, "month_table": table, "month_region": region,
                                    "month_account": account}}


def _read_manifests(folder: staging.Store, has_summary: bool,
                    problems: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and the file entries, each manifest checked against its `.md5` file."""
    summary_raw = folder.read("manifest-summary.json") if has_summary else b"{}"
    files_raw = folder.read("manifest-files.json") if folder.exists("manifest-files.json") else None
    if files_raw is None:
        raise ValidationFailed(f"{folder.uri}: manifest-summary.json exists but manifest-files.json is missing")
    for name, raw in (("manifest-summary", summary_raw), ("manifest-files", files_raw)):
        if folder.exists(f"{name}.md5"):
            want = folder.read(f"{name}.md5").decode().strip()
            got = base64.b64encode(hashlib.md5(raw).digest()).decode()
            if want != got:
                problems.append(f"{name}.json md5 {got} does not match {name}.md5 ({want})")
    summary = _json_of(folder, "manifest-summary.json", summary_raw)
    entries = [_json_of(folder, "manifest-files.json", line, n)
               for n, line in enumerate(files_raw.splitlines(), 1) if line.strip()]
    return summary, entries


def _data_path(entry: dict[str, Any]) -> str | None:
    """Where a manifest entry's data file is, relative to the export (`data/...`), or None: not under data/."""
    key = str(entry.get("dataFileS3Key", ""))
    if "/data/" not in "/" + key:
        return None
    return "data/" + key.rsplit("data/", 1)[1]


def _listed_files(entries: list[dict[str, Any]],
                  problems: list[str]) -> tuple[list[tuple[dict[str, Any], str]], set[str]]:
    """(entry, data path) of each file the manifest lists, in order, and the paths listed (those without a count of
    items too: they are not "unlisted" as well); an entry outside data/, listed twice or without a count of items
    is a problem. The paths come first: a file listed twice is refused, not read twice."""
    todo: list[tuple[dict[str, Any], str]] = []
    seen: set[str] = set()
    for entry in entries:
        rel = _data_path(entry)
        key = str(entry.get("dataFileS3Key", ""))
        if rel is None:
            problems.append(f"manifest-files.json lists {key!r}, which is not under data/")
            continue
        if ".." in rel.split("/") or "//" in rel:
            problems.append(f"manifest-files.json lists {key!r}, which points outside the export's data/")
            continue
        if rel in seen:
            problems.append(f"manifest-files.json lists {rel} twice (its items would be read twice)")
            continue
        seen.add(rel)
        if _count(entry.get("itemCount")) is None:
            problems.append(f"manifest-files.json gives {rel} the itemCount {entry.get('itemCount')!r}, "
                            "not a count of items")
            continue
        todo.append((entry, rel))
    return todo, seen


def _check_data_files(data_root: staging.Store, todo: list[tuple[dict[str, Any], str]],
                      problems: list[str]) -> list[dict[str, Any]]:
    """Each listed file exists, its md5 is the manifest's and a .gz file is gzip (8 at a time): the files'
    records for the export manifest."""

    def check(job: tuple[dict[str, Any], str]) -> dict[str, Any] | None:
        entry, rel = job
        info = data_root.head(rel)
        if info is None:
            problems.append(f"data file {data_root.key_uri(rel)} is listed in manifest-files.json but does not "
                            "exist")
            return None
        b64, hexd, head = data_root.md5_and_head(rel, len(_GZIP_MAGIC))
        if b64 != entry.get("md5Checksum"):
            problems.append(f"data file {rel}: md5 {b64} does not match the manifest's {entry.get('md5Checksum')}")
        elif rel.endswith(".gz") and head and head != _GZIP_MAGIC:
            problems.append(f"data file {rel} is not gzip (it begins {head!r}; gzip begins {_GZIP_MAGIC!r})")
        return {"uri": data_root.key_uri(rel), "size": info.size, "etag": info.etag or hexd,
                "md5": b64, "item_count": entry["itemCount"]}

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [f for f in pool.map(check, todo) if f]


_GZIP_MAGIC = b"\x1f\x8b"


def _count(value: Any) -> int | None:
    """A manifest's itemCount, or None when it is not one (a string, a negative or missing number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _json_of(folder: staging.Store, name: str, raw: bytes, line: int | None = None) -> dict[str, Any]:
    """One JSON object of a manifest, or a refusal naming the file (and line)."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        where = f"{name}, line {line}" if line else name
        raise ValidationFailed(f"{folder.key_uri(name)}: {where} is not valid JSON ({exc})",
                               hint="re-export the month (`etl export --month M --force`) or adopt an intact copy"
                               ) from None
    if not isinstance(value, dict):
        raise ValidationFailed(f"{folder.key_uri(name)}: {name}{f', line {line}' if line else ''} is not a JSON object")
    return value


def _parent(folder: staging.Store) -> staging.Store:
    """The store one folder up (an incremental export's `AWSDynamoDB/`, which holds the shared `data/`)."""
    if isinstance(folder, staging.S3Store):
        return staging.S3Store(folder.bucket, folder.prefix.rsplit("/", 1)[0] if "/" in folder.prefix else "",
                               folder.s3)
    assert isinstance(folder, staging.LocalStore)
    return staging.LocalStore(folder.root.parent)

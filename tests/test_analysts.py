"""The analysts' SQL (sql/) against a real pipeline run: every file parses as Athena SQL and runs in DuckDB
after transpiling (sqlglot), the CTAS transform gives the Python transform's rows, and the questions give
the manifests' counts.

The staging is on S3 on the local moto server (a real PITR export of a seeded month, and an AWS-layout
export adopted from the staging bucket for the lines a real export cannot hold), mirrored to a local
directory for DuckDB (no httpfs offline). DuckDB reads it the way Athena does: every object under a
partition's folder, manifests and checksums included, `"$path"` for the file."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from etl import aws, staging
from etl.config import Config, load_config
from etl.local import generate_month
from etl.pipeline import run_export, run_transform
from etl.promo import months_before

SQL = Path(__file__).resolve().parent.parent / "sql"
A, B = "201604", "201605"  # A: a real PITR export on moto; B: an AWS-layout export adopted from the bucket
BUCKET = "analysts-stage"
TTL = 31_536_000
TABLES = {"create_export_table.sql": "anniversary_promo_export",
          "create_transformed_table.sql": "anniversary_promo_staged",
          "create_rejected_table.sql": "anniversary_promo_rejected",
          "create_verify_table.sql": "anniversary_promo_verify"}  # its data: tests/test_verify_export.py
QUESTIONS = ["rows_per_stage", "rejected_by_reason", "collisions", "discount_tiers", "expiry_timeline"]


def o(value: str) -> dict[str, str]:
    return {"S": value}


# Month A: what the service writes (DateTime is the table's sort key, so always an S), every shape the
# transform accepts, what it filters and what it rejects, and collisions (one across zones, one a tie).
MONTH_A: list[tuple[str, str, Any]] = [  # (CustomerID, DateTime, OrderID attribute or None)
    ("C1", "2016-04-12T10:15:30.123-07:00", o("O1")),
    ("C1", "2016-04-12T17:15:30Z", o("O2")),  # the same second as the line above: a collision
    ("C1", "2016-04-12T17:15:30.999+00:00", o("O0")),  # and a third row on it; O2 is loaded
    ("C2", "2016-04-12", o("O3")),
    ("C2", " 2016-04-13 ", o("O4")),
    ("C3", "2016-04-12T10:15:30+0530", o("O5")),
    ("C3", "2016-04-12T10:15:30+05", o("O6")),
    ("C3", "2016-04-12 10:15:30,5Z", o("O7")),
    ("C3", "2016-04-12T10:15Z", o("O8")),
    ("C3", "2016-04-12T10:15:31", o("O9")),
    ("C4", "1969-12-31T23:59:59.5Z", o("O10")),
    ("C4", "2016-02-29T12:00:00.123456789-12:00:00", o("O11")),
    ("C4", "2016-04-12T10:15:30+18:00", o("O12")),
    ("C5", "2016-04-30T23:59:59.999999-01:00", o("O13")),
    ("C6", "2016-04-12T10:15:30.1Z", o("O14")),  # a tie: same key, same OrderID
    ("C6", "2016-04-12T10:15:30.2Z", o("O14")),
    ("C7", "2016-04-12T10:15:30Z", None),  # filtered
    ("C7", "2016-04-12T10:15:31Z", o("")),  # filtered
    ("C8", "2016-04-12T10:15:30Z", {"N": "5"}),  # type mismatches
    ("C8", "2016-04-12T10:15:31Z", {"BOOL": True}),
    ("C8", "2016-04-12T10:15:32Z", {"L": [o("O1")]}),
    ("C8", "2016-04-12T10:15:33Z", {"NULL": True}),
    ("C8", "2016-04-12T10:15:34Z", {"SS": ["a"]}),
    ("C9", "2016-02-30T10:00:00Z", o("O20")),  # bad date-times
    ("C9", "2016-04-12T24:00:00Z", o("O21")),
    ("C9", "2016-04-12T10:60:00Z", o("O22")),
    ("C9", "2016-04-12T10:00:00+19:00", o("O23")),
    ("C9", "not-a-date", o("O24")),
    ("C9", "2016/04/12", o("O25")),
    ("C9", "2016-04-12T10:00:00.1234567890Z", o("O26")),
    ("C9", "2015-02-29", o("O27")),
    ("C9", "2016-04-12T10:00:00+05:60", o("O28")),
    ("C9", "2016-04-12T1:00:00Z", o("O29")),
]


def line(item: dict[str, Any]) -> str:
    return json.dumps({"Item": item})


# Month B: what only a file can hold: epoch numbers, attributes of other types, missing attributes and
# malformed lines. WRONG_JSON_TYPE is the one line the CTAS writes and Python quarantines (a named difference).
WRONG_JSON_TYPE = line({"CustomerID": {"S": 123}, "DateTime": o("2016-05-02T00:00:00Z"), "OrderID": o("P9")})
MONTH_B = [
    line({"CustomerID": o("D1"), "DateTime": {"N": "1462060800"}, "OrderID": o("P1"), "URLClicked": o("u")}),
    line({"CustomerID": o("D1"), "DateTime": o("2016-05-01T00:00:00Z"), "OrderID": o("P0")}),  # collides
    line({"CustomerID": o("D2"), "DateTime": {"N": "1462060800.999"}, "OrderID": o("P2")}),
    line({"CustomerID": o("D2"), "DateTime": {"N": "-5.5"}, "OrderID": o("P3")}),
    line({"CustomerID": o("D2"), "DateTime": {"N": "-0.5"}, "OrderID": o("P4")}),
    line({"CustomerID": o("D2"), "DateTime": {"N": "12.0"}, "OrderID": o("P6")}),
    line({"CustomerID": o("D3"), "DateTime": {"N": "1e9"}, "OrderID": o("P7")}),  # Python: 1e9 s; SQL: bad
    line({"CustomerID": o("D5"), "DateTime": {"N": "100"}, "OrderID": o("P15")}),  # long expired
    line({"CustomerID": {"N": "5"}, "DateTime": o("2016-05-01"), "OrderID": o("P8")}),  # type_mismatch
    line({"CustomerID": {"N": "5"}, "DateTime": o("2016-05-01")}),  # type_mismatch before filtered
    line({"CustomerID": o(""), "DateTime": o("2016-05-01"), "OrderID": o("P10")}),  # filtered
    line({"DateTime": o("2016-05-01"), "OrderID": o("P11")}),  # filtered
    line({"CustomerID": o("D4"), "OrderID": o("P12")}),  # missing_attribute
    line({"CustomerID": o("D4"), "DateTime": {"BOOL": True}, "OrderID": o("P13")}),  # type_mismatch
    line({"CustomerID": o("D4"), "DateTime": {"B": "AAE="}, "OrderID": o("P14")}),  # type_mismatch
    "not json",  # malformed_line
    '{"Item": {"CustomerID": {"S": "D9"}, "DateTime": {"S": "2016-05-01',  # malformed_line (cut short)
    WRONG_JSON_TYPE,  # malformed_line in Python; a row in SQL
]


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def upload_aws_export(s3: Any, prefix: str, lines: list[str]) -> str:
    """An export folder as DynamoDB writes it (manifests, checksums, _started, data/*.json.gz) under the
    staging bucket's export/month=M/ prefix; returns its URI."""
    folder = f"{prefix}/AWSDynamoDB/01690000000000-analysts"
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    key = f"{folder}/data/aaaaaaaaaaaaaaaaaaaaaaaaaa.json.gz"
    files = json.dumps({"itemCount": len(lines), "md5Checksum": b64md5(data), "etag": hashlib.md5(data).hexdigest(),
                        "dataFileS3Key": key}).encode() + b"\n"
    summary = json.dumps({"version": "2020-06-30", "itemCount": len(lines), "outputFormat": "DYNAMODB_JSON",
                          "manifestFilesS3Key": f"{folder}/manifest-files.json"}).encode()
    for name, body in ((key, data), (f"{folder}/_started", b""), (f"{folder}/manifest-files.json", files),
                       (f"{folder}/manifest-files.md5", b64md5(files).encode()),
                       (f"{folder}/manifest-summary.json", summary),
                       (f"{folder}/manifest-summary.md5", b64md5(summary).encode())):
        s3.put_object(Bucket=BUCKET, Key=name, Body=body)
    return f"s3://{BUCKET}/{folder}"


@dataclass
class Staged:
    cfg: Config
    local: Path  # a copy of the S3 staging root
    manifests: dict[str, dict[str, Any]]  # month -> transform manifest


def mirror(s3: Any, bucket: str, prefix: str, dest: Path) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            path = dest / obj["Key"][len(prefix) + 1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())


@pytest.fixture(scope="module")
def staged(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    """Both months exported and transformed by the pipeline on moto, with the staging on S3."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    aws.session_for.cache_clear()
    tmp = tmp_path_factory.mktemp("analysts")
    path = tmp / "pipeline.toml"
    path.write_text(f"""
domain = "shop"
region = "eu"
[source]
endpoint_url = "{moto_endpoint}"
[staging]
root = "s3://{BUCKET}/backfill"
endpoint_url = "{moto_endpoint}"
[destination]
endpoint_url = "{moto_endpoint}"
production = false
[export]
poll_max_seconds = 0.5
""")
    cfg = load_config(str(path), env={})
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    ddb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    table = cfg.source_table(A)
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "DateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "DateTime", "AttributeType": "S"}])
    ddb.update_continuous_backups(TableName=table,
                                  PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    items = [{"CustomerID": o(c), "DateTime": o(d), **({"OrderID": oid} if oid is not None else {})}
             for c, d, oid in MONTH_A]
    items += [{k: v for k, v in it.items() if k != "_dirty"} for it in generate_month(A, 1500, seed=3)]
    for it in items:
        ddb.put_item(TableName=table, Item=it)
    run_export(cfg, [A])
    adopted = upload_aws_export(s3, f"backfill/{staging.export_prefix(B)}", MONTH_B)
    run_export(cfg, [B], use_existing=adopted)
    run_transform(cfg, [A, B])
    mirror(s3, BUCKET, "backfill", tmp / "stage")
    write_changes(cfg, tmp / "stage")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    manifests = {m: staging.read_manifest(store, m, "transform") or {} for m in (A, B)}
    yield Staged(cfg, tmp / "stage", manifests)
    aws.session_for.cache_clear()


# --------------------------------------------------------------------------- Athena -> DuckDB


def athena_statements(path: Path) -> list[exp.Expression]:
    """A file's statements, parsed as Athena SQL (a parse error fails the test)."""
    parsed = [e for e in sqlglot.parse(path.read_text(), read="athena", error_level=ErrorLevel.RAISE) if e]
    assert parsed, f"{path.name} holds no statement"
    return parsed


def to_duckdb(e: exp.Expression) -> str:
    """A query in DuckDB's dialect; anything sqlglot cannot carry over fails the test."""
    return e.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)


def ddl_tables() -> dict[str, dict[str, Any]]:
    """Each DDL file's table run in DuckDB after transpiling (an empty table: DuckDB has no external
    tables), with the column types DuckDB made of it and the partition columns and properties Athena gets."""
    scratch = duckdb.connect()
    out = {}
    for name, table in TABLES.items():
        [create] = athena_statements(SQL / name)
        assert isinstance(create, exp.Create) and create.this.this.name == table
        scratch.execute(create.sql(dialect="duckdb"))  # the Hive properties have no DuckDB equivalent
        props = create.args["properties"].expressions
        [partitioned] = [p for p in props if isinstance(p, exp.PartitionedByProperty)]
        out[table] = {
            "columns": {r[0]: r[1] for r in scratch.execute(f"DESCRIBE {table}").fetchall()},
            "partitions": [(c.name, c.args["kind"].sql("athena")) for c in partitioned.this.expressions],
            "properties": {p.name: p.text("value") for p in props
                           if type(p) is exp.Property and isinstance(p.this, exp.Literal)},
            "location": next(p.this.name for p in props if isinstance(p, exp.LocationProperty)),
        }
    return out


def athena_like(root: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB views named and typed as the Athena tables (types from the DDL files), reading like Athena:
    every object under a month's folder, "$path" the file, month as text."""
    tables = ddl_tables()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    hive = "hive_partitioning = true, hive_types = {'month': 'VARCHAR'}"
    export = tables["anniversary_promo_export"]["columns"]
    con.execute(f"""CREATE VIEW anniversary_promo_export AS SELECT Item, "$path", month FROM read_json(
        '{root}/export/*/**', format = 'newline_delimited', ignore_errors = true, filename = '$path',
        columns = {{Item: '{export["Item"]}'}}, {hive})""")
    con.execute(f"""CREATE VIEW anniversary_promo_staged AS SELECT * FROM read_parquet(
        '{root}/transformed/*/*.parquet', {hive})""")
    rejected = ", ".join(f"{c}: '{t}'" for c, t in tables["anniversary_promo_rejected"]["columns"].items())
    con.execute(f"""CREATE VIEW anniversary_promo_rejected AS SELECT * FROM read_json(
        '{root}/rejected/*/*.jsonl.gz', format = 'newline_delimited', columns = {{{rejected}}}, {hive})""")
    con.execute(f"""CREATE VIEW anniversary_promo_changes AS SELECT *, filename AS "$path" FROM read_parquet(
        '{root}/changes/*/*.parquet', filename = true, {hive})""")
    return con


def query_file(name: str) -> str:
    [e] = athena_statements(SQL / f"{name}.sql")
    return to_duckdb(e)


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# --------------------------------------------------------------------------- tests


# What `etl catch-up` writes per window (changes/month=M/window-NNNNN.parquet): (window, puts, deletes) per month
CHANGES = {A: [(1, 2, 1), (2, 1, 0)], B: [(1, 0, 2)]}


def write_changes(cfg: Config, root: Path) -> None:
    """Catch-up windows in the catch-up's own schema (the catch-up itself is tested in test_catchup*.py)."""
    from etl.catchup.changes import changes_schema

    for month, windows in CHANGES.items():
        for window, puts, deletes in windows:
            rows = [{"CustomerID": f"W{window}C{i}", "CreationDateTime": 1460000000 + i, "OrderID": f"O{i}",
                     "ExpirationTimestamp": 1491536000 + i, "op": "put" if i < puts else "delete"}
                    for i in range(puts + deletes)]
            path = root / "changes" / f"month={month}" / f"window-{window:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=changes_schema(cfg)), path)


def test_changes_per_window(staged: Staged) -> None:
    want = [(m, w, puts, deletes, puts + deletes) for m, ws in sorted(CHANGES.items()) for w, puts, deletes in ws]
    assert athena_like(staged.local).execute(query_file("changes_per_window")).fetchall() == want
    local = duckdb.connect()
    local.execute(f"SET VARIABLE staging_root = '{staged.local}'")
    for statement in local.extract_statements((SQL / "duckdb_local_changes.sql").read_text()):
        got = local.execute(statement).fetchall()
    assert got == want


def test_every_sql_file_is_athena_sql_that_runs_in_duckdb(staged: Staged) -> None:
    files = sorted(p.name for p in SQL.glob("*.sql"))
    assert set(files) == {*TABLES, *(f"{q}.sql" for q in QUESTIONS), "transform_ctas.sql", "duckdb_local.sql",
                          "create_changes_table.sql", "changes_per_window.sql", "duckdb_local_changes.sql",
                          "duckdb_local_verify.sql"}
    con = athena_like(staged.local)
    for name in files:
        if name in ("duckdb_local.sql", "duckdb_local_changes.sql", "duckdb_local_verify.sql"):
            continue
        for e in athena_statements(SQL / name):
            if isinstance(e, exp.Create) and e.args.get("kind") == "TABLE" and e.expression is None:
                duckdb.connect().execute(e.sql(dialect="duckdb"))  # DDL: checked with the data below
            elif isinstance(e, exp.Create):
                con.execute(f"CREATE TEMP TABLE ctas_check AS {to_duckdb(e.expression)}")
                assert con.execute("SELECT count(*) FROM ctas_check").fetchone()[0] > 0
                con.execute("DROP TABLE ctas_check")
            else:
                assert con.execute(to_duckdb(e)).fetchall(), f"{name} returned no row"


def test_ddl_types_read_the_staged_data(staged: Staged) -> None:
    tables = ddl_tables()
    for table, t in tables.items():
        assert t["partitions"] == [("month", "VARCHAR")], table
        p = t["properties"]
        assert p["projection.enabled"] == "true" and p["projection.month.type"] == "date"
        assert p["projection.month.format"] == "yyyyMM" and p["projection.month.interval.unit"] == "MONTHS"
        assert p["storage.location.template"] == t["location"] + "month=${month}/"
    con = athena_like(staged.local)
    # the Parquet the transform wrote has exactly the declared columns and types, month as text
    staged_cols = {r[0]: r[1] for r in con.execute("DESCRIBE anniversary_promo_staged").fetchall()}
    assert staged_cols == {**tables["anniversary_promo_staged"]["columns"], "month": "VARCHAR"}
    # every data line of the export reads into the declared Item, with the values of the line
    got = con.execute("""SELECT Item.CustomerID.S, Item.DateTime.S, Item.OrderID.S FROM anniversary_promo_export
                         WHERE "$path" LIKE '%/data/%' AND month = ? AND Item.CustomerID.S = 'C1'
                         ORDER BY Item.OrderID.S""", [A]).fetchall()
    assert got == [("C1", d, oid["S"]) for c, d, oid in sorted(MONTH_A[:3], key=lambda r: r[2]["S"])]
    # the manifests and checksums of the adopted export are read too (as Athena does) and filtered out
    assert con.execute("""SELECT count(*) FROM anniversary_promo_export WHERE month = ?
                          AND "$path" NOT LIKE '%/data/%'""", [B]).fetchone()[0] > 0
    reasons = con.execute("SELECT DISTINCT reason FROM anniversary_promo_rejected ORDER BY 1").fetchall()
    assert [r[0] for r in reasons] == ["bad_datetime", "malformed_line", "missing_attribute", "type_mismatch"]


def python_rows(local: Path) -> Counter[tuple[Any, ...]]:
    table = ds.dataset(local / "transformed", format="parquet", partitioning="hive").to_table()
    return Counter((r["CustomerID"], r["CreationDateTime"], r["OrderID"], r["ExpirationTimestamp"], str(r["month"]))
                   for r in table.to_pylist())


def test_ctas_gives_the_python_transforms_rows(staged: Staged) -> None:
    [ctas] = athena_statements(SQL / "transform_ctas.sql")
    assert isinstance(ctas, exp.Create) and ctas.expression is not None
    con = athena_like(staged.local)
    assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
    got = Counter(con.execute(to_duckdb(ctas.expression)).fetchall())
    want = python_rows(staged.local)
    # the one named difference: {"S": 123} is malformed_line in Python, the string '123' in SQL
    t = datetime(2016, 5, 2, tzinfo=UTC).timestamp()
    assert got - want == Counter({("123", t, "P9", t + TTL, B): 1})
    # and the other: an N in exponent notation is a number to Python (DynamoDB's grammar), not to the SQL
    assert want - got == Counter({("D3", 1_000_000_000, "P7", 1_000_000_000 + TTL, B): 1})
    quarantined = [json.loads(x) for p in sorted((staged.local / "rejected").glob(f"month={B}/*.jsonl.gz"))
                   for x in gzip.decompress(p.read_bytes()).splitlines()]
    assert {"reason": "malformed_line", "line": WRONG_JSON_TYPE} in [
        {"reason": q["reason"], "line": q["line"]} for q in quarantined]
    # the shapes of month A, exactly (epoch seconds by hand)
    by_order = {r[2]: r[1] for r in got if r[4] == A}
    assert by_order["O1"] == by_order["O2"] == by_order["O0"] == 1460481330
    assert by_order["O3"] == 1460419200 and by_order["O4"] == 1460505600
    assert by_order["O5"] == 1460436330 and by_order["O6"] == 1460438130
    assert by_order["O7"] == 1460456130 and by_order["O8"] == 1460456100 and by_order["O9"] == 1460456131
    assert by_order["O10"] == -1 and by_order["O11"] == 1456790400 and by_order["O12"] == 1460391330
    assert by_order["O13"] == 1462064399
    assert not {"O20", "O21", "O22", "O23", "O24", "O25", "O26", "O27", "O28", "O29"} & set(by_order)
    by_order_b = {r[2]: r[1] for r in got if r[4] == B}
    assert by_order_b == {"P1": 1462060800, "P0": 1462060800, "P2": 1462060800, "P3": -6, "P4": -1,
                          "P6": 12, "P9": t,
                          "P15": 100}


def test_collisions_query_names_the_loads_losers(staged: Staged) -> None:
    con = athena_like(staged.local)
    found = rows(con, query_file("collisions"))
    losers = Counter((r["month"], r["CustomerID"], r["CreationDateTime"], r["OrderID"]) for r in found
                     if not r["loaded"])
    want: Counter[tuple[Any, ...]] = Counter()
    for month in (A, B):
        t = pq.read_table(staged.local / "_state" / f"month={month}" / "transform-collisions.parquet")
        want.update((month, r["CustomerID"], r["CreationDateTime"], r["OrderID"]) for r in t.to_pylist())
        assert staged.manifests[month]["collisions"]["losers"] == sum(1 for k in losers if k[0] == month)
    assert losers == want
    assert (A, "C1", 1460481330, "O0") in losers and (A, "C1", 1460481330, "O1") in losers
    assert (A, "C6", 1460456130, "O14") in losers and (B, "D1", 1462060800, "P0") in losers
    loaded = {(r["CustomerID"], r["OrderID"]) for r in found if r["loaded"]}
    assert ("C1", "O2") in loaded and ("D1", "P1") in loaded


def test_rows_per_stage_reconcile_with_the_manifests(staged: Staged) -> None:
    got = {r["month"]: r for r in rows(athena_like(staged.local), query_file("rows_per_stage"))}
    assert sorted(got) == [A, B]
    for month, m in staged.manifests.items():
        r = got[month]
        assert (r["items_in"], r["written"], r["filtered"], r["rejected"]) == (
            m["items_in"], m["written"], m["filtered"], m["rejected"]), month
        assert r["collision_losers"] == m["collisions"]["losers"] and r["reconciles"] is True
    assert got[B]["items_in"] == len(MONTH_B) and got[B]["filtered"] == 2


def test_rejected_by_reason_counts_and_examples(staged: Staged) -> None:
    got = rows(athena_like(staged.local), query_file("rejected_by_reason"))
    for month, m in staged.manifests.items():
        assert {r["reason"]: r["rows"] for r in got if r["month"] == month} == m["rejected_by"]
    exported = {x.decode() for p in staged.local.glob("export/*/AWSDynamoDB/*/data/*")
                for x in gzip.decompress(p.read_bytes()).splitlines()}
    for r in got:
        assert r["example_message"] and r["example_line"] in exported
        assert r["example_file"].startswith(f"s3://{BUCKET}/backfill/export/month={r['month']}/AWSDynamoDB/")


def staged_frame(local: Path) -> Any:
    return ds.dataset(local / "transformed", format="parquet", partitioning="hive").to_table().to_pandas()


def test_discount_tiers_at_a_date(staged: Staged) -> None:
    at = datetime(2016, 7, 15, 12, tzinfo=UTC)
    [e] = athena_statements(SQL / "discount_tiers.sql")
    [literal] = [c for c in e.find_all(exp.Cast) if c.to.is_type("timestamp")]
    literal.this.replace(exp.Literal.string(at.strftime("%Y-%m-%d %H:%M:%S")))
    got = dict(athena_like(staged.local).execute(to_duckdb(e)).fetchall())
    df = staged_frame(staged.local)
    now, loyalty, anniversary = at.timestamp(), months_before(at, 3).timestamp(), months_before(at, 24).timestamp()
    live = df[(df.CreationDateTime >= anniversary) & (df.CreationDateTime <= now) & (df.ExpirationTimestamp > now)]
    newest = live.groupby("CustomerID").CreationDateTime.max()
    want = {"loyalty": int((newest >= loyalty).sum()), "anniversary": int((newest < loyalty).sum())}
    want["none"] = df.CustomerID.nunique() - len(newest)
    assert got == {k: v for k, v in want.items() if v}
    assert got["loyalty"] and got["anniversary"] and got["none"]  # April 15 on; C1 (April 12); D5 (1970)


def test_expiry_timeline(staged: Staged) -> None:
    got = rows(athena_like(staged.local), query_file("expiry_timeline"))
    df = staged_frame(staged.local)
    expires = df.ExpirationTimestamp.map(lambda s: datetime.fromtimestamp(s, UTC).strftime("%Y-%m"))
    want = Counter(zip(expires, df.month.astype(str), strict=True))
    assert {(r["expires_in"], r["month"]): r["rows"] for r in got} == want
    assert got[-1]["expired_by_then"] == len(df) and all(r["expired_now"] == r["rows"] for r in got)  # 2016 + 1y


def duckdb_local_blocks() -> tuple[str, dict[str, str]]:
    """sql/duckdb_local.sql: the views, then one `-- question: NAME` block per Athena question file."""
    text = (SQL / "duckdb_local.sql").read_text()
    head, *blocks = text.split("\n-- question: ")
    questions = {}
    for block in blocks:
        name, _, body = block.partition("\n")
        questions[name.strip()] = body
    return head, questions


def test_duckdb_local_answers_the_same_questions_on_a_local_root(staged: Staged) -> None:
    head, questions = duckdb_local_blocks()
    assert sorted(questions) == sorted(QUESTIONS)
    local = duckdb.connect()
    local.execute(f"SET VARIABLE staging_root = '{staged.local}'")
    for statement in local.extract_statements(head):
        local.execute(statement)
    assert local.execute("SELECT DISTINCT typeof(month) FROM anniversary_promo_staged").fetchall() == [("VARCHAR",)]
    athena = athena_like(staged.local)
    for name in QUESTIONS:
        got = local.execute(questions[name]).fetchall()
        assert got, name
        assert got == athena.execute(query_file(name)).fetchall(), name


def test_register_suggests_queries_that_run(staged: Staged) -> None:
    from etl.catalog import DATABASE, queries

    con = athena_like(staged.local)
    con.execute(f"CREATE SCHEMA {DATABASE}")
    registered = {"export": "anniversary_promo_export", "transformed": "anniversary_promo_staged",
                  "rejected": "anniversary_promo_rejected"}
    for table in registered.values():
        con.execute(f"CREATE VIEW {DATABASE}.{table} AS SELECT * FROM main.{table}")
    # what a verify by export writes (sql/create_verify_table.sql's columns): two keys missing, one different
    registered["verify"] = "anniversary_promo_verify"
    con.execute(f"CREATE TABLE {DATABASE}.anniversary_promo_verify (CustomerID VARCHAR, CreationDateTime BIGINT, "
                "kind VARCHAR, differing_columns VARCHAR[], month VARCHAR)")
    con.execute(f"INSERT INTO {DATABASE}.anniversary_promo_verify VALUES ('C1', 1, 'missing', NULL, '{A}'), "
                f"('C2', 2, 'missing', NULL, '{A}'), ('C3', 3, 'different', ['OrderID'], '{B}')")
    suggested = queries(DATABASE, registered)
    answers = {q["title"]: con.execute(to_duckdb(sqlglot.parse_one(q["sql"], read="athena"))).fetchall()
               for q in suggested}
    assert [m for m, *_ in answers["orders per month"]] == [A, B]
    lines = dict(answers["export lines per month (the manifests are not data)"])
    assert lines == {m: staged.manifests[m]["items_in"] for m in (A, B)}
    assert answers["keys more than one row lands on"][0][3] == 3  # C1's three rows on one second
    assert answers["what the last verify by export found"] == [(A, "missing", 2), (B, "different", 1)]

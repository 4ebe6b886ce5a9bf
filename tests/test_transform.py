from __future__ import annotations

import base64
import gzip
import io
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl import mapping, staging
from etl.config import Config
from etl.engine import TaskContext
from etl.errors import EtlError, StageNotReady
from etl.items import decode, export_line
from etl.local import DIRTY_KINDS, generate_month, seed
from etl.pipeline import run_export, run_transform
from etl.transform import collisions, lines, rows
from etl.transform.stage import FileTask, run_task
from tests.helpers import write_real_export

M = "201604"


def row(cid: str, dt: Any, oid: Any = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"CustomerID": {"S": cid}, "DateTime": dt if isinstance(dt, dict) else {"S": dt}}
    if oid is not None:
        item["OrderID"] = oid if isinstance(oid, dict) else {"S": oid}
    item.update(extra)
    return item


def stage(cfg: Config, tmp_path: Path, files: list[list[dict[str, Any]]], month: str = M) -> staging.Store:
    folder = write_real_export(tmp_path / f"ext{month}", files)
    run_export(cfg, [month], use_existing=str(folder))
    return staging.open_store(cfg.staging.root, cfg.staging)


def rejected(store: staging.Store, month: str = M) -> list[dict[str, Any]]:
    out = []
    for o in store.list(f"rejected/month={month}/"):
        out += [json.loads(x) for x in gzip.decompress(store.read(o.key)).decode().splitlines()]
    return out


def parquet_rows(store: staging.Store, month: str = M) -> list[dict[str, Any]]:
    return ds.dataset(store.key_uri(f"transformed/month={month}"), format="parquet").to_table().to_pylist()


def test_values_exact_reasons_and_reconciliation(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    every_type = {"b": {"B": "AAE="}, "bo": {"BOOL": False}, "nu": {"NULL": True}, "ss": {"SS": ["a"]},
                  "ns": {"NS": ["1"]}, "bs": {"BS": ["AA=="]}, "l": {"L": [{"S": "x"}]}, "m": {"M": {"k": {"N": "1"}}}}
    store = stage(cfg, tmp_path, [[
        row("C1", "2016-04-12T10:15:30.123-07:00", "O1", **every_type),
        row("C2", "2016-04-12", "O2"),
        row("C3", "2016-04-12T10:15:30Z", None),             # not an order: filtered
        row("C4", "2016-04-12T10:15:30Z", ""),               # empty OrderID: filtered
        row("C5", "2016-04-12T10:15:30Z", {"N": "12"}),      # wrong type: quarantined
        row("C6", "yesterday", "O6"),                        # unparseable date: quarantined
        row("C7", {"N": "1460456130"}, "O7"),                # epoch number is a date too
        row("C8", "2016-04-12T10:15:30Z", {"M": {"a": {"S": "b"}}}),
    ], [row("C9", "2016-04-12T10:15:30+0530", "O9")]])
    [m] = run_transform(cfg, [M])
    assert (m["items_in"], m["written"], m["filtered"], m["rejected"]) == (9, 4, 2, 3)
    assert m["filtered_by"] == {"missing_OrderID": 1, "empty_OrderID": 1}
    assert m["rejected_by"] == {"type_mismatch": 2, "bad_datetime": 1}
    rows = {r["CustomerID"]: r for r in parquet_rows(store)}
    exp = int(datetime(2016, 4, 12, 17, 15, 30, tzinfo=UTC).timestamp())
    assert rows["C1"] == {"CustomerID": "C1", "CreationDateTime": exp, "OrderID": "O1",
                          "ExpirationTimestamp": exp + 31_536_000}
    assert rows["C2"]["CreationDateTime"] == int(datetime(2016, 4, 12, tzinfo=UTC).timestamp())
    assert rows["C7"]["CreationDateTime"] == 1460456130
    assert rows["C9"]["CreationDateTime"] == int(datetime(2016, 4, 12, 4, 45, 30, tzinfo=UTC).timestamp())
    rej = {json.loads(r["line"])["Item"]["CustomerID"]["S"]: r for r in rejected(store)}
    assert rej["C5"]["reason"] == "type_mismatch" and "expected S, got N" in rej["C5"]["message"]
    assert rej["C8"]["reason"] == "type_mismatch" and "got M" in rej["C8"]["message"]
    assert rej["C6"]["reason"] == "bad_datetime" and "'yesterday'" in rej["C6"]["message"]
    assert json.loads(rej["C6"]["line"]) == {"Item": row("C6", "yesterday", "O6")}  # the raw line, whole


def test_every_dynamodb_type_decodes() -> None:
    assert decode({"S": "x"}) == "x" and decode({"N": "12"}) == 12 and str(decode({"N": "1.50"})) == "1.50"
    assert decode({"B": "AAE="}) == b"\x00\x01" and decode({"BOOL": True}) is True and decode({"NULL": True}) is None
    assert decode({"SS": ["a", "b"]}) == {"a", "b"} and decode({"NS": ["1", "2"]}) == {1, 2}
    assert decode({"BS": ["AA=="]}) == {b"\x00"}
    assert decode({"L": [{"S": "a"}, {"N": "1"}]}) == ["a", 1]
    assert decode({"M": {"k": {"L": [{"NULL": True}]}}}) == {"k": [None]}
    with pytest.raises(ValueError):
        decode({"X": "1"})


def test_malformed_lines_are_quarantined_not_fatal(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    folder = write_real_export(tmp_path / "ext", [[row("C1", "2016-04-12T10:15:30Z", "O1")]])
    data = next((folder / "data").iterdir())
    raw = gzip.decompress(data.read_bytes()) + b'{"Item": {"CustomerID": \n' + b'{"NotItem": {}}\n' + \
        b'{"Item": {"CustomerID": "plain", "DateTime": {"S": "2016-04-12"}, "OrderID": {"S": "x"}}}\n' + \
        json.dumps({"Item": row("C2", "2016-04-13T00:00:00Z", "O2")}).encode() + b"\n"
    _rewrite(folder, data, raw, 5)
    run_export(cfg, [M], use_existing=str(folder))
    [m] = run_transform(cfg, [M])
    assert (m["items_in"], m["written"], m["rejected"]) == (5, 2, 3)
    assert m["rejected_by"] == {"malformed_line": 3}
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert sorted(r["CustomerID"] for r in parquet_rows(store)) == ["C1", "C2"]


_LINE_KINDS = [
    b'{"Item":{"CustomerID":{"S":"C1"},"DateTime":{"S":"2016-04-12T10:15:30.5+02:00"},"OrderID":{"S":"O1"}}}',
    b'{"Item":{"CustomerID":{"S":"C2"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O2"},"X":{"L":[]}}}',
    b'{"Item":{"CustomerID":{"S":"C3"},"DateTime":{"N":"1460456130"},"OrderID":{"S":"O3"}}}',
    b'{"Item":{"CustomerID":{"S":"C4"},"DateTime":{"S":"2016-04-12T10:15:30Z"}}}',          # not an order
    b'{"Item":{"CustomerID":{"S":"C5"},"DateTime":{"S":"2016-04-12T10:15:30Z"},"OrderID":{"S":""}}}',
    b'{"Item":{"CustomerID":{"S":"C6"},"DateTime":{"S":"yesterday"},"OrderID":{"S":"O6"}}}',
    b'{"Item":{"CustomerID":{"S":"C7"},"DateTime":{"S":"2016-04-12"},"OrderID":{"N":"7"}}}',
    b'{"Item":{"CustomerID":{"S":"C8"},"DateTime":{"S":"2016-04-12"},"OrderID":{"BOOL":true}}}',
    b'{"Item":{"CustomerID":{"S":"C9"},"OrderID":{"S":"O9"}}}',                               # no DateTime
    b'{"Item":{"CustomerID":"plain","DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O10"}}}',
    b'{"Item":{"CustomerID":{"S":123},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O11"}}}',
    b'{"Item":{"CustomerID":{"S":"C12"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":["x"]}}}',
    b'{"Item": 5}', b'{"Item": null}', b'{"NotItem": {}}', b'not json at all', b'{"Item": {"CustomerID": ',
    b'{"Item":{"CustomerID":{"S":"C13"},"CustomerID":{"S":"C14"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O"}}}',
    b"", b"   ",
    b"null", b"[1]", b'"text"',                                                                  # not objects
    b'{"Item":{"CustomerID":{"S":"C15\tx"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O15"}}}',  # raw tab
    b'{"Item":{"CustomerID":{"S":"C16"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O16"}}}\r',  # CRLF
    b'  {"Item":{"CustomerID":{"S":"C17"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O17"}}}\t',
    b'{"Item":{"CustomerID":{"S":"C18"},"OrderID":{"S":"O18"}}} {"Item":{}}',                  # two values
    b'{"Item":{"CustomerID":{"S":"C19"},"X":{"S":"a\x01b"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O19"}}}',
    b'{"Item":{"CustomerID":{"S":"C\\u00e9\\ud83d\\ude00"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O20"}}}',
    b'{"Item":{"CustomerID":{"S":"C21"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"\xff"}}}',  # not UTF-8
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.integers(0, len(_LINE_KINDS) - 1), min_size=1, max_size=80))
def test_a_chunk_gives_what_its_lines_give_one_by_one(make_config: Callable[..., Config], kinds: list[int]) -> None:
    """Whatever mix of good, dirty and malformed lines a chunk holds, one parse of the chunk (or its halving
    around lines the decoder refuses) gives the rows, quarantine records and counts of its lines taken alone."""
    cfg = make_config()
    schema, out_schema = mapping.parse_schema(cfg), mapping.output_schema(cfg)
    lines = [_LINE_KINDS[k] for k in kinds]
    whole = rows.convert_chunk(b"\n".join(lines) + b"\n", cfg, schema, out_schema)
    alone = [rows.convert_chunk(line + b"\n", cfg, schema, out_schema) for line in lines]
    assert whole.items_in == sum(r.items_in for r in alone) == sum(1 for line in lines if line.strip())
    assert whole.table.to_pylist() == [row for r in alone for row in r.table.to_pylist()]
    assert sorted(whole.rejected) == sorted(x for r in alone for x in r.rejected)
    filtered: dict[str, int] = {}
    for r in alone:
        for k, v in r.filtered.items():
            filtered[k] = filtered.get(k, 0) + v
    assert whole.filtered == filtered
    assert whole.items_in == whole.table.num_rows + len(whole.rejected) + sum(whole.filtered.values())


def test_what_each_odd_line_becomes(make_config: Callable[..., Config]) -> None:
    """The outcome of lines at the edges of JSON, in one chunk: pyarrow's reader crashed the process on a
    `null` line; raw control bytes inside strings (which arrow-rs's decoder would take) are refused."""
    cfg = make_config()
    schema, out_schema = mapping.parse_schema(cfg), mapping.output_schema(cfg)
    ok = b'{"Item":{"CustomerID":{"S":"C%d"},"DateTime":{"S":"2016-04-12T10:15:30Z"},"OrderID":{"S":"O%d"}}}'
    tab = b'{"Item":{"CustomerID":{"S":"C\tX"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O2"}}}'
    two = ok % (5, 5) + b" " + ok % (6, 6)
    number = b'{"Item":{"CustomerID":{"S":"C9"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":123}}}'
    form_feed = b'{"Item":\x0c{"CustomerID":{"S":"C10"}}}'  # not JSON whitespace
    chunk = b"\n".join([
        ok % (1, 1), b"null", tab, b"",
        ok % (3, 3) + b"\r",  # CRLF line ending: whitespace
        b"\t" + ok % (4, 4),  # a tab between tokens: whitespace
        two,
        b'{"Item":{"CustomerID":{"S":"C7"},"CustomerID":{"S":"C8"},"DateTime":{"S":"2016-04-12"},"OrderID":{"S":"O8"}}}',
        number, form_feed,
    ]) + b"\n"
    r = rows.convert_chunk(chunk, cfg, schema, out_schema)
    assert r.table.column("CustomerID").to_pylist() == ["C1", "C3", "C4", "C8"]  # a repeated key: the last wins
    got = {line: (reason, message) for reason, message, line in r.rejected}
    assert {line: reason for line, (reason, _) in got.items()} == dict.fromkeys([b"null", tab, two, number, form_feed],
                                                                                 "malformed_line")
    assert got[b"null"][1] == "no Item object"
    assert got[two][1] == "more than one JSON value on the line"
    assert got[number][1] == "attribute OrderID: its S value is a JSON int, not a string"
    assert got[tab][1].startswith("not JSON: ") and got[form_feed][1].startswith("not JSON: ")
    assert r.items_in == 9 == r.table.num_rows + len(r.rejected) + sum(r.filtered.values())


_leaf = st.one_of(
    st.builds(lambda s: {"S": s}, st.text()), st.builds(lambda n: {"N": str(n)}, st.integers()),
    st.builds(lambda b: {"B": base64.b64encode(b).decode()}, st.binary(max_size=8)),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.just({"NULL": True}), st.builds(lambda x: {"SS": sorted(x)}, st.sets(st.text(), min_size=1, max_size=3)),
    st.builds(lambda x: {"NS": [str(v) for v in sorted(x)]}, st.sets(st.integers(), min_size=1, max_size=3)),
)
_value = st.recursive(_leaf, lambda inner: st.one_of(
    st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3)),
    st.builds(lambda v: {"M": v}, st.dictionaries(st.text(max_size=5), inner, max_size=3))), max_leaves=6)
_items = st.lists(st.tuples(
    st.text(min_size=1), st.text(min_size=1),
    st.integers(min_value=-(2**35), max_value=2**35),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("CustomerID", "DateTime", "OrderID")),
                    _value, max_size=3),
    st.booleans()), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=_items)
def test_any_item_text_reads_back_exactly(make_config: Callable[..., Config],
                                          items: list[tuple[str, str, int, dict[str, Any], bool]]) -> None:
    """Any text in the mapped attributes (quotes, backslashes, control characters, astral characters) and any
    other attributes of every DynamoDB type, written as orjson or as ASCII-escaped JSON: the rows hold exactly
    what json.loads reads from each line."""
    cfg = make_config()
    schema, out_schema = mapping.parse_schema(cfg), mapping.output_schema(cfg)
    lines = []
    for cid, oid, epoch, extra, ascii_only in items:
        item = {**extra, "CustomerID": {"S": cid}, "DateTime": {"N": str(epoch)}, "OrderID": {"S": oid}}
        lines.append(json.dumps({"Item": item}, ensure_ascii=True).encode() if ascii_only
                     else export_line(item).rstrip(b"\n"))
    r = rows.convert_chunk(b"\n".join(lines) + b"\n", cfg, schema, out_schema)
    want = []
    for line in lines:
        item = json.loads(line)["Item"]
        epoch = int(item["DateTime"]["N"])
        want.append({"CustomerID": item["CustomerID"]["S"], "CreationDateTime": epoch,
                     "OrderID": item["OrderID"]["S"], "ExpirationTimestamp": epoch + 31536000})
    assert r.rejected == [] and r.table.to_pylist() == want


def _rewrite(folder: Path, data: Path, raw: bytes, count: int) -> None:
    """Replace a data file and fix the manifests so the export stays valid."""
    from tests.helpers import b64md5

    gz = gzip.compress(raw)
    data.write_bytes(gz)
    entry = json.loads((folder / "manifest-files.json").read_text())
    entry.update(itemCount=count, md5Checksum=b64md5(gz))
    mf = (json.dumps(entry) + "\n").encode()
    (folder / "manifest-files.json").write_bytes(mf)
    (folder / "manifest-files.md5").write_text(b64md5(mf))
    s = json.loads((folder / "manifest-summary.json").read_text())
    s["itemCount"] = count
    sb = json.dumps(s).encode()
    (folder / "manifest-summary.json").write_bytes(sb)
    (folder / "manifest-summary.md5").write_text(b64md5(sb))


def test_truncated_gzip_fails_with_file_and_line(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(extra="[transform]\nrow_group_rows = 1000\n")
    items = [row(f"C{i}", "2016-04-12T10:15:30Z", f"O{i}", pad={"S": "x" * 200}) for i in range(3000)]
    folder = write_real_export(tmp_path / "ext", [items])
    run_export(cfg, [M], use_existing=str(folder))
    data = next((folder / "data").iterdir())
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    with pytest.raises(EtlError, match=r"data\.*.*ends early .* after line \d+") as e:
        run_transform(cfg, [M])
    assert str(data.name) in e.value.message and "--force" in (e.value.hint or "")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, M, "transform") is None
    assert store.read_json(staging.failed_key(M, "transform"))["rerun"] == "etl transform --month 201604"


def test_a_file_converted_on_helper_threads_gives_the_same_output(
        make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A month of one file converts its chunks on the idle workers: the Parquet part, the quarantine file, the
    counts and a hook's view are the same as converting them one after another; a truncated file names the
    same line either way."""
    from tests import hooks_example

    monkeypatch.setattr(lines, "CHUNK", 4096)  # many chunks from a small file
    items = [{k: v for k, v in it.items() if k != "_dirty"} for it in generate_month(M, 3000, 7)]
    folder = write_real_export(tmp_path / "ext", [items])
    data = next((folder / "data").iterdir())
    seen: dict[int, list[str]] = {}
    results = {}
    for helpers in (0, 2):
        cfg = make_config(root=str(tmp_path / f"stage{helpers}"),
                          extra='[transform]\nrow_group_rows = 500\nhook = "tests.hooks_example:record_orders"\n')
        run_export(cfg, [M], use_existing=str(folder))
        store = staging.open_store(cfg.staging.root, cfg.staging)
        hooks_example.SEEN.clear()
        task = FileTask(M, 0, str(data), staging.transformed_key(M, 0), staging.rejected_key(M, 0), "run", helpers)
        info = run_task(cfg, task, TaskContext())
        seen[helpers] = list(hooks_example.SEEN)
        out = pq.read_table(store.key_uri(info["output"]))
        rejected = gzip.decompress(store.read(info["rejected_key"]))
        results[helpers] = (out, rejected, {k: v for k, v in info.items() if k not in ("output", "rejected_key")})
    assert results[0][0].equals(results[2][0]) and results[0][0].num_rows > 500
    assert results[0][1] == results[2][1] and results[0][2] == results[2][2]
    assert seen[0] == seen[2]
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    errors = []
    for helpers in (0, 2):
        cfg = make_config(root=str(tmp_path / f"stage{helpers}"))
        with pytest.raises(EtlError) as e:
            run_task(cfg, FileTask(M, 0, str(data), staging.transformed_key(M, 0), staging.rejected_key(M, 0), "run",
                                   helpers), TaskContext())
        errors.append(e.value.message)
    assert errors[0] == errors[1] and "ends early" in errors[0]


def test_rerun_overwrites_and_mapping_change_redoes(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = stage(cfg, tmp_path, [[row(f"C{i}", "2016-04-12T10:15:30Z", f"O{i}") for i in range(50)],
                                  [row("X", "bad", "O")]])
    run_transform(cfg, [M])
    [again] = run_transform(cfg, [M])
    assert again.get("skipped")
    [forced] = run_transform(cfg, [M], force=True)
    assert forced["written"] == 50 and len(parquet_rows(store)) == 50
    assert [o.key for o in store.list("transformed/")] == ["transformed/month=201604/part-00000.parquet",
                                                          "transformed/month=201604/part-00001.parquet"]
    assert len(rejected(store)) == 1
    cfg2 = make_config(extra="[transform]\nttl_seconds = 60\n")
    [redo] = run_transform(cfg2, [M])
    assert not redo.get("skipped") and parquet_rows(store)[0]["ExpirationTimestamp"] == \
        parquet_rows(store)[0]["CreationDateTime"] + 60


def test_key_collisions_are_counted_and_losers_listed(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = stage(cfg, tmp_path, [[row("C1", "2016-04-12T10:15:30.100Z", "O1"),
                                   row("C1", "2016-04-12T10:15:30.900Z", "O3")],
                                  [row("C1", "2016-04-12T03:15:30-07:00", "O2"),
                                   row("C2", "2016-04-12", "O9")]])
    [m] = run_transform(cfg, [M])
    c = m["collisions"]
    assert (c["rows"], c["keys"], c["losers"]) == (3, 1, 2)
    assert sorted(c["examples"][0]["orders"]) == ["O1", "O2", "O3"]
    losers = pq.read_table(store.key_uri(c["losers_file"])).to_pylist()
    assert sorted(x["OrderID"] for x in losers) == ["O1", "O2"]  # the greatest OrderID (O3) wins


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.lists(st.tuples(st.sampled_from(["C1", "C2", "C10", "c1"]), st.integers(-3, 3),
                                          st.sampled_from(["O1", "O2", "O9", "O10"])), max_size=30),
                      min_size=1, max_size=4),
       bucket_rows=st.sampled_from([3, 10, 1_000_000]))
def test_collisions_match_a_plain_python_count(make_config: Callable[..., Config],
                                               parts: list[list[tuple[str, int, str]]], bucket_rows: int) -> None:
    """Any rows split over any parts, in one bucket or many: the same colliding rows and losers as counting
    (CustomerID, CreationDateTime) in Python, and the winner is the greatest OrderID, then the first row."""
    with tempfile.TemporaryDirectory() as d:
        cfg = make_config(root=d, extra=f"[transform]\ncollision_bucket_rows = {bucket_rows}\n")
        store = staging.open_store(cfg.staging.root, cfg.staging)
        listed, tables = [], []
        for i, rows in enumerate(parts):
            key = staging.transformed_key(M, i)
            t = pa.table({"CustomerID": [r[0] for r in rows], "CreationDateTime": [r[1] for r in rows],
                          "OrderID": [r[2] for r in rows], "ExpirationTimestamp": [r[1] + 1 for r in rows]},
                         schema=mapping.output_schema(cfg))
            buf = io.BytesIO()
            pq.write_table(t, buf)
            store.write(key, buf.getvalue())
            listed.append({"part": i, "output": key, "rows": len(rows)})
            tables.append(t)
        c = collisions.find_collisions(cfg, store, M, listed)
        groups: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
        for i, rows in enumerate(parts):
            for j, (cid, ts, oid) in enumerate(rows):
                groups.setdefault((cid, ts), []).append((oid, i, j))
        shared = {k: v for k, v in groups.items() if len(v) > 1}
        assert (c["rows"], c["keys"]) == (sum(map(len, shared.values())), len(shared))
        want = set()
        for v in shared.values():
            best = max(v, key=lambda x: (x[0], -x[1], -x[2]))
            want |= {(i, j) for _, i, j in v if (i, j) != best[1:]}
        got = set()
        if c["keys"]:
            losers = pq.read_table(store.key_uri(c["losers_file"])).to_pylist()
            got = {(r["_part"], r["_row"]) for r in losers}
            ex = c["examples"][0]
            assert sorted(ex["orders"]) == sorted(o for o, _, _ in shared[(ex["CustomerID"], ex["CreationDateTime"])])
        assert got == want


def test_hook_changes_and_drops_rows_and_errors_name_it(make_config: Callable[..., Config], tmp_path: Path) -> None:
    items = [row("C1", "2016-04-12T10:15:30Z", "o1"), row("TEST9", "2016-04-12T10:15:30Z", "o2")]
    cfg = make_config(extra='[transform]\nhook = "tests.hooks_example:uppercase_orders"\n')
    store = stage(cfg, tmp_path, [items])
    run_transform(cfg, [M])
    assert sorted(r["OrderID"] for r in parquet_rows(store)) == ["O1", "O2"]
    cfg = make_config(extra='[transform]\nhook = "tests.hooks_example:drop_test_customers"\n')
    [m] = run_transform(cfg, [M])
    assert m["written"] == 1 and m["filtered_by"] == {"hook": 1}
    cfg = make_config(extra='[transform]\nhook = "tests.hooks_example:broken"\n')
    with pytest.raises(EtlError, match=r"hook tests.hooks_example:broken failed: KeyError"):
        run_transform(cfg, [M])
    cfg = make_config(extra='[transform]\nhook = "tests.nope:fn"\n')
    with pytest.raises(EtlError, match="cannot be loaded"):
        run_transform(cfg, [M])


def test_no_export_means_a_clear_next_step(make_config: Callable[..., Config]) -> None:
    with pytest.raises(StageNotReady, match="no committed export") as e:
        run_transform(make_config(), [M])
    assert "etl export --month 201604" in (e.value.hint or "")


def test_parquet_is_one_dataset_across_months(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    for month, n in (("201604", 3), ("201605", 4)):
        stage(cfg, tmp_path, [[row(f"C{i}", f"{month[:4]}-{month[4:]}-02T00:00:00Z", f"O{i}") for i in range(n)]],
              month)
    run_transform(cfg, ["201604", "201605"])
    root = Path(cfg.staging.root) / "transformed"
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    t = dataset.to_table()
    assert t.num_rows == 7 and sorted(set(t["month"].to_pylist())) == [201604, 201605]
    schema = pq.read_schema(next(root.rglob("*.parquet")))
    assert [(f.name, str(f.type)) for f in schema] == [("CustomerID", "string"), ("CreationDateTime", "int64"),
                                                       ("OrderID", "string"), ("ExpirationTimestamp", "int64")]
    assert pq.ParquetFile(next(root.rglob("*.parquet"))).metadata.row_group(0).column(0).compression == "ZSTD"
    con = duckdb.connect()
    got = con.execute(f"SELECT month, count(*) FROM read_parquet('{root}/*/*.parquet', hive_partitioning=true) "
                      "GROUP BY month ORDER BY month").fetchall()
    assert got == [(201604, 3), (201605, 4)]


def test_every_dirty_seeded_row_gets_its_reason(moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/b")
    seed(cfg, [M], 4000, 11)
    run_export(cfg, [M])
    [m] = run_transform(cfg, [M])
    expected: dict[str, int] = {}
    dirty_keys = {}
    for r in generate_month(M, 4000, 11):
        if "_dirty" in r:
            outcome = DIRTY_KINDS[r["_dirty"]]
            expected[outcome] = expected.get(outcome, 0) + 1
            dirty_keys[(r["CustomerID"]["S"], r["DateTime"]["S"])] = outcome
    store = staging.open_store(cfg.staging.root, cfg.staging)
    got = {}
    for rj in rejected(store):
        it = json.loads(rj["line"])["Item"]
        got[(it["CustomerID"]["S"], it["DateTime"]["S"])] = f"rejected:{rj['reason']}"
    for key, outcome in dirty_keys.items():
        if outcome.startswith("rejected"):
            assert got.get(key) == outcome, key
    assert set(got) == {k for k, v in dirty_keys.items() if v.startswith("rejected")}  # nothing else rejected
    assert m["filtered_by"]["empty_OrderID"] == expected["filtered:empty_OrderID"]
    assert m["items_in"] == 4000 == m["written"] + m["filtered"] + m["rejected"]


def test_numbers_past_int64_and_expiries_past_year_9999_are_quarantined_not_crashes(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = stage(cfg, tmp_path, [[
        row("C1", {"N": "+1460000000"}, "O1"),  # DynamoDB's grammar allows a plus sign
        row("C2", {"N": "99999999999999999999999"}, "O2"),  # past int64
        row("C3", "9999-06-01T00:00:00Z", "O3"),  # a date that fits, an expiry a year later that does not
        row("C4", "2016-04-12T10:15:30Z", "O4"),
    ]])
    [m] = run_transform(cfg, [M])
    assert (m["items_in"], m["written"], m["rejected"]) == (4, 2, 2)
    assert sorted(r["CustomerID"] for r in parquet_rows(store)) == ["C1", "C4"]
    rej = {json.loads(r["line"])["Item"]["CustomerID"]["S"]: r for r in rejected(store)}
    assert rej["C2"]["reason"] == "bad_datetime"
    assert rej["C3"]["reason"] == "bad_datetime" and "past 9999-12-31" in rej["C3"]["message"]


def test_a_value_with_two_type_tags_is_malformed(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = stage(cfg, tmp_path, [[
        row("C1", {"S": "2016-04-12T10:15:30Z", "N": "1460456130"}, "O1"),
        row("C2", "2016-04-12T10:15:30Z", {"N": "7", "S": "O2"}),
        {"CustomerID": {"S": "C3", "N": "3"}, "DateTime": {"S": "2016-04-12T10:15:30Z"}, "OrderID": {"S": "O3"}},
        row("C4", "2016-04-12T10:15:30Z", "O4"),
    ]])
    [m] = run_transform(cfg, [M])
    assert (m["written"], m["rejected_by"]) == (1, {"malformed_line": 3})
    msgs = {json.loads(r["line"])["Item"]["OrderID"].get("S"): r["message"] for r in rejected(store)}
    assert msgs == {"O1": "DateTime has two type tags (S and N); a DynamoDB value has exactly one",
                    "O2": "OrderID has two type tags (S and N); a DynamoDB value has exactly one",
                    "O3": "CustomerID has two type tags (S and N); a DynamoDB value has exactly one"}


@pytest.mark.parametrize(("sizes", "workers", "expected"), [
    ([100, 100, 100, 100], 2, [0, 0, 0, 0]),  # even files: each worker takes whole files
    ([600, 360, 0, 1430], 2, [0, 0, 0, 1]),  # one file over a worker's share: the others' workers help it
    ([1000], 2, [1]),  # fewer files than workers: the idle ones help
    ([500, 500], 4, [1, 1]),
    ([1000], 1, [0]),  # one worker: nobody to help
])
def test_which_files_convert_on_helper_threads(make_config: Callable[..., Config], tmp_path: Path,
                                               sizes: list[int], workers: int, expected: list[int]) -> None:
    """The plan gives helper threads where workers would otherwise sit idle, and only there, by the sizes the
    export's manifest lists."""
    from etl.transform.stage import plan

    month_items = [it for it in generate_month(M, 40, 3) if "_dirty" not in it]
    folder = write_real_export(tmp_path / "ext", [month_items[: max(1, s // 100)] for s in sizes])
    cfg = make_config(root=str(tmp_path / "stage"), extra=f"[transform]\nconcurrency = {workers}\n")
    run_export(cfg, [M], use_existing=str(folder))
    store = staging.open_store(cfg.staging.root, cfg.staging)
    export = staging.read_manifest(store, M, "export")
    assert export is not None
    for f, s in zip(sorted(export["files"], key=lambda f: f["uri"]), sizes, strict=True):
        f["size"] = s  # the sizes under test (the files themselves are small)
    store.write_json(staging.manifest_key(M, "export"), export)
    tasks = plan(cfg, store, M).tasks
    assert {t.part: t.helpers for t in tasks} == dict(enumerate(expected))


def test_a_rerun_after_a_failure_transforms_only_the_unfinished_parts(
        make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A month whose transform stopped midway: the parts it finished keep their checkpoints (their Parquet is not
    written again), the rerun transforms the rest, and the month's totals are those of a whole run."""
    items = [{k: v for k, v in it.items() if k != "_dirty"} for it in generate_month(M, 900, 5)]
    marked = [{**it, "CustomerID": {"S": "FAIL" + it["CustomerID"]["S"]}} for it in items[800:]]
    folder = write_real_export(tmp_path / "ext", [items[:400], items[400:800], marked])
    cfg = make_config(root=str(tmp_path / "stage"),
                      extra='[transform]\nconcurrency = 1\nhook = "tests.hooks_example:fail_on_marked_customers"\n')
    run_export(cfg, [M], use_existing=str(folder))
    store = staging.open_store(cfg.staging.root, cfg.staging)
    monkeypatch.setenv("ETL_TEST_HOOK_FAILS", "1")
    with pytest.raises(EtlError, match="marked customer"):
        run_transform(cfg, [M])
    assert staging.read_manifest(store, M, "transform") is None
    done = sorted(o.key for o in store.list(staging.transformed_parts_prefix(M)))
    assert done == sorted([staging.transformed_part_key(M, 0), staging.transformed_part_key(M, 1),
                           staging.key_fingerprints_key(M, 0, collisions.scheme(cfg)),
                           staging.key_fingerprints_key(M, 1, collisions.scheme(cfg))])
    kept = {i: Path(store.key_uri(staging.transformed_key(M, i))).stat().st_mtime_ns for i in (0, 1)}
    monkeypatch.delenv("ETL_TEST_HOOK_FAILS")
    said = io.StringIO()
    from etl.progress import Reporter

    [m] = run_transform(cfg, [M], reporter=Reporter("json", stream=said))
    assert "2 of 3 parts were transformed by an earlier run" in said.getvalue()
    assert {i: Path(store.key_uri(staging.transformed_key(M, i))).stat().st_mtime_ns for i in (0, 1)} == kept
    assert [p["part"] for p in m["parts"]] == [0, 1, 2] and m["items_in"] == 900
    [again] = run_transform(cfg, [M], force=True)  # every part again: the same totals
    assert {i: Path(store.key_uri(staging.transformed_key(M, i))).stat().st_mtime_ns for i in (0, 1)} != kept
    for k in ("items_in", "written", "filtered", "rejected", "filtered_by", "rejected_by", "collisions"):
        assert m[k] == again[k], k

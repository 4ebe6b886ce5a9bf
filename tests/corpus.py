"""The bad-input corpus, as data: every kind of bad input we know of and the one outcome it must end as.

`tests/test_corpus.py` runs it (`make test ARGS="tests/test_corpus.py -v"`); `python -m tests.corpus` prints it
as the markdown table of RELIABILITY.md. Each line kind sits in a data file of its own between two good rows;
each file kind is an export of its own beside a good data file.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import b64md5, write_raw_export

M = "201604"
T = 1460456130  # 2016-04-12T10:15:30Z, the good rows' date
TTL = 31_536_000
ZONE = "America/New_York"  # transform.date_zone: local times (no offset) are New York's
PATTERN = "%d/%m/%Y %H:%M:%S"  # transform.date_formats

MAPPING = f"""
[transform]
date_zone = "{ZONE}"
date_formats = ["{PATTERN}"]

[[transform.columns]]
name = "CustomerID"
source = "CustomerID"
[[transform.columns]]
name = "CreationDateTime"
source = "DateTime"
converter = "datetime"
[[transform.columns]]
name = "OrderID"
source = "OrderID"
[[transform.columns]]
name = "Quantity"
source = "Quantity"
converter = "int"
required = false
[[transform.columns]]
name = "ExpirationTimestamp"
converter = "ttl"
base = "CreationDateTime"
"""

ISO = b'{"S":"2016-04-12T10:15:30Z"}'


def line(cid: str, dt: bytes = ISO, oid: bytes | None = None, extra: bytes = b"") -> bytes:
    """One export line; `dt`, `oid` and `extra` are raw DynamoDB JSON, so they can be anything."""
    oid = b'{"S":' + json.dumps(f"O-{cid}").encode() + b"}" if oid is None else oid
    return (b'{"Item":{"CustomerID":{"S":' + json.dumps(cid).encode() + b'},"DateTime":' + dt
            + b',"OrderID":' + oid + extra + b"}}")


def raw(cid: bytes) -> bytes:
    """A line whose CustomerID is these bytes as they stand between the quotes (raw or escaped); OrderID O-C-RAW."""
    return line("C-RAW").replace(b'"C-RAW"', b'"' + cid + b'"', 1)


def row(cid: str, epoch: int = T, oid: str | None = None, qty: int | None = None) -> dict[str, Any]:
    """A row as the transform must write it."""
    return {"CustomerID": cid, "CreationDateTime": epoch, "OrderID": f"O-{cid}" if oid is None else oid,
            "Quantity": qty, "ExpirationTimestamp": epoch + TTL}


def nested(depth: int, tag: bytes = b"M") -> bytes:
    """A map (or list) `depth` levels deep around one string."""
    if tag == b"M":
        return b'{"M":{"a":' * depth + b'{"S":"x"}' + b"}}" * depth
    return b'{"L":[' * depth + b'{"S":"x"}' + b"]}" * depth


def not_a_date(value: str) -> str:
    return f"DateTime: {value!r} is not a date-time (ISO-8601, yyyy-MM-dd or a configured pattern)"


def not_an_epoch(value: str) -> str:
    return f"DateTime: {value!r} is not epoch seconds within years 0001-9999 (transform.epoch_unit = 's')"


@dataclass(frozen=True)
class Kind:
    """A bad line (or lines) between two good rows of one data file, and its outcome: quarantined lines with their
    (reason, message), rows written exactly, or a counted filter. `load` is what the load then does with the rows
    written: "" (written), skipped_expired, deduplicated or item_too_large."""

    id: str
    what: str
    lines: tuple[bytes, ...]
    rejected: tuple[tuple[str, str], ...] = ()
    written: tuple[dict[str, Any], ...] = ()
    filtered: tuple[tuple[str, int], ...] = ()
    load: str = ""
    sep: bytes = b"\n"
    first: bool = False  # the bad lines open the file (a BOM)
    note: str = ""

    def data(self) -> tuple[bytes, int]:
        """The data file's bytes (gzip) and its item count (its lines that are not blank)."""
        good = [line(f"{self.id}/a"), line(f"{self.id}/b")]
        lines = [*self.lines, *good] if self.first else [good[0], *self.lines, good[1]]
        raw = b"".join(x + self.sep for x in lines)
        return gzip.compress(raw, mtime=0), sum(1 for x in lines if x.strip(b" \t\r"))

    def good_rows(self) -> list[dict[str, Any]]:
        a, b = row(f"{self.id}/a"), row(f"{self.id}/b")
        return [*self.written, a, b] if self.first else [a, *self.written, b]


def _q(reason: str, message: str) -> tuple[tuple[str, str], ...]:
    return ((reason, message),)


MALFORMED = "malformed_line"
DUP_KEY_OF = "malformed-json/a"  # the good row whose key the cross-file duplicate repeats

LINE_KINDS: list[Kind] = [
    # ---- the line is not one JSON object
    Kind("malformed-json", "not JSON", (b'{"Item":{"CustomerID" {"S":"C"}}}',),
         _q(MALFORMED, "not JSON: unexpected character, expected ':' after key: line 1 column 23 (char 22)")),
    Kind("truncated-line", "a line cut short", (line("C-truncated")[:-5],),
         _q(MALFORMED, "not JSON: unexpected end of data: line 1 column 111 (char 110)")),
    Kind("null-line", "a line that is `null`", (b"null",), _q(MALFORMED, "no Item object")),
    Kind("array-line", "a line that is a JSON array", (b'[{"Item":{}}]',), _q(MALFORMED, "no Item object")),
    Kind("two-values", "two JSON objects on one line", (line("C-two1") + b" " + line("C-two2"),),
         _q(MALFORMED, "more than one JSON value on the line")),
    Kind("split-line", "one object split over two lines (a raw newline)",
         tuple(line("C-split").split(b',"OrderID"')[0:1]) + (b'"OrderID":{"S":"O-C-split"}}}',),
         ((MALFORMED, "not JSON: unexpected end of data: line 1 column 78 (char 77)"),
          (MALFORMED, "not JSON: unexpected content after document: line 1 column 10 (char 9)")),
         note="each physical line is counted and quarantined"),
    Kind("raw-tab", "a raw tab inside a string", (raw(b"C-\tTAB"),),
         _q(MALFORMED, "not JSON: unexpected control character in string: line 1 column 31 (char 30)")),
    Kind("raw-nul", "a raw NUL byte inside a string", (raw(b"C-\x00NUL"),),
         _q(MALFORMED, "not JSON: unexpected control character in string: line 1 column 31 (char 30)")),
    Kind("invalid-utf8", "bytes that are not UTF-8 (0xff 0xfe)", (raw(b"C-\xff\xfe"),),
         _q(MALFORMED, "not UTF-8 text: byte 0xff at position 30")),
    Kind("bom", "a UTF-8 byte order mark before the first line", (b"\xef\xbb\xbf" + line("C-bom"),),
         _q(MALFORMED, "not JSON: UTF-8 byte order mark (BOM) is not supported: line 1 column 1 (char 0)"),
         first=True),
    Kind("bare-nan", "a bare NaN token (`{\"N\":NaN}`)", (line("C-nan", b'{"N":NaN}'),),
         _q(MALFORMED, "not JSON: unexpected character, expected a JSON value: line 1 column 53 (char 52)")),
    Kind("missing-item", "no `Item` wrapper", (b'{"NotItem":{"CustomerID":{"S":"C"}}}',),
         _q(MALFORMED, "no Item object")),
    Kind("item-not-object", "`Item` is not an object", (b'{"Item":"C-x"}',), _q(MALFORMED, "no Item object")),
    Kind("n-json-number", "N as a JSON number, not a string", (line("C-njson", b'{"N":1460456130}'),),
         _q(MALFORMED, "attribute DateTime: its N value is a JSON int, not a string")),
    Kind("two-tags", 'two type tags in one value (`{"S":..,"N":..}`)',
         (line("C-tags", b'{"S":"2016-04-12T10:15:30Z","N":"1460456130"}'),),
         _q(MALFORMED, "DateTime has two type tags (S and N); a DynamoDB value has exactly one")),
    Kind("two-tags-bool", 'two type tags, one of them BOOL (`{"S":"O-1","BOOL":true}`)',
         (line("C-tagsb", oid=b'{"S":"O-1","BOOL":true}'),),
         _q(MALFORMED, "OrderID has two type tags (S and BOOL); a DynamoDB value has exactly one")),
    Kind("lone-high-surrogate", "an escaped high surrogate without its low half", (raw(b"C-\\ud800x"),),
         _q(MALFORMED, "not JSON: no low surrogate in string: line 1 column 31 (char 30)")),
    Kind("lone-low-surrogate", "an escaped low surrogate alone", (raw(b"C-\\udfffx"),),
         _q(MALFORMED, "not JSON: invalid high surrogate in string: line 1 column 31 (char 30)")),
    # ---- JSON, but not the shape or type the mapping needs
    Kind("missing-sort-source", "the attribute the sort key comes from (DateTime) is missing",
         (b'{"Item":{"CustomerID":{"S":"C-nodt"},"OrderID":{"S":"O"}}}',),
         _q("missing_attribute", "DateTime is missing")),
    Kind("missing-partition-key", "the partition key attribute (CustomerID) is missing",
         (b'{"Item":{"DateTime":{"S":"2016-04-12T10:15:30Z"},"OrderID":{"S":"O"}}}',),
         filtered=(("missing_CustomerID", 1),), note="filtered: the default filter keeps rows with a CustomerID"),
    Kind("not-an-order", "an empty OrderID", (line("C-empty", oid=b'{"S":""}'),), filtered=(("empty_OrderID", 1),)),
    Kind("key-wrong-tag", "the key attribute with the wrong type tag (N for S)",
         (line("C").replace(b'{"S":"C"}', b'{"N":"5"}', 1),), _q("type_mismatch", "CustomerID: expected S, got N")),
    Kind("unknown-tag", "an unknown type tag", (line("C-x", b'{"X":"2016"}'),),
         _q("type_mismatch", "DateTime: expected S or N, got X")),
    Kind("deep-map", "a map 50 levels deep where a string is expected", (line("C-deep", oid=nested(50)),),
         _q("type_mismatch", "OrderID: expected S, got M")),
    Kind("deeper-than-parsers", "a map 2,000 levels deep where a string is expected",
         (line("C-deeper", oid=nested(2000)),), _q("type_mismatch", "OrderID: expected S, got M")),
    Kind("deep-unmapped", "a list 2,000 levels deep in an attribute the mapping does not read",
         (line("C-deepx", extra=b',"X":' + nested(2000, b"L")),), written=(row("C-deepx"),)),
    Kind("set-for-string", "a string set (SS) where a string is expected", (line("C-ss", oid=b'{"SS":["a"]}'),),
         _q("type_mismatch", "OrderID: expected S, got SS")),
    Kind("set-for-date", "a number set (NS) where a date is expected", (line("C-ns", b'{"NS":["1"]}'),),
         _q("type_mismatch", "DateTime: expected S or N, got NS")),
    Kind("bool-for-string", "BOOL where a string is expected", (line("C-bool", oid=b'{"BOOL":true}'),),
         _q("type_mismatch", "OrderID: expected S, got BOOL")),
    Kind("null-for-string", "NULL where a string is expected", (line("C-null", oid=b'{"NULL":true}'),),
         _q("type_mismatch", "OrderID: expected S, got NULL")),
    Kind("s-json-null", 'an S tag holding JSON null (`{"S":null}`)', (line("C-snull", oid=b'{"S":null}'),),
         _q("type_mismatch", "OrderID: expected S, got S with a JSON null")),
    Kind("empty-value", "an empty value object (`{}`)", (line("C-emptyv", oid=b"{}"),),
         _q("type_mismatch", "OrderID: expected S, got an empty object {}")),
    Kind("string-for-int", "S where the int column expects N", (line("C-sint", extra=b',"Quantity":{"S":"5"}'),),
         _q("type_mismatch", "Quantity: expected N, got S")),
    # ---- numbers
    Kind("n-plus-sign", "N with a leading +",
         (line("C-plus", b'{"N":"+1460456130"}', extra=b',"Quantity":{"N":"+5"}'),),
         written=(row("C-plus", qty=5),)),
    Kind("n-exponent", "N with an exponent",
         (line("C-exp", b'{"N":"1.46045613E9"}', extra=b',"Quantity":{"N":"1E2"}'),),
         written=(row("C-exp", qty=100),)),
    Kind("n-whole-fraction", "N 5.0 for the int column (a whole number)",
         (line("C-whole", extra=b',"Quantity":{"N":"5.0"}'),), written=(row("C-whole", qty=5),)),
    Kind("n-int64-max", "N at int64's maximum", (line("C-max", extra=b',"Quantity":{"N":"9223372036854775807"}'),),
         written=(row("C-max", qty=2**63 - 1),)),
    Kind("n-past-int64", "N one past int64 for the int column",
         (line("C-int64", extra=b',"Quantity":{"N":"9223372036854775808"}'),),
         _q("bad_int", "Quantity: '9223372036854775808' is not a whole number within int64")),
    Kind("n-fraction-for-int", "N with a fraction for the int column",
         (line("C-frac", extra=b',"Quantity":{"N":"2.5"}'),),
         _q("bad_int", "Quantity: '2.5' is not a whole number within int64")),
    Kind("n-past-int64-date", "N past int64 as a date", (line("C-big", b'{"N":"99999999999999999999999"}'),),
         _q("bad_datetime", not_an_epoch("99999999999999999999999"))),
    Kind("n-nan-text", 'N "NaN"', (line("C-nan", b'{"N":"NaN"}'),), _q("bad_datetime", not_an_epoch("NaN"))),
    Kind("n-infinity-text", 'N "Infinity"', (line("C-inf", b'{"N":"Infinity"}'),),
         _q("bad_datetime", not_an_epoch("Infinity"))),
    Kind("epoch-ms-as-s", "an epoch in milliseconds with epoch_unit = s (year 48,000)",
         (line("C-ms", b'{"N":"1460456130123"}'),), _q("bad_datetime", not_an_epoch("1460456130123"))),
    Kind("n-negative-fraction", "N -1.5 as a date (floored to the second before)",
         (line("C-negf", b'{"N":"-1.5"}'),), written=(row("C-negf", -2),), load="skipped_expired",
         note="its TTL (1971) has passed: the load skips and counts it"),
    # ---- dates
    Kind("feb-31-iso", "an impossible date (31 Feb) on the ISO path", (line("C-f31", b'{"S":"2016-02-31T10:15:30Z"}'),),
         _q("bad_datetime", not_a_date("2016-02-31T10:15:30Z"))),
    Kind("feb-31-pattern", "an impossible date (31 Feb) on a date_formats pattern",
         (line("C-f31p", b'{"S":"31/02/2016 10:15:30"}'),), _q("bad_datetime", not_a_date("31/02/2016 10:15:30"))),
    Kind("feb-29-pattern", "29 Feb of a leap year on the pattern (New York local time)",
         (line("C-f29p", b'{"S":"29/02/2016 10:15:30"}'),), written=(row("C-f29p", 1456758930),)),
    Kind("leap-second", "a leap second (23:59:60)", (line("C-leap", b'{"S":"2016-12-31T23:59:60Z"}'),),
         _q("bad_datetime", not_a_date("2016-12-31T23:59:60Z"))),
    Kind("year-0", "year 0000", (line("C-y0", b'{"S":"0000-01-01T00:00:00Z"}'),),
         _q("bad_datetime", not_a_date("0000-01-01T00:00:00Z"))),
    Kind("year-10000", "year 10000", (line("C-y10k", b'{"S":"10000-01-01T00:00:00Z"}'),),
         _q("bad_datetime", not_a_date("10000-01-01T00:00:00Z"))),
    Kind("dst-gap", "a local time in the spring-forward gap (02:30, New York)",
         (line("C-gap", b'{"S":"2016-03-13T02:30:00"}'),), written=(row("C-gap", 1457854200),),
         note="shifted by the gap, as java.time: 07:30Z"),
    Kind("dst-overlap", "a local time in the fall-back overlap (01:30, New York)",
         (line("C-overlap", b'{"S":"2016-11-06T01:30:00"}'),), written=(row("C-overlap", 1478410200),),
         note="the earlier offset (EDT), as java.time: 05:30Z"),
    Kind("unknown-zone", "a zone name that does not exist",
         (line("C-mars", b'{"S":"2016-04-12T10:15:30 Mars/Olympus"}'),),
         _q("bad_datetime", not_a_date("2016-04-12T10:15:30 Mars/Olympus"))),
    Kind("offset-24h", "an offset of +24:00", (line("C-o24", b'{"S":"2016-04-12T10:15:30+24:00"}'),),
         _q("bad_datetime", not_a_date("2016-04-12T10:15:30+24:00"))),
    Kind("ttl-past-9999", "a date whose TTL passes 9999-12-31 (beyond what an epoch N can hold)",
         (line("C-ttl", b'{"S":"9999-06-01T00:00:00Z"}'),),
         _q("bad_datetime", "DateTime: '9999-06-01T00:00:00Z' plus ttl_seconds is past 9999-12-31, the last expiry "
                            "DynamoDB can hold")),
    # ---- text
    Kind("astral-escaped", "escaped surrogate pairs (U+1F600, U+20000)", (raw(b"C-\\ud83d\\ude00\\ud840\\udc00"),),
         written=(row("C-\U0001f600\U00020000", oid="O-C-RAW"),)),
    Kind("escaped-nul", "an escaped NUL (\\u0000) in a string", (raw(b"C-\\u0000x"),),
         written=(row("C-\x00x", oid="O-C-RAW"),)),
    Kind("duplicate-attribute", "an attribute twice in one object (the last wins)",
         (line("C-dupattr").replace(b'"OrderID"', b'"OrderID":{"S":"first"},"OrderID"'),),
         written=(row("C-dupattr"),)),
    Kind("trailing-comma", "a trailing comma in the Item object", (line("C-comma")[:-2] + b",}}",),
         written=(row("C-comma"),), note="read, as the JSON decoder takes commas as separators"),
    Kind("crlf", "CRLF line endings", (line("C-crlf"),), written=(row("C-crlf"),), sep=b"\r\n"),
    Kind("empty-line", "an empty line and a line of blanks", (b"", b" \t "),
         note="skipped, not items: the manifest's count has no line for them"),
    Kind("long-string", "a 500,000-character OrderID", (line("C-long", oid=b'{"S":"' + b"x" * 500_000 + b'"}'),),
         written=(row("C-long", oid="x" * 500_000),), load="item_too_large",
         note="the load quarantines the item (over 400 KB) before sending"),
    # ---- across files and at the load
    Kind("duplicate-across-files", "an item with the key of another file's item (same customer and second)",
         (line(DUP_KEY_OF, oid=b'{"S":"O-0"}'),), written=(row(DUP_KEY_OF, oid="O-0"),), load="deduplicated",
         note="a collision (1 key, 1 loser: the smaller OrderID), skipped by the load"),
    Kind("expired", "an order whose TTL passed before the load", (line("C-old", b'{"S":"2015-01-01T00:00:00Z"}'),),
         written=(row("C-old", 1420070400),), load="skipped_expired"),
]


# --------------------------------------------------------------------------- file kinds


GOOD_FILE = gzip.compress(line("G-1") + b"\n" + line("G-2") + b"\n", mtime=0)
GOOD_ROWS = [row("G-1"), row("G-2")]
BIG = gzip.compress(b"".join(line(f"G-{i}") + b"\n" for i in range(3, 2003)), mtime=0)
DATA1 = "data/file01aaaaaaaaaaaaaaaaaaaa.json.gz"


def _export(tmp: Path, stored: list[bytes], counts: list[int]) -> Path:
    return write_raw_export(tmp, [GOOD_FILE, *stored], [2, *counts])


def _entries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (root / "manifest-files.json").read_text().splitlines()]


def _write_manifest(root: Path, entries: list[dict[str, Any]]) -> None:
    """manifest-files.json with matching .md5 (so only what the entries say is wrong)."""
    raw = "".join(json.dumps(e) + "\n" for e in entries).encode()
    (root / "manifest-files.json").write_bytes(raw)
    (root / "manifest-files.md5").write_text(b64md5(raw))


def _write_summary(root: Path, raw: bytes) -> None:
    (root / "manifest-summary.json").write_bytes(raw)
    (root / "manifest-summary.md5").write_text(b64md5(raw))


def _summary_count(root: Path, count: Any) -> Path:
    s = json.loads((root / "manifest-summary.json").read_text())
    _write_summary(root, json.dumps({**s, "itemCount": count}).encode())
    return root


def _build_listed_twice(tmp: Path) -> Path:
    root = _export(tmp, [gzip.compress(line("G-3") + b"\n")], [1])
    e = _entries(root)
    _write_manifest(root, [*e, e[1]])
    return _summary_count(root, 4)  # the summary counts every entry


def _build_dotdot(tmp: Path) -> Path:
    root = _export(tmp, [GOOD_FILE], [2])
    e = _entries(root)
    e[1]["dataFileS3Key"] = e[1]["dataFileS3Key"].rsplit("/data/", 1)[0] + "/data/../../../secret.json.gz"
    _write_manifest(root, e)
    return root


def _build_count_not_number(tmp: Path) -> Path:
    root = _export(tmp, [GOOD_FILE], [2])
    e = _entries(root)
    e[1]["itemCount"] = "two"
    _write_manifest(root, e)
    return root


def _build_no_key(tmp: Path) -> Path:
    root = _export(tmp, [GOOD_FILE], [2])
    e = _entries(root)
    del e[1]["dataFileS3Key"]
    _write_manifest(root, e)
    return root


def _without(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).unlink()
    return root


def _replace(root: Path, rel: str, data: bytes) -> Path:
    (root / rel).write_bytes(data)
    return root


@dataclass(frozen=True)
class FileKind:
    """A damaged export (a good data file beside the damage) and its outcome: one error line from `stage`
    (export or transform; `{folder}` is the export folder), or the rows written exactly."""

    id: str
    what: str
    build: Callable[[Path], Path]
    stage: str = ""
    message: str = ""
    written: tuple[dict[str, Any], ...] = ()
    note: str = ""


def _refused(problem: str) -> str:
    return "export at {folder} failed validation: " + problem


FILE_KINDS: list[FileKind] = [
    FileKind("empty-data-file", "a data file of no lines (an empty gzip member, itemCount 0)",
             lambda t: _export(t, [gzip.compress(b"", mtime=0)], [0]), written=tuple(GOOD_ROWS)),
    FileKind("zero-byte-data-file", "a data file of zero bytes (itemCount 0)", lambda t: _export(t, [b""], [0]),
             written=tuple(GOOD_ROWS)),
    FileKind("two-gzip-members", "a data file of two concatenated gzip members",
             lambda t: _export(t, [gzip.compress(line("G-3") + b"\n") + gzip.compress(line("G-4") + b"\n")], [2]),
             written=(*GOOD_ROWS, row("G-3"), row("G-4"))),
    FileKind("summary-missing", "manifest-summary.json (and its .md5) missing",
             lambda t: _without(_export(t, [], []), "manifest-summary.json", "manifest-summary.md5"),
             written=tuple(GOOD_ROWS), note="verified from manifest-files.json alone: md5s and counts"),
    FileKind("not-gzip", "a .json.gz data file that is not gzip", lambda t: _export(t, [line("G-3") + b"\n"], [1]),
             "export", _refused(f"data file {DATA1} is not gzip (it begins b'{{\"'; gzip begins b'\\x1f\\x8b')")),
    FileKind("truncated-gzip", "a gzip data file cut mid-stream (its md5 in the manifest matches the cut file)",
             lambda t: _export(t, [BIG[: len(BIG) // 2]], [2000]), "transform",
             "{folder}/" + DATA1 + ": the gzip data ends early (the file is cut short) after line 0; 0 items were "
             "read before it"),
    FileKind("garbage-after-gzip", "bytes that are not gzip appended to a whole gzip data file",
             lambda t: _export(t, [GOOD_FILE + b"garbage"], [2]), "transform",
             "{folder}/" + DATA1 + ": 7 bytes after the end of the gzip data are not gzip (appended to the file after "
             "its gzip data) after line 0; 0 items were read before it"),
    FileKind("md5-mismatch", "a data file whose md5 does not match the manifest",
             lambda t: _replace(_export(t, [GOOD_FILE], [2]), DATA1, BIG), "export",
             _refused(f"data file {DATA1}: md5 {b64md5(BIG)} does not match the manifest's {b64md5(GOOD_FILE)}")),
    FileKind("listed-twice", "a data file listed twice in manifest-files.json", _build_listed_twice, "export",
             _refused("manifest-files.json lists data/file01aaaaaaaaaaaaaaaaaaaa.json.gz twice (its items would be "
                      "read twice)")),
    FileKind("dotdot-key", "a dataFileS3Key with `..` (outside the export)", _build_dotdot, "export",
             _refused("manifest-files.json lists 'pfx/AWSDynamoDB/01690000000000-abcdef12/data/../../../secret.json.gz'"
                      ", which points outside the export's data/; 1 data file(s) not listed in manifest-files.json, "
                      f"e.g. {DATA1}")),
    FileKind("no-data-key", "a manifest entry without dataFileS3Key", _build_no_key, "export",
             _refused("manifest-files.json lists '', which is not under data/; 1 data file(s) not listed in "
                      f"manifest-files.json, e.g. {DATA1}")),
    FileKind("count-not-a-number", 'a manifest itemCount that is not a number ("two")', _build_count_not_number,
             "export", _refused(f"manifest-files.json gives {DATA1} the itemCount 'two', not a count of items")),
    FileKind("files-manifest-missing", "manifest-files.json missing beside manifest-summary.json",
             lambda t: _without(_export(t, [], []), "manifest-files.json", "manifest-files.md5"), "export",
             "{folder}: manifest-summary.json exists but manifest-files.json is missing"),
    FileKind("files-manifest-not-json", "manifest-files.json is not JSON",
             lambda t: _write_manifest_raw(_export(t, [], []), b"{not json\n"), "export",
             "{folder}/manifest-files.json: manifest-files.json, line 1 is not valid JSON (Expecting property name "
             "enclosed in double quotes: line 1 column 2 (char 1))"),
    FileKind("summary-not-json", "manifest-summary.json is not JSON",
             lambda t: _summary_raw(_export(t, [], []), b"<xml/>"), "export",
             "{folder}/manifest-summary.json: manifest-summary.json is not valid JSON (Expecting value: line 1 "
             "column 1 (char 0))"),
    FileKind("summary-not-object", "manifest-summary.json is a JSON array",
             lambda t: _summary_raw(_export(t, [], []), b"[]"), "export",
             "{folder}/manifest-summary.json: manifest-summary.json is not a JSON object"),
    FileKind("manifest-md5-mismatch", "manifest-files.json does not match manifest-files.md5",
             lambda t: _replace(_export(t, [], []), "manifest-files.md5", b"AAAA"), "export",
             _refused("manifest-files.json md5 {files_md5} does not match manifest-files.md5 (AAAA)")),
    FileKind("summary-count-mismatch", "the summary's itemCount differs from the files' counts",
             lambda t: _summary_count(_export(t, [], []), 5), "export",
             _refused("item counts in manifest-files.json add up to 2, but manifest-summary.json says 5")),
    FileKind("data-count-mismatch", "a file's itemCount differs from its lines (says 3, holds 1)",
             lambda t: _export(t, [gzip.compress(line("G-3") + b"\n")], [3]), "transform",
             f"transform {M}: read 3 items, but the export says 5"),
    FileKind("data-file-missing", "a listed data file is missing",
             lambda t: _without(_export(t, [GOOD_FILE], [2]), DATA1), "export",
             _refused("data file {folder}/" + DATA1 + " is listed in manifest-files.json but does not exist")),
    FileKind("data-file-unlisted", "a data file the manifest does not list",
             lambda t: _replace(_export(t, [], []), "data/extra.json.gz", GOOD_FILE), "export",
             _refused("1 data file(s) not listed in manifest-files.json, e.g. data/extra.json.gz")),
    FileKind("not-an-export", "a folder that holds no export", lambda t: t / "nothing", "export",
             "{folder} holds neither manifest files nor data files: not an export folder"),
]


def _write_manifest_raw(root: Path, raw: bytes) -> Path:
    (root / "manifest-files.json").write_bytes(raw)
    (root / "manifest-files.md5").write_text(b64md5(raw))
    return root


def _summary_raw(root: Path, raw: bytes) -> Path:
    _write_summary(root, raw)
    return root


# the load-side kind that needs a load of its own (tests/test_corpus.py)
PK_2048 = ("partition-key-over-2048-bytes", "a CustomerID of 2,049 bytes (transform: written exactly)",
           "`etl load` quarantines it before sending: `key_too_long`: partition key CustomerID is 2,049 bytes, over "
           "DynamoDB's 2,048; the good rows beside it are written")


# --------------------------------------------------------------------------- the table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _line_outcome(k: Kind) -> str:
    if k.rejected:
        out = "; ".join(f"quarantined `{r}`: {m}" for r, m in k.rejected)
    elif k.filtered:
        out = "; ".join(f"filtered `{f}` (counted)" for f, _ in k.filtered)
    elif k.written:
        shown = []
        for r in k.written:
            oid = r["OrderID"] if len(r["OrderID"]) < 40 else f"{r['OrderID'][:3]}... ({len(r['OrderID'])} chars)"
            qty = f", Quantity {r['Quantity']}" if r["Quantity"] is not None else ""
            shown.append(f"written: CustomerID {r['CustomerID']!r}, CreationDateTime {r['CreationDateTime']}, "
                         f"OrderID {oid!r}{qty}")
        out = "; ".join(shown)
    else:
        out = "skipped (blank)"
    if k.load:
        out += f"; load: `{k.load}`"
    return out + (f" ({k.note})" if k.note else "")


def markdown() -> str:
    head = ["Reproduce: `make test ARGS=\"tests/test_corpus.py -v\"` (this section: "
            "`.venv/bin/python -m tests.corpus --write`).",
            "", f"{len(LINE_KINDS) + len(FILE_KINDS) + 1} kinds: {len(LINE_KINDS)} kinds of line, {len(FILE_KINDS)} "
            "of data file or manifest, and a partition key over 2048 bytes at the load. Each sits beside good rows "
            "that are written exactly (and loaded exactly, on DynamoDB Local); per data file, items_in = written + "
            "filtered + rejected, and the load's written + skipped_expired + deduplicated + quarantined = rows.", "",
            "### Lines (one data file each, between two good rows)", "",
            "| kind | bad input | outcome |", "|---|---|---|"]
    rows = [f"| `{k.id}` | {_cell(k.what)} | {_cell(_line_outcome(k))} |" for k in LINE_KINDS]
    files = ["", "### Data files and manifests (an export each, beside a good data file)", "",
             "| kind | bad input | outcome |", "|---|---|---|"]
    for f in FILE_KINDS:
        out = (f"`etl {f.stage}` fails: `error: {f.message}`" if f.stage else
               f"written: {len(f.written)} rows exactly" + (f" ({f.note})" if f.note else ""))
        files.append(f"| `{f.id}` | {_cell(f.what)} | {_cell(out)} |")
    load = ["", "### At the load", "", "| kind | bad input | outcome |", "|---|---|---|",
            f"| `{PK_2048[0]}` | {PK_2048[1]} | {_cell(PK_2048[2])} |"]
    return "\n".join([*head, *rows, *files, *load]) + "\n"


if __name__ == "__main__":  # `python -m tests.corpus [--write]`: print the table, or rewrite its RELIABILITY.md section
    import sys

    if "--write" in sys.argv[1:]:
        from bench.common import ROOT, write_section

        write_section(ROOT / "RELIABILITY.md", "corpus", "## Bad input: the corpus\n\n" + markdown())
    else:
        print(markdown(), end="")

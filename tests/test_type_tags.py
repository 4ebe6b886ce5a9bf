"""A DynamoDB value has exactly one type tag: a value with two (any pair of the ten tags) is quarantined as a
malformed line, on each of the line parser's paths, never read as a row of one of its tags."""

from __future__ import annotations

import itertools

import orjson
import pytest

from etl import mapping
from etl.config import Config
from etl.transform.lines import parse
from etl.transform.rows import convert_chunk

VALUES: dict[str, object] = {"S": "O-1", "N": "5", "B": "AA==", "BOOL": True, "NULL": True, "SS": ["a"],
                             "NS": ["1"], "BS": ["AA=="], "L": [{"S": "a"}], "M": {"a": {"S": "b"}}}
PAIRS = list(itertools.combinations(VALUES, 2))
GOOD = b'{"Item":{"CustomerID":{"S":"C-good"},"DateTime":{"S":"2016-04-12T10:15:30Z"},"OrderID":{"S":"O-good"}}}'
# what sends a chunk down each path of `lines.parse`, beside the line under test
PATHS = {
    "fast": b"",  # every line one object: the whole chunk in one decode
    "bisect-in-place": b"{\"Item\":\n",  # a line that is not JSON: ranges decoded from the chunk's own bytes
    "line-by-line": b"  \n",  # a blank line: the lines are split out and decoded in ranges
}


def value_line(attribute: str, tags: tuple[str, ...]) -> bytes:
    item = {"CustomerID": {"S": "C-two"}, "DateTime": {"S": "2016-04-12T10:15:30Z"}, "OrderID": {"S": "O-two"}}
    item[attribute] = {tag: VALUES[tag] for tag in tags}
    return orjson.dumps({"Item": item})


def path_of(chunk: bytes, cfg: Config) -> str:
    parsed = parse(chunk, mapping.parse_schema(cfg), mapping.source_attributes(cfg))
    if parsed.lines is not None:
        return "line-by-line"
    return "fast" if parsed.line_of_row is None else "bisect-in-place"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    from etl.config import load_config

    path = tmp_path_factory.mktemp("tags") / "pipeline.toml"
    path.write_text(f'domain = "shop"\nregion = "eu"\n[staging]\nroot = "{path.parent}"\n')
    return load_config(str(path), env={})


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("attribute", ["OrderID", "DateTime"])
def test_every_pair_of_type_tags_is_quarantined(cfg: Config, attribute: str, path: str) -> None:
    bad = [value_line(attribute, pair) for pair in PAIRS] + [value_line(attribute, pair[::-1]) for pair in PAIRS]
    chunk = b"\n".join([GOOD, *bad, GOOD]) + b"\n" + PATHS[path]
    assert path_of(chunk, cfg) == path
    r = convert_chunk(chunk, cfg, mapping.parse_schema(cfg), mapping.output_schema(cfg))
    assert r.table.column("CustomerID").to_pylist() == ["C-good", "C-good"]  # only the good rows are written
    said = {line: (reason, message) for reason, message, line in r.rejected}
    for pair, line in zip(PAIRS + [p[::-1] for p in PAIRS], bad, strict=True):
        a, b = sorted(pair, key=list(VALUES).index)  # named in the order S, N, B, BOOL, NULL, SS, NS, BS, L, M
        assert said[line] == ("malformed_line",
                              f"{attribute} has two type tags ({a} and {b}); a DynamoDB value has exactly one"), line
    assert r.items_in == len(bad) + 2 + (path == "bisect-in-place")


def test_three_tags_are_named(cfg: Config) -> None:
    chunk = value_line("OrderID", ("S", "BOOL", "M")) + b"\n"
    r = convert_chunk(chunk, cfg, mapping.parse_schema(cfg), mapping.output_schema(cfg))
    assert [(reason, message) for reason, message, _ in r.rejected] == [
        ("malformed_line", "OrderID has 3 type tags (S, BOOL and M); a DynamoDB value has exactly one")]
    assert r.table.num_rows == 0


"""The mapping: schemas, key and TTL columns, the hook's rules."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from etl import mapping
from etl.config import Config
from etl.errors import EtlError


def test_default_mapping(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    out = mapping.output_schema(cfg)
    assert [(f.name, str(f.type), f.nullable) for f in out] == [
        ("CustomerID", "string", False), ("CreationDateTime", "int64", False), ("OrderID", "string", False),
        ("ExpirationTimestamp", "int64", False)]
    item = mapping.parse_schema(cfg).field("Item").type
    assert {f.name: [g.name for g in f.type] for f in item} == {"CustomerID": ["S", "N"], "DateTime": ["S", "N"],
                                                               "OrderID": ["S", "N"]}
    assert mapping.expected_types(cfg) == {"CustomerID": "S", "DateTime": "S or N", "OrderID": "S"}
    assert mapping.key_columns(cfg) == ["CustomerID", "CreationDateTime"]
    assert mapping.ttl_column(cfg) == "ExpirationTimestamp" == mapping.require_ttl_column(cfg)
    assert mapping.collision_columns(cfg) == ["CustomerID", "CreationDateTime", "OrderID"]


def test_key_columns_are_listed_once(make_config: Callable[..., Config]) -> None:
    cfg = make_config(ETL_DESTINATION_SORT_KEY="OrderID")
    assert mapping.collision_columns(cfg) == ["CustomerID", "OrderID"]
    cfg = make_config(ETL_DESTINATION_SORT_KEY="")
    assert mapping.key_columns(cfg) == ["CustomerID"]


def test_a_mapping_without_ttl(make_config: Callable[..., Config]) -> None:
    cfg = make_config(extra='[[transform.columns]]\nname = "CustomerID"\nsource = "CustomerID"\n'
                            '[[transform.columns]]\nname = "CreationDateTime"\nsource = "DateTime"\n'
                            'converter = "datetime"\n')
    assert mapping.ttl_column(cfg) is None
    with pytest.raises(EtlError, match="no ttl column"):
        mapping.require_ttl_column(cfg)


def test_the_hook_may_change_or_drop_rows_but_not_add_rows_or_touch_keys(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    schema = mapping.output_schema(cfg)
    t = pa.table({"CustomerID": ["a", "b"], "CreationDateTime": [1, 2], "OrderID": ["x", "y"],
                  "ExpirationTimestamp": [3, 4]}, schema=schema)
    out, dropped = mapping.apply_hook(lambda x: x.slice(1), cfg, t, schema)
    assert out.num_rows == 1 and dropped == 1
    with pytest.raises(EtlError, match="added rows"):
        mapping.apply_hook(lambda x: pa.concat_tables([x, x]), cfg, t, schema)
    with pytest.raises(EtlError, match="dropped or nulled the key column CustomerID"):
        mapping.apply_hook(lambda x: x.drop_columns(["CustomerID"]), cfg, t, schema)
    with pytest.raises(EtlError, match="not a pyarrow.Table"):
        mapping.apply_hook(lambda x: x.to_pandas(), cfg, t, schema)
    with pytest.raises(EtlError, match="cannot be loaded"):
        mapping.load_hook("tests.nope:fn")
    assert mapping.load_hook(None) is None

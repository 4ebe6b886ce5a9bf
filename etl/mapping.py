"""The mapping: which source attributes become which destination columns, and what each converter means.

One decision per function, shared by the transform, the load, verify, ttl, the catalog and the live
service's forward writer: the output and parse schemas, the key and TTL columns, the hook, the
quarantine reasons, a catch-up part's operation column.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from etl.config import Config
from etl.errors import EtlError

# A row's outcome when it cannot be converted, in priority order (the first that applies wins).
REASONS = ("malformed_line", "type_mismatch", "missing_attribute", "bad_datetime", "bad_int")

# What each converter reads from DynamoDB JSON, as a type mismatch names it.
EXPECTED = {"string": "S", "int": "N", "datetime": "S or N"}

Hook = Callable[[pa.Table], pa.Table]

# A catch-up's parts are the output columns plus this one: what to do with the row (the catch-up writes them, the
# load applies them, verify checks them).
OP, PUT, DELETE = "op", "put", "delete"


def key_columns(cfg: Config) -> list[str]:
    """The destination's key: the partition key, and the sort key when the table has one."""
    d = cfg.destination
    return [d.partition_key, *([d.sort_key] if d.sort_key else [])]


def output_schema(cfg: Config) -> pa.Schema:
    keys = set(key_columns(cfg))
    return pa.schema([pa.field(c.name, pa.string() if c.converter == "string" else pa.int64(),
                               nullable=not (c.required or c.name in keys))
                      for c in cfg.transform.columns])


def source_attributes(cfg: Config) -> list[str]:
    """Every source attribute the mapping or the filters read, in mapping order."""
    names = [c.source for c in cfg.transform.columns if c.converter != "ttl"]
    return list(dict.fromkeys([*names, *cfg.transform.non_empty]))


def expected_types(cfg: Config) -> dict[str, str]:
    """Source attribute -> the DynamoDB type(s) it must have, as a type mismatch says it ("S", "S or N")."""
    checks = {c.source: EXPECTED[c.converter] for c in cfg.transform.columns if c.converter != "ttl"}
    for name in cfg.transform.non_empty:
        checks.setdefault(name, "S")
    return checks


def parse_schema(cfg: Config) -> pa.Schema:
    """Only the attributes the mapping reads, each as its S and N tags: another type still parses (a valid
    struct with nothing set: a type mismatch), and a value with both tags is seen (malformed: a DynamoDB value
    has one type). Declaring every type would parse twice as slowly."""
    names = list(dict.fromkeys([c.source for c in cfg.transform.columns if c.converter != "ttl"]
                               + list(cfg.transform.non_empty)))
    return pa.schema([("Item", pa.struct([(a, pa.struct([("S", pa.string()), ("N", pa.string())]))
                                          for a in names]))])


def ttl_column(cfg: Config) -> str | None:
    """The destination column DynamoDB's TTL reads (the mapping's `ttl` converter), if the mapping has one."""
    return next((c.name for c in cfg.transform.columns if c.converter == "ttl"), None)


def require_ttl_column(cfg: Config) -> str:
    name = ttl_column(cfg)
    if name is None:
        raise EtlError("the mapping has no ttl column", hint="add a [[transform.columns]] with converter = \"ttl\"")
    return name


def order_column(cfg: Config) -> str | None:
    """The column that decides between two rows of one key (the greatest wins), when the mapping has it."""
    return "OrderID" if any(c.name == "OrderID" for c in cfg.transform.columns) else None


def collision_columns(cfg: Config) -> list[str]:
    """What a collision's losers file records of each row: the key columns and the order column, each once (the
    winner rule, `etl.winner`, compares these first, then the mapping's other columns)."""
    return list(dict.fromkeys([*key_columns(cfg), *([o] if (o := order_column(cfg)) else [])]))


def parquet_options(cfg: Config) -> dict[str, Any]:
    """zstd, and a dictionary only for the partition key: it repeats, an OrderID never does, and
    building a dictionary that is then dropped costs 40% of the write. Encodings stay PLAIN/RLE_DICTIONARY,
    which every reader knows (older Spark and Athena engine v2 readers refuse DELTA_BINARY_PACKED)."""
    return {"compression": "zstd", "use_dictionary": [cfg.destination.partition_key]}


def load_hook(spec: str | None) -> Hook | None:
    """The configured `module:function` over a pyarrow.Table, for what the mapping cannot express."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise EtlError(f"transform hook {spec!r} cannot be loaded: {exc}",
                       hint="hook = \"module:function\", with the module importable (on PYTHONPATH)") from None
    if not callable(fn):
        raise EtlError(f"transform hook {spec!r} is not a function")
    return fn


def apply_hook(hook: Hook, cfg: Config, table: pa.Table, schema: pa.Schema) -> tuple[pa.Table, int]:
    """Run the hook on converted rows: it may change or drop rows, never add rows or touch the keys.
    Returns the rows in the output schema and how many it dropped."""
    name = cfg.transform.hook
    try:
        out = hook(table)
    except Exception as exc:
        raise EtlError(f"transform hook {name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, pa.Table):
        raise EtlError(f"transform hook {name} returned {type(out).__name__}, not a pyarrow.Table")
    if out.num_rows > table.num_rows:
        raise EtlError(f"transform hook {name} added rows ({table.num_rows} -> {out.num_rows}); it may only "
                       "change or drop rows")
    for key in key_columns(cfg):
        if key not in out.column_names or out.column(key).null_count:
            raise EtlError(f"transform hook {name} dropped or nulled the key column {key}")
    dropped = table.num_rows - out.num_rows
    try:
        if set(out.column_names) >= set(schema.names):
            out = out.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise EtlError(f"transform hook {name} returned columns that do not fit the schema: {exc}") from None
    return out, dropped

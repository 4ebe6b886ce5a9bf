"""The item codec: Arrow rows <-> DynamoDB JSON (put and delete requests, export lines), item sizes, and
the one decoder of DynamoDB JSON back to plain values (verify, the lookup, tests).

DynamoDB's limits on what it accepts live here too, beside the sizes they are checked against.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

MAX_ITEM_BYTES = 400 * 1024
MAX_BATCH = 25  # items per BatchWriteItem
MAX_REQUEST_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------- encode


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def export_line(item: dict[str, Any]) -> bytes:
    """One `{"Item":{...}}` line as a DynamoDB export writes it (B and BS values in base64)."""
    return orjson.dumps({"Item": item}, default=_default) + b"\n"


def attr_value(value: Any) -> dict[str, str]:
    """A plain string or integer -> its DynamoDB JSON attribute value."""
    return {"S": value} if isinstance(value, str) else {"N": str(value)}


def item_of(row: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A row of the output schema -> a DynamoDB item (nulls left out)."""
    return {k: attr_value(v) for k, v in row.items() if v is not None}


def item_sizes(batch: pa.RecordBatch) -> np.ndarray:
    """DynamoDB item size in bytes: attribute names plus values (strings in UTF-8; numbers about one
    byte per two significant digits plus one)."""
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False))
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            vals = np.asarray(pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False))
        else:
            digits = pc.utf8_length(pc.cast(pc.abs(col), pa.string()))
            vals = np.asarray(pc.fill_null(digits, 0).to_numpy(zero_copy_only=False)) // 2 + 2
        sizes += np.where(valid, vals + len(name.encode()), 0)
    return sizes


_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def to_puts(batch: pa.RecordBatch) -> list[bytes]:
    """Rows -> pre-serialised `{"PutRequest":{"Item":{...}}}` JSON fragments (nulls left out).

    Built for whole columns with Arrow string kernels; rows with a null or a string that JSON must
    escape take orjson, one by one (same output)."""
    n = batch.num_rows
    if n == 0:
        return []
    slow = np.zeros(n, dtype=bool)
    pieces: list[Any] = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        key = orjson.dumps(name).decode()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            slow |= np.asarray(pc.fill_null(pc.match_substring_regex(col, _NEEDS_ESCAPE), True)
                               .to_numpy(zero_copy_only=False), dtype=bool)
            pieces += [f'{key}:{{"S":"', col, '"}']
        else:
            slow |= np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
            pieces += [f'{key}:{{"N":"', pc.cast(col, pa.string()), '"}']
        pieces.append(",")
    pieces[-1] = "}}}"
    joined = pc.binary_join_element_wise('{"PutRequest":{"Item":{', *pieces, "")
    data = joined.buffers()[2].to_pybytes() if joined.buffers()[2] is not None else b""
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + n + 1]
    out = [data[offsets[i] : offsets[i + 1]] for i in range(n)]
    if slow.any():
        names = batch.schema.names
        for i in np.flatnonzero(slow):
            row = {name: col[i].as_py() for name, col in zip(names, batch.columns, strict=True)}
            out[i] = orjson.dumps({"PutRequest": {"Item": item_of(row)}})
    return out


def to_deletes(batch: pa.RecordBatch, keys: list[str]) -> list[bytes]:
    """Rows -> `{"DeleteRequest":{"Key":{...}}}` fragments of their key columns."""
    cols = [batch.column(k).to_pylist() for k in keys]
    return [orjson.dumps({"DeleteRequest": {"Key": {k: attr_value(v) for k, v in zip(keys, vals, strict=True)}}})
            for vals in zip(*cols, strict=True)]


# --------------------------------------------------------------------------- decode


def _number(text: str) -> int | Decimal:
    d = Decimal(text)
    return int(d) if d == d.to_integral_value() and "e" not in text.lower() and "." not in text else d


def decode(attr: dict[str, Any]) -> Any:
    """One attribute value of DynamoDB JSON (as in an export line or a reply) -> a plain Python value.

    N -> int when integral else Decimal (exact); B/BS -> bytes from base64; SS/NS/BS -> sets."""
    if not isinstance(attr, dict) or len(attr) != 1:
        raise ValueError(f"not a DynamoDB JSON value: {attr!r}")
    ((kind, value),) = attr.items()
    if kind == "S":
        return str(value)
    if kind == "N":
        return _number(value)
    if kind == "B":
        return base64.b64decode(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "SS":
        return set(value)
    if kind == "NS":
        return {_number(v) for v in value}
    if kind == "BS":
        return {base64.b64decode(v) for v in value}
    if kind == "L":
        return [decode(v) for v in value]
    if kind == "M":
        return {k: decode(v) for k, v in value.items()}
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def decode_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: decode(v) for k, v in item.items()}

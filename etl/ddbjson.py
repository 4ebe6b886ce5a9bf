"""DynamoDB JSON: the export's line format, item sizes."""

from __future__ import annotations

import base64
from typing import Any

import orjson


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def export_line(item: dict[str, Any]) -> bytes:
    """One `{"Item":{...}}` line as a DynamoDB export writes it (B and BS values in base64)."""
    return orjson.dumps({"Item": item}, default=_default) + b"\n"


def decode(attr: dict[str, Any]) -> Any:
    """One attribute value of DynamoDB JSON (as in an export line) -> a plain Python value.

    N -> int when integral else Decimal (exact); B/BS -> bytes from base64; SS/NS/BS -> sets."""
    from decimal import Decimal

    if not isinstance(attr, dict) or len(attr) != 1:
        raise ValueError(f"not a DynamoDB JSON value: {attr!r}")
    ((kind, value),) = attr.items()

    def num(text: str) -> int | Decimal:
        d = Decimal(text)
        return int(d) if d == d.to_integral_value() and "e" not in text.lower() and "." not in text else d

    if kind == "S":
        return str(value)
    if kind == "N":
        return num(value)
    if kind == "B":
        return base64.b64decode(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "SS":
        return set(value)
    if kind == "NS":
        return {num(v) for v in value}
    if kind == "BS":
        return {base64.b64decode(v) for v in value}
    if kind == "L":
        return [decode(v) for v in value]
    if kind == "M":
        return {k: decode(v) for k, v in value.items()}
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def decode_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: decode(v) for k, v in item.items()}

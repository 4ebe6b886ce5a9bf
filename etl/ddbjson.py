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

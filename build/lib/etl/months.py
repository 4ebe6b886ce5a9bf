"""Month arguments: --month 201604 (repeatable) and --months 201505-201705 (inclusive)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from etl.errors import EtlError

_MONTH = re.compile(r"^(\d{4})(\d{2})$")


def parse_month(text: str) -> str:
    m = _MONTH.match(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise EtlError(
            f"month {text!r} is not valid: expected YYYYMM with a month 01-12, for example 201604"
        )
    return m.group(0)


def month_range(spec: str) -> list[str]:
    parts = spec.split("-")
    if len(parts) != 2:
        raise EtlError(f"months {spec!r} is not valid: expected FIRST-LAST, for example 201505-201705")
    first, last = parse_month(parts[0]), parse_month(parts[1])
    if first > last:
        raise EtlError(f"months {spec!r}: {first} comes after {last}")
    out = []
    y, m = int(first[:4]), int(first[4:])
    while f"{y:04d}{m:02d}" <= last:
        out.append(f"{y:04d}{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def resolve_months(months: Iterable[str], ranges: Iterable[str]) -> list[str]:
    """Every month named, in order, without repeats; whitespace/comma lists are accepted too."""
    found: set[str] = set()
    for item in months:
        for tok in re.split(r"[\s,]+", item.strip()):
            if tok:
                found.add(parse_month(tok))
    for item in ranges:
        for tok in re.split(r"[\s,]+", item.strip()):
            if tok:
                found.update(month_range(tok))
    return sorted(found)

"""Expiry: a row whose TTL (epoch seconds) is at or before `now` has expired; a row without a TTL never does.

DynamoDB deletes an expired item up to about two days late, so every stage that asks must agree on one rule:
the load skips expired rows (counted), verify does not expect them, the checkout lookup ignores them and
`etl ttl preview` counts them. A row expiring exactly at `now` is expired everywhere.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def expired(ttl: pa.Array | pa.ChunkedArray | np.ndarray, now: float) -> np.ndarray:
    """Per row of a TTL column: True where it has expired by `now` (a null TTL: False)."""
    if isinstance(ttl, np.ndarray):
        return np.asarray(ttl <= now, dtype=bool)
    past = pc.less_equal(ttl, now)
    if past.null_count:
        past = pc.fill_null(past, False)
    return np.asarray(past.to_numpy(zero_copy_only=False), dtype=bool)


def is_expired(ttl: int | float | Decimal | None, now: float) -> bool:
    """One item's TTL attribute, as `expired` decides for a row."""
    return ttl is not None and ttl <= now

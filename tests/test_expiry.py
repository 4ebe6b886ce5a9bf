"""One expiry rule (`etl.expiry`): a TTL at or before `now` has expired, a missing one never has; the column form
(load, verify, ttl preview) and the one-item form (the checkout lookup) agree on every value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from etl import expiry

NOW = 1_500_000_000


def test_at_now_is_expired_and_a_missing_ttl_never_is() -> None:
    ttl = pa.array([NOW - 1, NOW, NOW + 1, None], pa.int64())
    assert expiry.expired(ttl, NOW).tolist() == [True, True, False, False]
    assert expiry.expired(pa.chunked_array([ttl[:2], ttl[2:]]), NOW).tolist() == [True, True, False, False]
    assert expiry.expired(np.array([NOW - 1, NOW, NOW + 1]), NOW).tolist() == [True, True, False]
    assert [expiry.is_expired(v, NOW) for v in ttl.to_pylist()] == [True, True, False, False]
    assert expiry.expired(pa.array([], pa.int64()), NOW).tolist() == []


@given(values=st.lists(st.one_of(st.none(), st.integers(NOW - 3, NOW + 3))), now=st.integers(NOW - 2, NOW + 2),
       fraction=st.sampled_from([0.0, 0.25, 0.999]))
def test_the_column_and_the_item_forms_agree(values: list[int | None], now: int, fraction: float) -> None:
    """The lookup compares with a time of day that has a fraction of a second: an integer TTL is expired exactly
    when it is at or before the whole second."""
    column = expiry.expired(pa.array(values, pa.int64()), now).tolist()
    assert column == [expiry.is_expired(v, now + fraction) for v in values]
    assert column == [v is not None and v <= now for v in values]

"""Transform hooks used by the tests (hook = "tests.hooks_example:NAME")."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

SEEN: list[str] = []  # what `record_orders` saw, in order


def record_orders(table: pa.Table) -> pa.Table:
    SEEN.extend(table.column("OrderID").to_pylist())
    return table


def uppercase_orders(table: pa.Table) -> pa.Table:
    i = table.schema.get_field_index("OrderID")
    return table.set_column(i, "OrderID", pc.utf8_upper(table["OrderID"]))


def drop_test_customers(table: pa.Table) -> pa.Table:
    return table.filter(pc.invert(pc.starts_with(table["CustomerID"], "TEST")))


def broken(table: pa.Table) -> pa.Table:
    raise KeyError("no such column: Discount")


def giant_first_order(table: pa.Table) -> pa.Table:
    """Makes the first row's OrderID 450 KB: an item DynamoDB would refuse."""
    orders = table["OrderID"].to_pylist()
    if orders and orders[0] == "O0000000":
        orders[0] = "X" * 450_000
    return table.set_column(table.schema.get_field_index("OrderID"), "OrderID", pa.array(orders, pa.string()))


def slow_for_slow_customers(table: pa.Table) -> pa.Table:
    """Takes two seconds over a chunk with a customer named SLOW* (to hold one month's transform back)."""
    import time

    if pc.any(pc.starts_with(table["CustomerID"], "SLOW")).as_py():
        time.sleep(2)
    return table


def fail_on_marked_customers(table: pa.Table) -> pa.Table:
    """Fails a chunk holding a customer named FAIL* while ETL_TEST_HOOK_FAILS is set (a failure that goes away
    without changing the config)."""
    import os

    if os.environ.get("ETL_TEST_HOOK_FAILS") and pc.any(pc.starts_with(table["CustomerID"], "FAIL")).as_py():
        raise RuntimeError("marked customer")
    return table

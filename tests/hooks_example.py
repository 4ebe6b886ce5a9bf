"""Transform hooks used by the tests (hook = "tests.hooks_example:NAME")."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def uppercase_orders(table: pa.Table) -> pa.Table:
    i = table.schema.get_field_index("OrderID")
    return table.set_column(i, "OrderID", pc.utf8_upper(table["OrderID"]))


def drop_test_customers(table: pa.Table) -> pa.Table:
    return table.filter(pc.invert(pc.starts_with(table["CustomerID"], "TEST")))


def broken(table: pa.Table) -> pa.Table:
    raise KeyError("no such column: Discount")

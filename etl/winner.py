"""The winner of a destination key: of the rows that land on one key, the one the index holds.

The rule: the greatest order column (OrderID, when the mapping has one that is not part of the key; a row
without one counts least), then the smallest row, compared column by column in the output schema's order
(a null after any value). Rows equal in every column are one row to the index.

It is the rule of the full transform (`transform.collisions`, over a month's rows) and of the catch-up
(`catchup.changes`, over a key's rows before and after a window), which both call `first_of_each_key`: a key a
window leaves alone keeps the row the load wrote. The tie-break reads the rows' values, never where they sit
in the export: a catch-up's rows come from change lines as well as from the export, and two exports of one
table list its items in different orders.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import Config
from etl.mapping import key_columns, order_column, output_schema

K = TypeVar("K", bound=Hashable)
Row = tuple[Any, ...]


def ranking(columns: Sequence[str], keys: Sequence[str], order: str | None) -> list[tuple[str, str]]:
    """Within one key's rows, the sort that puts the winner first: the order column descending, then every
    other column of `columns` (in their order) ascending."""
    lead = [order] if order is not None and order not in keys else []
    return [(c, "descending") for c in lead] + [(c, "ascending") for c in columns if c not in keys and c not in lead]


def first_of_each_key(rows: pa.Table, keys: Sequence[str], order: str | None,
                      then: Sequence[str] = ()) -> tuple[pa.Table, np.ndarray]:
    """`rows` sorted by key, then by `ranking` over their other columns, then by `then` (columns that are no
    part of a row: rows equal in every column are told apart by them, e.g. their place in the export), and a
    mask of each key's first row: its winner."""
    ranked = [c for c in rows.column_names if c not in then]
    sort = [(k, "ascending") for k in keys] + ranking(ranked, keys, order) + [(c, "ascending") for c in then]
    rows = rows.sort_by(sort).combine_chunks()  # nulls at the end, ascending or descending
    first = np.ones(rows.num_rows, dtype=bool)
    if rows.num_rows > 1:
        same = np.ones(rows.num_rows - 1, dtype=bool)
        for k in keys:
            col = rows[k].chunk(0)
            same &= np.asarray(pc.fill_null(pc.equal(col[1:], col[:-1]), False).to_numpy(zero_copy_only=False))
        first[1:] = ~same
    return rows, first


def winners(groups: Mapping[K, Iterable[Row]], order: int | None) -> dict[K, Row | None]:
    """Each group's winner (None for a group without rows), rows given as tuples in the output schema's order
    and `order` the order column's position: the rows of each group are the rows of one key."""
    labels = list(groups)
    flat = [(g, row) for g, label in enumerate(labels) for row in dict.fromkeys(groups[label])]
    if not flat:
        return dict.fromkeys(labels)
    width = len(flat[0][1])
    names = [f"c{i}" for i in range(width)]
    table = pa.table({"_group": pa.array([g for g, _ in flat], pa.int64()),
                      **{n: pa.array([row[i] for _, row in flat]) for i, n in enumerate(names)}})
    ranked, first = first_of_each_key(table, ["_group"], None if order is None else names[order])
    best = ranked.filter(pa.array(first))
    out: dict[K, Row | None] = dict.fromkeys(labels)
    for g, *row in zip(*(best[c].to_pylist() for c in ["_group", *names]), strict=True):
        out[labels[g]] = tuple(row)
    return out


def winner(rows: Iterable[Row], order: int | None) -> Row | None:
    """One key's winner among `rows` (see `winners`)."""
    return winners({0: rows}, order)[0]


def describe(cfg: Config) -> str:
    """The rule for this mapping, as the transform manifest records it."""
    order = order_column(cfg)
    smallest = "the smallest row (column by column: " + ", ".join(output_schema(cfg).names) + ")"
    return f"greatest {order}, then {smallest}" if order and order not in key_columns(cfg) else smallest

"""What the index table is for: the one-call checkout lookup, and the forward writer that keeps it current.

Windows are calendar months in the configured zone: "N months before `at`" is the same wall-clock
time N months earlier, the day clamped to the end of a shorter month (31 May - 3 months = 28/29 Feb;
29 Feb 2016 - 24 months = 28 Feb 2014). An order at exactly the window's start counts; an order after `at`
does not (asked "as of" a past instant, the lookup answers what checkout would have answered then).

Rollout, step 0: deploy `record_order` in the live service before exporting, so orders written after
the export time reach the index too; set `[export] forward_writes_since` and `etl export` warns when
an export time is earlier.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from etl import expiry, items, mapping
from etl.config import Config
from etl.transform.rows import convert_chunk

QUERY_LIMIT = 5  # newest first: the newest unexpired order decides; a few spare for expired-not-yet-deleted


@dataclass(frozen=True)
class Decision:
    percent: int
    kind: str  # loyalty | anniversary | none
    evidence: dict[str, Any] | None  # the order the decision is based on
    at: datetime
    loyalty_since: datetime
    anniversary_since: datetime

    def describe(self) -> str:
        since = self.anniversary_since.isoformat(timespec="seconds")
        if self.evidence is None:
            return f"{self.kind}: {self.percent}% (no unexpired order since {since})"
        created = datetime.fromtimestamp(self.evidence["CreationDateTime"], UTC).isoformat()
        return (f"{self.kind}: {self.percent}% (order {self.evidence['OrderID']} at {created}; "
                f"loyalty since {self.loyalty_since.isoformat(timespec='seconds')}, anniversary since {since})")


def months_before(at: datetime, months: int) -> datetime:
    """The same wall-clock time `months` calendar months earlier, the day clamped to the month's end."""
    if at.tzinfo is None:
        raise ValueError("`at` must carry a time zone")
    total = at.year * 12 + (at.month - 1) - months
    year, month = divmod(total, 12)
    month += 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


def _as_zone(at: datetime | None, zone: str) -> datetime:
    tz = ZoneInfo(zone)
    if at is None:
        return datetime.now(tz)
    if at.tzinfo is None:
        raise ValueError("`at` must carry a time zone (an ISO-8601 string with an offset, or an aware datetime)")
    return at.astimezone(tz)


def discount_for(customer_id: str, at: datetime | None, cfg: Config, ddb: Any) -> Decision:
    """Exactly one Query: this customer's newest orders from the anniversary window's start up to `at`."""
    p = cfg.promo
    now = _as_zone(at, p.zone)
    loyalty_since = months_before(now, p.loyalty_months)
    anniversary_since = months_before(now, p.anniversary_months)
    pk, sk = cfg.destination.partition_key, cfg.destination.sort_key
    ttl_col = mapping.ttl_column(cfg)
    projection = [sk, "OrderID"] + ([ttl_col] if ttl_col else [])
    names = {f"#a{i}": n for i, n in enumerate(projection)}
    r = ddb.query(
        TableName=cfg.destination_table(),
        KeyConditionExpression="#pk = :c AND #sk BETWEEN :since AND :until",
        ExpressionAttributeNames={"#pk": pk, "#sk": sk, **names},
        ExpressionAttributeValues={":c": {"S": customer_id},
                                   ":since": {"N": str(math.ceil(anniversary_since.timestamp()))},
                                   ":until": {"N": str(math.floor(now.timestamp()))}},
        ProjectionExpression=", ".join(names),
        ScanIndexForward=False,
        Limit=QUERY_LIMIT,
    )
    now_s = now.timestamp()
    evidence = None
    for item in r.get("Items", []):
        plain = items.decode_item(item)
        expires = plain.get(ttl_col) if ttl_col else None
        if expiry.is_expired(expires, now_s):
            continue  # expired: DynamoDB deletes it up to about two days late
        evidence = {sk: plain[sk], "OrderID": plain.get("OrderID"), ttl_col or "ttl": expires}
        break
    if evidence is None:
        return Decision(0, "none", None, now, loyalty_since, anniversary_since)
    if evidence[sk] >= loyalty_since.timestamp():
        return Decision(p.loyalty_percent, "loyalty", evidence, now, loyalty_since, anniversary_since)
    return Decision(p.anniversary_percent, "anniversary", evidence, now, loyalty_since, anniversary_since)


def order_item(customer_id: str, order_id: str, created_at: str | int | datetime, cfg: Config) -> dict[str, Any]:
    """The index item for one order, made by the transform's own code on the source row it would read
    (`CustomerID`, `DateTime`, `OrderID`), so the backfill and the live writer cannot disagree."""
    import orjson

    if isinstance(created_at, datetime):
        if created_at.tzinfo is None:
            raise ValueError("created_at must carry a time zone")
        created_at = created_at.isoformat()
    dt = {"N": str(created_at)} if isinstance(created_at, int) else {"S": str(created_at)}
    line = orjson.dumps({"Item": {"CustomerID": {"S": customer_id}, "DateTime": dt, "OrderID": {"S": order_id}}})
    out_schema = mapping.output_schema(cfg)
    r = convert_chunk(line + b"\n", cfg, mapping.parse_schema(cfg), out_schema)
    if r.rejected:
        kind, message, _ = r.rejected[0]
        raise ValueError(f"order {order_id} cannot be indexed: {kind}: {message}")
    table = r.table
    hook = mapping.load_hook(cfg.transform.hook)
    if hook is not None and table.num_rows:
        table, _ = mapping.apply_hook(hook, cfg, table, out_schema)
    if table.num_rows != 1:
        raise ValueError(f"order {order_id} is filtered out by the mapping ({r.filtered or 'hook'})")
    return items.item_of(table.to_pylist()[0])


def record_order(customer_id: str, order_id: str, created_at: str | int | datetime, cfg: Config,
                 ddb: Any) -> dict[str, Any]:
    """The live service's forward writer: one PutItem per order (idempotent, like the backfill's)."""
    if not customer_id or not order_id:
        raise ValueError("customer_id and order_id must be non-empty")
    item = order_item(customer_id, order_id, created_at, cfg)
    ddb.put_item(TableName=cfg.destination_table(), Item=item)
    return item

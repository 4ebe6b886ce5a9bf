-- Destination keys (CustomerID, CreationDateTime) that more than one staged row lands on, every such row,
-- and which one the load writes: the greatest OrderID (`loaded`); the others are the transform's
-- collision losers (_state/month=M/transform-collisions.parquet), counted as `deduplicated` by the load.
-- Rows that tie on the key and OrderID are equal in every column: either is the one written.
WITH ranked AS (
  SELECT
    month,
    CustomerID,
    CreationDateTime,
    OrderID,
    row_number() OVER (PARTITION BY month, CustomerID, CreationDateTime ORDER BY OrderID DESC) AS rank_on_key,
    count(*) OVER (PARTITION BY month, CustomerID, CreationDateTime) AS rows_on_key
  FROM anniversary_promo_staged
)
SELECT
  month,
  CustomerID,
  CreationDateTime,
  from_unixtime(CreationDateTime) AS created_utc,
  OrderID,
  rank_on_key = 1 AS loaded,
  rows_on_key
FROM ranked
WHERE rows_on_key > 1
ORDER BY month, CustomerID, CreationDateTime, rank_on_key

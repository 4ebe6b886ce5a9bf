-- The staged Parquet as one Athena table, partitioned by month (Hive layout: transformed/month=YYYYMM/).
-- Replace the LOCATION with your [staging] root. `etl catalog register` creates the same table in Glue.
CREATE EXTERNAL TABLE IF NOT EXISTS anniversary_promo_staged (
  CustomerID          string,
  CreationDateTime    bigint,   -- epoch seconds (UTC), floored
  OrderID             string,
  ExpirationTimestamp bigint    -- CreationDateTime + ttl_seconds
)
PARTITIONED BY (month string)
STORED AS PARQUET
LOCATION 's3://my-backfill-staging/anniversary/transformed/'
TBLPROPERTIES ('parquet.compression' = 'ZSTD');

-- Pick up the month=YYYYMM folders the transform wrote.
MSCK REPAIR TABLE anniversary_promo_staged;

-- Orders per month, and the day they come from.
SELECT month, count(*) AS orders, min(from_unixtime(CreationDateTime)) AS first, max(from_unixtime(CreationDateTime)) AS last
FROM anniversary_promo_staged
GROUP BY month
ORDER BY month;

-- Rows that share a destination key (the transform counts them; the load writes the greatest OrderID).
SELECT month, CustomerID, CreationDateTime, count(*) AS rows, array_agg(OrderID) AS orders
FROM anniversary_promo_staged
GROUP BY month, CustomerID, CreationDateTime
HAVING count(*) > 1
ORDER BY rows DESC
LIMIT 50;

-- What the TTL will have removed by a date (compare with `etl ttl preview --at ...`).
SELECT month, count_if(ExpirationTimestamp <= to_unixtime(timestamp '2017-06-01 00:00:00 UTC')) AS expired, count(*) AS rows
FROM anniversary_promo_staged
GROUP BY month
ORDER BY month;

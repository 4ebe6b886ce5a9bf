-- The transform's Parquet (transformed/month=YYYYMM/part-NNNNN.parquet) as one Athena table.
-- Every row the transform wrote, key collisions included: the load writes one row per key (the greatest
-- OrderID), see collisions.sql.
--
-- Partition projection on month: a new month needs no MSCK REPAIR and no ALTER TABLE ADD PARTITION.
-- Replace s3://my-backfill-staging/anniversary with your [staging] root and 201501 with your first
-- month, or run `etl catalog register`, which creates this table in Glue from the config.
CREATE EXTERNAL TABLE IF NOT EXISTS anniversary_promo_staged (
  CustomerID          string,
  CreationDateTime    bigint,   -- epoch seconds (UTC), floored
  OrderID             string,
  ExpirationTimestamp bigint    -- CreationDateTime + [transform] ttl_seconds
)
PARTITIONED BY (month string)
STORED AS PARQUET
LOCATION 's3://my-backfill-staging/anniversary/transformed/'
TBLPROPERTIES (
  'classification' = 'parquet',
  'parquet.compression' = 'ZSTD',
  'projection.enabled' = 'true',
  'projection.month.type' = 'date',
  'projection.month.format' = 'yyyyMM',
  'projection.month.range' = '201501,NOW',
  'projection.month.interval' = '1',
  'projection.month.interval.unit' = 'MONTHS',
  'storage.location.template' = 's3://my-backfill-staging/anniversary/transformed/month=${month}/'
)

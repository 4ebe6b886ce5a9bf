-- The catch-up's changes (changes/month=YYYYMM/window-NNNNN.parquet, written by `etl catch-up`) as one
-- Athena table: per window, the puts (the key's new winning row) and the deletes (the row the key lost) it
-- applied to the index, in the transform's columns plus `op`.
--
-- Partition projection on month, as for the other tables. Replace the bucket and the first month, or run
-- `etl catalog register`.
CREATE EXTERNAL TABLE IF NOT EXISTS anniversary_promo_changes (
  CustomerID          string,
  CreationDateTime    bigint,
  OrderID             string,
  ExpirationTimestamp bigint,
  op                  string    -- put | delete
)
PARTITIONED BY (month string)
STORED AS PARQUET
LOCATION 's3://my-backfill-staging/anniversary/changes/'
TBLPROPERTIES (
  'classification' = 'parquet',
  'projection.enabled' = 'true',
  'projection.month.type' = 'date',
  'projection.month.format' = 'yyyyMM',
  'projection.month.range' = '201501,NOW',
  'projection.month.interval' = '1',
  'projection.month.interval.unit' = 'MONTHS',
  'storage.location.template' = 's3://my-backfill-staging/anniversary/changes/month=${month}/'
)

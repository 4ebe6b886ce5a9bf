-- The differences `etl verify --method export` found (verify/month=YYYYMM/part-BBBBB.parquet) as one Athena
-- table: one row per key that is missing from the destination, differs from what the backfill wrote (with the
-- names of the columns that differ), or is in it though its month does not expect it (extra). Keys and column
-- names only, never an item's other contents. A rerun of the verify replaces its months' rows.
--
-- Partition projection on month, as for the other tables. Replace the bucket and the first month, or run
-- `etl catalog register`, which creates this table in Glue from the config.
CREATE EXTERNAL TABLE IF NOT EXISTS anniversary_promo_verify (
  CustomerID        string,
  CreationDateTime  bigint,
  kind              string,          -- missing | different | extra
  differing_columns array<string>    -- kind different: the columns whose value is not the staged one
)
PARTITIONED BY (month string)
STORED AS PARQUET
LOCATION 's3://my-backfill-staging/anniversary/verify/'
TBLPROPERTIES (
  'classification' = 'parquet',
  'projection.enabled' = 'true',
  'projection.month.type' = 'date',
  'projection.month.format' = 'yyyyMM',
  'projection.month.range' = '201501,NOW',
  'projection.month.interval' = '1',
  'projection.month.interval.unit' = 'MONTHS',
  'storage.location.template' = 's3://my-backfill-staging/anniversary/verify/month=${month}/'
)

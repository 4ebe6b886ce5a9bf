-- The transform's quarantine (rejected/month=YYYYMM/part-NNNNN.jsonl.gz) as one Athena table: one row per
-- rejected export line, with its reason (malformed_line, type_mismatch, missing_attribute, bad_datetime,
-- bad_int), a message, the export data file it came from and the raw line (DynamoDB JSON, as text).
--
-- Partition projection on month: a new month needs no MSCK REPAIR and no ALTER TABLE ADD PARTITION.
-- Replace s3://my-backfill-staging/anniversary with your [staging] root and 201501 with your first
-- month, or run `etl catalog register`, which creates this table in Glue from the config.
CREATE EXTERNAL TABLE IF NOT EXISTS anniversary_promo_rejected (
  reason  string,
  message string,
  file    string,
  line    string
)
PARTITIONED BY (month string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://my-backfill-staging/anniversary/rejected/'
TBLPROPERTIES (
  'classification' = 'json',
  'projection.enabled' = 'true',
  'projection.month.type' = 'date',
  'projection.month.format' = 'yyyyMM',
  'projection.month.range' = '201501,NOW',
  'projection.month.interval' = '1',
  'projection.month.interval.unit' = 'MONTHS',
  'storage.location.template' = 's3://my-backfill-staging/anniversary/rejected/month=${month}/'
)

-- The raw DynamoDB export of every month, as one Athena table (Hive DDL; Athena engine v3).
--
-- Layout: export/month=YYYYMM/AWSDynamoDB/<exportId>/data/*.json.gz, one {"Item": {...}} per line in
-- DynamoDB JSON. Athena reads every object under a partition's folder and cannot skip any, so the
-- export's manifest-*.json and *.md5 files are read too (as rows whose Item is NULL): filter on
-- "$path" LIKE '%/data/%' to count only data lines, as the queries in this folder do.
-- Item declares only the attributes the transform reads, each with the DynamoDB types it accepts (S, N);
-- a value of another type ({"BOOL": true}) reads as a struct whose fields are all NULL, a line that is
-- not JSON as a row whose Item is NULL ('ignore.malformed.json').
--
-- Partition projection on month: a new month needs no MSCK REPAIR and no ALTER TABLE ADD PARTITION.
-- Replace s3://my-backfill-staging/anniversary with your [staging] root and 201501 with your first
-- month, or run `etl catalog register`, which creates this table in Glue from the config.
CREATE EXTERNAL TABLE IF NOT EXISTS anniversary_promo_export (
  Item struct<CustomerID:struct<S:string,N:string>, DateTime:struct<S:string,N:string>, OrderID:struct<S:string,N:string>>
)
PARTITIONED BY (month string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://my-backfill-staging/anniversary/export/'
TBLPROPERTIES (
  'classification' = 'json',
  'projection.enabled' = 'true',
  'projection.month.type' = 'date',
  'projection.month.format' = 'yyyyMM',
  'projection.month.range' = '201501,NOW',
  'projection.month.interval' = '1',
  'projection.month.interval.unit' = 'MONTHS',
  'storage.location.template' = 's3://my-backfill-staging/anniversary/export/month=${month}/'
)

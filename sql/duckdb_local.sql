-- The same questions offline with DuckDB on a local staging root (no httpfs needed):
--   duckdb -c ".read sql/duckdb_local.sql"   (run from the staging root, or edit the paths)
CREATE OR REPLACE VIEW staged AS
  SELECT * FROM read_parquet('transformed/*/*.parquet', hive_partitioning = true);

SELECT month, count(*) AS orders FROM staged GROUP BY month ORDER BY month;

-- Quarantined rows by reason: each line holds the raw DynamoDB JSON, a reason code and a message.
SELECT regexp_extract(filename, 'month=(\d+)', 1) AS month, reason, count(*) AS rows, any_value(message) AS example
FROM read_json('rejected/*/*.jsonl.gz', format = 'newline_delimited', filename = true,
               columns = {reason: 'VARCHAR', message: 'VARCHAR', file: 'VARCHAR', line: 'VARCHAR'})
GROUP BY ALL
ORDER BY month, rows DESC;

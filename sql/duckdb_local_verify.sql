-- The differences `etl verify --method export` found (verify/month=M/part-BBBBB.parquet) offline with DuckDB,
-- once a verify has found some (DuckDB refuses a view over files that do not exist yet, hence a file of its own):
--   duckdb -c "SET VARIABLE staging_root = '/path/to/stage'" -c ".read sql/duckdb_local_verify.sql"
-- The columns are sql/create_verify_table.sql's; tests/test_verify_export.py checks both against a real verify.
SET TimeZone = 'UTC';

CREATE OR REPLACE VIEW anniversary_promo_verify AS
SELECT *
FROM read_parquet(
  coalesce(getvariable('staging_root'), '.') || '/verify/month=*/*.parquet',
  hive_partitioning = true, hive_types = {'month': 'VARCHAR'});

-- question: differences per month and kind
SELECT month, kind, count(*) AS keys
FROM anniversary_promo_verify
GROUP BY month, kind
ORDER BY month, kind;

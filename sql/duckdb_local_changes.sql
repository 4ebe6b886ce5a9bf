-- The catch-up's changes (changes/month=M/window-NNNNN.parquet) offline with DuckDB, once `etl catch-up` has
-- written some (DuckDB refuses a view over files that do not exist yet, hence a file of its own):
--   duckdb -c "SET VARIABLE staging_root = '/path/to/stage'" -c ".read sql/duckdb_local_changes.sql"
-- The question is sql/changes_per_window.sql; tests/test_analysts.py checks that both give the same answer.
SET TimeZone = 'UTC';

CREATE OR REPLACE VIEW anniversary_promo_changes AS
SELECT *
FROM read_parquet(
  coalesce(getvariable('staging_root'), '.') || '/changes/*/*.parquet',
  filename = true, hive_partitioning = true, hive_types = {'month': 'VARCHAR'});

-- question: changes_per_window
SELECT
  month,
  CAST(regexp_extract(filename, 'window-([0-9]+)', 1) AS INTEGER) AS window_number,
  count_if(op = 'put') AS puts,
  count_if(op = 'delete') AS deletes,
  count(DISTINCT CustomerID) AS customers
FROM anniversary_promo_changes
GROUP BY month, regexp_extract(filename, 'window-([0-9]+)', 1)
ORDER BY month, window_number;

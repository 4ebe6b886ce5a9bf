-- The Athena tables and questions of this folder, offline with DuckDB (1.2 or later) on a local staging
-- root (no httpfs needed): the same table names as Athena, month read as text as Athena declares it,
-- epochs shown in UTC.
--   duckdb -c "SET VARIABLE staging_root = '/path/to/stage'" -c ".read sql/duckdb_local.sql"
-- (without staging_root it reads the current directory). Each `-- question:` is the DuckDB spelling of
-- sql/<question>.sql; tests/test_analysts.py checks that both give the same answer.
SET TimeZone = 'UTC';

-- Export data files only (Athena also reads the manifests, hence the "$path" filters below).
CREATE OR REPLACE VIEW anniversary_promo_export AS
SELECT Item, "$path", month
FROM read_json(
  coalesce(getvariable('staging_root'), '.') || '/export/*/AWSDynamoDB/*/data/*',
  format = 'newline_delimited', ignore_errors = true, filename = '$path',
  columns = {Item: 'STRUCT(CustomerID STRUCT(S VARCHAR, N VARCHAR), DateTime STRUCT(S VARCHAR, N VARCHAR), OrderID STRUCT(S VARCHAR, N VARCHAR))'},
  hive_partitioning = true, hive_types = {'month': 'VARCHAR'});

CREATE OR REPLACE VIEW anniversary_promo_staged AS
SELECT *
FROM read_parquet(
  coalesce(getvariable('staging_root'), '.') || '/transformed/*/*.parquet',
  hive_partitioning = true, hive_types = {'month': 'VARCHAR'});

CREATE OR REPLACE VIEW anniversary_promo_rejected AS
SELECT *
FROM read_json(
  coalesce(getvariable('staging_root'), '.') || '/rejected/*/*.jsonl.gz',
  format = 'newline_delimited',
  columns = {reason: 'VARCHAR', message: 'VARCHAR', file: 'VARCHAR', line: 'VARCHAR'},
  hive_partitioning = true, hive_types = {'month': 'VARCHAR'});

-- question: rows_per_stage
WITH exported AS (
  SELECT
    month,
    count(*) AS items_in,
    count_if(
      Item IS NOT NULL
      AND NOT ((Item.CustomerID IS NOT NULL AND Item.CustomerID.S IS NULL)
               OR (Item.DateTime IS NOT NULL AND Item.DateTime.S IS NULL AND Item.DateTime.N IS NULL)
               OR (Item.OrderID IS NOT NULL AND Item.OrderID.S IS NULL))
      AND (coalesce(Item.OrderID.S, '') = '' OR coalesce(Item.CustomerID.S, '') = '')
    ) AS filtered
  FROM anniversary_promo_export
  GROUP BY month
),
keys AS (
  SELECT month, CustomerID, CreationDateTime, count(*) AS rows_on_key
  FROM anniversary_promo_staged
  GROUP BY ALL
),
transformed AS (
  SELECT month, sum(rows_on_key) AS written, count(*) AS to_load FROM keys GROUP BY month
),
rejected AS (
  SELECT month, count(*) AS rejected FROM anniversary_promo_rejected GROUP BY month
)
SELECT
  e.month,
  e.items_in,
  coalesce(t.written, 0) AS written,
  e.filtered,
  coalesce(r.rejected, 0) AS rejected,
  coalesce(t.written, 0) - coalesce(t.to_load, 0) AS collision_losers,
  coalesce(t.to_load, 0) AS to_load,
  e.items_in = coalesce(t.written, 0) + e.filtered + coalesce(r.rejected, 0) AS reconciles
FROM exported AS e
LEFT JOIN transformed AS t USING (month)
LEFT JOIN rejected AS r USING (month)
ORDER BY e.month;

-- question: rejected_by_reason
SELECT
  month,
  reason,
  count(*) AS rows,
  min(message) AS example_message,
  arg_min(line, message) AS example_line,
  arg_min(file, message) AS example_file
FROM anniversary_promo_rejected
GROUP BY ALL
ORDER BY month, rows DESC, reason;

-- question: collisions
WITH ranked AS (
  SELECT
    month, CustomerID, CreationDateTime, OrderID,
    row_number() OVER (PARTITION BY month, CustomerID, CreationDateTime ORDER BY OrderID DESC) AS rank_on_key,
    count(*) OVER (PARTITION BY month, CustomerID, CreationDateTime) AS rows_on_key
  FROM anniversary_promo_staged
)
SELECT
  month, CustomerID, CreationDateTime, to_timestamp(CreationDateTime) AS created_utc, OrderID,
  rank_on_key = 1 AS loaded, rows_on_key
FROM ranked
WHERE rows_on_key > 1
ORDER BY month, CustomerID, CreationDateTime, rank_on_key;

-- question: discount_tiers
WITH bounds AS (
  SELECT
    epoch(at_time) AS at_s,
    epoch(at_time - INTERVAL 3 MONTH) AS loyalty_since,
    epoch(at_time - INTERVAL 24 MONTH) AS anniversary_since
  FROM (SELECT TIMESTAMP '2017-06-01 00:00:00' AS at_time)
),
newest AS (
  SELECT s.CustomerID, max(s.CreationDateTime) AS newest_order
  FROM anniversary_promo_staged AS s, bounds AS b
  WHERE s.CreationDateTime BETWEEN b.anniversary_since AND b.at_s AND s.ExpirationTimestamp > b.at_s
  GROUP BY s.CustomerID
)
SELECT
  CASE WHEN n.newest_order >= b.loyalty_since THEN 'loyalty'
       WHEN n.newest_order IS NOT NULL THEN 'anniversary'
       ELSE 'none' END AS tier,
  count(*) AS customers
FROM (SELECT DISTINCT CustomerID FROM anniversary_promo_staged) AS c
CROSS JOIN bounds AS b
LEFT JOIN newest AS n USING (CustomerID)
GROUP BY tier
ORDER BY tier;

-- question: expiry_timeline
SELECT
  strftime(to_timestamp(ExpirationTimestamp), '%Y-%m') AS expires_in,
  month,
  count(*) AS rows,
  count_if(ExpirationTimestamp <= epoch(current_timestamp)) AS expired_now,
  sum(count(*)) OVER (ORDER BY expires_in, month ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS expired_by_then
FROM anniversary_promo_staged
GROUP BY expires_in, month
ORDER BY expires_in, month;

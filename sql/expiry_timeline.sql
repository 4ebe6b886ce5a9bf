-- When the staged orders expire (their ExpirationTimestamp, DynamoDB's TTL attribute), by month of expiry
-- (UTC) and staged month, with the running total of rows gone by the end of each expiry month and the
-- rows already past it now (the load skips those unless --include-expired). Compare with
-- `etl ttl preview --at ...`.
WITH by_month AS (
  SELECT
    date_format(from_unixtime(ExpirationTimestamp), '%Y-%m') AS expires_in,
    month,
    count(*) AS rows,
    count_if(ExpirationTimestamp <= to_unixtime(current_timestamp)) AS expired_now
  FROM anniversary_promo_staged
  GROUP BY date_format(from_unixtime(ExpirationTimestamp), '%Y-%m'), month
)
SELECT
  expires_in,
  month,
  rows,
  expired_now,
  sum(rows) OVER (ORDER BY expires_in, month ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS expired_by_then
FROM by_month
ORDER BY expires_in, month

-- The changes each catch-up window applied to the index, per month: puts (a key's winning row changed or
-- appeared) and deletes (a key lost its last row: an order deleted, or its OrderID removed). The window's
-- time span is in _state/month=M/catchup/window-NNNNN.json; `etl status` shows the time the month is in sync to.
SELECT
  month,
  CAST(regexp_extract("$path", 'window-([0-9]+)', 1) AS integer) AS window_number,
  count_if(op = 'put') AS puts,
  count_if(op = 'delete') AS deletes,
  count(DISTINCT CustomerID) AS customers
FROM anniversary_promo_changes
GROUP BY month, regexp_extract("$path", 'window-([0-9]+)', 1)
ORDER BY month, window_number

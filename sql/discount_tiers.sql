-- Customers per discount tier at one moment (edit `at_time`, UTC): as `etl lookup --at`, the newest order that
-- has not expired decides: loyalty if it is in the last 3 calendar months, anniversary if in the last 24,
-- else none ([promo] loyalty_months, anniversary_months; a month back is the same wall-clock time, the day
-- clamped to the month's end). Unlike the lookup, which reads the table as it is now, only orders made
-- at or before `at_time` count here, so a past `at_time` shows the tiers as they were then. Customers: everyone
-- with a staged order.
WITH params AS (
  SELECT TIMESTAMP '2017-06-01 00:00:00' AS at_time
),
bounds AS (
  SELECT
    to_unixtime(at_time) AS at_s,
    to_unixtime(date_add('month', -3, at_time)) AS loyalty_since,
    to_unixtime(date_add('month', -24, at_time)) AS anniversary_since
  FROM params
),
newest AS (
  SELECT s.CustomerID, max(s.CreationDateTime) AS newest_order
  FROM anniversary_promo_staged AS s
  CROSS JOIN bounds AS b
  WHERE s.CreationDateTime >= b.anniversary_since
    AND s.CreationDateTime <= b.at_s
    AND s.ExpirationTimestamp > b.at_s
  GROUP BY s.CustomerID
),
customers AS (
  SELECT DISTINCT CustomerID FROM anniversary_promo_staged
),
tiers AS (
  SELECT
    CASE
      WHEN n.newest_order >= b.loyalty_since THEN 'loyalty'
      WHEN n.newest_order IS NOT NULL THEN 'anniversary'
      ELSE 'none'
    END AS tier
  FROM customers AS c
  CROSS JOIN bounds AS b
  LEFT JOIN newest AS n ON n.CustomerID = c.CustomerID
)
SELECT tier, count(*) AS customers
FROM tiers
GROUP BY tier
ORDER BY tier

-- Rows per month and stage, and whether they reconcile. Every line of a month's export data is written
-- (transformed/), filtered (not an order: OrderID or CustomerID missing or empty) or rejected (rejected/),
-- so items_in = written + filtered + rejected; the load then writes one row per destination key
-- (to_load = written - collision_losers). The manifests (`etl status`) hold the same counts.
-- `filtered` is counted here by the transform's rule (a type mismatch is rejected before the filter).
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
  WHERE "$path" LIKE '%/data/%'
  GROUP BY month
),
keys AS (
  SELECT month, CustomerID, CreationDateTime, count(*) AS rows_on_key
  FROM anniversary_promo_staged
  GROUP BY month, CustomerID, CreationDateTime
),
transformed AS (
  SELECT month, sum(rows_on_key) AS written, count(*) AS to_load
  FROM keys
  GROUP BY month
),
rejected AS (
  SELECT month, count(*) AS rejected
  FROM anniversary_promo_rejected
  GROUP BY month
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
LEFT JOIN transformed AS t ON t.month = e.month
LEFT JOIN rejected AS r ON r.month = e.month
ORDER BY e.month

-- Quarantined rows by month and reason, with an example of each: its message, the export data file and
-- the raw DynamoDB JSON line (reasons: malformed_line, type_mismatch, missing_attribute, bad_datetime,
-- bad_int; see docs/mapping.md).
SELECT
  month,
  reason,
  count(*) AS rows,
  min(message) AS example_message,
  min_by(line, message) AS example_line,
  min_by(file, message) AS example_file
FROM anniversary_promo_rejected
GROUP BY month, reason
ORDER BY month, rows DESC, reason

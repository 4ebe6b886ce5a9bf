-- The transform stage as one Athena CTAS over the export table (create_export_table.sql), for teams who
-- prefer serverless SQL over terabytes: the same rows as the Python transform's transformed/ Parquet
-- (tests/test_analysts.py checks it row for row, transpiled to DuckDB, on export data with offsets,
-- fractions, date-only values, epoch numbers and key collisions).
--
-- The rules, as in etl/transform.py and etl/convert.py, first match wins:
--   type_mismatch      a mapped attribute is present with none of its accepted types (CustomerID and
--                      OrderID: S; DateTime: S or N)
--   filtered           OrderID or CustomerID missing or "" (not an order: not an error)
--   missing_attribute  DateTime missing
--   bad_datetime       DateTime is neither an ISO-8601 / Joda date-time (offset Z, +HH, +HHMM, +HH:MM,
--                      +HH:MM:SS up to 18 h; 0-9 fraction digits, floored; T or a space; seconds optional),
--                      nor a yyyy-MM-dd date (midnight UTC), nor an N of epoch seconds (fraction floored)
--   written            CreationDateTime = those epoch seconds, ExpirationTimestamp = + ttl_seconds
--
-- Where it differs from the Python transform (all of them are named in the parity test):
--   * Malformed lines. Python quarantines a line that is not JSON or holds a mapped value of the wrong
--     JSON type ({"S": 123}) as malformed_line. Here a line that is not JSON has a NULL Item and is
--     dropped, and {"S": 123} reads as the string '123': such a row is written. A real export never
--     writes either.
--   * Numbers in exponent notation ({"N": "1e9"}). Python reads N by DynamoDB's number grammar (sign,
--     digits, fraction, exponent); here only [+-]digits[.digits] is an epoch, so such a row is left out.
--     DynamoDB stores numbers normalised, so a real export never writes an exponent.
--   * The accepted range. Python refuses an instant outside years 0001-9999 (and a row whose expiry would
--     pass 9999-12-31); here such a row is written.
--   * No quarantine. Rows that fail a rule are left out, not written with a reason: read rejected/
--     (create_rejected_table.sql) for Python's reasons and messages.
--   * Key collisions: like Python, every colliding row is kept; which one the load writes (the greatest
--     OrderID, then the first in file order) is collisions.sql's `loaded` column. SQL has no file order,
--     but rows that tie on the key and OrderID are equal in every column, so the rows loaded are the same.
--   * The shipped mapping only: [transform] date_zone = "UTC", no date_formats, epoch_unit = "s", no
--     hook, ttl_seconds = 31536000. For another mapping, edit the SELECT (Python's rules are configuration;
--     here they are this file).
-- Athena writes at most 100 partitions (months) per CTAS: for more, run it per range of months
-- (WHERE month BETWEEN ...) and INSERT INTO the table for the rest. Athena names the Parquet columns in
-- lower case (customerid, ...); the Python stage's Parquet keeps the mapping's names.
CREATE TABLE anniversary_promo_ctas
WITH (
  format = 'PARQUET',
  write_compression = 'ZSTD',
  external_location = 's3://my-backfill-staging/anniversary/ctas/',
  partitioned_by = ARRAY['month']
) AS
WITH lines AS (
  SELECT
    month,
    Item.CustomerID AS customer,
    Item.DateTime AS created,
    Item.OrderID AS order_id
  FROM anniversary_promo_export
  WHERE "$path" LIKE '%/data/%' AND Item IS NOT NULL
),
-- One regular expression for the date-time shapes (groups: date, hour, minute, second, zone; the fraction
-- is matched and dropped: floor), one for epoch numbers (groups: integer part, fraction).
-- An optional group that took no part is NULL in Athena and '' in DuckDB: hence the NULLIFs.
fields AS (
  SELECT
    month,
    customer,
    created,
    order_id,
    regexp_like(created.S, '^[\t\n\f\r ]*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?)?[\t\n\f\r ]*(Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?[\t\n\f\r ]*$') AS iso,
    try_cast(nullif(regexp_extract(created.S, '^[\t\n\f\r ]*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?)?[\t\n\f\r ]*(Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?[\t\n\f\r ]*$', 1), '') AS date) AS day,
    coalesce(try_cast(nullif(regexp_extract(created.S, '^[\t\n\f\r ]*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?)?[\t\n\f\r ]*(Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?[\t\n\f\r ]*$', 2), '') AS bigint), 0) AS hh,
    coalesce(try_cast(nullif(regexp_extract(created.S, '^[\t\n\f\r ]*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?)?[\t\n\f\r ]*(Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?[\t\n\f\r ]*$', 3), '') AS bigint), 0) AS mi,
    coalesce(try_cast(nullif(regexp_extract(created.S, '^[\t\n\f\r ]*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?)?[\t\n\f\r ]*(Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?[\t\n\f\r ]*$', 4), '') AS bigint), 0) AS ss,
    nullif(regexp_extract(created.S, '^[\t\n\f\r ]*([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?)?[\t\n\f\r ]*(Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?[\t\n\f\r ]*$', 5), '') AS zone,
    try_cast(nullif(regexp_extract(created.N, '^[\t\n\f\r ]*([+-]?[0-9]{1,19})(?:\.([0-9]*))?[\t\n\f\r ]*$', 1), '') AS bigint) AS n_int,
    coalesce(regexp_extract(created.N, '^[\t\n\f\r ]*([+-]?[0-9]{1,19})(?:\.([0-9]*))?[\t\n\f\r ]*$', 2), '') AS n_frac
  FROM lines
),
-- The zone's offset in seconds: Z or none (UTC) is 0; +HH, +HHMM, +HH:MM, +HH:MM:SS.
zones AS (
  SELECT
    *,
    CASE WHEN zone IS NULL OR zone = 'Z' THEN 0
         ELSE coalesce(try_cast(nullif(substr(replace(zone, ':', ''), 2, 2), '') AS bigint), 0) END AS zh,
    CASE WHEN zone IS NULL OR zone = 'Z' THEN 0
         ELSE coalesce(try_cast(nullif(substr(replace(zone, ':', ''), 4, 2), '') AS bigint), 0) END AS zm,
    CASE WHEN zone IS NULL OR zone = 'Z' THEN 0
         ELSE coalesce(try_cast(nullif(substr(replace(zone, ':', ''), 6, 2), '') AS bigint), 0) END AS zs,
    CASE WHEN substr(zone, 1, 1) = '-' THEN -1 ELSE 1 END AS zone_sign
  FROM fields
),
epochs AS (
  SELECT
    month,
    customer,
    created,
    order_id,
    coalesce(
      CASE WHEN iso AND day IS NOT NULL AND hh <= 23 AND mi <= 59 AND ss <= 59
                AND zh <= 18 AND zm <= 59 AND zs <= 59
           THEN date_diff('day', DATE '1970-01-01', day) * 86400 + hh * 3600 + mi * 60 + ss
                - zone_sign * (zh * 3600 + zm * 60 + zs) END,
      -- an N: epoch seconds, floored (a negative number with a non-zero fraction is one less: -0.5 -> -1)
      CASE WHEN regexp_like(created.N, '^[\t\n\f\r ]*-') AND regexp_like(n_frac, '[1-9]') THEN n_int - 1
           ELSE n_int END
    ) AS epoch
  FROM zones
),
outcomes AS (
  SELECT
    *,
    CASE
      WHEN (customer IS NOT NULL AND customer.S IS NULL)
        OR (created IS NOT NULL AND created.S IS NULL AND created.N IS NULL)
        OR (order_id IS NOT NULL AND order_id.S IS NULL) THEN 'type_mismatch'
      WHEN coalesce(order_id.S, '') = '' OR coalesce(customer.S, '') = '' THEN 'filtered'
      WHEN created IS NULL THEN 'missing_attribute'
      WHEN epoch IS NULL THEN 'bad_datetime'
      ELSE 'written'
    END AS outcome
  FROM epochs
)
SELECT
  customer.S AS CustomerID,
  epoch AS CreationDateTime,
  order_id.S AS OrderID,
  epoch + 31536000 AS ExpirationTimestamp,
  month
FROM outcomes
WHERE outcome = 'written'

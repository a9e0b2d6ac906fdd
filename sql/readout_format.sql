-- The readout's formatting helpers print every finite value, however large
-- or small (scientific notation past 1e15 and below 1e-12), never an error
-- or "###"
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;

SELECT x, experiment.format_number(x) AS number,
       experiment.format_signed(x) AS signed,
       experiment.format_signed(x, 'pp', 100, 2) AS pp_2,
       experiment.format_signed(x, '%', 100, 1) AS pct_1,
       experiment.format_percent(x) AS percent,
       experiment.format_decimals(ARRAY[x], 4) AS decimals
FROM unnest(ARRAY[1e300, -1e308, 1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -5e-324,
                  1e15, 999999999999999, 1e-12, 12.345, 0, 'Infinity', '-Infinity', 'NaN']::float8[]) x;
-- format_percent above 999.9%
SELECT experiment.format_percent(12.3456) AS pct_1234, experiment.format_percent(NULL) AS pct_null;

-- a difference and its interval, as the readout prints them
SELECT k, d.*
FROM (VALUES ('mean'), ('proportion')) v(k),
     LATERAL (VALUES (1e300::float8, -1e308::float8, 1e308::float8),
                     (5e-324, -5e-324, 1e-320),
                     (1.7976931348623157e308, 1.7976931348623157e308, 1.7976931348623157e308),
                     (0.0123, 0.001, 0.0236)) x(diff, lo, hi),
     LATERAL experiment.format_diff(k, x.diff, x.lo, x.hi) d;

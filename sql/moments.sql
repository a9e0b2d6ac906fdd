-- experiment.moments: the type, its aggregates, accessors and text I/O
CREATE EXTENSION IF NOT EXISTS experiment;
SET extra_float_digits = 0;

-- univariate: 1..5
SELECT experiment.moments(g::float8) FROM generate_series(1, 5) g;
SELECT experiment.n(m), experiment.mean(m), experiment.variance(m)
  FROM (SELECT experiment.moments(g::float8) AS m FROM generate_series(1, 5) g) s;

-- the accessors agree with the built-in aggregates
SELECT abs(experiment.mean(m) - a) < 1e-12 AS mean_ok,
       abs(experiment.variance(m) - v) / v < 1e-12 AS var_ok,
       experiment.n(m) = c AS n_ok
  FROM (SELECT experiment.moments(sin(g)::float8) AS m, avg(sin(g)) AS a,
               var_samp(sin(g)) AS v, count(*) AS c
          FROM generate_series(1, 1000) g) s;

-- bivariate (y, x): covariance agrees with covar_samp
SELECT abs(experiment.covariance(m, 1, 2) - c) < 1e-12 AS cov_ok,
       experiment.covariance(m, 2, 1) = experiment.covariance(m, 1, 2) AS cov_sym_ok,
       abs(experiment.variance(m, 2) - vx) < 1e-12 AS varx_ok,
       abs(experiment.mean(m, 2) - ax) < 1e-12 AS meanx_ok
  FROM (SELECT experiment.moments(y, x) AS m, covar_samp(y, x) AS c, var_samp(x) AS vx, avg(x) AS ax
          FROM (SELECT sin(g) AS y, cos(g) + g / 1000.0 AS x FROM generate_series(1, 1000) g) d) s;

-- four variables
SELECT experiment.moments(g::float8, 1::float8, (2 * g)::float8, (g % 2)::float8)
  FROM generate_series(1, 4) g;
SELECT round(experiment.covariance(m, 1, 3)::numeric, 10) AS cov_y_x,
       round(experiment.covariance(m, 3, 4)::numeric, 10) AS cov_x_e,
       experiment.variance(m, 2) AS var_d
  FROM (SELECT experiment.moments(g::float8, 1::float8, (2 * g)::float8, (g % 2)::float8) AS m
          FROM generate_series(1, 4) g) s;

-- NULL rows are skipped; no rows gives NULL
SELECT experiment.moments(y) FROM (VALUES (1::float8), (NULL), (3)) v(y);
SELECT experiment.moments(y, x) FROM (VALUES (1::float8, 2::float8), (NULL, 5), (3, NULL), (5, 6)) v(y, x);
SELECT experiment.moments(y) IS NULL AS empty_is_null FROM (VALUES (1::float8)) v(y) WHERE false;
SELECT experiment.moments(y) IS NULL AS all_null_is_null FROM (VALUES (NULL::float8)) v(y);

-- a single row: mean defined, variance NULL
SELECT experiment.mean(m), experiment.variance(m), experiment.covariance(m, 1, 1)
  FROM (SELECT experiment.moments(42::float8) AS m) s;

-- non-finite input is an error that says so
SELECT experiment.moments(y) FROM (VALUES (1::float8), ('NaN')) v(y);
SELECT experiment.moments(y) FROM (VALUES (1::float8), ('Infinity')) v(y);
SELECT experiment.moments(y, x) FROM (VALUES (1::float8, '-Infinity'::float8)) v(y, x);
SELECT experiment.moments(1::float8, 2::float8, 'NaN'::float8, 0::float8);
-- overflow of the co-moment is an error, not Infinity
SELECT experiment.moments(y) FROM (VALUES (1e300::float8), (-1e300)) v(y);

-- merging: + and merge() equal the moments of the union
SELECT (SELECT experiment.moments(g::float8) FROM generate_series(1, 3) g)
       OPERATOR(experiment.+)
       (SELECT experiment.moments(g::float8) FROM generate_series(4, 5) g);
SELECT experiment.merge(m) FROM (
  SELECT experiment.moments(g::float8) AS m FROM generate_series(1, 10) g GROUP BY g % 3) s;
SELECT experiment.merge(m) IS NULL AS merge_of_nothing FROM (SELECT NULL::experiment.moments AS m) s;
-- merging moments of different shapes is an error
SELECT experiment.moments(1::float8) OPERATOR(experiment.+) experiment.moments(1::float8, 2::float8);

-- equality
SELECT experiment.moments(1::float8) OPERATOR(experiment.=) experiment.moments(1::float8) AS eq,
       experiment.moments(1::float8) OPERATOR(experiment.<>) experiment.moments(2::float8) AS ne;

-- text form: JSON, round-trips, readable as jsonb
SELECT m::text::jsonb -> 'n' AS n_from_json
  FROM (SELECT experiment.moments(g::float8, (g * g)::float8) AS m FROM generate_series(1, 7) g) s;
SELECT m::text::experiment.moments OPERATOR(experiment.=) m AS roundtrip
  FROM (SELECT experiment.moments((g * 0.1)::float8, (1.0 / g)::float8) AS m
          FROM generate_series(1, 97) g) s;
SELECT ' { "n" : 2 , "version":1, "comoment":[[0.5]], "mean":[1.5] } '::experiment.moments;
SELECT '{"version":1,"n":0,"mean":[0],"comoment":[[0]]}'::experiment.moments AS empty;
SELECT experiment.mean('{"version":1,"n":0,"mean":[0],"comoment":[[0]]}'::experiment.moments) AS mean_of_empty;

-- hostile text input gets a clear error
SELECT 'NaN'::experiment.moments;
SELECT '{"version":2,"n":1,"mean":[1],"comoment":[[0]]}'::experiment.moments;
SELECT '{"version":1,"n":-1,"mean":[1],"comoment":[[0]]}'::experiment.moments;
SELECT '{"version":1,"n":1.5,"mean":[1],"comoment":[[0]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1,2,3],"comoment":[[1,0,0],[0,1,0],[0,0,1]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1,2],"comoment":[[1,0],[0,1],[0,0]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1,2],"comoment":[[1,0.5],[0.4,1]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1],"comoment":[[-1]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1,2],"comoment":[[1,5],[5,1]]}'::experiment.moments;
SELECT '{"version":1,"n":1,"mean":[1],"comoment":[[2]]}'::experiment.moments;
SELECT '{"version":1,"n":0,"mean":[1],"comoment":[[0]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1e999],"comoment":[[0]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1],"comoment":[[0]]} x'::experiment.moments;
SELECT '{"version":1,"n":3,"n":3,"mean":[1],"comoment":[[0]]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1]}'::experiment.moments;
SELECT '{"version":1,"n":3,"mean":[1],"comoment":[[0]],"extra":1}'::experiment.moments;

-- accessor arguments are checked
SELECT experiment.mean(experiment.moments(1::float8), 2);
SELECT experiment.covariance(experiment.moments(1::float8, 2::float8), 1, 3);
SELECT experiment.variance(experiment.moments(1::float8), 0);

-- from sums
SELECT experiment.moments_from_sums(5, 15, 55);
SELECT experiment.moments_from_sums(5, 15, 55) OPERATOR(experiment.=)
       (SELECT experiment.moments(g::float8) FROM generate_series(1, 5) g) AS same_as_aggregate;
SELECT experiment.moments_from_sums(1, 7, 49);
SELECT experiment.moments_from_sums(0, 0, 0) IS NULL AS zero_rows_is_null;
SELECT round(experiment.covariance(m, 1, 2)::numeric, 12) AS cov,
       round(experiment.variance(m, 2)::numeric, 12) AS var_x
  FROM (SELECT experiment.moments_from_sums(4, 10, 30, 4, 6, 12) AS m) s;
SELECT experiment.moments_from_sums(-1, 0, 0);
SELECT experiment.moments_from_sums(3, 6, 1);
SELECT experiment.moments_from_sums(3, 'NaN', 1);
SELECT experiment.moments_from_sums(3, 3, 5, 3, 5, 100);
SELECT experiment.moments_from_sums(3, 3, 5, 3, 5, 'Infinity');

-- the aggregates are declared parallel safe with a combine function and a real state type
SELECT p.oid::regprocedure AS aggregate, a.aggcombinefn <> 0 AS has_combine,
       a.aggtranstype::regtype AS state, p.proparallel
  FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
 WHERE p.pronamespace = 'experiment'::regnamespace AND p.proname IN ('moments', 'merge')
   AND a.aggtranstype = 'experiment.moments'::regtype
 ORDER BY 1::text;


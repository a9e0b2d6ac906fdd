-- Partial aggregation: a forced parallel plan gives Partial Aggregate and the
-- serial result; moments per shard merge to the moments of the whole.
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA moments_parallel;
SET search_path = moments_parallel, public;

CREATE TABLE obs (unit int, grp int, y float8, x float8) WITH (parallel_workers = 2);
SELECT setseed(0.42);
INSERT INTO obs
SELECT g, g % 2, 1e6 + 1000 * random() + (g % 2), 50 * random() + g % 7
  FROM generate_series(1, 200000) g;
ANALYZE obs;

CREATE TABLE serial AS
SELECT grp, experiment.moments(y) AS m1, experiment.moments(y, x) AS m2,
       experiment.moments(y, x, x, y) AS m4
  FROM obs GROUP BY grp;

SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;

EXPLAIN (COSTS OFF)
SELECT grp, experiment.moments(y), experiment.moments(y, x) FROM obs GROUP BY grp;
EXPLAIN (COSTS OFF)
SELECT experiment.moments(y, x, x, y) FROM obs;

CREATE TABLE parallel AS
SELECT grp, experiment.moments(y) AS m1, experiment.moments(y, x) AS m2,
       experiment.moments(y, x, x, y) AS m4
  FROM obs GROUP BY grp;

-- same counts; means and co-moments within 1e-12 relative
CREATE FUNCTION close(a experiment.moments, b experiment.moments) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT experiment.n(a) = experiment.n(b)
     AND bool_and(abs(experiment.mean(a, i) - experiment.mean(b, i))
                  <= 1e-12 * abs(experiment.mean(b, i)))
     AND bool_and(abs(experiment.covariance(a, i, j) - experiment.covariance(b, i, j))
                  <= 1e-12 * sqrt(experiment.variance(b, i) * experiment.variance(b, j)))
    FROM generate_series(1, (SELECT jsonb_array_length(a::text::jsonb -> 'mean'))) i,
         generate_series(1, (SELECT jsonb_array_length(a::text::jsonb -> 'mean'))) j
$$;

SELECT s.grp, close(p.m1, s.m1) AS univariate, close(p.m2, s.m2) AS bivariate,
       close(p.m4, s.m4) AS four
  FROM serial s JOIN parallel p USING (grp) ORDER BY 1;

-- stored rollups merge in parallel too
CREATE TABLE rollup WITH (parallel_workers = 2) AS
SELECT unit % 1000 AS day, experiment.moments(y) AS m FROM obs GROUP BY 1;
ANALYZE rollup;
EXPLAIN (COSTS OFF) SELECT experiment.merge(m) FROM rollup;
SELECT close((SELECT experiment.merge(m) FROM rollup), (SELECT m1 FROM serial WHERE grp = 0)
             OPERATOR(experiment.+) (SELECT m1 FROM serial WHERE grp = 1)) AS rollup_merge;
RESET parallel_leader_participation;

-- shards: moments per unit % 7, merged, equal the moments of everything
SELECT close((SELECT experiment.merge(m) FROM (SELECT experiment.moments(y, x) AS m
                                                  FROM obs GROUP BY unit % 7) s),
             (SELECT experiment.moments(y, x) FROM obs)) AS shards_merge;

-- very different states: tiny and huge groups, far apart means
SELECT close((SELECT experiment.merge(m) FROM (
                SELECT experiment.moments(v) AS m FROM (
                  SELECT CASE WHEN g <= 3 THEN 1e9 + g ELSE g * 1e-3 END AS v, g <= 3 AS part
                    FROM generate_series(1, 100000) g) d GROUP BY part) s),
             (SELECT experiment.moments(CASE WHEN g <= 3 THEN 1e9 + g ELSE g * 1e-3 END)
                FROM generate_series(1, 100000) g)) AS far_apart_merge;

-- merging in any order gives the same result within rounding
SELECT close((SELECT experiment.merge(m ORDER BY k DESC) FROM (
                SELECT unit % 13 AS k, experiment.moments(y) AS m FROM obs GROUP BY 1) s),
             (SELECT experiment.merge(m ORDER BY k) FROM (
                SELECT unit % 13 AS k, experiment.moments(y) AS m FROM obs GROUP BY 1) s)) AS order_free;

RESET ALL;
DROP SCHEMA moments_parallel CASCADE;

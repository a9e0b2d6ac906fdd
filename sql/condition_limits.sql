-- experiment.eval_condition on large inputs: long loops answer a cancel
-- (statement_timeout), and the cache of compiled regular expressions
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;

-- Each expensive evaluation below is followed, in the same expression, by
-- nextval(): if the evaluation ran to its end despite the timeout (nothing in
-- it checked for interrupts) the sequence advanced before the cancel arrived.
CREATE TEMP SEQUENCE ran_to_end;
CREATE TEMP TABLE big AS
SELECT (SELECT jsonb_agg(i) FROM generate_series(1, 60000) i) AS up,
       (SELECT jsonb_agg(-i) FROM generate_series(1, 60000) i) AS down,
       (SELECT jsonb_agg(i ORDER BY i DESC) FROM generate_series(1, 60000) i) AS reversed;

SET statement_timeout = '1s';
-- $in: 60000 attribute values against 60000 listed ones
SELECT CASE WHEN experiment.eval_condition(jsonb_build_object('a', jsonb_build_object('$in', up)),
                                           jsonb_build_object('a', down)) IS NOT NULL
            THEN nextval('ran_to_end') END
FROM big;
-- $all: each listed value is found, late, among 60000 elements
SELECT CASE WHEN experiment.eval_condition(jsonb_build_object('a', jsonb_build_object('$all', up)),
                                           jsonb_build_object('a', reversed)) IS NOT NULL
            THEN nextval('ran_to_end') END
FROM big;
-- $regexi: a class of 20000 ranges
SELECT CASE WHEN experiment.eval_condition(
                   jsonb_build_object('a', jsonb_build_object('$regexi', '[' || repeat('一-龥', 20000) || ']')),
                   '{"a": "z"}') IS NOT NULL
            THEN nextval('ran_to_end') END;
RESET statement_timeout;
SELECT is_called AS some_evaluation_ignored_the_cancel FROM ran_to_end;

-- the cancelled pattern was not cached (as invalid or otherwise): it compiles now
SELECT experiment.eval_condition(
         jsonb_build_object('a', jsonb_build_object('$regexi', '[' || repeat('一-龥', 20000) || ']')),
         '{"a": "丁"}');

-- the regex cache: one memory context per pattern, under the cache's context,
-- named by the pattern; at most 32 patterns, the oldest evicted
SELECT experiment.eval_condition(jsonb_build_object('a', jsonb_build_object('$regex', '^p' || i || '$')),
                                 jsonb_build_object('a', 'p' || i))
FROM generate_series(1, 40) i
GROUP BY 1;
SELECT count(*) AS cached, min(ident) FILTER (WHERE ident = '^p40$') AS newest,
       count(*) FILTER (WHERE ident = '^p1$') AS oldest_evicted
FROM pg_backend_memory_contexts
WHERE parent = 'experiment condition regexes' AND name = 'experiment condition regex';
-- an invalid pattern matches nothing, and is cached too
SELECT experiment.eval_condition('{"a": {"$regex": "(unclosed"}}', '{"a": "(unclosed"}');
SELECT count(*) FILTER (WHERE ident = '(unclosed') AS invalid_cached
FROM pg_backend_memory_contexts
WHERE parent = 'experiment condition regexes';

-- saved condition groups are validated once per call site and saved_groups
-- value (DEBUG1 says when), not on every evaluation
CREATE TEMP TABLE sg (i int, groups jsonb);
INSERT INTO sg VALUES
  (1, '{"adults": {"type": "condition", "condition": {"$or": [{"age": {"$gte": 18}}, {"guardian": true}]}}}'),
  (2, '{"adults": {"type": "condition", "condition": {"$or": [{"age": {"$gte": 18}}, {"guardian": true}]}}}'),
  (3, '{"adults": {"type": "condition", "condition": {"$or": {"age": 18}}}}');
SET client_min_messages = debug1;
SELECT i, experiment.eval_condition('{"people": {"$elemMatch": {"$savedGroup": "adults", "age": {"$exists": true}}}}',
                                    '{"people": [{"age": 12}, {"age": 15}, {"age": 17}, {"age": 30}]}', groups)
FROM sg WHERE i < 3 ORDER BY i;
-- other saved groups under the same id are validated afresh
SELECT i, experiment.eval_condition('{"$savedGroup": "adults"}', '{"age": 20}', groups) FROM sg ORDER BY i;
RESET client_min_messages;

-- Catalogue hygiene of the extension: every object is documented and
-- declared with the right volatility and parallel safety.
CREATE EXTENSION IF NOT EXISTS experiment;

-- functions, aggregates, types, tables, views and operators without a comment
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS undocumented
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'experiment')
   AND d.deptype = 'e'
   AND d.classid IN ('pg_proc'::regclass, 'pg_type'::regclass, 'pg_class'::regclass,
                     'pg_operator'::regclass)
   AND obj_description(d.objid, d.classid::regclass::text) IS NULL
   -- array types and the row types of tables and views come with their owner
   AND NOT (d.classid = 'pg_type'::regclass AND EXISTS (
         SELECT 1 FROM pg_type t WHERE t.oid = d.objid AND (t.typelem <> 0 AND t.typlen = -1
                                                            OR t.typrelid <> 0 AND t.typtype = 'c'
                                                               AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) <> 'c')))
   -- sequences and indexes belong to their tables
   AND NOT (d.classid = 'pg_class'::regclass AND EXISTS (
         SELECT 1 FROM pg_class c WHERE c.oid = d.objid AND c.relkind IN ('S', 'i')))
 ORDER BY 1;

-- C functions that are not parallel safe (every C function here is pure or
-- says why not in its comment)
SELECT p.oid::regprocedure AS c_function_not_parallel_safe
  FROM pg_proc p
 WHERE p.pronamespace = 'experiment'::regnamespace
   AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c')
   AND p.proparallel <> 's'
 ORDER BY p.oid::regprocedure::text;

-- SQL and PL/pgSQL functions without a fixed search_path
SELECT p.oid::regprocedure AS function_without_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'experiment'::regnamespace
   AND p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('sql', 'plpgsql'))
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
 ORDER BY p.oid::regprocedure::text;

-- functions that write (VOLATILE) must not claim parallel safety
SELECT p.oid::regprocedure AS volatile_but_parallel_safe
  FROM pg_proc p
 WHERE p.pronamespace = 'experiment'::regnamespace
   AND p.provolatile = 'v' AND p.proparallel = 's'
 ORDER BY p.oid::regprocedure::text;

-- aggregates: all parallel safe, with a combine function and a state that is not internal
SELECT p.oid::regprocedure AS aggregate_without_partial_support
  FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
 WHERE p.pronamespace = 'experiment'::regnamespace
   AND (a.aggcombinefn = 0 OR a.aggtranstype = 'internal'::regtype OR p.proparallel <> 's')
 ORDER BY p.oid::regprocedure::text;

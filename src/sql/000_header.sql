-- experiment: warehouse-native experimentation (A/B testing) in PostgreSQL.
-- This install script is built by the Makefile from the parts in src/sql/.

\echo Use "CREATE EXTENSION experiment" to load this file. \quit

COMMENT ON SCHEMA experiment IS
  'experiment extension: assignment, exposures, metrics and statistics of A/B tests';

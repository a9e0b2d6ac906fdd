-- ---------------------------------------------------------------------------
-- Dimensions: the unit attributes (from the first exposure) that results are broken
-- down by, and the strata of post-stratification (doc/analysis.md, "Dimension breakdowns")
-- ---------------------------------------------------------------------------

-- (after every other table that pg_dump keeps: an upgrade appends it, and the order of the
-- extension's dumped tables is the same in a new and in an upgraded installation)
CREATE TABLE experiment.dimensions (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  name text NOT NULL
    CONSTRAINT dimensions_name_not_empty CHECK (name <> ''),
  attribute text NOT NULL
    CONSTRAINT dimensions_attribute_valid CHECK (attribute IN ('client', 'app_version', 'attributes', 'bandit_period')),
  attribute_key text,
  top_n integer NOT NULL DEFAULT 10
    CONSTRAINT dimensions_top_n_range CHECK (top_n >= 1 AND top_n <= 1000),
  caps_per_value boolean NOT NULL DEFAULT false,
  PRIMARY KEY (experiment_id, name),
  CONSTRAINT dimensions_attribute_key_valid
    CHECK ((attribute = 'attributes') = (attribute_key IS NOT NULL) AND attribute_key <> '')
);
COMMENT ON TABLE experiment.dimensions IS
  'the dimensions each experiment''s results are broken down by: a unit attribute taken from the unit''s first exposure, its top_n values by analysed units and (other)';
COMMENT ON COLUMN experiment.dimensions.name IS 'the dimension''s name (results_by_dimension.dimension, experiments.stratify_by)';
COMMENT ON COLUMN experiment.dimensions.attribute IS
  'what the value is: the exposure''s client or app_version column, a key of its attributes (attributes, with attribute_key), or a bandit''s allocation period at the exposure (bandit_period)';
COMMENT ON COLUMN experiment.dimensions.attribute_key IS
  'the key of experiment.exposures.attributes when attribute is attributes (its value as text: attributes ->> key); NULL otherwise';
COMMENT ON COLUMN experiment.dimensions.top_n IS
  'how many values have results of their own: the top_n with the most analysed units (ties by value); the others are pooled as (other)';
COMMENT ON COLUMN experiment.dimensions.caps_per_value IS
  'winsorization percentiles computed within each value of the dimension for its results (false: the pooled caps of the overall results)';
SELECT pg_catalog.pg_extension_config_dump('experiment.dimensions', '');

-- nothing, or the error 'dimension "d" does not exist in experiment "x"' (22023) naming the
-- column that names it and the experiment's dimensions
CREATE FUNCTION experiment.require_dimension(experiment_id text, dimension text, what text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM experiment.dimensions d
                 WHERE d.experiment_id = require_dimension.experiment_id AND d.name = require_dimension.dimension) THEN
    RAISE EXCEPTION 'invalid % "%" of experiment "%": no such dimension', what,
      coalesce(left(dimension, 200), 'NULL'), left(experiment_id, 200)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = coalesce(experiment.hint_list(ARRAY(SELECT d.name FROM experiment.dimensions d
                                                       WHERE d.experiment_id = require_dimension.experiment_id
                                                       ORDER BY d.name COLLATE "C"),
                                                 format('dimensions of experiment "%s"', experiment_id),
                                                 'experiment.dimensions')
                                || ' ', '')
                   || format('Use the name of a row of experiment.dimensions of experiment "%s", or NULL.', experiment_id);
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.require_dimension(text, text, text) IS
  'internal: nothing, or the error 22023 that an experiment has no dimension of that name, with its dimensions as HINT';

-- the values a dimension may hold, named in the errors as the catalogue's are; only members of
-- the experiment's owner role add, change or remove its dimensions
CREATE FUNCTION experiment.dimensions_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  owner text;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.experiment_id, 'change the dimensions');
    -- the strata of post-stratification stay defined (a deleted experiment's rows go freely)
    IF (TG_OP = 'DELETE' OR (NEW.experiment_id, NEW.name) IS DISTINCT FROM (OLD.experiment_id, OLD.name))
       AND EXISTS (SELECT FROM experiment.experiments x WHERE x.id = OLD.experiment_id AND x.stratify_by = OLD.name) THEN
      RAISE EXCEPTION 'cannot % dimension "%" of experiment "%": it is the experiment''s stratify_by',
        CASE WHEN TG_OP = 'DELETE' THEN 'delete' ELSE 'rename' END, OLD.name, OLD.experiment_id
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Set experiment.experiments.stratify_by to NULL (or another dimension) first.';
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  PERFORM experiment.require_experiment(NEW.experiment_id);
  PERFORM experiment.require_experiment_owner(NEW.experiment_id, 'change the dimensions');
  IF NEW.name IS NULL OR NEW.name = '' THEN
    PERFORM experiment.raise_invalid_value(format('name of a dimension of experiment "%s"', NEW.experiment_id),
                                           quote_nullable(NEW.name), 'a non-empty text');
  END IF;
  owner := format('dimension "%s" of experiment "%s"', NEW.name, NEW.experiment_id);
  IF NEW.attribute IS NULL OR NEW.attribute NOT IN ('client', 'app_version', 'attributes', 'bandit_period') THEN
    PERFORM experiment.raise_invalid_choice('attribute', NEW.attribute, '{client,app_version,attributes,bandit_period}', owner);
  END IF;
  IF NEW.attribute = 'attributes' AND (NEW.attribute_key IS NULL OR NEW.attribute_key = '') THEN
    PERFORM experiment.raise_invalid_value('attribute_key of ' || owner, quote_nullable(NEW.attribute_key),
                                           'a non-empty key of experiment.exposures.attributes (attribute is attributes)');
  END IF;
  IF NEW.attribute <> 'attributes' AND NEW.attribute_key IS NOT NULL THEN
    PERFORM experiment.raise_invalid_value('attribute_key of ' || owner, quote_nullable(NEW.attribute_key),
                                           format('NULL (attribute is %s; a key of attributes needs attribute = ''attributes'')',
                                                  NEW.attribute));
  END IF;
  IF NEW.top_n IS NULL OR NEW.top_n < 1 OR NEW.top_n > 1000 THEN
    PERFORM experiment.raise_invalid_value('top_n of ' || owner, coalesce(NEW.top_n::text, 'NULL'),
                                           'an integer between 1 and 1000');
  END IF;
  IF NEW.caps_per_value IS NULL THEN
    PERFORM experiment.raise_invalid_value('caps_per_value of ' || owner, 'NULL', 'true or false');
  END IF;
  RETURN NEW;
END
$$;
COMMENT ON FUNCTION experiment.dimensions_check() IS
  'internal: trigger that names the experiment, column, value and allowed values of an invalid dimension, and keeps changes to the experiment''s owners';
CREATE TRIGGER dimensions_check
  BEFORE INSERT OR UPDATE OR DELETE ON experiment.dimensions
  FOR EACH ROW EXECUTE FUNCTION experiment.dimensions_check();
COMMENT ON TRIGGER dimensions_check ON experiment.dimensions IS
  'an unknown experiment, an invalid name, attribute, attribute_key, top_n or caps_per_value is refused with a message naming the allowed values; '
  'only members of the experiment''s owner_role add, change or remove its dimensions; the stratify_by dimension is not deleted or renamed';

-- a dimension removed or changed takes its stored results with it (the next refresh
-- computes them afresh)
CREATE FUNCTION experiment.dimensions_forget_results() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
    RETURN NULL;
  END IF;
  DELETE FROM experiment.dimension_results r WHERE r.experiment_id = OLD.experiment_id AND r.dimension = OLD.name;
  DELETE FROM experiment.dimension_stats s WHERE s.experiment_id = OLD.experiment_id AND s.dimension = OLD.name;
  DELETE FROM experiment.dimension_enrollment n WHERE n.experiment_id = OLD.experiment_id AND n.dimension = OLD.name;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.dimensions_forget_results() IS
  'internal: trigger: deletes the stored results of a dimension that is deleted or changed';
REVOKE EXECUTE ON FUNCTION experiment.dimensions_forget_results() FROM PUBLIC;
CREATE TRIGGER dimensions_forget_results AFTER UPDATE OR DELETE ON experiment.dimensions
  FOR EACH ROW EXECUTE FUNCTION experiment.dimensions_forget_results();
COMMENT ON TRIGGER dimensions_forget_results ON experiment.dimensions IS
  'a deleted or changed dimension loses its stored results';

-- ---------------------------------------------------------------------------
-- Targeting conditions: GrowthBook's condition language over jsonb
-- (doc/targeting.md)
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.eval_condition(
    condition jsonb,
    attributes jsonb,
    saved_groups jsonb DEFAULT '{}'::jsonb)
  RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_eval_condition'
  LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.eval_condition(jsonb, jsonb, jsonb) IS
  'true when attributes satisfy the targeting condition (GrowthBook/MongoDB-style: $in, $gt, $regex, $elemMatch, $vgt, $and/$or/$not, dotted paths ...), evaluated as the GrowthBook SDKs do; saved_groups maps $inGroup ids to arrays of values';

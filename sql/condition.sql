-- experiment.eval_condition: GrowthBook targeting conditions (doc/targeting.md)
-- (quietly: the extension may exist already)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;

-- the function is pure and parallel safe
SELECT p.provolatile, p.proparallel, p.proisstrict, pg_get_function_arguments(p.oid)
FROM pg_proc p WHERE p.oid = 'experiment.eval_condition(jsonb, jsonb, jsonb)'::regprocedure;

-- the seed example: country in SG, MY, TH
SELECT country, experiment.eval_condition('{"user_country": {"$in": ["SG", "MY", "TH"]}}',
                                          jsonb_build_object('user_country', country)) AS targeted
FROM (VALUES ('SG'), ('MY'), ('TH'), ('US'), ('sg')) v(country);
-- a missing attribute is not in the list
SELECT experiment.eval_condition('{"user_country": {"$in": ["SG", "MY", "TH"]}}', '{}');

-- each case: condition, attributes, result
CREATE TEMP TABLE cond_cases (section text, condition jsonb, attributes jsonb);
INSERT INTO cond_cases VALUES
  -- implicit equality: strings compare with the attribute's string form,
  -- numbers with its number, booleans with its truthiness, null with null
  ('equality', '{"plan": "pro"}', '{"plan": "pro"}'),
  ('equality', '{"plan": "pro"}', '{"plan": "free"}'),
  ('equality', '{"age": "30"}', '{"age": 30}'),
  ('equality', '{"age": 30}', '{"age": "30"}'),
  ('equality', '{"beta": true}', '{"beta": 1}'),
  ('equality', '{"beta": false}', '{}'),
  ('equality', '{"userId": null}', '{}'),
  ('equality', '{"userId": null}', '{"userId": 0}'),
  ('equality', '{"tags": ["a", "b"]}', '{"tags": ["a", "b"]}'),
  ('equality', '{"tags": ["a", "b"]}', '{"tags": ["b", "a"]}'),
  ('equality', '{"loc": {"city": "Oslo"}}', '{"loc": {"city": "Oslo"}}'),
  ('equality', '{"loc": {"city": "Oslo"}}', '{"loc": {"city": "Oslo", "zip": "0150"}}'),
  ('equality', '{}', '{"anything": 1}'),
  -- dotted paths reach into objects and arrays
  ('paths', '{"father.age": {"$gt": 65}}', '{"father": {"age": 70}}'),
  ('paths', '{"address.state": "CA"}', '{"address": null}'),
  ('paths', '{"tags.0": "first"}', '{"tags": ["first", "second"]}'),
  ('paths', '{"tags.length": 2}', '{"tags": ["first", "second"]}'),
  -- $eq and $ne are strict (no coercion)
  ('$eq/$ne', '{"n": {"$eq": 1}}', '{"n": 1}'),
  ('$eq/$ne', '{"n": {"$eq": 1}}', '{"n": "1"}'),
  ('$eq/$ne', '{"level": {"$ne": "senior"}}', '{"level": "junior"}'),
  ('$eq/$ne', '{"level": {"$ne": "senior"}}', '{}'),
  -- $gt $gte $lt $lte: two strings compare as strings, else as numbers
  ('comparison', '{"age": {"$gte": 18, "$lt": 65}}', '{"age": 40}'),
  ('comparison', '{"age": {"$gte": 18, "$lt": 65}}', '{"age": 65}'),
  ('comparison', '{"n": {"$gt": 5, "$lt": 10}}', '{"n": "8"}'),
  ('comparison', '{"n": {"$gt": "5", "$lt": "10"}}', '{"n": "8"}'),
  ('comparison', '{"word": {"$gt": "alphabet"}}', '{"word": "always"}'),
  ('comparison', '{"age": {"$lt": 10}}', '{}'),
  ('comparison', '{"age": {"$gt": 1}}', '{"age": "old"}'),
  -- $in $nin: with an array attribute, any element counts
  ('$in/$nin', '{"num": {"$in": [1, 2, 3]}}', '{"num": 2}'),
  ('$in/$nin', '{"num": {"$in": [1, 2, 3]}}', '{"num": "2"}'),
  ('$in/$nin', '{"tags": {"$in": ["a", "b"]}}', '{"tags": ["d", "b"]}'),
  ('$in/$nin', '{"tags": {"$nin": ["a", "b"]}}', '{"tags": ["d", "e"]}'),
  ('$in/$nin', '{"tags": {"$nin": ["a", "b"]}}', '{}'),
  ('$in/$nin', '{"num": {"$in": 1}}', '{"num": 1}'),
  -- $ini $nini: case-insensitive
  ('$ini/$nini', '{"country": {"$ini": ["us", "uk"]}}', '{"country": "US"}'),
  ('$ini/$nini', '{"city": {"$ini": ["zürich"]}}', '{"city": "ZÜRICH"}'),
  ('$ini/$nini', '{"country": {"$nini": ["us", "uk"]}}', '{"country": "Uk"}'),
  -- $all $alli: every listed value (or condition) is among the elements
  ('$all/$alli', '{"tags": {"$all": ["one", "three"]}}', '{"tags": ["one", "two", "three"]}'),
  ('$all/$alli', '{"tags": {"$all": ["one", "three"]}}', '{"tags": ["one", "two"]}'),
  ('$all/$alli', '{"tags": {"$alli": ["One", "THREE"]}}', '{"tags": ["one", "two", "three"]}'),
  ('$all/$alli', '{"scores": {"$all": [{"$gt": 90}, {"$lt": 10}]}}', '{"scores": [5, 50, 95]}'),
  -- $elemMatch: an element matches an operator object, or a condition on objects
  ('$elemMatch', '{"nums": {"$elemMatch": {"$gt": 10}}}', '{"nums": [0, 5, 15]}'),
  ('$elemMatch', '{"nums": {"$elemMatch": {"$gt": 10}}}', '{"nums": [0, 5, 8]}'),
  ('$elemMatch', '{"hobbies": {"$elemMatch": {"name": {"$regex": "^ping"}}}}', '{"hobbies": [{"name": "bowling"}, {"name": "pingpong"}]}'),
  ('$elemMatch', '{"hobbies": {"$elemMatch": {"name": "chess"}}}', '{"hobbies": "chess"}'),
  -- $size: array length, a number or a condition
  ('$size', '{"tags": {"$size": 3}}', '{"tags": ["a", "b", "c"]}'),
  ('$size', '{"tags": {"$size": {"$gt": 2}}}', '{"tags": ["a", "b"]}'),
  ('$size', '{"tags": {"$size": 0}}', '{"tags": "abc"}'),
  -- $exists: present and not null
  ('$exists', '{"pets.dog.name": {"$exists": true}}', '{"pets": {"dog": {"name": "fido"}}}'),
  ('$exists', '{"pets.dog.name": {"$exists": false}}', '{"pets": {"dog": {}}}'),
  ('$exists', '{"email": {"$exists": true}}', '{"email": null}'),
  -- $type: string number boolean null array object
  ('$type', '{"a": {"$type": "number"}}', '{"a": 1.5}'),
  ('$type', '{"a": {"$type": "array"}}', '{"a": [1]}'),
  ('$type', '{"a": {"$type": "null"}}', '{}'),
  ('$type', '{"a": {"$type": "string"}}', '{"a": 1}'),
  -- $not: negates an operator object, or a whole condition at the top
  ('$not', '{"name": {"$not": {"$regex": "^hello"}}}', '{"name": "world"}'),
  ('$not', '{"name": {"$not": {"$regex": "^hello"}}}', '{"name": "hello world"}'),
  ('$not', '{"$not": {"name": "hello"}}', '{"name": "hello"}'),
  -- $regex $regexi: JavaScript regular expressions, unanchored
  ('$regex', '{"ua": {"$regex": "(Mobile|Tablet)"}}', '{"ua": "Android Mobile Browser"}'),
  ('$regex', '{"ua": {"$regex": "(mobile|tablet)"}}', '{"ua": "Android Mobile Browser"}'),
  ('$regex', '{"ua": {"$regexi": "(mobile|tablet)"}}', '{"ua": "Android Mobile Browser"}'),
  ('$regex', '{"email": {"$regex": "@example\\.com$"}}', '{"email": "ann@example.com"}'),
  ('$regex', '{"word": {"$regex": "\\bcat\\b"}}', '{"word": "concatenate"}'),
  ('$regex', '{"s": {"$regexi": "^straße$"}}', '{"s": "STRAßE"}'),
  ('$regex', '{"n": {"$regex": "^\\d+$"}}', '{"n": 12345}'),
  ('$regex', '{"name": {"$regex": "/???***[)"}}', '{"name": "hello"}'),
  -- versions: $veq $vne $vgt $vgte $vlt $vlte (semantic versions, "v" and build ignored)
  ('versions', '{"version": {"$vgt": "9.99.8", "$vlt": "11.0.1"}}', '{"version": "10.12.13"}'),
  ('versions', '{"version": {"$vgte": "1.10.0"}}', '{"version": "1.9.9"}'),
  ('versions', '{"version": {"$vlt": "1.0.0"}}', '{"version": "1.0.0-rc.1"}'),
  ('versions', '{"version": {"$veq": "v1.2.3"}}', '{"version": "1.2.3+build.7"}'),
  ('versions', '{"version": {"$vne": "1.2.3"}}', '{"version": "1.2.3-alpha"}'),
  ('versions', '{"version": {"$vlte": "2.0.0"}}', '{"version": "2.0.0"}'),
  -- $and $or $nor (an empty $or is true), and keys side by side (all must hold)
  ('logic', '{"$and": [{"age": {"$gt": 18}}, {"$or": [{"plan": "pro"}, {"beta": true}]}]}', '{"age": 30, "beta": true}'),
  ('logic', '{"$or": [{"plan": "pro"}, {"beta": true}]}', '{"plan": "free"}'),
  ('logic', '{"$or": []}', '{}'),
  ('logic', '{"$nor": [{"name": "john"}, {"age": {"$lt": 30}}]}', '{"name": "jim", "age": 40}'),
  ('logic', '{"$or": [{"foo": 1}, {"bar": 1}], "baz": 2}', '{"foo": 1, "baz": 1}'),
  -- an unknown operator does not match
  ('unknown', '{"name": {"$regx": "hello"}}', '{"name": "hello"}'),
  -- an object that mixes operators with other keys is a literal
  ('equality', '{"name": {"$eq": "hello", "extra": 1}}', '{"name": {"$eq": "hello", "extra": 1}}');
SELECT section, condition, attributes, experiment.eval_condition(condition, attributes) AS result
FROM cond_cases ORDER BY section, condition::text, attributes::text;
DROP TABLE cond_cases;

-- saved groups (third argument): $inGroup / $notInGroup take a group's list
-- of values; $savedGroup refers to a list group with its attribute, or to a
-- condition group
SELECT g AS groups_case, experiment.eval_condition(c::jsonb, a::jsonb, s::jsonb) AS result
FROM (VALUES
  ('member', '{"id": {"$inGroup": "beta"}}', '{"id": 2}', '{"beta": [1, 2, 3]}'),
  ('non-member', '{"id": {"$inGroup": "beta"}}', '{"id": 5}', '{"beta": [1, 2, 3]}'),
  ('typed', '{"id": {"$inGroup": "beta"}}', '{"id": "2"}', '{"beta": [1, 2, 3]}'),
  ('unknown group, $inGroup', '{"id": {"$inGroup": "nope"}}', '{"id": 1}', '{}'),
  ('unknown group, $notInGroup', '{"id": {"$notInGroup": "nope"}}', '{"id": 1}', '{}'),
  ('list group', '{"id": {"$inGroup": "vip"}}', '{"id": "u7"}', '{"vip": {"type": "list", "attributeKey": "id", "values": ["u7"]}}'),
  ('malformed group, $notInGroup', '{"id": {"$notInGroup": "bad"}}', '{"id": 1}', '{"bad": "x"}'),
  ('$savedGroup list', '{"$savedGroup": "vip"}', '{"id": "u7"}', '{"vip": {"type": "list", "attributeKey": "id", "values": ["u7"]}}'),
  ('$savedGroup list, other key', '{"$savedGroup": {"id": "vip", "attributeKey": "device"}}', '{"id": "x", "device": "u7"}', '{"vip": {"type": "list", "attributeKey": "id", "values": ["u7"]}}'),
  ('$savedGroup condition', '{"$savedGroup": "adults"}', '{"age": 30}', '{"adults": {"type": "condition", "condition": {"age": {"$gte": 18}}}}'),
  ('$savedGroup cycle', '{"$savedGroup": "a"}', '{}', '{"a": {"type": "condition", "condition": {"$savedGroup": "a"}}}')
) v(g, c, a, s);
-- without a third argument there are no saved groups
SELECT experiment.eval_condition('{"id": {"$notInGroup": "beta"}}', '{"id": 1}');

-- STRICT: a NULL argument gives NULL
SELECT experiment.eval_condition(NULL, '{}') IS NULL AS null_condition,
       experiment.eval_condition('{}', NULL) IS NULL AS null_attributes;

-- errors: arguments that are not objects, and malformed logical operators
SELECT experiment.eval_condition('[{"a": 1}]', '{}');
SELECT experiment.eval_condition('"country"', '{}');
SELECT experiment.eval_condition('{"a": 1}', '["a"]');
SELECT experiment.eval_condition('{"a": 1}', 'null');
SELECT experiment.eval_condition('{"a": {"$inGroup": "g"}}', '{}', '[]');
SELECT experiment.eval_condition('{"$or": {"a": 1}}', '{}');
SELECT experiment.eval_condition('{"$and": [{"a": 1}, "b"]}', '{}');
SELECT experiment.eval_condition('{"$not": [{"a": 1}]}', '{}');
SELECT experiment.eval_condition('{"tags": {"$elemMatch": "a"}}', '{}');
SELECT experiment.eval_condition('{"a": {"$not": {"$elemMatch": 1}}}', '{}');
-- a condition is checked as a whole, whatever the attributes
SELECT experiment.eval_condition('{"a": 1, "$or": [{"$nor": 3}]}', '{"a": 2}');
SELECT experiment.eval_condition('{"$savedGroup": "g"}', '{}',
                                 '{"g": {"type": "condition", "condition": {"$and": {}}}}');
-- the errors are SQLSTATE 22023 (invalid_parameter_value)
DO $$
BEGIN
  PERFORM experiment.eval_condition('{"$or": 1}', '{}');
EXCEPTION WHEN invalid_parameter_value THEN
  RAISE NOTICE 'SQLSTATE %', SQLSTATE;
END
$$;

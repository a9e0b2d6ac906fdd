"""refresh() with per-unit values computed on the Citus workers.

A coordinator and two workers (Citus 13.0.5 built from ../shared/vendor into a
private copy of PostgreSQL, test/lib/citus.py). Two event sources, distributed on
their unit column and co-located (8 shards); the same rows in local tables on the
coordinator. Two experiments with the same units, variants and exposures: "dist"
reads the distributed sources, "loc" the local ones. Their metrics: a conversion
(any), revenue (sum, winsorized at the 0.99 percentile, CUPED over 7 days), a
count, a ratio of the two, a second source's sum, the 0.9 quantile of events and
the median of the units' sums; a dimension (an exposure attribute). Checked:
- "dist" is refreshed distributed, "loc" locally (experiment.refreshes.placement);
- every variant_stats (sketches as text, exactly), metric_results, results_daily,
  dimension_stats and dimension_results value of "dist" equals that of "loc" to 1e-12 relative (plus 1e-12 absolute for effects
  that are differences of nearly equal means), and so do the stored per-unit values;
- the remote commands of the distributed refresh (citus.log_remote_commands) run
  experiment.citus_shard_run() on every shard (a full refresh twice: the latest
  event times, then the scans), whose statements read every shard of the sources
  on its worker; no other remote command names a source shard;
  those on the stored values' shards are partial aggregates, except the capped
  columns that the percentile cap reads;
- within experiment.refresh_memory = 64kB, each shard's units in unit-hash
  partitions (refreshes.unit_partitions > 1), the stored values and results the same;
- new events (within and after the watermark) and new units, then an incremental
  refresh of "dist" (within 64kB): it stays distributed and incremental, and equals an
  incremental refresh of "loc" (stored values included) and a full one (results,
  and the analysed units' values); then once more with nothing new;
- an experiment refreshed before it has exposures (distributed, empty), then with
  its first units (incremental), equal to the local results;
- a source that is distributed but not co-located (another colocation group) and a
  source distributed on another column: refresh falls back to the local path and
  refreshes.placement_reason says why, with results equal to the local ones; once
  co-located, the next refresh is full (the placement changed) and distributed;
- the metrics' owner changed to a role that cannot log in, with SELECT on the
  sources: the same results, read as that role on the workers; without SELECT on
  one source, refused; the local path over a distributed source needs an owner
  that can log in (Citus connects to the workers as the reading role);
- refresh_interactions() over distributed and local stored values;
- a deleted experiment drops its distributed table; DROP EXTENSION after deleting the
  stored state leaves no shard on the workers.
Skips when the Citus archive is absent.
"""
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, numbers, skip  # noqa: E402

import citus  # noqa: E402

if not citus.available():
    skip("Citus 13.0.5 source archive not found at %s" % citus.ARCHIVE)

REL = 1e-12
ck = Checker("test_citus_refresh")
bindir = citus.installation()
cl = citus.Cluster(bindir, workers=2)


def same(a, b, what):
    """a and b (JSON values) equal, numbers to REL relative plus 1e-12 absolute"""
    fa, fb = list(numbers(a)), list(numbers(b))
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return ck.check(False, "%s: shapes differ:\n%r\n%r" % (what, a, b))
    worst = (0.0,)
    for (p, x), (_, y) in zip(fa, fb):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if math.isnan(x) or math.isnan(y):
                ok = math.isnan(x) and math.isnan(y)
            else:
                ok = abs(x - y) <= REL * max(abs(x), abs(y)) + 1e-12
                if x != y and abs(x - y) / max(abs(x), abs(y)) > worst[0]:
                    worst = (abs(x - y) / max(abs(x), abs(y)), what + p, x, y)
            if not ok:
                return ck.check(False, "%s%s: distributed %r, local %r" % (what, p, x, y))
        elif x != y:
            return ck.check(False, "%s%s: distributed %r, local %r" % (what, p, x, y))
    same.worst = max(same.worst, worst)
    return ck.check(True, what)


same.worst = (0.0,)

try:
    conn = cl.connect()

    class Notices:
        """all the notices (psycopg2 keeps only the last 50 in a list)"""

        def __init__(self):
            self.items = []

        def append(self, n):
            self.items.append(n)

    conn.notices = Notices()
    cur = conn.cursor()

    def q(sql, args=None):
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None

    q("CREATE EXTENSION experiment")
    q("SET client_min_messages = warning")
    q("SET TimeZone = 'UTC'")

    # events of 3000 units over 30 days (and a pre-period), two sources; pseudo-random but fixed
    def events_sql(lo, hi, day0):
        return """SELECT 'u' || (i %% 3000 + %d) AS uid,
                         '2025-03-01'::timestamptz + (%d + abs(sin(i * 1.7)) * 30) * interval '1 day' - interval '7 days' AS ts,
                         round((exp(3 + 1.2 * sin(i * 12.9898)) * (1 + (i %% 3000 %% 2) * 0.05))::numeric, 2)::float8 AS amount,
                         CASE WHEN i %% 7 = 0 THEN 'buy' ELSE 'view' END AS kind
                  FROM generate_series(%d, %d) i""" % (0, day0, lo, hi)

    q("CREATE TABLE ev_local AS " + events_sql(1, 30000, 0))
    q("CREATE TABLE pv_local AS SELECT uid, ts + interval '1 hour' AS at, (amount / 10)::float8 AS secs FROM ev_local "
      "WHERE kind = 'view'")
    q("CREATE TABLE ev (LIKE ev_local)")
    q("CREATE TABLE pv (LIKE pv_local)")
    q("SELECT create_distributed_table('ev', 'uid')")
    q("SELECT create_distributed_table('pv', 'uid', colocate_with => 'ev')")
    q("INSERT INTO ev SELECT * FROM ev_local")
    q("INSERT INTO pv SELECT * FROM pv_local")
    # not co-located (another shard count), and distributed on another column
    q("CREATE TABLE ev_nc (LIKE ev_local)")
    q("SELECT create_distributed_table('ev_nc', 'uid', colocate_with => 'none')")
    q("INSERT INTO ev_nc SELECT * FROM ev_local")
    q("CREATE TABLE pv_nc (LIKE pv_local)")
    q("SELECT create_distributed_table('pv_nc', 'uid', colocate_with => 'ev')")
    q("INSERT INTO pv_nc SELECT * FROM pv_local")
    q("CREATE TABLE ev_kind (LIKE ev_local)")
    q("SELECT create_distributed_table('ev_kind', 'kind', colocate_with => 'none')")
    q("INSERT INTO ev_kind SELECT * FROM ev_local")

    def experiment(exp, ev, pv):
        q("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
             VALUES (%s, %s, 'draft', '2025-03-01', '2025-04-01')""", (exp, exp))
        q("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
             VALUES (%s, 'c', 0.5, true), (%s, 't', 0.5, false)""", (exp, exp))
        m = lambda n: "%s_%s" % (exp, n)  # noqa: E731
        q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                             delay, "window", winsorize, cuped_lookback, late_events) VALUES
             (%s, %s, 'uid', 'ts', 'amount', 'any', 'proportion', '0', '14 days', NULL, NULL, '1 day'),
             (%s, %s, 'uid', 'ts', 'amount', 'sum', 'mean', '0', NULL, 0.99, '7 days', '1 day'),
             (%s, %s, 'uid', 'ts', NULL, 'count', 'mean', '1 hour', '10 days', NULL, NULL, '1 day'),
             (%s, %s, 'uid', 'at', 'secs', 'sum', 'mean', '0', NULL, NULL, '7 days', '1 day')""",
          (m("conv"), ev, m("rev"), ev, m("cnt"), ev, m("secs"), pv))
        q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                             quantile, quantile_level, "window", higher_is_better) VALUES
             (%s, %s, 'uid', 'ts', 'amount', 'quantile', 0.9, 'event', '14 days', true),
             (%s, %s, 'uid', 'ts', 'amount', 'quantile', 0.5, 'unit', NULL, true)""",
          (m("p90"), ev, m("p50u"), ev))
        q("INSERT INTO experiment.metrics (name, kind, numerator, denominator) VALUES (%s, 'ratio', %s, %s)",
          (m("rpc"), m("rev"), m("cnt")))
        q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
             SELECT %s, n, CASE WHEN n = %s THEN 'primary' WHEN n = %s THEN 'guardrail' ELSE 'secondary' END
             FROM unnest(%s::text[]) n""",
          (exp, m("rev"), m("cnt"), [m(x) for x in ("conv", "rev", "cnt", "secs", "rpc", "p90", "p50u")]))
        q("""INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key)
             VALUES (%s, 'country', 'attributes', 'country')""", (exp,))
        q("UPDATE experiment.experiments SET status = 'running' WHERE id = %s", (exp,))

    def expose(exp, lo, hi):
        # units lo..hi: variant by hash, first exposure within the first 20 days, a country; a few
        # exposed twice (to both variants: multi-variant)
        q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, attributes)
             SELECT %s, 'u' || i, CASE WHEN hashtext('v' || i) %% 2 = 0 THEN 'c' ELSE 't' END,
                    '2025-03-01'::timestamptz + (abs(cos(i * 3.3)) * 20) * interval '1 day',
                    jsonb_build_object('country', (ARRAY['de', 'fr', 'us', 'jp'])[1 + i %% 4])
             FROM generate_series(%s, %s) i
             UNION ALL
             SELECT %s, 'u' || i, CASE WHEN hashtext('v' || i) %% 2 = 0 THEN 't' ELSE 'c' END,
                    '2025-03-05'::timestamptz, '{}'
             FROM generate_series(%s, %s) i WHERE i %% 97 = 0""", (exp, lo, hi, exp, lo, hi))

    experiment("dist", "ev", "pv")
    experiment("loc", "ev_local", "pv_local")
    experiment("nc", "ev_nc", "pv_nc")
    experiment("kd", "ev_kind", "pv")
    for exp in ("dist", "loc", "nc", "kd"):
        expose(exp, 0, 2799)

    def snapshot(exp):
        out = {}
        out["variant_stats"] = q("""
            SELECT json_agg(json_build_object('metric', substr(metric, length(%s) + 2), 'variant', variant, 'units', units,
                                              'm', moments::text::json, 'c', cuped_moments::text::json, 'cap', cap,
                                              'cap_lower', cap_lower, 'skipped', skipped_values, 'q', sketch::text)
                            ORDER BY metric, variant)
            FROM experiment.variant_stats WHERE experiment_id = %s""", (exp, exp))[0][0]
        out["metric_results"] = q("""
            SELECT json_agg(json_build_object('metric', substr(metric, length(%s) + 2), 'variant', variant,
                                              'method', method, 't', row_to_json(test), 'b', row_to_json(bound_test),
                                              'h', row_to_json(harm_test))
                            ORDER BY metric, variant)
            FROM experiment.metric_results WHERE experiment_id = %s""", (exp, exp))[0][0]
        out["results_daily"] = q("""
            SELECT json_agg(json_build_object('metric', substr(metric, length(%s) + 2), 'variant', variant, 'day', day,
                                              'uc', units_control, 'ut', units_treatment, 'diff', diff,
                                              'lo', diff_lower, 'hi', diff_upper, 'p', p_value)
                            ORDER BY metric, variant, day)
            FROM experiment.results_daily WHERE experiment_id = %s""", (exp, exp))[0][0]
        out["dimension_stats"] = q("""
            SELECT json_agg(json_build_object('metric', substr(metric, length(%s) + 2), 'value', value,
                                              'variant', variant, 'units', units, 'm', moments::text::json,
                                              'c', cuped_moments::text::json)
                            ORDER BY metric, value, variant)
            FROM experiment.dimension_stats WHERE experiment_id = %s""", (exp, exp))[0][0]
        out["dimension_results"] = q("""
            SELECT json_agg(json_build_object('metric', substr(metric, length(%s) + 2), 'value', value,
                                              'variant', variant, 't', row_to_json(test))
                            ORDER BY metric, value, variant)
            FROM experiment.dimension_results WHERE experiment_id = %s""", (exp, exp))[0][0]
        out["enrollment"] = q("""SELECT json_agg(json_build_object('variant', variant, 'units', units) ORDER BY variant)
                                 FROM experiment.enrollment WHERE experiment_id = %s""", (exp,))[0][0]
        out["refreshes"] = q("""SELECT json_build_object('enrolled', enrolled_units, 'multi', multi_variant_units,
                                                         'early', early_units, 'first', first_exposure,
                                                         'last', last_exposure, 'days', exposures_by_day)
                                FROM experiment.refreshes WHERE experiment_id = %s""", (exp,))[0][0]
        return out

    def stored(exp, exact):
        """the stored per-unit values, as JSON rows ordered by unit; not exact: the analysed units'
        values only (an incremental refresh settles other parts than a full one, and keeps the values
        of a unit that turned multi-variant)"""
        (rel,), = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = %s", (exp,))
        rows = q("SELECT json_agg(to_jsonb(u) ORDER BY u.unit_id) FROM experiment.%s u%s"
                 % (rel, "" if exact else " WHERE NOT u.multi"))[0][0]
        if not exact:
            rows = [{k: v for k, v in r.items() if k[0] in "vpsd" or k in ("unit_id", "t0")} for r in rows]
        return rows

    def compare(what, a="dist", b="loc", exact=True):
        sa, sb = snapshot(a), snapshot(b)
        for k in sa:
            ck.check(sa[k] is not None, "%s: %s has rows" % (what, k))
            same(sa[k], sb[k], "%s: %s" % (what, k))
        same(stored(a, exact), stored(b, exact), "%s: the stored per-unit values" % what)

    def placement(exp):
        return q("SELECT mode, placement, placement_reason FROM experiment.refreshes WHERE experiment_id = %s", (exp,))[0]

    def shards_of(rel):
        return [r[0] for r in q("SELECT shard_name(logicalrelid, shardid) FROM pg_dist_shard "
                                "WHERE logicalrelid = %s::regclass", (rel,))]

    def refresh_logged(exp, full):
        cur.execute("SET citus.log_remote_commands = on")
        cur.execute("SET client_min_messages = log")
        conn.notices.items = []
        q("SELECT experiment.refresh(%s, full => %s)", (exp, full))
        remote = [n for n in conn.notices.items if "issuing" in n]
        cur.execute("SET client_min_messages = warning")
        cur.execute("RESET citus.log_remote_commands")
        return remote

    def check_remote(remote, what, rounds):
        src_shards = [s.split(".")[-1] for s in shards_of("ev") + shards_of("pv")]
        (rel,), = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = 'dist'")
        runs = [n for n in remote if "citus_shard_run" in n]
        nshards = q("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = %s::regclass",
                    ("experiment." + rel,))[0][0]
        ck.check(len(runs) == rounds * nshards and nshards == 8,
                 "%s: citus_shard_run %d times on each of the %d shards (%d remote calls)"
                 % (what, rounds, nshards, len(runs)))
        ck.check(all(any(s in n for n in runs) for s in src_shards),
                 "%s: the workers' statements read every shard of the sources" % what)
        # each call carries the statements once, with their placeholders, and the shard names of
        # every group (a plan that grows with statements plus shards, not their product)
        plans = []
        for n in runs:
            m = re.search(r"citus_shard_run\(u\.tableoid, '(.*?)'::jsonb\)", n, re.S)
            plans.append(json.loads(m.group(1).replace("''", "'")) if m else None)
        ck.check(all(p is not None and set(p) == {"stmts", "shards"} and len(p["shards"]) == nshards
                     and any("@src1@" in x for x in p["stmts"])
                     and not any(sh in x for x in p["stmts"] for sh in src_shards) for p in plans),
                 "%s: every call's plan holds the statement templates once and the %d shard groups' names"
                 % (what, nshards))
        if plans and plans[0] is not None:
            print("%s: a call's plan is %d bytes (its statements %d bytes, for %d shard groups)"
                  % (what, len(json.dumps(plans[0])), len(json.dumps(plans[0]["stmts"])), nshards))
        # (the coordinator itself never reads a source: no other remote command names a source shard)
        on_sources = [n for n in remote if any(s in n for s in src_shards) and "citus_shard_run" not in n]
        ck.check(not on_sources, "%s: no remote command reads a source shard:\n%s" % (what, "\n".join(on_sources[:3])))
        # what comes back from the stored per-unit values' shards: aggregates, except the capped
        # column of the percentile cap (one value per unit)
        uv = [n for n in remote if re.search(r"issuing SELECT .* FROM experiment\.%s_[0-9]+ " % rel, n)
              and "citus_shard_run" not in n and "worker_apply_shard_ddl_command" not in n]
        aggregate = re.compile(r"worker_partial_agg\(|count\(|sum\(|min\(|max\(|LIMIT")
        rows = [n for n in uv if not aggregate.search(n)]
        capped = re.compile(r"issuing SELECT [vp][0-9]+(, [vp][0-9]+)* FROM experiment\.unit_values_[0-9]+_[0-9]+ v "
                            r"WHERE \(NOT multi\)")
        ck.check(len(rows) > 0 and all(capped.search(n) for n in rows),
                 "%s: per-unit rows read only for the percentile cap (the capped columns):\n%s"
                 % (what, "\n".join(n for n in rows if not capped.search(n))[:2000]))
        ck.check(any("worker_partial_agg" in n and "moments" in n for n in uv),
                 "%s: the moments of the stored values are partial aggregates on the workers" % what)
        return rows

    # 0. the shard names go into the statements in one pass: a name that contains a placeholder
    # stays as it is, and so does a placeholder beyond the sources
    (filled,), = q("SELECT experiment.citus_fill('SELECT @src2@ FROM @uv@ u, @src1@', "
                   "'experiment.\"uv_@src1@\"', ARRAY['s.\"a@uv@\"', 'b''c'])")
    ck.check(filled == "SELECT 'b''c' FROM experiment.\"uv_@src1@\" u, 's.\"a@uv@\"'",
             "citus_fill replaces each placeholder once: %r" % filled)
    (filled,), = q("SELECT experiment.citus_fill('@src3@ @src01@ @src1@', 'u', ARRAY['a'])")
    ck.check(filled == "@src3@ @src01@ 'a'", "citus_fill leaves a placeholder beyond the sources as it is: %r" % filled)

    # 1. full refreshes
    remote = refresh_logged("dist", True)
    q("SELECT experiment.refresh('loc', full => true)")
    ck.check(placement("dist") == ("full", "distributed", None), "dist: full, distributed: %r" % (placement("dist"),))
    ck.check(placement("loc")[:2] == ("full", "local") and "not a distributed table" in placement("loc")[2],
             "loc: full, local, and why: %r" % (placement("loc"),))
    compare("full refresh")
    if os.environ.get("CITUS_REFRESH_SHOW"):
        print("\n".join(remote))
    rows = check_remote(remote, "full refresh", 2)
    print("remote commands of the full refresh: %d; reading per-unit rows: %d (the percentile cap)"
          % (len(remote), len(rows)))

    # within a small experiment.refresh_memory: each shard's units in unit-hash partitions, the
    # stored values identical
    q("SET experiment.refresh_memory = '64kB'")
    q("SELECT experiment.refresh('dist', full => true)")
    (nparts,), = q("SELECT unit_partitions FROM experiment.refreshes WHERE experiment_id = 'dist'")
    ck.check(nparts > 1, "dist within 64kB: %d unit-hash partitions per shard" % nparts)
    compare("full refresh, distributed in %d partitions per shard" % nparts)
    q("RESET experiment.refresh_memory")
    q("SELECT experiment.refresh('dist', full => true)")
    ck.check(q("SELECT unit_partitions FROM experiment.refreshes WHERE experiment_id = 'dist'")[0][0] == 1,
             "dist without the small bound: 1 partition")

    # an experiment without exposures yet: distributed, empty, and then its first units
    experiment("empty", "ev", "pv")
    q("SELECT experiment.refresh('empty')")
    ck.check(placement("empty") == ("full", "distributed", None), "empty: %r" % (placement("empty"),))
    ck.check(q("SELECT enrolled_units FROM experiment.refreshes WHERE experiment_id = 'empty'")[0][0] == 0,
             "empty: no units")
    expose("empty", 0, 2799)
    q("SELECT experiment.refresh('empty')")
    compare("an experiment's first units after an empty refresh (distributed)", "empty", "loc", exact=False)

    # 2. not co-located, or distributed on another column: the local path, and why
    for exp, why in (("nc", "is not co-located"), ("kd", "is distributed on kind")):
        q("SELECT experiment.refresh(%s)", (exp,))
        p = placement(exp)
        ck.check(p[1] == "local" and why in (p[2] or ""), "%s: local, because it %s: %r" % (exp, why, p))
    sb = snapshot("loc")
    for exp in ("nc", "kd"):
        sa = snapshot(exp)
        for k in ("variant_stats", "metric_results", "dimension_stats"):
            same(sa[k], sb[k], "%s (local path): %s" % (exp, k))

    # co-located now: the next refresh is full (the placement changed) and distributed
    q("SELECT update_distributed_table_colocation('ev_nc', colocate_with => 'pv_nc')")
    q("SELECT experiment.refresh('nc')")
    ck.check(placement("nc") == ("full", "distributed", None), "nc: co-located now, distributed: %r"
             % (placement("nc"),))
    ck.check(q("SELECT full_reason FROM experiment.refreshes WHERE experiment_id = 'nc'")[0][0]
             == "the placement of the per-unit values changed (local or distributed)",
             "nc: the placement changed, so the refresh was full")
    sa = snapshot("nc")
    for k in ("variant_stats", "metric_results", "dimension_stats"):
        same(sa[k], sb[k], "nc co-located after the change: %s" % k)

    # 3. incremental: new events (after the watermark, and new units'), new units and exposures
    # (events from 2025-03-23 on: the latest so far is 2025-03-24, the lateness allowance a day)
    extra = """SELECT uid, '2025-03-23'::timestamptz + (ts - '2025-02-22'::timestamptz) / 4 AS ts, amount, kind
               FROM (%s) x""" % events_sql(30001, 36000, 0)
    for t, p in (("ev", "pv"), ("ev_local", "pv_local")):
        q("INSERT INTO %s %s" % (t, extra))
        q("INSERT INTO %s SELECT uid, ts + interval '1 hour', (amount / 10)::float8 FROM (%s) x WHERE kind = 'view'"
          % (p, extra))
    for exp in ("dist", "loc"):
        expose(exp, 2800, 3100)
    # (within 64kB: each shard's scans in partitions)
    q("SET experiment.refresh_memory = '64kB'")
    remote = refresh_logged("dist", False)
    q("RESET experiment.refresh_memory")
    ck.check(q("SELECT unit_partitions FROM experiment.refreshes WHERE experiment_id = 'dist'")[0][0] > 1,
             "the incremental refresh within 64kB: partitions per shard")
    ck.check(placement("dist") == ("incremental", "distributed", None),
             "dist: incremental, distributed: %r" % (placement("dist"),))
    q("SELECT experiment.refresh('loc')")
    ck.check(placement("loc")[:2] == ("incremental", "local"), "loc: incremental, local")
    compare("incremental refresh (distributed) vs incremental (local)")
    q("SELECT experiment.refresh('loc', full => true)")
    compare("incremental refresh (distributed) vs full (local)", exact=False)
    check_remote(remote, "incremental refresh", 1)
    # and once more with nothing new
    q("SELECT experiment.refresh('dist')")
    ck.check(placement("dist")[:2] == ("incremental", "distributed"), "dist: incremental again")
    compare("incremental refresh with nothing new", exact=False)

    # the sources read as the metrics' owner on the workers too: a role that may read them gives
    # the same results; one that may not read pv is refused
    before = snapshot("dist")
    # (a role that cannot log in: the workers read as it within the refresh's own connections)
    q("CREATE ROLE citus_reader NOLOGIN")
    q("GRANT SELECT ON ev, pv TO citus_reader")
    q("UPDATE experiment.metrics SET owner = 'citus_reader' WHERE name LIKE 'dist\\_%'")
    q("SELECT experiment.refresh('dist')")
    ck.check(placement("dist") == ("full", "distributed", None), "dist read as citus_reader: %r" % (placement("dist"),))
    after = snapshot("dist")
    for k in ("variant_stats", "metric_results", "dimension_stats"):
        same(after[k], before[k], "read as the metrics' owner citus_reader: %s" % k)
    q("REVOKE SELECT ON pv FROM citus_reader")
    try:
        q("SELECT experiment.refresh('dist', full => true)")
        ck.check(False, "a metric owner without SELECT on a source is refused on the workers")
    except Exception as e:  # noqa: BLE001
        conn.rollback() if not conn.autocommit else None
        ck.check("may not read" in str(e) and "pv" in str(e),
                 "a metric owner without SELECT on pv is refused: %s" % str(e).split("\n")[0])
    q("GRANT SELECT ON pv TO citus_reader")

    # interactions of the overlapping experiments: joins of their stored values, distributed
    # (co-located) with distributed and with local ones
    # (a metric that both analyse: dist's conversion, added to loc and nc)
    q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) "
      "VALUES ('loc', 'dist_conv', 'secondary'), ('nc', 'dist_conv', 'secondary')")
    # (loc reads dist_conv's distributed source from the coordinator, the local path: Citus
    # connects to the workers as the reading role, which must be able to log in)
    try:
        q("SELECT experiment.refresh('loc')")
        ck.check(False, "the local path of a distributed source needs an owner that can log in")
    except Exception as e:  # noqa: BLE001
        ck.check("not permitted to log in" in str(e), "the local path of a distributed source, owner NOLOGIN: %s"
                 % str(e).split("\n")[0])
    q("ALTER ROLE citus_reader LOGIN")
    q("SELECT experiment.refresh('loc')")
    q("SELECT experiment.refresh('nc')")
    ck.check(placement("loc")[1:] == ("local", "source public.ev_local is not a distributed table")
             and placement("nc")[1] == "distributed", "loc local, nc distributed: %r, %r"
             % (placement("loc"), placement("nc")))
    n = q("SELECT experiment.refresh_interactions()")[0][0]
    pairs = q("SELECT DISTINCT experiment_id, other_experiment_id FROM experiment.interaction_results ORDER BY 1, 2")
    ck.check(("dist", "loc") in pairs and ("dist", "nc") in pairs and ("loc", "nc") in pairs,
             "refresh_interactions() over distributed and local stored values: %r rows, pairs %r" % (n, pairs))

    # the coordinator holding shards too (a single-node Citus, or shouldhaveshards): Citus runs
    # the tasks of its own shards in the refresh's session, which hides shards from pg_class
    q("SELECT citus_set_node_property('127.0.0.1', %s, 'shouldhaveshards', true)", (cl.ports[0],))
    q("CREATE TABLE ev_co (LIKE ev_local)")
    q("SELECT create_distributed_table('ev_co', 'uid', colocate_with => 'none')")
    q("INSERT INTO ev_co SELECT * FROM ev_local")
    q("CREATE TABLE pv_co (LIKE pv_local)")
    q("SELECT create_distributed_table('pv_co', 'uid', colocate_with => 'ev_co')")
    q("INSERT INTO pv_co SELECT * FROM pv_local")
    on_coordinator = q("""SELECT count(*) FROM pg_dist_shard s JOIN pg_dist_placement p ON p.shardid = s.shardid
                          JOIN pg_dist_node n ON n.groupid = p.groupid
                          WHERE s.logicalrelid = 'ev_co'::regclass AND n.nodeport = %s""", (cl.ports[0],))[0][0]
    ck.check(on_coordinator > 0, "the coordinator holds %d shards of the source" % on_coordinator)
    experiment("co", "ev_co", "pv_co")
    experiment("co_loc", "ev_local", "pv_local")
    for exp in ("co", "co_loc"):
        expose(exp, 0, 2799)
        q("SELECT experiment.refresh(%s, full => true)", (exp,))
    ck.check(placement("co")[1] == "distributed", "with shards on the coordinator: %r" % (placement("co"),))
    compare("shards on the coordinator too, full refresh", "co", "co_loc")
    q("INSERT INTO ev_co SELECT * FROM (" + events_sql(30001, 30600, 1) + ") x")
    q("INSERT INTO ev_local SELECT * FROM (" + events_sql(30001, 30600, 1) + ") x")
    for exp in ("co", "co_loc"):
        q("SELECT experiment.refresh(%s)", (exp,))
    ck.check(placement("co")[0] == "incremental", "with shards on the coordinator, then incremental: %r" % (placement("co"),))
    compare("shards on the coordinator too, incremental refresh", "co", "co_loc", exact=False)
    q("SELECT citus_set_node_property('127.0.0.1', %s, 'shouldhaveshards', false)", (cl.ports[0],))

    # a deleted experiment takes its distributed table with it
    (rel,), = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = 'dist'")
    q("SELECT experiment.stop('dist')")
    q("DELETE FROM experiment.exposures WHERE experiment_id = 'dist'")
    q("DELETE FROM experiment.experiments WHERE id = 'dist'")
    ck.check(q("SELECT to_regclass(%s)", ("experiment." + rel,))[0][0] is None,
             "a deleted experiment drops its distributed per-unit values")

    # deleting the stored state, then DROP EXTENSION, leaves no shard behind
    rels = [r[0] for r in q("SELECT 'experiment.' || u.relation FROM experiment.unit_value_tables u "
                            "WHERE experiment.citus_is_distributed(u.relation)")]
    ck.check(len(rels) >= 1 and all(q("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = %s::regclass", (r,))[0][0]
                                    == 8 for r in rels), "distributed per-unit values before DROP EXTENSION: %r" % rels)
    # (Citus 13 drops a distributed table dropped with its extension on the coordinator only:
    # its shards stay on the workers; a deleted row of unit_value_tables drops its table first)
    q("DELETE FROM experiment.unit_value_tables")
    q("DROP EXTENSION experiment CASCADE")
    ck.check(q("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'experiment.%'")[0][0] == 0,
             "no distributed per-unit values after DROP EXTENSION")
    for port in cl.ports[1:]:
        c = cl.connect(port=port)
        cw = c.cursor()
        cw.execute("SELECT coalesce(string_agg(relname, ', '), '') FROM pg_class WHERE relname LIKE 'unit\\_values%'")
        left = cw.fetchone()[0]
        ck.check(left == "", "no shard of per-unit values is left on the worker at port %d: %s" % (port, left))
        c.close()
    print("largest relative difference distributed vs local: %.3g (%s: %r, %r)" % same.worst)
finally:
    cl.stop()
ck.report()

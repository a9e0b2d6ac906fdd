#!/usr/bin/python3
"""Calibration of the decision statistics by simulation (seeded; counts only).

2,000 simulated A/A experiments, each looked at daily for 14 days (100 new
units per arm and day, skewed lognormal values), tested on the cumulative
moments after every look:
  - the fixed-horizon Welch test: any-look false-positive rate printed (the
    peeking problem: about 0.2), final-look rate within [0.04, 0.06];
  - the sequential test (sequential_tuning = the final total sample size):
    any-look false-positive rate <= alpha = 0.05;
  - the Bayesian result with a flat prior (significant when the chance to win
    is above 0.975 or below 0.025): final-look rate within [0.04, 0.06];
  - the one-sided sequential test: any-look rate <= alpha.
Then 500 experiments with a true lift of 0.15 standard deviations: the power
of the sequential and the fixed tests at the last look and at any look, printed.
Last, experiment.aa_test() on the demo experiment (1,000 re-splits): every
metric's false-positive rate within the 99% binomial band around alpha, and
its Kolmogorov-Smirnov p-value function within 2% of scipy's exact kstwo.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, skip  # noqa: E402

try:
    import numpy as np
except ImportError as e:  # pragma: no cover
    if os.environ.get("CI"):
        print("FAIL: %s is missing" % e)
        sys.exit(1)
    skip(str(e))

ck = Checker("test_decision_calibration")
conn = fresh_db("decision_calibration")
cur = conn.cursor()
DAYS, PER_DAY, ALPHA = 14, 100, 0.05
TUNING = 2 * DAYS * PER_DAY


def cumulative(rng, sims, effect):
    """Per simulation and day: cumulative n, sum and sum of squares of both arms."""
    shape = (sims, DAYS, PER_DAY)
    c = rng.lognormal(0, 0.8, shape)
    t = rng.lognormal(0, 0.8, shape)
    t = t + effect * c.std()
    rows = []
    for arm in (c, t):
        rows.append((np.cumsum(np.full((sims, DAYS), PER_DAY), axis=1),
                     np.cumsum(arm.sum(axis=2), axis=1), np.cumsum((arm ** 2).sum(axis=2), axis=1)))
    return rows


def literal(a):
    """An array as one text literal (psycopg2 would send a list as ARRAY[...] of many constants)."""
    return "{" + ",".join(repr(float(x)) if a.dtype.kind == "f" else str(int(x)) for x in np.ravel(a)) + "}"


def run(rng, sims, effect):
    (nc, sc, qc), (nt, st, qt) = cumulative(rng, sims, effect)
    sim = np.repeat(np.arange(sims), DAYS)
    day = np.tile(np.arange(1, DAYS + 1), sims)
    cur.execute("""
      WITH looks AS (
        SELECT u.sim, u.day,
               experiment.moments_from_sums(u.nc, u.sc, u.qc) AS c, experiment.moments_from_sums(u.nt, u.st, u.qt) AS t
        FROM unnest(%s::int[], %s::int[], %s::bigint[], %s::float8[], %s::float8[], %s::bigint[], %s::float8[], %s::float8[])
             AS u(sim, day, nc, sc, qc, nt, st, qt)
      ), tests AS (
        SELECT sim, day,
               (experiment.welch_ttest(c, t, %s)).p_value AS p_fixed,
               (experiment.welch_ttest(c, t, %s, 'two-sided', %s)).p_value AS p_seq,
               (experiment.welch_ttest(c, t, %s, 'greater', %s)).p_value AS p_seq_greater,
               (experiment.bayesian(experiment.welch_ttest(c, t, %s))).chance_to_win AS ctw
        FROM looks
      ), per_sim AS (
        SELECT sim, bool_or(p_fixed < %s) AS any_fixed, bool_or(p_fixed < %s) FILTER (WHERE day = %s) AS last_fixed,
               bool_or(p_seq < %s) AS any_seq, bool_or(p_seq < %s) FILTER (WHERE day = %s) AS last_seq,
               bool_or(p_seq_greater < %s) AS any_seq_greater,
               bool_or(ctw > 1 - %s / 2 OR ctw < %s / 2) FILTER (WHERE day = %s) AS last_bayes
        FROM tests GROUP BY sim
      )
      SELECT avg(any_fixed::int), avg(last_fixed::int), avg(any_seq::int), avg(last_seq::int),
             avg(any_seq_greater::int), avg(last_bayes::int), count(*)
      FROM per_sim""",
                tuple(literal(a) for a in (sim, day, nc, sc, qc, nt, st, qt)) + (
                 ALPHA, ALPHA, TUNING, ALPHA, TUNING, ALPHA,
                 ALPHA, ALPHA, DAYS, ALPHA, ALPHA, DAYS, ALPHA, ALPHA, ALPHA, DAYS))
    return [float(x) for x in cur.fetchone()[:6]] + [sims]


rng = np.random.default_rng(20261201)
any_fixed, last_fixed, any_seq, last_seq, any_greater, last_bayes, n = run(rng, 2000, 0.0)
print("A/A, %d experiments x %d daily looks, alpha %.2f:" % (n, DAYS, ALPHA))
print("  fixed-horizon Welch: any look %.4f (the peeking problem), last look %.4f" % (any_fixed, last_fixed))
print("  sequential:          any look %.4f, last look %.4f" % (any_seq, last_seq))
print("  sequential greater:  any look %.4f" % any_greater)
print("  Bayesian, flat prior: last look %.4f" % last_bayes)
ck.check(any_fixed > 0.12, "peeking at the fixed test inflates the any-look rate (%.4f)" % any_fixed)
ck.check(0.04 <= last_fixed <= 0.06, "fixed test's final-look rate %.4f in [0.04, 0.06]" % last_fixed)
ck.check(any_seq <= ALPHA, "sequential any-look rate %.4f <= %.2f" % (any_seq, ALPHA))
ck.check(any_greater <= ALPHA, "one-sided sequential any-look rate %.4f <= %.2f" % (any_greater, ALPHA))
ck.check(0.04 <= last_bayes <= 0.06, "Bayesian final-look rate %.4f in [0.04, 0.06]" % last_bayes)

any_fixed, last_fixed, any_seq, last_seq, any_greater, _, n = run(rng, 500, 0.15)
print("true lift of 0.15 sd, %d experiments: power of the sequential test %.3f at the last look (%.3f at any look);"
      " fixed test %.3f at the last look" % (n, last_seq, any_seq, last_fixed))
ck.check(last_seq > 0.2 and last_seq < last_fixed, "the sequential test has power, less than the fixed test's (%.3f, %.3f)"
         % (last_seq, last_fixed))

# ---------------------------------------------------------------- aa_test on the demo
import subprocess  # noqa: E402
from exptest import PROJECT_ROOT  # noqa: E402

demo = fresh_db("decision_calibration_demo", extensions=())
subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "decision_calibration_demo", "-f",
                os.path.join(PROJECT_ROOT, "demo", "checkout.sql")], check=True, stdout=subprocess.DEVNULL)
dcur = demo.cursor()
dcur.execute("SELECT * FROM experiment.aa_test('checkout-progress-bar', 1000)")
rows = dcur.fetchall()
print("aa_test on the demo, 1,000 re-splits:")
for metric, method, sims, alpha, fp, rate, lo, hi, ks_d, ks_p in rows:
    print("  %-26s %-10s false positives %.3f (99%% band [%.3f, %.3f]), KS p %.3f" % (metric, method, rate, lo, hi, ks_p))
    ck.check(lo <= rate <= hi, "aa_test %s: false-positive rate %.3f in the 99%% band [%.3f, %.3f]" % (metric, rate, lo, hi))
    ck.check(sims == 1000 and fp == round(rate * 1000), "aa_test %s counts" % metric)
# (every metric of the demo but its quantile guardrail, which aa_test() does not simulate)
ck.check(len(rows) == 4 and "p99_page_load_ms" not in [r[0] for r in rows],
         "aa_test reports the 4 metrics of the demo that are not quantiles")
# its Kolmogorov-Smirnov p-value against scipy's exact distribution of the statistic
try:
    from scipy import stats
    for n in (100, 1000, 5000):
        for d in (0.01, 0.02, 0.03, 0.05, 0.08):
            dcur.execute("SELECT experiment.ks_p_value(%s, %s)", (d, n))
            got, want = dcur.fetchone()[0], float(stats.kstwo.sf(d, n))
            ck.check(abs(got - want) <= 0.02 * max(want, 0.01),  # the asymptotic form: within 2% for n >= 100
                     "ks_p_value(%g, %d) = %r, scipy kstwo %r" % (d, n, got, want))
except ImportError:
    ck.check(False, "scipy is needed for the KS check")
demo.close()
conn.close()
ck.report()

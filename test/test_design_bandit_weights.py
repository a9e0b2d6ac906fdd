"""Bandit allocation weights (src/bandit.c) against a numpy Monte Carlo.

experiment.best_arm_probabilities and second_arm_probabilities integrate by
quadrature; the oracle draws 2,000,000 samples from the same independent
Gaussian posteriors and counts how often each arm ranks first and second
(GrowthBook's gbstats Bandits.top_two_weights counts the same two places).
Each probability must agree within 5 Monte Carlo standard errors
(sqrt(p(1 - p)/draws), at least 1e-4). top_two_weights must equal
f + (1 - k f) (first + second)/2 computed from the SQL probabilities, sum to
1 and respect the floor; bad arguments are refused with 22023.
"""
import os
import sys

import numpy as np
import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

DRAWS = 2_000_000


def mc(means, variances, lower, rng):
    k = len(means)
    y = rng.normal(means, np.sqrt(variances), size=(DRAWS, k))
    if lower:
        y = -y
    order = np.argsort(y, axis=1)
    first = np.bincount(order[:, -1], minlength=k) / DRAWS
    second = np.bincount(order[:, -2], minlength=k) / DRAWS
    return first, second


def main():
    ck = Checker("test_design_bandit_weights")
    conn = fresh_db("exp_design_bandit_weights")
    cur = conn.cursor()
    rng = np.random.default_rng(20261201)
    cases = [
        ([1.0, 1.1, 0.9], [0.01, 0.02, 0.04], False, 0.05),
        ([0.10, 0.11], [1e-4, 1e-4], False, 0.01),
        ([0.10, 0.11], [1e-4, 1e-4], True, 0.01),
        ([5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0], False, 0.1),
        ([0.0, 3.0, 0.5, -1.0, 2.9], [1.0, 0.01, 4.0, 0.25, 0.5], False, 0.02),
        ([100.0, 100.5], [100.0, 1e-6], False, 0.0),        # very different scales
        ([0.2, 0.21, 0.19, 0.205, 0.2, 0.22], [2e-5, 3e-5, 1e-5, 2e-5, 5e-5, 4e-4], True, 0.01),
    ]
    for _ in range(13):                                    # random ones
        k = int(rng.integers(2, 8))
        means = rng.normal(0, 1, k).tolist()
        variances = (10 ** rng.uniform(-3, 1, k)).tolist()
        cases.append((means, variances, bool(rng.integers(0, 2)), float(rng.uniform(0, 1 / k))))
    max_z = 0.0
    for means, variances, lower, f in cases:
        cur.execute("SELECT experiment.best_arm_probabilities(%s, %s, %s), experiment.second_arm_probabilities(%s, %s, %s), "
                    "experiment.top_two_weights(%s, %s, %s, %s)",
                    (means, variances, lower, means, variances, lower, means, variances, lower, f))
        first, second, w = cur.fetchone()
        mfirst, msecond = mc(np.array(means), np.array(variances), lower, rng)
        k = len(means)
        for name, got, want in (("first", first, mfirst), ("second", second, msecond)):
            for i in range(k):
                se = max(np.sqrt(want[i] * (1 - want[i]) / DRAWS), 1e-4)
                z = abs(got[i] - want[i]) / se
                max_z = max(max_z, z)
                ck.check(z <= 5, "%s place of arm %d, means %s variances %s lower %s: quadrature %.6f, Monte Carlo %.6f (%.1f SE)"
                         % (name, i + 1, means, variances, lower, got[i], want[i], z))
            ck.close(sum(got), 1.0, "%s-place probabilities sum to 1" % name, rel=1e-12)
        ck.close(sum(w), 1.0, "weights sum to 1 (%s)" % means, rel=1e-12)
        for i in range(k):
            ck.check(w[i] >= f, "weight %d = %r respects the floor %r" % (i + 1, w[i], f))
            ck.close(w[i], f + (1 - k * f) * 0.5 * (first[i] + second[i]), "weight %d is f + (1 - k f) w" % (i + 1), rel=1e-12)
    # determinism: the same call twice gives the same bits
    cur.execute("SELECT experiment.top_two_weights('{1,2,3}', '{1,1,1}') = experiment.top_two_weights('{1,2,3}', '{1,1,1}')")
    ck.check(cur.fetchone()[0], "top_two_weights is deterministic")
    # a clear winner: its best-arm probability tends to 1, the weights to the floor and 1/2
    cur.execute("SELECT experiment.best_arm_probabilities('{0,10}', '{0.01,0.01}'), experiment.top_two_weights('{0,10}', '{0.01,0.01}', false, 0.05)")
    p, w = cur.fetchone()
    ck.close(p[1], 1.0, "a certain winner has best-arm probability 1", rel=1e-12)
    ck.close(w[1], 0.05 + 0.9 * 0.5, "with 2 arms top-two gives the winner 1/2 of the unfloored weight", rel=1e-9)

    bad = [
        ("SELECT experiment.best_arm_probabilities('{1,2}', '{1}')", "same length"),
        ("SELECT experiment.best_arm_probabilities('{1}', '{1}')", "2 to 100 arms"),
        ("SELECT experiment.best_arm_probabilities('{1,2}', '{1,0}')", "variances[2] must be positive"),
        ("SELECT experiment.best_arm_probabilities('{1,NaN}', '{1,1}')", "means[2] must be finite"),
        ("SELECT experiment.best_arm_probabilities('{1,NULL}', '{1,1}')", "means[2] must not be NULL"),
        ("SELECT experiment.top_two_weights('{1,2,3}', '{1,1,1}', false, 0.4)", "min_weight must be in [0, 1/3]"),
        ("SELECT experiment.top_two_weights('{1,2,3}', '{1,1,1}', false, -0.1)", "min_weight must be in [0, 1/3]"),
    ]
    for sql, msg in bad:
        try:
            cur.execute(sql)
            ck.check(False, "%s should fail" % sql)
        except psycopg2.Error as e:
            ck.check(e.pgcode == "22023" and msg in e.pgerror, "%s: got %s %s" % (sql, e.pgcode, e.pgerror))
    print("largest deviation from the Monte Carlo: %.2f standard errors over %d cases" % (max_z, len(cases)))
    ck.report()


if __name__ == "__main__":
    main()

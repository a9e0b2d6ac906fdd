"""Calibration of the switchback analysis (Welch's test over windows of the
windows' values after the burn-in) on generated data with time trends.

Each dataset: 6 regions x 72 one-hour windows, each window's variant an
independent fair coin (as assign_switchback's hash gives them), a window's
value (e.g. minutes per delivery over the window) = a daily cycle + a linear
trend + a region effect + noise, plus the effect of the window's own variant
after the burn-in and of the previous window's variant during the burn-in
(carry-over; the burn-in is 1/6 of the window). The windows' values are
generated in numpy; the database computes the test of every dataset in one
query (experiment.moments per dataset and arm, experiment.welch_ttest).

- A/A (3,000 datasets, trends and carry-over of nothing): the false-positive
  rate at 5% is within [4%, 6%].
- A planted effect of 3 with carry-over (2,000 datasets): with the burn-in
  dropped the 95% intervals cover the effect in [93.5%, 96.5%]; without it
  (the window's whole value, a sixth of it carried over from the previous
  window) the estimate is biased towards 0 and the coverage falls well below.
"""
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402

ck = Checker("test_design_switchback_calibration")
conn = fresh_db("exp_design_switchback_calibration")
cur = conn.cursor()
R, W = 6, 72
BURN = 1 / 6


def datasets(n_sets, effect, seed):
    rng = np.random.default_rng(seed)
    rows = []
    hours = np.arange(W)
    for s in range(n_sets):
        treat = rng.random((R, W)) < 0.5
        prev = np.c_[rng.random(R) < 0.5, treat[:, :-1]]
        trend = 5 * np.sin(2 * np.pi * hours / 24) + 0.05 * hours + rng.normal(0, 1) * hours / W
        base = trend[None, :] + rng.normal(0, 3, size=(R, 1))
        post = base + effect * treat + rng.normal(0, 2, size=(R, W))
        burn = base + effect * prev + rng.normal(0, 2, size=(R, W))
        whole = BURN * burn + (1 - BURN) * post
        for r in range(R):
            for w in range(W):
                rows.append("%d\t%s\t%r\t%r\n" % (s, "t" if treat[r, w] else "f", float(post[r, w]), float(whole[r, w])))
    cur.execute("DROP TABLE IF EXISTS sims")
    cur.execute("CREATE TABLE sims (sim int, arm boolean, post float8, whole float8)")
    cur.copy_expert("COPY sims FROM STDIN", io.StringIO("".join(rows)))
    cur.execute("""
      SELECT (experiment.welch_ttest(c.p, t.p)).*, (experiment.welch_ttest(c.w, t.w)).diff_lower AS wl,
             (experiment.welch_ttest(c.w, t.w)).diff_upper AS wu, (experiment.welch_ttest(c.w, t.w)).diff AS wd
      FROM (SELECT sim, experiment.moments(post) AS p, experiment.moments(whole) AS w FROM sims WHERE NOT arm GROUP BY 1) c
      JOIN (SELECT sim, experiment.moments(post) AS p, experiment.moments(whole) AS w FROM sims WHERE arm GROUP BY 1) t
      USING (sim) ORDER BY sim""")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


res = datasets(3000, 0.0, 11)
fpr = np.mean([r["p_value"] < 0.05 for r in res])
print("A/A over %d datasets of %d windows with time trends: false-positive rate %.4f" % (len(res), R * W, fpr))
ck.check(len(res) == 3000, "a test per dataset")
ck.check(0.04 <= fpr <= 0.06, "false-positive rate %.4f in [4%%, 6%%]" % fpr)

EFFECT = 3.0
res = datasets(2000, EFFECT, 12)
cov = np.mean([r["diff_lower"] <= EFFECT <= r["diff_upper"] for r in res])
cov_whole = np.mean([r["wl"] <= EFFECT <= r["wu"] for r in res])
bias = np.mean([r["diff"] for r in res]) - EFFECT
bias_whole = np.mean([r["wd"] for r in res]) - EFFECT
print("effect %.2f with carry-over: burn-in dropped: coverage %.4f, bias %.4f; whole windows: coverage %.4f, bias %.4f"
      % (EFFECT, cov, bias, cov_whole, bias_whole))
ck.check(0.935 <= cov <= 0.965, "coverage with the burn-in dropped %.4f in [93.5%%, 96.5%%]" % cov)
ck.check(cov_whole < 0.9, "without burn-in the carry-over spoils the coverage (%.4f)" % cov_whole)
ck.check(abs(bias) < 0.05 and bias_whole < -0.3, "bias %.4f with burn-in, %.4f without" % (bias, bias_whole))
conn.close()
ck.report()

"""What holdouts and bandits cost assign(): the time of experiment.assign() for
20,000 units of a plain experiment, of the same experiment covered by two
holdouts, and of a bandit (with half of the units already exposed, so that
assign() finds their first variant in the exposure log). Prints each time and
its ratio to the plain one; asserts nothing.

  PGHOST=... PGPORT=... PGUSER=... /usr/bin/python3 bench/designs_bench.py
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test", "lib"))
from exptest import fresh_db  # noqa: E402

N = 20000


def timed(cur, experiment_id, repeat=3):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        cur.execute("SELECT count(experiment.assign('user-' || g, %s)) FROM generate_series(1, %s) g", (experiment_id, N))
        cur.fetchone()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best


def main():
    conn = fresh_db("exp_designs_bench")
    cur = conn.cursor()
    two = '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]'
    cur.execute("""
      SELECT experiment.create_experiment('plain', %(v)s, start => true);
      SELECT experiment.create_experiment('covered', %(v)s, layer => 'L', layer_start => 0, layer_end => 1);
      SELECT experiment.create_holdout('h1', 0.02, experiments => ARRAY['covered']);
      SELECT experiment.create_holdout('h2', 0.05, layer => 'L');
      SELECT experiment.start('covered');
      CREATE TABLE public.o (user_id text, at timestamptz, value float8);
      INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind)
      VALUES ('o', 'public.o', 'user_id', 'at', 'value', 'sum', 'mean');
      SELECT experiment.create_bandit('bandit', %(v)s, 'o', start => true);
      INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
      SELECT 'bandit', 'user-' || g, experiment.assign('user-' || g, 'bandit'), now() FROM generate_series(1, %(n)s / 2) g;
      ANALYZE experiment.exposures;
    """, {"v": two, "n": N})
    base = timed(cur, "plain")
    print("assign() of %d units, best of 3:" % N)
    print("  plain experiment             %.3f s" % base)
    for name, label in (("covered", "covered by two holdouts"), ("bandit", "bandit, half of them exposed")):
        t = timed(cur, name)
        print("  %-28s %.3f s  ratio %.2f" % (label, t, t / base))


if __name__ == "__main__":
    main()

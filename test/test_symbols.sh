#!/usr/bin/env bash
# test_symbols.sh: every symbol that the installed experiment.so exports into
# the backend's namespace carries the extension's prefix (exp_ or
# experiment_), apart from what the server looks up by name (Pg_magic_func,
# _PG_init, pg_finfo_*).  A bare name such as welch_ttest or eval_condition
# could collide with another module's, or with the server's own.
#
# KNOWN lists the bare names still exported by files that are being renamed
# separately (moments.c, moments_agg.c, unit_values.c); a name on it that is
# no longer exported is reported, so that the list only shrinks.
set -uo pipefail
cd "$(dirname "$0")/.."
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
command -v nm >/dev/null || { echo "skipped: no nm"; exit 77; }
so="$("$PG_BINDIR/pg_config" --pkglibdir)/experiment.so"
[ -f "$so" ] || { echo "experiment.so is not installed at $so"; exit 1; }

KNOWN="moments_accum1 moments_accum2 moments_accum4 moments_add moments_check_finite
moments_combine moments_copy moments_covariance moments_covariance_fn moments_eq
moments_from_sums1 moments_from_sums2 moments_in moments_mean moments_merge_into moments_n
moments_ne moments_new moments_out moments_pair_accum moments_pair_combine moments_recv
moments_send moments_type_oid moments_variance moments_variance_fn"

exported=$(nm -D --defined-only "$so" | awk '{print $NF}' | sort -u)
n=$(echo "$exported" | grep -c .)
bad=0
for s in $exported; do
	case $s in
	Pg_magic_func | _PG_init | pg_finfo_* | exp_* | experiment_*) ;;
	*)
		if ! echo "$KNOWN" | tr ' ' '\n' | grep -qx "$s"; then
			echo "exported without the extension's prefix: $s"
			bad=$((bad + 1))
		fi ;;
	esac
done
for s in $KNOWN; do
	if ! echo "$exported" | grep -qx "$s"; then
		echo "$s is no longer exported: take it off KNOWN in $0"
		bad=$((bad + 1))
	fi
done
echo "test_symbols: $n exported symbols, $bad problems"
[ "$bad" -eq 0 ]

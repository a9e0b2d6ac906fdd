#!/usr/bin/env bash
# test_symbols.sh: every symbol that the installed experiment.so exports into
# the backend's namespace carries the extension's prefix (exp_ or
# experiment_), apart from what the server looks up by name (Pg_magic_func,
# _PG_init, pg_finfo_*).  A bare name such as welch_ttest or eval_condition
# could collide with another module's, or with the server's own.
set -uo pipefail
cd "$(dirname "$0")/.."
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
command -v nm >/dev/null || { echo "skipped: no nm"; exit 77; }
so="$("$PG_BINDIR/pg_config" --pkglibdir)/experiment.so"
[ -f "$so" ] || { echo "experiment.so is not installed at $so"; exit 1; }

exported=$(nm -D --defined-only "$so" | awk '{print $NF}' | sort -u)
n=$(echo "$exported" | grep -c .)
bad=0
for s in $exported; do
	case $s in
	Pg_magic_func | _PG_init | pg_finfo_* | exp_* | experiment_*) ;;
	*)
		echo "exported without the extension's prefix: $s"
		bad=$((bad + 1)) ;;
	esac
done
echo "test_symbols: $n exported symbols, $bad problems"
[ "$bad" -eq 0 ]

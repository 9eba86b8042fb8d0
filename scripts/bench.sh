#!/usr/bin/env bash
# Run every bench/bench_*.py in turn (each prints its own figures and ratios).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python
status=0
for script in bench/bench_*.py; do
    [ -e "$script" ] || continue
    mod=${script%.py}
    mod=${mod//\//.}
    echo "== $mod"
    "$python" -m "$mod" "$@" || { echo "crib: $mod failed" >&2; status=1; }
    echo
done
exit $status

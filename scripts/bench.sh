#!/usr/bin/env bash
# Run every bench/bench_*.py in turn (each prints its own figures and ratios).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# The benches drive crib and containerd with the grpcio CRI client of the test extras.
bash scripts/deps.sh test
apt_missing=()
dpkg-query -W -f='${Status}' containerd 2>/dev/null | grep -q "ok installed" || apt_missing+=(containerd)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_missing[@]}"
fi
python=.venv/bin/python
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

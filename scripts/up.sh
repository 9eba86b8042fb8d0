#!/usr/bin/env bash
# Bring the whole crib stack up on defaults, in the background, logs under /var/log/crib.
# Returns once the CRI socket answers `Version`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ "$(id -u)" = 0 ] || { echo "crib: make up must run as root" >&2; exit 1; }
bash scripts/deps.sh
mkdir -p /var/log/crib /run/crib /var/lib/crib
for svc in netd imaged runtimed gateway; do
    pidfile=/run/crib/$svc.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "crib-$svc already running (pid $(cat "$pidfile"))"
        continue
    fi
    setsid .venv/bin/crib-$svc >>/var/log/crib/$svc.log 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "crib-$svc started (pid $!), log /var/log/crib/$svc.log"
done
.venv/bin/crib wait --timeout 60
echo "crib is up: CRI socket /run/crib/cri.sock"

#!/usr/bin/env bash
# Bring the whole crib stack up on defaults, in the background, logs under /var/log/crib.
# Returns once the CRI socket answers `Version`.
#
# CRIB_LAUNCHER=node (default): one crib-node forks the four daemons from a parent that
# imported them once (shared read-only memory, issue 14; deploy/systemd/crib-node.service),
# and forks any that dies again. CRIB_LAUNCHER=process: each daemon its own process, as the
# per-daemon systemd units run them. Either way the pid files are /run/crib/<daemon>.pid,
# so `crib restart` and down.sh work, and a crib-node adopts per-process daemons already
# running instead of starting twins.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ "$(id -u)" = 0 ] || { echo "crib: make up must run as root" >&2; exit 1; }
bash scripts/deps.sh
mkdir -p /var/log/crib /run/crib /var/lib/crib
# runtimed refuses to start when its directories do not propagate mounts (/ is private on
# hosts without systemd); they stay shared after `make down`, for the pods left running.
bash scripts/share-mounts.sh /run/crib /var/lib/crib /var/log/pods
launcher=${CRIB_LAUNCHER:-node}
if [ "$launcher" = node ]; then
    if [ -f /run/crib/node.pid ] && [ "$(cat /proc/"$(cat /run/crib/node.pid)"/comm 2>/dev/null)" = crib-node ]; then
        echo "crib-node already running (pid $(cat /run/crib/node.pid))"
    else
        setsid .venv/bin/crib-node --pid-dir /run/crib --log-dir /var/log/crib \
            >>/var/log/crib/node.log 2>&1 < /dev/null &
        echo "crib-node started (pid $!), logs /var/log/crib/{node,netd,imaged,runtimed,gateway}.log"
    fi
    .venv/bin/crib wait --timeout 60
    echo "crib is up under crib-node: CRI socket /run/crib/cri.sock"
    exit 0
elif [ "$launcher" != process ]; then
    echo "crib: CRIB_LAUNCHER must be process or node, not '$launcher'" >&2
    exit 2
fi
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

#!/usr/bin/env bash
# Stop the daemons `make up` started (by their pid files). Containers keep running only if
# they were left; `make down` stops the daemons, not the pods.
set -uo pipefail
# Under crib-node (the default of make up), crib-node stops its daemons itself; killing
# a daemon first would only make it fork the daemon again.
node=/run/crib/node.pid
if [ -f "$node" ] && [ "$(cat /proc/"$(cat "$node")"/comm 2>/dev/null)" = crib-node ]; then
    pid=$(cat "$node")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "crib-node stopped"
fi
for svc in gateway runtimed imaged netd; do
    pidfile=/run/crib/$svc.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "crib-$svc stopped"
    fi
    rm -f "$pidfile"
done

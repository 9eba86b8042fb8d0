#!/usr/bin/env bash
# Make crib's state directories propagate mounts, as crib-runtimed requires at start
# (runtimed.propagation): each one on a mount that is neither shared nor a slave is bound
# onto itself and made rshared. Hosts with systemd have / shared already and need nothing;
# without systemd (this kind of machine) / is private. Directories: the arguments, or the
# defaults /run/crib /var/lib/crib /var/log/pods. Safe to run again; leaves shared ones be.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "crib: share-mounts.sh must run as root" >&2; exit 1; }
[ $# -gt 0 ] || set -- /run/crib /var/lib/crib /var/log/pods
for dir in "$@"; do
    mkdir -p "$dir"
    prop=$(findmnt -n -o PROPAGATION --target "$dir")
    case "$prop" in
        *shared*|*slave*) continue ;;
    esac
    mountpoint -q "$dir" || mount --bind "$dir" "$dir"
    mount --make-rshared "$dir"
    echo "crib: $dir made shared (it was on a $prop mount)"
done

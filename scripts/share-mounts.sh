#!/usr/bin/env bash
# Make crib's state directories propagate mounts, as crib-runtimed requires at start
# (runtimed.propagation), so the mounts runtimed, imaged and netd make under them (pinned
# namespaces, container root filesystems, shm, image layers, network namespaces) are seen
# by the other daemons and by a kubelet, whether the daemons run as host processes or in
# containers with rshared bind mounts (deploy/docker-compose.yml, which needs the host side
# shared). Each directory on a mount that is neither shared nor a slave is bound onto
# itself and made rshared. Hosts with systemd have / shared already and need nothing;
# without systemd (this kind of machine) / is private. Safe to run again.
#
#   bash scripts/share-mounts.sh                 # /run/crib /var/lib/crib /var/log/pods
#                                                # /run/netns /var/lib/kubelet
#   bash scripts/share-mounts.sh /run/crib ...   # just these (make up, the systemd units)
#   CRIB_HOST_ROOT=/tmp/x bash scripts/share-mounts.sh   # the same paths under /tmp/x
#                                                # (the compose file's CRIB_HOST_ROOT)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "crib: share-mounts.sh must run as root" >&2; exit 1; }
[ $# -gt 0 ] || set -- /run/crib /var/lib/crib /var/log/pods /run/netns /var/lib/kubelet
for path in "$@"; do
    dir=${CRIB_HOST_ROOT:-}$path
    mkdir -p "$dir"
    prop=$(findmnt -n -o PROPAGATION --target "$dir")
    case "$prop" in
        *shared*|*slave*) continue ;;
    esac
    mountpoint -q "$dir" || mount --bind "$dir" "$dir"
    mount --make-rshared "$dir"
    echo "crib: $dir made shared (it was on a $prop mount)"
done

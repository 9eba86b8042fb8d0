#!/usr/bin/env bash
# Make crib's state directories shared mounts on this host, so that the mounts runtimed,
# imaged and netd make under them (pinned namespaces, container root filesystems, shm,
# image layers, network namespaces) are seen by the other daemons and by a kubelet,
# whether the daemons run as host processes or in containers with rshared bind mounts.
#
#   bash scripts/share-mounts.sh            # /run/crib /var/lib/crib /run/netns
#                                           # /var/log/pods /var/lib/kubelet
#   CRIB_HOST_ROOT=/tmp/x bash scripts/share-mounts.sh   # the same paths under /tmp/x
#
# Idempotent: a directory whose mount is already shared (every path on a systemd host,
# whose / is shared) is left alone; one that is a mount point of its own is made rshared;
# anything else becomes one with `mount --bind X X; mount --make-rshared X`.
# runtimed refuses to start when its state directories do not propagate (issue 17).
# Prints each path it made a mount point, one a line (tests undo exactly those).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "crib: share-mounts.sh must run as root" >&2; exit 1; }
root=${CRIB_HOST_ROOT:-}
paths=("$@")
[ "${#paths[@]}" -gt 0 ] || paths=(/run/crib /var/lib/crib /run/netns /var/log/pods /var/lib/kubelet)
for path in "${paths[@]}"; do
    dir=$root$path
    mkdir -p "$dir"
    # The mount holding dir (-T), and its propagation flags (e.g. "shared", "private").
    read -r target propagation < <(findmnt -n -r -o TARGET,PROPAGATION -T "$dir")
    case "$propagation" in
        *shared*) continue ;;
    esac
    if [ "$target" != "$dir" ]; then
        mount --bind "$dir" "$dir"
        echo "$dir"
    fi
    mount --make-rshared "$dir"
done

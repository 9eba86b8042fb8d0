#!/usr/bin/env bash
# Install what crib needs on a Debian 12 machine (as root): runtime packages, and the
# project itself in a virtual environment at .venv. `deps.sh test` adds the test tools.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
want=(runc crun conmon containernetworking-plugins catatonit iproute2 iptables util-linux)
if [ "${1:-}" = test ]; then
    # busybox-static builds the test images; the dynamic busybox (which conflicts with it as
    # a package) is only downloaded and unpacked by the tests, never installed.
    # containerd is the peer the conformance tests compare crib with.
    # apparmor: apparmor_parser compiles crib's AppArmor profile in the tests; gcc and
    # libc6-dev build the static syscall probe; containers-common ships podman's seccomp
    # profile, loaded as a RuntimeDefault in a test.
    want+=(docker-registry busybox-static apache2-utils zstd containerd apparmor gcc libc6-dev
           golang-github-containers-common)
fi
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "crib: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's docker-registry package starts its own registry on :5000; the tests run their
# own on other ports, so leave the packaged one alone.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        apt-get install -y -q python3-venv
        rm -rf .venv
        "$python" -m venv .venv
    fi
fi
extra=""
[ "${1:-}" = test ] && extra="[test]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".$extra"

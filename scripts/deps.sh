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
    # profile, loaded as a RuntimeDefault in a test. golang-go and golang-google-grpc-dev
    # build a small grpc-go client offline (tests/support/grpcgo/): the kubelet, critest
    # and crictl all speak grpc-go, so the gateway's own HTTP/2 server is tested against it.
    want+=(docker-registry busybox-static apache2-utils zstd containerd apparmor gcc libc6-dev
           golang-github-containers-common golang-go golang-google-grpc-dev)
fi
# One dpkg-query for the lot (one per package cost a tenth of a second each). It exits 1
# when a package was never known to dpkg, which pipefail would turn into a silent exit of
# this script before anything is installed: the awk filter alone decides.
installed=$( (dpkg-query -W -f='${Package} ${Status}\n' "${want[@]}" 2>/dev/null || true) \
    | awk '/ ok installed$/ {print $1}')
missing=()
for pkg in "${want[@]}"; do
    grep -qx "$pkg" <<<"$installed" || missing+=("$pkg")
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
# The install is editable, so a change to the sources is live without it; only a change to
# pyproject.toml (dependencies, entry points, version) or to the Python needs pip again.
# The stamp records what was installed: restarting the dev stack (`make up`) then costs
# what the daemons' own start costs, not 10 s of pip (issue 11).
stamp=.venv/.crib-installed
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python -V 2>&1)"
have_stamp=$(cat "$stamp" 2>/dev/null || true)
if [ "$have_stamp" = "$want_stamp [test]" ] || [ "$have_stamp" = "$want_stamp $extra" ]; then
    exit 0  # installed with these extras (or with [test], which includes the plain set)
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".$extra"
echo "$want_stamp $extra" > "$stamp"

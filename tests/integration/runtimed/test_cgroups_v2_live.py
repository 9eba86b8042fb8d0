"""cgroup v2 for real, on this hybrid host: in a private mount namespace cgroup2 is mounted
on /sys/fs/cgroup (the host's one cgroup2 hierarchy, the same as its /sys/fs/cgroup/unified,
which owns no controller). There crib's code sees a unified host, makes a cgroup, reads
cpu.stat of a busy process in it, ends it with cgroup.kill, refuses a memory limit with
FailedPrecondition naming `memory`, and removes the cgroup. Only the test's own cgroup is
ever written; the host's controllers are never touched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HOST_UNIFIED = Path("/sys/fs/cgroup/unified")

PROBE = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from crib_common.errors import FailedPrecondition
from runtimed.cgroups import CgroupHost, v2

name = sys.argv[1]
subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
host = CgroupHost.detect()
out = {"mode": host.mode.value}
d = host.root / name
d.mkdir()
procs = str(d / "cgroup.procs")

def join() -> None:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))

# Burn some CPU inside the cgroup, then sleep there until killed.
child = subprocess.Popen(
    ["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 1000"],
    preexec_fn=join)
try:
    deadline = time.monotonic() + 20
    while True:
        st = host.read_stats(name)
        busy = Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep"
        if (st.cpu_usage_ns > 0 and not busy) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    out.update(version=st.version, exists=st.exists, cpu_usage_ns=st.cpu_usage_ns,
               cpu_user_ns=st.cpu_user_ns, processes=st.processes,
               member=d.joinpath("cgroup.procs").read_text().split() == [str(child.pid)])
    try:
        host.apply_pod_resources(name, {"memory_limit_in_bytes": 64 << 20})
        out["refused"] = None
    except FailedPrecondition as exc:
        out["refused"] = exc.message
    out["kill"] = host.kill(name)
    out["returncode"] = child.wait(timeout=10)
    deadline = time.monotonic() + 5
    while v2.populated(name, host.root) and time.monotonic() < deadline:
        time.sleep(0.02)
    out["populated_after"] = v2.populated(name, host.root)
    out["left"] = host.remove(name)
    out["exists_after"] = d.exists()
finally:
    if child.poll() is None:
        child.kill()
        child.wait()
    if d.exists():
        d.rmdir()
print(json.dumps(out))
"""


def test_cgroup_v2_in_a_private_mount_namespace() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    if not (HOST_UNIFIED / "cgroup.procs").exists():
        pytest.skip("no hybrid cgroup2 at /sys/fs/cgroup/unified to clean up through")
    name = f"crib-live-{uuid.uuid4().hex[:12]}"
    try:
        res = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", PROBE,
             name], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["mode"] == "unified" and out["version"] == 2 and out["exists"]
        assert out["member"] and out["processes"] == 1
        # cpu.stat without the cpu controller still counts the loop's CPU time.
        assert out["cpu_usage_ns"] > 0 and out["cpu_user_ns"] > 0
        assert out["refused"] is not None and "memory" in out["refused"]
        assert out["kill"] == 1 and out["returncode"] == -signal.SIGKILL
        assert out["populated_after"] is False
        assert out["left"] == [] and out["exists_after"] is False
        # The host's view of the same hierarchy: the cgroup is gone there too.
        assert not (HOST_UNIFIED / name).exists()
    finally:
        leftover = HOST_UNIFIED / name
        if leftover.exists():
            for pid in (leftover / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            leftover.rmdir()

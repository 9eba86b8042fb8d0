"""The host's cgroup mode from mountinfo, the driver check, and the facade's choice of
v1 or v2 code."""

from __future__ import annotations

from pathlib import Path

import pytest
from crib_common.errors import FailedPrecondition

from runtimed.cgroups import CgroupHost, CgroupMode, check_cgroup_driver, detect_mode
from runtimed.cgroups.host import mount_fstype

UNIFIED = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
LEGACY = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
"""
# A private namespace that mounted cgroup2 over the hybrid tmpfs: the last mount wins.
OVERMOUNTED = HYBRID + "90 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize(("text", "mode"), [
    (UNIFIED, CgroupMode.UNIFIED), (HYBRID, CgroupMode.HYBRID),
    (LEGACY, CgroupMode.LEGACY), (OVERMOUNTED, CgroupMode.UNIFIED), ("", CgroupMode.LEGACY),
])
def test_detect_mode(tmp_path: Path, text: str, mode: CgroupMode) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(text)
    assert detect_mode(Path("/sys/fs/cgroup"), mi) is mode
    assert CgroupHost.detect(Path("/sys/fs/cgroup"), mi).mode is mode


def test_mountinfo_escapes(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text("50 1 0:40 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n")
    assert mount_fstype(Path("/mnt/my cgroups"), mi) == "cgroup2"
    assert mount_fstype(Path("/mnt"), mi) is None
    assert mount_fstype(Path("/x"), tmp_path / "missing") is None


def test_this_host_is_detected() -> None:
    # Whatever this machine is, the answer agrees with runc's own test of the root.
    import os
    mode = detect_mode()
    magic_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    assert (mode is CgroupMode.UNIFIED) == magic_v2


def test_driver_check(tmp_path: Path) -> None:
    check_cgroup_driver("cgroupfs", tmp_path / "nope")
    with pytest.raises(FailedPrecondition, match="systemd is not PID 1"):
        check_cgroup_driver("systemd", tmp_path / "nope")
    (tmp_path / "system").mkdir()
    check_cgroup_driver("systemd", tmp_path / "system")
    with pytest.raises(FailedPrecondition, match="must be"):
        check_cgroup_driver("openrc", tmp_path / "system")


def test_facade_reads_v1_on_hybrid(tmp_path: Path) -> None:
    mem = tmp_path / "memory/crib/c"
    mem.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text("1000\n")
    (mem / "memory.stat").write_text("total_inactive_file 300\ntotal_rss 500\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    host = CgroupHost(CgroupMode.HYBRID, tmp_path)
    st = host.read_stats("/crib/c")
    assert (st.version, st.memory_usage, st.working_set, st.rss) == (1, 1000, 700, 500)
    assert host.oom_killed("/crib/c") and host.oom_kill_count("/crib/c") == 2
    assert host.describe()["version"] == 1


def test_facade_kill_and_remove_on_hybrid(tmp_path: Path) -> None:
    for h in ("memory", "pids", "unified"):
        (tmp_path / h / "crib/c/sub").mkdir(parents=True)
    (tmp_path / "unified/crib/c/cgroup.kill").write_text("")
    host = CgroupHost(CgroupMode.HYBRID, tmp_path)
    assert host.kill("/crib/c") == 1  # cgroup.kill in the cgroup2 tree, no v1 pids
    assert (tmp_path / "unified/crib/c/cgroup.kill").read_text() == "1"
    (tmp_path / "unified/crib/c/cgroup.kill").unlink()
    assert host.remove("/crib/c") == []
    assert not any((tmp_path / h / "crib/c").exists() for h in ("memory", "pids", "unified"))


def test_describe_unified(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    d = CgroupHost(CgroupMode.UNIFIED, tmp_path).describe()
    assert d == {"mode": "unified", "version": 2, "root": str(tmp_path),
                 "controllers": ["cpu", "io", "memory", "pids"]}
    assert CgroupHost(CgroupMode.UNIFIED, tmp_path).swap_controller() is True

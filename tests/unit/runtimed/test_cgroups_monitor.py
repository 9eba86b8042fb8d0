"""The monitor's own cgroup: its path for both drivers and both settings, and the move
into it on synthetic v1 (hybrid) and v2 trees laid out as the kernel does."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crib_common.errors import FailedPrecondition, InvalidArgument
from runtimed.cgroups import CgroupHost, CgroupMode, check_monitor_cgroup, monitor_cgroup
from runtimed.cgroups.monitor import hierarchies, join_cgroup, monitor_id
from runtimed.conmon.monitor import ConmonSpec, start_conmon

CID = "ab" * 32


@pytest.mark.parametrize(("setting", "parent", "driver", "path"), [
    ("pod", "/kubepods/burstable/pod1", "cgroupfs",
     f"/kubepods/burstable/pod1/crib-conmon-{CID}"),
    ("pod", "kubepods-burstable-pod1.slice", "systemd",
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
     f"crib-conmon-{CID}.scope"),
    ("/crib.monitors", "/kubepods/pod1", "cgroupfs", f"/crib.monitors/crib-conmon-{CID}"),
    ("system.slice", "kubepods-pod1.slice", "systemd", f"/system.slice/crib-conmon-{CID}.scope"),
])
def test_monitor_cgroup_paths(setting: str, parent: str, driver: str, path: str) -> None:
    check_monitor_cgroup(setting, driver)  # type: ignore[arg-type]
    assert monitor_cgroup(setting, parent, CID, driver) == path  # type: ignore[arg-type]
    assert monitor_id(path.rsplit("/", 1)[1]) == CID


@pytest.mark.parametrize(("setting", "driver"), [
    ("crib.monitors", "cgroupfs"), ("/a/../b", "cgroupfs"), ("/crib.monitors", "systemd"),
    ("system-.slice", "systemd"),
])
def test_bad_settings_are_refused_naming_the_key(setting: str, driver: str) -> None:
    with pytest.raises(FailedPrecondition, match="runtimed.monitor_cgroup"):
        check_monitor_cgroup(setting, driver)  # type: ignore[arg-type]


def test_monitor_id_ignores_other_cgroups() -> None:
    assert monitor_id(CID) == "" and monitor_id("crib-abc.scope") == ""


def _hybrid(root: Path) -> None:
    """/sys/fs/cgroup of this machine: a tmpfs of v1 hierarchies (cpuset with its cpus and
    mems, name=systemd), cgroup2 at ./unified, and an alias symlink."""
    for h in ("cpu,cpuacct", "cpuset", "memory", "pids", "systemd", "unified"):
        (root / h).mkdir(parents=True)
        (root / h / "cgroup.procs").write_text("1\n")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    (root / "not-a-hierarchy").mkdir()


def test_join_v1_writes_every_hierarchy_and_fills_cpuset(tmp_path: Path) -> None:
    _hybrid(tmp_path)
    assert [h.name for h in hierarchies(tmp_path, unified=False)] == [
        "cpu,cpuacct", "cpuset", "memory", "pids", "systemd", "unified"]
    path = f"/kubepods/pod1/crib-conmon-{CID}"
    host = CgroupHost(CgroupMode.HYBRID, tmp_path)
    written = host.join(path, 4242)
    assert len(written) == 6
    for h in ("cpu,cpuacct", "cpuset", "memory", "pids", "systemd", "unified"):
        assert (tmp_path / h / path.lstrip("/") / "cgroup.procs").read_text() == "4242"
    # Every cpuset level crib made got its parent's cpus and mems (else ENOSPC).
    for level in ("kubepods", "kubepods/pod1", f"kubepods/pod1/crib-conmon-{CID}"):
        assert (tmp_path / "cpuset" / level / "cpuset.cpus").read_text() == "0-1\n"
        assert (tmp_path / "cpuset" / level / "cpuset.mems").read_text() == "0\n"
    assert not (tmp_path / "not-a-hierarchy" / "kubepods").exists()
    assert host.children("/kubepods/pod1") == {f"crib-conmon-{CID}"}


def test_join_keeps_a_parent_that_exists(tmp_path: Path) -> None:
    """The kubelet's pod cgroup exists already: its cpuset is not rewritten."""
    _hybrid(tmp_path)
    pod = tmp_path / "cpuset" / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (pod / "cpuset.cpus").write_text("1\n")
    join_cgroup(f"/kubepods/pod1/crib-conmon-{CID}", 7, tmp_path, unified=False)
    assert (pod / "cpuset.cpus").read_text() == "1\n"
    assert (pod / f"crib-conmon-{CID}" / "cpuset.cpus").read_text() == "1\n"


def test_join_v2_systemd_layout(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    path = monitor_cgroup("pod", "kubepods-besteffort-pod1.slice", CID, "systemd")
    host = CgroupHost(CgroupMode.UNIFIED, tmp_path)
    assert host.join(path, 99) == [str(tmp_path / path.lstrip("/") / "cgroup.procs")]
    assert (tmp_path / "kubepods.slice" / "kubepods-besteffort.slice"
            / "kubepods-besteffort-pod1.slice" / f"crib-conmon-{CID}.scope"
            / "cgroup.procs").read_text() == "99"
    assert host.children("/kubepods.slice/kubepods-besteffort.slice/"
                         "kubepods-besteffort-pod1.slice") == {f"crib-conmon-{CID}.scope"}


def test_join_refuses_the_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        join_cgroup("/", 1, tmp_path, unified=True)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/conmon").exists(),
                    reason="needs root and Debian's conmon")
def test_conmon_waits_on_its_start_pipe_until_moved(tmp_path: Path) -> None:
    """The move happens while conmon is one process with no child, before it has written
    its pid file: there is no moment in which it or anything it starts is in runtimed's
    cgroup. A failed move kills it and says why."""
    seen: list[tuple[int, str, bool]] = []

    def join(cgroup: str, pid: int) -> None:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        threads = len(os.listdir(f"/proc/{pid}/task"))
        seen.append((len(children) + threads, cgroup, (tmp_path / "conmon.pid").exists()))

    spec = ConmonSpec(conmon="/usr/bin/conmon", cid="c1", name="c1", runtime_path="/bin/false",
                      runtime_args=[], bundle=tmp_path, log_path=str(tmp_path / "c.log"),
                      exit_dir=tmp_path / "exits", socket_dir=tmp_path / "s", cgroup="/x/y")
    with pytest.raises(FailedPrecondition):  # /bin/false is no runtime
        asyncio.run(start_conmon(spec, timeout=20, join=join))
    assert seen == [(1, "/x/y", False)]

    def refuse(cgroup: str, pid: int) -> None:
        seen.append((pid, cgroup, True))
        raise PermissionError(13, "Permission denied", "/sys/fs/cgroup/x/cgroup.procs")

    with pytest.raises(FailedPrecondition, match="moving the monitor of c1 into cgroup /x/y"):
        asyncio.run(start_conmon(spec, timeout=20, join=refuse))
    pid = seen[-1][0]
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped


def test_cgroup_namespace_is_told_apart(tmp_path: Path) -> None:
    from runtimed.cgroups.monitor import in_cgroup_namespace
    (tmp_path / "ns").touch()  # any other inode: a namespace of its own
    assert in_cgroup_namespace(str(tmp_path / "ns"))
    assert not in_cgroup_namespace(str(tmp_path / "missing"))
    if os.geteuid() == 0 and shutil.which("unshare") and not in_cgroup_namespace():
        probe = "from runtimed.cgroups.monitor import in_cgroup_namespace as f; print(f())"
        out = subprocess.run(["unshare", "--cgroup", sys.executable, "-c", probe],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "True"


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/conmon").exists(),
                    reason="needs root and Debian's conmon")
def test_a_placed_conmon_waits_for_ready_and_dies_with_a_caller_that_gives_up(
        tmp_path: Path) -> None:
    """`ready` holds conmon after the move, so the caller overlaps the move with making
    the bundle; cancelling the start kills the held conmon."""
    placed: list[int] = []
    spec = ConmonSpec(conmon="/usr/bin/conmon", cid="c2", name="c2", runtime_path="/bin/false",
                      runtime_args=[], bundle=tmp_path, log_path=str(tmp_path / "c.log"),
                      exit_dir=tmp_path / "exits", socket_dir=tmp_path / "s", cgroup="/x/y")

    async def held_then_released() -> list[str]:
        ready = asyncio.Event()
        task = asyncio.ensure_future(start_conmon(spec, timeout=20, join=lambda c, p: placed.append(p),
                                                  ready=ready))
        while not placed:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # placed long ago, still held: no child, no pid file
        pid = placed[0]
        seen = [Path(f"/proc/{pid}/task/{pid}/children").read_text().strip(),
                str((tmp_path / "conmon.pid").exists())]
        ready.set()
        with pytest.raises(FailedPrecondition):  # released: /bin/false is no runtime
            await task
        return seen

    assert asyncio.run(held_then_released()) == ["", "False"]

    async def given_up() -> int:
        placed.clear()
        task = asyncio.ensure_future(start_conmon(spec, timeout=20, join=lambda c, p: placed.append(p),
                                                  ready=asyncio.Event()))
        while not placed:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait({task})
        return placed[0]

    pid = asyncio.run(given_up())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped

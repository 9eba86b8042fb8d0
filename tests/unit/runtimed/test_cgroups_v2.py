"""cgroup v2 against synthetic trees laid out as Documentation/admin-guide/cgroup-v2.rst
describes them: interface files in every cgroup, controller files only where the parent
enables the controller, flat-keyed and nested-keyed formats as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from crib_common.errors import FailedPrecondition

from runtimed.cgroups import CgroupHost, CgroupMode, v2
from runtimed.cgroups.limits import cpu_shares_to_weight, memory_swap_to_v2

MiB = 1024 * 1024

CORE = {"cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n",
        "cgroup.type": "domain\n", "cgroup.kill": "",
        # cpu.stat's first three keys exist without the cpu controller (core accounting).
        "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"}
CONTROLLER_FILES = {
    "cpu": {"cpu.weight": "100\n", "cpu.max": "max 100000\n",
            "cpu.stat": ("usage_usec 2500000\nuser_usec 1500000\nsystem_usec 1000000\n"
                         "nr_periods 40\nnr_throttled 7\nthrottled_usec 350000\n"
                         "nr_bursts 0\nburst_usec 0\n")},
    "memory": {"memory.current": f"{300 * MiB}\n", "memory.max": "max\n",
               "memory.swap.max": "max\n", "memory.swap.current": f"{2 * MiB}\n",
               "memory.peak": f"{400 * MiB}\n",
               "memory.events": "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
               "memory.stat": ("anon 104857600\nfile 209715200\nkernel 8388608\n"
                               "kernel_stack 65536\npagetables 131072\nsock 0\nshmem 0\n"
                               "file_mapped 4194304\nfile_dirty 0\nfile_writeback 0\n"
                               "inactive_anon 0\nactive_anon 104857600\n"
                               "inactive_file 157286400\nactive_file 52428800\n"
                               "unevictable 0\npgfault 9000\npgmajfault 30\n")},
    "pids": {"pids.current": "5\n", "pids.max": "max\n"},
    "io": {"io.stat": ("8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 "
                       "dios=0\n8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 "
                       "dbytes=50331648 dios=3021\n")},
    "hugetlb": {"hugetlb.2MB.max": "max\n", "hugetlb.1GB.max": "max\n"},
}


def make_cgroup(root: Path, rel: str, controllers: list[str]) -> Path:
    """A cgroup whose parent enabled `controllers` (they are in its cgroup.controllers)."""
    d = root / rel.strip("/") if rel.strip("/") else root
    d.mkdir(parents=True, exist_ok=True)
    for name, text in CORE.items():
        (d / name).write_text(text)
    (d / "cgroup.controllers").write_text(" ".join(controllers) + "\n")
    (d / "cgroup.subtree_control").write_text("\n")
    for c in controllers:
        for name, text in CONTROLLER_FILES.get(c, {}).items():
            (d / name).write_text(text)
    return d


def node(tmp_path: Path, controllers: list[str]) -> Path:
    """A v2 root offering `controllers`, a kubepods cgroup with them enabled."""
    make_cgroup(tmp_path, "", controllers)
    (tmp_path / "cgroup.subtree_control").write_text(" ".join(controllers) + "\n")
    make_cgroup(tmp_path, "kubepods", controllers)
    (tmp_path / "kubepods/cgroup.subtree_control").write_text(" ".join(controllers) + "\n")
    return tmp_path


ALL = ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"]


def test_stats_from_documented_files(tmp_path: Path) -> None:
    root = node(tmp_path, ALL)
    make_cgroup(root, "kubepods/pod1/ctr", ALL)
    (root / "kubepods/pod1/ctr/cgroup.procs").write_text("10\n11\n")
    st = v2.read_stats("/kubepods/pod1/ctr", root)
    assert st.exists and st.version == 2
    assert (st.cpu_usage_ns, st.cpu_user_ns, st.cpu_system_ns) == (
        2_500_000_000, 1_500_000_000, 1_000_000_000)
    assert (st.cpu_periods, st.cpu_throttled_periods, st.cpu_throttled_ns) == (
        40, 7, 350_000_000)
    assert st.memory_usage == 300 * MiB
    # The kubelet's working set: usage minus inactive_file.
    assert st.working_set == 300 * MiB - 150 * MiB
    assert (st.rss, st.memory_cache, st.memory_kernel, st.memory_mapped_file) == (
        100 * MiB, 200 * MiB, 8 * MiB, 4 * MiB)
    assert (st.page_faults, st.major_page_faults) == (9000, 30)
    assert (st.memory_swap, st.memory_max_usage, st.memory_failcnt) == (2 * MiB, 400 * MiB, 12)
    assert st.oom_kills == 1
    assert (st.pids, st.pids_max, st.processes) == (5, 0, 2)
    assert [(d.major, d.minor, d.read_bytes, d.write_bytes, d.reads, d.writes)
            for d in st.io] == [(8, 0, 90430464, 299008000, 8950, 1252),
                                (8, 16, 1459200, 314773504, 192, 353)]


def test_stats_without_controllers_and_gone(tmp_path: Path) -> None:
    # This machine's cgroup2: no controller enabled, only the core files.
    root = node(tmp_path, [])
    d = make_cgroup(root, "kubepods/ctr", [])
    (d / "cpu.stat").write_text("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n")
    st = v2.read_stats("/kubepods/ctr", root)
    assert st.exists and st.cpu_usage_ns == 1_234_000 and st.cpu_system_ns == 234_000
    assert st.memory_usage == 0 and st.working_set == 0 and st.oom_kills == 0
    assert v2.read_stats("/kubepods/gone", root).exists is False


def test_working_set_never_negative(tmp_path: Path) -> None:
    root = node(tmp_path, ALL)
    d = make_cgroup(root, "kubepods/c", ALL)
    (d / "memory.current").write_text("100\n")
    (d / "memory.stat").write_text("anon 10\ninactive_file 500\n")
    assert v2.read_stats("kubepods/c", root).working_set == 0


def test_oom_kill_from_memory_events(tmp_path: Path) -> None:
    root = node(tmp_path, ALL)
    d = make_cgroup(root, "kubepods/c", ALL)
    host = CgroupHost(CgroupMode.UNIFIED, root)
    assert host.oom_killed("/kubepods/c") is True
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 0\n")
    # `oom` counts reaching the limit, only `oom_kill` is a kill.
    assert host.oom_killed("/kubepods/c") is False
    assert host.oom_killed("/kubepods/none") is False


@pytest.mark.parametrize(("shares", "weight"), [
    (0, 0), (1, 1), (2, 1), (1024, 100), (262144, 10000), (300000, 10000),
    # 10 ** ((l*l + 125*l) / 612 - 7/34), l = log2(shares), rounded up, worked by hand.
    (102, 17), (512, 59), (2048, 174),
])
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert cpu_shares_to_weight(shares) == weight


def test_swap_conversion() -> None:
    assert memory_swap_to_v2(0, 64 * MiB) == 0
    assert memory_swap_to_v2(96 * MiB, 64 * MiB) == 32 * MiB
    assert memory_swap_to_v2(-1, 64 * MiB) == -1
    assert memory_swap_to_v2(0, -1) == -1
    with pytest.raises(ValueError):
        memory_swap_to_v2(32 * MiB, 64 * MiB)


def test_apply_writes_v2_files_and_resets(tmp_path: Path) -> None:
    root = node(tmp_path, ALL)
    d = make_cgroup(root, "kubepods/pod1", ALL)
    host = CgroupHost(CgroupMode.UNIFIED, root)
    host.apply_pod_resources("/kubepods/pod1", {
        "cpu_shares": 1024, "cpu_quota": 50000, "cpu_period": 100000,
        "memory_limit_in_bytes": 64 * MiB, "pids_limit": 100,
        "hugepage_limits": [{"page_size": "2MB", "limit": 4 * 2 * MiB}]})
    assert (d / "cpu.weight").read_text() == "100"
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "memory.max").read_text() == str(64 * MiB)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "100"
    assert (d / "hugetlb.2MB.max").read_text() == str(8 * MiB)
    host.apply_pod_resources("/kubepods/pod1", {})
    assert (d / "cpu.weight").read_text() == "100"
    assert (d / "cpu.max").read_text() == "max 100000"
    assert (d / "memory.max").read_text() == "max"
    assert (d / "memory.swap.max").read_text() == "max"
    assert (d / "pids.max").read_text() == "max"


def test_apply_enables_controllers_down_the_path(tmp_path: Path) -> None:
    # A pod cgroup crib makes itself below kubepods: the new middle level gets the
    # controller in its cgroup.subtree_control (in a real tree the kernel then shows it
    # in pod2's cgroup.controllers); kubepods already had it and is left alone.
    root = node(tmp_path, ALL)
    v2.apply_pod_resources("/kubepods/crib/pod2", {"cpu_shares": 512}, root=root)
    assert (root / "kubepods/crib/cgroup.subtree_control").read_text() == "+cpu"
    assert (root / "kubepods/cgroup.subtree_control").read_text() == " ".join(ALL) + "\n"
    assert (root / "kubepods/crib/pod2").is_dir()


@pytest.mark.parametrize(("res", "missing"), [
    ({"memory_limit_in_bytes": 64 * MiB}, "memory"),
    ({"cpu_quota": 20000}, "cpu"),
    ({"cpu_shares": 2}, "cpu"),
    ({"pids_limit": 10}, "pids"),
    ({"hugepage_limits": [{"page_size": "2MB", "limit": 2 * MiB}]}, "hugetlb"),
])
def test_missing_controller_is_failed_precondition(tmp_path: Path, res: dict[str, object],
                                                   missing: str) -> None:
    root = node(tmp_path, [])
    d = make_cgroup(root, "kubepods/pod1", [])
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(FailedPrecondition) as err:
        v2.apply_pod_resources("/kubepods/pod1", res, root=root)
    assert missing in err.value.message
    # Nothing was written on the way to the refusal.
    assert sorted(p.name for p in d.iterdir()) == before
    assert (root / "kubepods/cgroup.subtree_control").read_text() == "\n"


def test_controller_not_enabled_by_parent(tmp_path: Path) -> None:
    # The root offers memory but kubepods' parent never enabled it for kubepods.
    make_cgroup(tmp_path, "", ["cpu", "memory"])
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    make_cgroup(tmp_path, "kubepods", ["cpu"])
    with pytest.raises(FailedPrecondition, match="memory"):
        v2.apply_pod_resources("/kubepods", {"memory_limit_in_bytes": MiB}, root=tmp_path)


def test_kill_writes_cgroup_kill(tmp_path: Path) -> None:
    root = node(tmp_path, [])
    d = make_cgroup(root, "kubepods/c", [])
    assert v2.kill_cgroup("/kubepods/c", root) == 1
    assert (d / "cgroup.kill").read_text() == "1"
    assert v2.kill_cgroup("/kubepods/gone", root) == 0


def test_kill_falls_back_to_pids(tmp_path: Path) -> None:
    # A kernel before 5.14: no cgroup.kill; pids that do not exist are skipped.
    root = node(tmp_path, [])
    d = make_cgroup(root, "kubepods/c", [])
    (d / "cgroup.kill").unlink()
    (d / "cgroup.procs").write_text("999999999\n")
    assert v2.kill_cgroup("/kubepods/c", root) == 0


def test_remove_tree(tmp_path: Path) -> None:
    root = tmp_path
    (root / "kubepods/pod1/a/b").mkdir(parents=True)
    (root / "kubepods/pod1/c").mkdir()
    assert v2.remove_cgroup("/kubepods/pod1", root) == []
    assert not (root / "kubepods/pod1").exists() and (root / "kubepods").is_dir()
    assert v2.remove_cgroup("/", root) == []

"""Pod-level resources: the sum rule (resources + overhead) and the cgroup v1 files
written, against a fake cgroupfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.cgroups import apply_pod_resources, pod_resources

MiB = 1024 * 1024


def test_pod_resources_adds_overhead_only_to_set_limits() -> None:
    res = {"memory_limit_in_bytes": 100 * MiB, "cpu_shares": 100, "cpu_quota": 20000,
           "cpu_period": 50000}
    over = {"memory_limit_in_bytes": 10 * MiB, "cpu_shares": 5, "cpu_quota": 10000}
    # The overhead's quota is over the default 100 ms period: 10000/100000 of 50000.
    assert pod_resources(res, over) == {"memory_limit_in_bytes": 110 * MiB,
                                        "cpu_shares": 105, "cpu_quota": 25000,
                                        "cpu_period": 50000}
    # No limit in resources: overhead alone does not invent one (shares still add up).
    assert pod_resources({}, over) == {"cpu_shares": 5}
    assert pod_resources({}, {}) == {}


def _tree(tmp_path: Path, swap: bool) -> Path:
    for ctrl in ("cpu,cpuacct", "memory"):
        (tmp_path / ctrl).mkdir()
    return tmp_path


@pytest.mark.parametrize("swap", [False, True])
def test_apply_writes_and_resets(tmp_path: Path, swap: bool) -> None:
    root = _tree(tmp_path, swap)
    mem = root / "memory/crib/pod"
    if swap:
        mem.mkdir(parents=True)
        (mem / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
        (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    apply_pod_resources("/crib/pod", {"memory_limit_in_bytes": 64 * MiB, "cpu_shares": 300,
                                      "cpu_quota": 30000, "cpu_period": 100000},
                        swap=swap, root=root)
    cpu = root / "cpu,cpuacct/crib/pod"
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 * MiB)
    if swap:
        assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 * MiB)
    assert (cpu / "cpu.shares").read_text() == "300"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "30000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    apply_pod_resources("/crib/pod", {}, swap=swap, root=root)
    assert (mem / "memory.limit_in_bytes").read_text() == "-1"
    assert (cpu / "cpu.shares").read_text() == "1024"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1"
    with pytest.raises(ValueError):
        apply_pod_resources("/", {}, root=root)


def test_v1_missing_hierarchy_is_failed_precondition(tmp_path: Path) -> None:
    from crib_common.errors import FailedPrecondition
    (tmp_path / "cpu,cpuacct").mkdir()
    with pytest.raises(FailedPrecondition, match="memory"):
        apply_pod_resources("/crib/pod", {"memory_limit_in_bytes": MiB}, root=tmp_path)
    with pytest.raises(FailedPrecondition, match="pids"):
        apply_pod_resources("/crib/pod", {"pids_limit": 5}, root=tmp_path)
    # Nothing asked of the missing controller: no refusal.
    apply_pod_resources("/crib/pod", {"cpu_shares": 2}, root=tmp_path)
    assert (tmp_path / "cpu,cpuacct/crib/pod/cpu.shares").read_text() == "2"


def test_v1_stats_as_the_kernel_lays_them_out(tmp_path: Path) -> None:
    import os

    from runtimed.cgroups import v1
    rel = "crib/pod/c"
    for h in ("cpu", "cpuacct", "memory", "pids", "blkio"):
        (tmp_path / h / rel).mkdir(parents=True)
    hz = os.sysconf("SC_CLK_TCK")
    (tmp_path / "cpuacct" / rel / "cpuacct.usage").write_text("3000000000\n")
    (tmp_path / "cpuacct" / rel / "cpuacct.stat").write_text(f"user {2 * hz}\nsystem {hz}\n")
    (tmp_path / "cpu" / rel / "cpu.stat").write_text(
        "nr_periods 10\nnr_throttled 4\nthrottled_time 5000000\n")
    m = tmp_path / "memory" / rel
    (m / "memory.usage_in_bytes").write_text("1000000\n")
    (m / "memory.stat").write_text("cache 1\nrss 2\ntotal_cache 400000\ntotal_rss 500000\n"
                                   "total_mapped_file 7000\ntotal_inactive_file 250000\n"
                                   "total_pgfault 90\ntotal_pgmajfault 3\n")
    (m / "memory.failcnt").write_text("6\n")
    (m / "memory.max_usage_in_bytes").write_text("2000000\n")
    (m / "memory.memsw.usage_in_bytes").write_text("1100000\n")
    (m / "memory.kmem.usage_in_bytes").write_text("8192\n")
    (m / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (tmp_path / "pids" / rel / "pids.current").write_text("3\n")
    (tmp_path / "pids" / rel / "pids.max").write_text("64\n")
    (tmp_path / "pids" / rel / "cgroup.procs").write_text("1\n2\n")
    (tmp_path / "blkio" / rel / "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 0\n8:0 Total 12288\nTotal 12288\n")
    (tmp_path / "blkio" / rel / "blkio.throttle.io_serviced_recursive").write_text(
        "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n")
    st = v1.read_stats("/" + rel, tmp_path)
    assert (st.cpu_usage_ns, st.cpu_user_ns, st.cpu_system_ns) == (3 * 10**9, 2 * 10**9, 10**9)
    assert (st.cpu_periods, st.cpu_throttled_periods, st.cpu_throttled_ns) == (10, 4, 5000000)
    assert (st.memory_usage, st.working_set, st.rss, st.memory_cache) == (
        1000000, 750000, 500000, 400000)
    assert (st.memory_mapped_file, st.memory_failcnt, st.memory_max_usage) == (7000, 6, 2000000)
    assert (st.memory_swap, st.memory_kernel, st.oom_kills) == (100000, 8192, 0)
    assert (st.pids, st.pids_max, st.processes) == (3, 64, 2)
    assert [(d.major, d.minor, d.read_bytes, d.write_bytes, d.reads, d.writes)
            for d in st.io] == [(8, 0, 4096, 8192, 1, 2)]

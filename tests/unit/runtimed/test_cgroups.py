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

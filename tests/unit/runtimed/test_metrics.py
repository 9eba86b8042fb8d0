"""cAdvisor metrics: the descriptor data file, and samples from v1 and v2 readings."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from runtimed.cgroups.stats import CgroupStats, IoDeviceStats
from runtimed.metrics import (
    FsUsage,
    MetricLabels,
    NetworkCounters,
    block_device_name,
    container_samples,
    descriptors,
    parse_net_dev,
    pod_samples,
    spec_from_resources,
)

ISSUE_NAMES = {
    "container_cpu_usage_seconds_total", "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total", "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
    "container_memory_usage_bytes", "container_memory_working_set_bytes",
    "container_memory_rss", "container_memory_cache", "container_memory_swap",
    "container_memory_kernel_usage", "container_memory_mapped_file",
    "container_memory_failcnt", "container_memory_failures_total",
    "container_memory_max_usage_bytes", "container_fs_usage_bytes", "container_fs_limit_bytes",
    "container_fs_inodes_free", "container_fs_inodes_total", "container_fs_reads_bytes_total",
    "container_fs_reads_total", "container_fs_writes_bytes_total", "container_fs_writes_total",
    "container_processes", "container_threads", "container_threads_max",
    "container_spec_cpu_period", "container_spec_cpu_quota", "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes", "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
} | {f"container_network_{d}_{k}_total" for d in ("receive", "transmit")
     for k in ("bytes", "packets", "errors", "packets_dropped")}

BASE = ("container", "id", "image", "name", "namespace", "pod")
LABELS = MetricLabels(container="app", id="/kubepods/pod1/c1", image="busybox:latest",
                      name="c1", namespace="default", pod="web")


def test_descriptors_are_the_issue_set() -> None:
    ds = descriptors()
    assert {d.name for d in ds} == ISSUE_NAMES
    assert len(ds) == len(ISSUE_NAMES)  # no duplicates
    by = {d.name: d for d in ds}
    for d in ds:
        assert d.help and d.label_keys[:6] == BASE
        # cAdvisor's types: counters end in _total, except the inode count (a gauge);
        # failcnt is a counter.
        counter = (d.name.endswith("_total") and d.name != "container_fs_inodes_total"
                   or d.name == "container_memory_failcnt")
        assert d.metric_type == ("counter" if counter else "gauge"), d.name
    assert by["container_cpu_usage_seconds_total"].label_keys == BASE + ("cpu",)
    assert by["container_memory_failures_total"].label_keys == BASE + ("failure_type", "scope")
    assert by["container_fs_reads_total"].label_keys == BASE + ("device",)
    assert by["container_network_receive_bytes_total"].label_keys == BASE + ("interface",)


def test_descriptors_are_data() -> None:
    raw = json.loads(resources.files("runtimed").joinpath(
        "data/cadvisor_metrics.json").read_text())
    assert [m["name"] for m in raw["metrics"]] == [d.name for d in descriptors()]


def _v2_reading() -> CgroupStats:
    return CgroupStats(1, 2_700_000_000, 300, 200, 100, 9000, 30, 5, True, version=2,
                       cpu_user_ns=1_900_000_000, cpu_system_ns=800_000_000,
                       cpu_periods=40, cpu_throttled_periods=7,
                       cpu_throttled_ns=3_500_000_000, memory_cache=150, memory_kernel=8,
                       memory_mapped_file=4, memory_swap=2, memory_failcnt=12,
                       memory_max_usage=400, oom_kills=1, processes=2, pids_max=0,
                       io=[IoDeviceStats(8, 0, 1024, 2048, 3, 4)])


def test_container_samples_v2() -> None:
    spec = spec_from_resources({"cpu_quota": 50000, "cpu_period": 100000, "cpu_shares": 512,
                                "memory_limit_in_bytes": 1 << 26})
    fs = FsUsage("/dev/sda1", usage_bytes=4096, limit_bytes=10**9, inodes_free=900,
                 inodes_total=1000)
    samples = container_samples(LABELS, _v2_reading(), fs=fs, spec=spec,
                                device_names={(8, 0): "/dev/sda"})
    by = {(s.name, s.label_values[6:]): s for s in samples}
    base = LABELS.values(BASE)
    assert all(s.label_values[:6] == base for s in samples)
    # Whole seconds: Metric.value is a UInt64Value on the wire.
    assert by[("container_cpu_usage_seconds_total", ("total",))].value == 2
    assert by[("container_cpu_user_seconds_total", ())].value == 1
    assert by[("container_cpu_cfs_throttled_seconds_total", ())].value == 3
    assert by[("container_cpu_cfs_throttled_periods_total", ())].value == 7
    assert by[("container_memory_working_set_bytes", ())].value == 200
    assert by[("container_memory_rss", ())].value == 100
    assert by[("container_memory_failures_total", ("pgmajfault", "container"))].value == 30
    assert by[("container_memory_failcnt", ())].metric_type == "counter"
    assert by[("container_fs_inodes_free", ("/dev/sda1",))].value == 900
    assert by[("container_fs_writes_bytes_total", ("/dev/sda",))].value == 2048
    assert by[("container_threads", ())].value == 5
    assert by[("container_processes", ())].value == 2
    assert by[("container_spec_cpu_quota", ())].value == 50000
    assert by[("container_spec_cpu_shares", ())].value == 512
    assert by[("container_spec_memory_limit_bytes", ())].value == 1 << 26
    names = {s.name for s in samples}
    assert not any(n.startswith("container_network_") for n in names)


def test_no_quota_no_cfs_metrics_and_v1_reading() -> None:
    st = CgroupStats(1, 5_000_000_000, 10, 5, 3, 0, 0, 1, True, version=1)
    names = {s.name for s in container_samples(LABELS, st, spec=spec_from_resources({}))}
    assert "container_cpu_cfs_periods_total" not in names
    assert "container_spec_cpu_quota" not in names
    assert "container_spec_cpu_period" in names
    assert container_samples(LABELS, CgroupStats(1, 0, 0, 0, 0, 0, 0, 0, False)) == []


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
"""


def test_pod_samples_network() -> None:
    net = parse_net_dev(NET_DEV)
    assert net == [NetworkCounters("eth0", 5000, 40, 1, 2, 3000, 30, 3, 4)]
    pod = MetricLabels(id="/kubepods/pod1", namespace="default", pod="web")
    samples = pod_samples(pod, net)
    by = {s.name: s for s in samples}
    assert len(samples) == 8
    assert by["container_network_receive_bytes_total"].label_values == (
        "", "/kubepods/pod1", "", "", "default", "web", "eth0")
    assert by["container_network_transmit_packets_dropped_total"].value == 4
    with_cgroup = pod_samples(pod, net, _v2_reading())
    assert len(with_cgroup) > len(samples)


def test_block_device_name(tmp_path: Path) -> None:
    d = tmp_path / "dev/block/8:0"
    d.mkdir(parents=True)
    (d / "uevent").write_text("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n")
    assert block_device_name(8, 0, tmp_path) == "/dev/sda"
    assert block_device_name(9, 1, tmp_path) == "9:1"

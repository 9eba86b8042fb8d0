"""The cgroup libraries as runtimed uses them: LinuxHost over a CgroupHost (v2 on a
synthetic tree laid out as cgroup-v2.rst describes), the pod's place in the tree, old
records, the infra's OOM score, RuntimeConfig's driver and the metrics messages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from crib_common.cri.runtime.v1 import CgroupDriver, MetricType, RuntimeConfigRequest
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.settings import CribSettings
from runtimed.cgroups import CgroupHost, CgroupMode, CgroupStats
from runtimed.host import LinuxHost
from runtimed.lifecycle.sandboxes import Sandboxes
from runtimed.messages.metrics import metric_descriptors, pod_sandbox_metrics
from runtimed.metrics import descriptors
from runtimed.oci.spec import build_sandbox_spec
from runtimed.oom import SANDBOX_OOM_SCORE_ADJ, oom_policy
from runtimed.metrics import NetworkCounters
from runtimed.stats import ContainerUsage, LayerUsage, PodUsage
from runtimed.store.records import ContainerMeta, ContainerRecord, SandboxMeta, SandboxRecord


def _v2_tree(root: Path, cgroup: str, controllers: str = "") -> Path:
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    d = root / cgroup.strip("/")
    d.mkdir(parents=True)
    (d / "cgroup.controllers").write_text(controllers + "\n")
    (d / "cgroup.procs").write_text("")
    (d / "cgroup.kill").write_text("")
    (d / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n")
    (d / "memory.current").write_text("1048576\n")
    (d / "memory.stat").write_text("anon 524288\nfile 262144\ninactive_file 131072\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    return d


def test_linux_host_goes_through_the_v2_reader(tmp_path: Path) -> None:
    _v2_tree(tmp_path, "/kubepods/burstable/pod1/c1", "cpu memory pids")
    host = LinuxHost(CgroupHost(CgroupMode.UNIFIED, tmp_path))
    st = host.read_stats("/kubepods/burstable/pod1/c1")
    assert (st.version, st.cpu_usage_ns, st.memory_usage) == (2, 2_500_000, 1 << 20)
    assert st.working_set == (1 << 20) - 131072
    assert host.oom_killed("/kubepods/burstable/pod1/c1")
    assert host.describe_cgroups()["version"] == 2
    assert host.swap_controller is True
    assert host.kill_cgroup("/kubepods/burstable/pod1/c1") == 1
    assert (tmp_path / "kubepods/burstable/pod1/c1/cgroup.kill").read_text() == "1"


def test_linux_host_refuses_a_limit_without_its_controller(tmp_path: Path) -> None:
    _v2_tree(tmp_path, "/crib/crib-1")
    host = LinuxHost(CgroupHost(CgroupMode.UNIFIED, tmp_path))
    with pytest.raises(FailedPrecondition, match="memory"):
        host.apply_pod_resources("/crib/crib-1", {"memory_limit_in_bytes": 64 << 20})


class _Node:
    def __init__(self, driver: str) -> None:
        self.cfg = CribSettings().runtimed.model_copy(update={"cgroup_driver": driver})


def _parent(driver: str, asked: str) -> dict[str, Any]:
    rooms = Sandboxes.__new__(Sandboxes)
    rooms.node = _Node(driver)  # type: ignore[assignment]
    return rooms._cgroup_parent("ab" * 32, asked)


def test_the_kubelets_parent_is_used_as_given() -> None:
    got = _parent("cgroupfs", "/kubepods/burstable/pod1234")
    assert got == {"cgroup_parent": "/kubepods/burstable/pod1234",
                   "cgroup_path": "/kubepods/burstable/pod1234", "cgroup_owned": False,
                   "infra_cgroup": "/kubepods/burstable/pod1234/" + "ab" * 32,
                   # The infra's monitor beside it, in a cgroup of its own (monitor_cgroup
                   # "pod").
                   "infra_monitor_cgroup": "/kubepods/burstable/pod1234/crib-conmon-"
                                           + "ab" * 32}
    own = _parent("cgroupfs", "")
    assert own["cgroup_parent"] == "/crib/crib-" + "ab" * 8 and own["cgroup_owned"] is True
    sd = _parent("systemd", "kubepods-burstable-pod1234.slice")
    assert sd["cgroup_path"] == ("/kubepods.slice/kubepods-burstable.slice/"
                                 "kubepods-burstable-pod1234.slice")
    assert sd["infra_cgroup"].endswith("/crib-" + "ab" * 32 + ".scope")
    assert sd["infra_monitor_cgroup"] == sd["cgroup_path"] + "/crib-conmon-" + "ab" * 32 + ".scope"
    with pytest.raises(InvalidArgument, match="cgroupDriver"):
        _parent("cgroupfs", "kubepods-burstable-pod1234.slice")


def test_records_of_the_previous_version_still_load() -> None:
    old = {"meta": {"id": "a" * 64, "name": "p", "namespace": "n", "uid": "u",
                    "handler": "runc", "created_at": 1,
                    "cgroup_parent": "/crib/kubepods/pod1"}, "status": {"state": "ready"}}
    rec = SandboxRecord.model_validate(old)
    assert rec.meta.pod_cgroup == "/crib/kubepods/pod1" and rec.meta.cgroup_owned
    assert rec.meta.infra_cgroup_path == "/crib/kubepods/pod1/crib-" + "a" * 64


def test_the_sandbox_init_gets_the_infra_score(tmp_path: Path) -> None:
    meta = SandboxMeta(id="a" * 64, name="p", namespace="n", uid="u", handler="runc",
                       created_at=1, shared_pid=True)
    spec = build_sandbox_spec(meta, tmp_path, "/catatonit", "/usr/bin/catatonit", "/x/y")
    assert spec["process"]["oomScoreAdj"] == oom_policy().apply(SANDBOX_OOM_SCORE_ADJ)
    assert spec["linux"]["cgroupsPath"] == "/x/y"


def test_runtime_config_answers_the_driver() -> None:
    from crib_common.server import CriTable
    from runtimed.cri import runtime_config

    class _Runtimed:
        def __init__(self, driver: str) -> None:
            self.node = _Node(driver)

    for driver, want in (("systemd", CgroupDriver.SYSTEMD),
                         ("cgroupfs", CgroupDriver.CGROUPFS)):
        table = CriTable()
        runtime_config.register(table, _Runtimed(driver))  # type: ignore[arg-type]
        handler = table.methods["/runtime.v1.RuntimeService/RuntimeConfig"].handler
        reply = asyncio.run(handler(RuntimeConfigRequest()))
        assert reply.linux.cgroup_driver == want


def _usage() -> PodUsage:
    pod = SandboxRecord(meta=SandboxMeta(id="p" * 64, name="web", namespace="ns", uid="u",
                                         handler="runc", created_at=1,
                                         cgroup_parent="/kubepods/pod1"))
    c = ContainerRecord(meta=ContainerMeta(id="c" * 64, pod_id="p" * 64, name="app",
                                           handler="runc", created_at=1, image="busybox",
                                           bundle="/b", cgroup_path="/kubepods/pod1/" + "c" * 64))
    c.status.resources = {"memory_limit_in_bytes": 1 << 20, "cpu_quota": 50000}
    st = CgroupStats(1, 3_000_000_000, 100, 60, 40, 0, 0, 2, True, cpu_periods=7)
    gone = ContainerRecord(meta=c.meta.model_copy(update={"id": "d" * 64}))
    return PodUsage(pod, st, [
        ContainerUsage(c, st, LayerUsage("/var/lib/crib", 10, 2, 100, 5, 9)),
        ContainerUsage(gone, CgroupStats(1, 0, 0, 0, 0, 0, 0, 0, False))],
        [NetworkCounters("eth0", 1, 2, 3, 4, 5, 6, 7, 8)])


def test_pod_sandbox_metrics_message() -> None:
    keys = {d.name: d.label_keys for d in metric_descriptors()}
    assert len(keys) == len(descriptors()) and "container_memory_working_set_bytes" in keys
    msg = pod_sandbox_metrics(_usage())
    assert msg.pod_sandbox_id == "p" * 64
    (cm,) = msg.container_metrics  # the container whose cgroup is gone has none
    values = {m.name: m for m in cm.metrics}
    assert values["container_cpu_usage_seconds_total"].value.value == 3
    assert values["container_cpu_cfs_periods_total"].value.value == 7
    assert values["container_spec_memory_limit_bytes"].value.value == 1 << 20
    assert values["container_fs_limit_bytes"].value.value == 100
    assert values["container_memory_working_set_bytes"].metric_type == MetricType.GAUGE
    for m in cm.metrics:
        assert len(m.label_values) == len(keys[m.name]) and m.timestamp == 0
    labels = dict(zip(keys["container_memory_rss"], values["container_memory_rss"].label_values))
    assert labels == {"container": "app", "id": "/kubepods/pod1/" + "c" * 64,
                      "image": "busybox", "name": "c" * 64, "namespace": "ns", "pod": "web"}
    pod_values = {m.name: m for m in msg.metrics}
    rx = pod_values["container_network_receive_bytes_total"]
    assert rx.value.value == 1 and rx.label_values[-1] == "eth0"
    assert dict(zip(keys["container_memory_rss"],
                    pod_values["container_memory_rss"].label_values))["id"] == "/kubepods/pod1"

"""NRI requests written by hand (`runtimed.nri.encode`) read back with the types
generated from api.proto: every field lands where api.proto puts it. Plus a few bytes
worked out by hand."""

from __future__ import annotations

import betterproto

from crib_common.nri import v1alpha1 as api
from runtimed.nri.encode import container_bytes, pod_bytes, resources_bytes
from runtimed.store.records import ContainerMeta, ContainerRecord, SandboxMeta, SandboxRecord


def _pod() -> SandboxRecord:
    rec = SandboxRecord(meta=SandboxMeta(
        id="p" * 64, name="web", namespace="default", uid="u-1", handler="runc",
        created_at=1, labels={"app": "web"}, annotations={"a": "1"},
        cgroup_parent="/kubepods/pod1", cgroup_path="/kubepods/pod1"))
    rec.status.state = "ready"
    rec.status.infra_pid = 4242
    rec.status.ips = ["10.0.0.2", "fd00::2"]
    rec.status.resources = {"cpu_shares": 1024, "memory_limit_in_bytes": 1 << 28}
    return rec


def _container() -> ContainerRecord:
    rec = ContainerRecord(meta=ContainerMeta(
        id="c" * 64, pod_id="p" * 64, name="app", handler="runc", image="busybox",
        bundle="/nonexistent", created_at=1_700_000_000_000_000_000, labels={"l": "v"},
        annotations={"from": "meta"}, uid=1000, gid=1000, groups=[1000, 44]))
    rec.status.state = "exited"
    rec.status.pid = 99
    rec.status.started_at = 5
    rec.status.finished_at = 6
    rec.status.exit_code = -1
    rec.status.reason = "Error"
    rec.status.message = "boom"
    return rec


SPEC = {
    "annotations": {"from": "spec", "x": "y"},
    "process": {"args": ["sh", "-c", "true"], "env": ["PATH=/bin", "A=b"],
                "oomScoreAdj": -500,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid"]}],
    "hooks": {"prestart": [{"path": "/bin/a", "args": ["a"], "timeout": 3}],
              "poststop": [{"path": "/bin/b", "env": ["E=1"]}]},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
              "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
              "resources": {"devices": [{"allow": False, "access": "rwm"}],
                            "memory": {"limit": 1 << 30, "swap": 0},
                            "cpu": {"shares": 1024, "quota": -1, "period": 100000,
                                    "cpus": "0-1"},
                            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                            "unified": {"memory.high": "max"}, "pids": {"limit": 100}},
              "cgroupsPath": "/kubepods/pod1/ccc", "sysctl": {"net.ipv4.ip_forward": "1"}},
}


def test_pod_sandbox_by_hand() -> None:
    rec = SandboxRecord(meta=SandboxMeta(id="ab", name="n", namespace="", uid="",
                                         handler="", created_at=1))
    # id (1) "ab", name (2) "n", linux (8) empty message; nothing else is set.
    assert pod_bytes(rec) == b"\x0a\x02ab\x12\x01n\x42\x00"


def test_pod_sandbox_reads_back() -> None:
    pod = api.PodSandbox().parse(pod_bytes(_pod()))
    assert (pod.id, pod.name, pod.namespace, pod.uid, pod.runtime_handler, pod.pid) == \
        ("p" * 64, "web", "default", "u-1", "runc", 4242)
    assert pod.labels == {"app": "web"} and pod.annotations == {"a": "1"}
    assert pod.ips == ["10.0.0.2", "fd00::2"]
    assert (pod.linux.cgroup_parent, pod.linux.cgroups_path) == ("/kubepods/pod1",) * 2
    assert pod.linux.pod_resources.cpu.shares.value == 1024
    assert pod.linux.pod_resources.memory.limit.value == 1 << 28


def test_container_reads_back() -> None:
    ctr = api.Container().parse(container_bytes(_container(), SPEC))
    assert (ctr.id, ctr.pod_sandbox_id, ctr.name, ctr.state) == \
        ("c" * 64, "p" * 64, "app", api.ContainerState.CONTAINER_STOPPED)
    assert ctr.labels == {"l": "v"} and ctr.annotations == {"from": "spec", "x": "y"}
    assert ctr.args == ["sh", "-c", "true"] and ctr.env == ["PATH=/bin", "A=b"]
    assert [(m.destination, m.type, m.source, m.options) for m in ctr.mounts] == \
        [("/proc", "proc", "proc", ["nosuid"])]
    assert [(h.path, h.args, h.timeout.value) for h in ctr.hooks.prestart] == \
        [("/bin/a", ["a"], 3)]
    assert [(h.path, h.env) for h in ctr.hooks.poststop] == [("/bin/b", ["E=1"])]
    assert [(r.type, r.hard, r.soft) for r in ctr.rlimits] == [("RLIMIT_NOFILE", 1024, 512)]
    assert (ctr.pid, ctr.created_at, ctr.started_at, ctr.finished_at, ctr.exit_code) == \
        (99, 1_700_000_000_000_000_000, 5, 6, -1)
    assert (ctr.status_reason, ctr.status_message) == ("Error", "boom")
    assert (ctr.user.uid, ctr.user.gid, ctr.user.additional_gids) == (1000, 1000, [1000, 44])
    linux = ctr.linux
    assert [(n.type, n.path) for n in linux.namespaces] == \
        [("pid", ""), ("network", "/run/netns/x")]
    assert [(d.path, d.type, d.major, d.minor) for d in linux.devices] == \
        [("/dev/fuse", "c", 10, 229)]
    assert linux.oom_score_adj.value == -500
    assert linux.cgroups_path == "/kubepods/pod1/ccc"
    assert linux.sysctl == {"net.ipv4.ip_forward": "1"}
    res = linux.resources
    assert res.memory.limit.value == 1 << 30
    # A wrapper present holding 0 is not a wrapper absent.
    assert betterproto.serialized_on_wire(res.memory.swap) and res.memory.swap.value == 0
    assert not betterproto.serialized_on_wire(res.memory.reservation)
    assert (res.cpu.shares.value, res.cpu.quota.value, res.cpu.period.value, res.cpu.cpus) == \
        (1024, -1, 100000, "0-1")
    assert [(h.page_size, h.limit) for h in res.hugepage_limits] == [("2MB", 0)]
    assert res.unified == {"memory.high": "max"} and res.pids.limit == 100


def test_container_without_config_uses_its_record() -> None:
    ctr = api.Container().parse(container_bytes(_container(), None))
    assert ctr.annotations == {"from": "meta"} and ctr.args == [] and ctr.mounts == []


def test_resources_by_hand() -> None:
    # memory (1) {limit (1) OptionalInt64 {value (1) 5}}, cpu (2) {cpus (6) "0"}
    assert resources_bytes({"memory": {"limit": 5}, "cpu": {"cpus": "0"}}) == \
        b"\x0a\x04\x0a\x02\x08\x05" + b"\x12\x03\x32\x010"

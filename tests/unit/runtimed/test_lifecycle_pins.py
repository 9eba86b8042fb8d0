"""A pod whose pinned namespaces are gone (`lifecycle.pins`), and the monitor's own cgroup
through the lifecycles (`cgroups.monitor`), on the fake world."""

from __future__ import annotations

import pytest

from crib_common.cri.runtime.v1 import (
    PodSandboxState,
    PodSandboxStatusRequest,
    RemoveContainerRequest,
    RemovePodSandboxRequest,
)
from crib_common.errors import FailedPrecondition
from crib_common.settings import CribSettings

from .fakes import Fakes
from .lifecycle_support import Daemon, container_request, make_settings, pod_request


async def _state(d: Daemon, sid: str) -> PodSandboxState:
    return (await d.call("PodSandboxStatus",
                         PodSandboxStatusRequest(pod_sandbox_id=sid))).status.state


async def test_pins_gone_while_down_make_the_pod_notready(settings: CribSettings,
                                                          fakes: Fakes) -> None:
    d = await Daemon.open(settings, fakes)
    pod = pod_request()
    sid = (await d.call("RunPodSandbox", pod)).pod_sandbox_id
    assert await _state(d, sid) == PodSandboxState.SANDBOX_READY
    await d.close()
    fakes.host.pins.clear()  # unmounted behind runtimed's back
    d = await Daemon.open(settings, fakes)
    try:
        assert await _state(d, sid) == PodSandboxState.SANDBOX_NOTREADY
        assert d.node.sandboxes[sid].status.lost_namespaces == ["ipc", "uts"]
        with pytest.raises(FailedPrecondition, match="pinned namespaces are gone"):
            await d.call("CreateContainer", container_request(sid, pod))
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()


async def test_create_failing_on_lost_pins_says_so(daemon: Daemon, fakes: Fakes) -> None:
    pod = pod_request()
    sid = (await daemon.call("RunPodSandbox", pod)).pod_sandbox_id
    fakes.host.pins.clear()
    # runc's "failed to setns into ipc namespace" comes back through the monitor.
    fakes.steps.fail("monitor.start", error=FailedPrecondition("setns: invalid argument"))
    with pytest.raises(FailedPrecondition, match="pinned namespaces are gone"):
        await daemon.call("CreateContainer", container_request(sid, pod))
    assert await _state(daemon, sid) == PodSandboxState.SANDBOX_NOTREADY


async def test_a_failed_create_with_pins_held_keeps_its_error(daemon: Daemon,
                                                              fakes: Fakes) -> None:
    pod = pod_request()
    sid = (await daemon.call("RunPodSandbox", pod)).pod_sandbox_id
    fakes.steps.fail("monitor.start", error=FailedPrecondition("no such binary"))
    with pytest.raises(FailedPrecondition, match="no such binary"):
        await daemon.call("CreateContainer", container_request(sid, pod))
    assert await _state(daemon, sid) == PodSandboxState.SANDBOX_READY


@pytest.mark.parametrize("setting", ["pod", "/crib.monitors"])
async def test_monitor_runs_in_its_own_cgroup_until_removed(tmp_path: object, setting: str,
                                                            fakes: Fakes) -> None:
    settings = make_settings(tmp_path, monitor_cgroup=setting)  # type: ignore[arg-type]
    d = await Daemon.open(settings, fakes)
    try:
        pod = pod_request()
        sid = (await d.call("RunPodSandbox", pod)).pod_sandbox_id
        cid = (await d.call("CreateContainer", container_request(sid, pod))).container_id
        rec = d.node.containers[cid]
        parent = d.node.sandboxes[sid].meta.pod_cgroup if setting == "pod" else setting
        assert rec.meta.monitor_cgroup == f"{parent}/crib-conmon-{cid}"
        assert fakes.host.cgroups[rec.meta.monitor_cgroup]["procs"] == [rec.status.conmon_pid]
        await d.call("RemoveContainer", RemoveContainerRequest(container_id=cid))
        assert rec.meta.monitor_cgroup not in fakes.host.cgroups
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()


async def test_recovery_moves_a_monitor_an_older_runtimed_left_in_its_cgroup(
        settings: CribSettings, fakes: Fakes) -> None:
    d = await Daemon.open(settings, fakes)
    pod = pod_request()
    sid = (await d.call("RunPodSandbox", pod)).pod_sandbox_id
    cid = (await d.call("CreateContainer", container_request(sid, pod))).container_id
    rec = d.node.containers[cid]
    path = rec.meta.monitor_cgroup
    # As a record of before monitor cgroups: none named, the monitor where runtimed is.
    rec.meta.monitor_cgroup = ""
    d.node.put_container(rec)
    del fakes.host.cgroups[path]
    await d.close()
    d = await Daemon.open(settings, fakes)
    try:
        rec = d.node.containers[cid]
        assert rec.meta.monitor_cgroup == path
        assert fakes.host.cgroups[path]["procs"] == [rec.status.conmon_pid]
    finally:
        await d.close()

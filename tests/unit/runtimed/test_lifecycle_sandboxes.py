"""Pod sandbox lifecycle (`lifecycle.sandboxes` through `cri/sandbox_*.py`) over fakes:
RunPodSandbox rolled back at every step, StopPodSandbox and RemovePodSandbox idempotent,
a pod whose infra dies marked notready."""

from __future__ import annotations

from pathlib import Path

import pytest

from crib_common.cri.runtime.v1 import (
    PodSandboxState,
    PodSandboxStatusRequest,
    RemovePodSandboxRequest,
    StopPodSandboxRequest,
)
from crib_common.errors import CribError, NotFound

from .fakes import PAUSE, Fakes
from .lifecycle_support import Daemon, eventually, make_settings, pod_request, steps_of

# What each kind of pod's create must at least go through (the steps the tests fail come
# from the log of a real successful create; this only guards against a log gone short).
_EXPECTED = {
    "none": ["host.apply_pod_resources", "netd.create_pod_network", "host.pin_namespaces",
             "host.write_pod_files", "host.mount_shm"],
    "catatonit": ["monitor.start", "runtime.start"],
    "pause": ["imaged.pull", "imaged.create_snapshot", "host.mount_all", "monitor.start",
              "runtime.start"],
}


@pytest.mark.parametrize("infra", ["none", "catatonit", "pause"])
async def test_run_pod_sandbox_rolls_back_every_step(tmp_path: Path, infra: str) -> None:
    """Fail each step of a successful RunPodSandbox in turn: the error reaches the caller,
    nothing is left anywhere (peers, host, disk, memory, state store) without help from
    the orphan sweep, and the pod's name is free for the retry."""
    settings = make_settings(tmp_path, pause_image=PAUSE.repo_tags[0] if infra == "pause"
                             else "")
    fakes = Fakes(exit_dir=settings.runtimed.run_dir / "exits")
    fakes.imaged.pullable[PAUSE.repo_tags[0]] = PAUSE
    request = pod_request(shared_pid=infra == "catatonit")
    d = await Daemon.open(settings, fakes)
    try:
        await d.settle_sweep()
        mark = len(fakes.steps.calls)
        sid = (await d.call("RunPodSandbox", request)).pod_sandbox_id
        steps = steps_of(fakes.steps.since(mark))
        assert set(_EXPECTED["none"] + _EXPECTED[infra]) <= {s for s, _ in steps}, steps
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}

        for step, nth in steps:
            fakes.imaged.forget(PAUSE)  # so every create pulls it again
            sweeps = d.sweeps_begun
            fakes.steps.fail(step, nth)
            with pytest.raises((CribError, OSError)) as failed:
                await d.call("RunPodSandbox", request)
            assert f"injected failure at {step}" in str(failed.value), (step, nth)
            assert d.leftovers() == {}, (step, nth)
            assert d.no_sweep_since(sweeps), (step, nth)

            sid = (await d.call("RunPodSandbox", request)).pod_sandbox_id
            status = await d.call("PodSandboxStatus", PodSandboxStatusRequest(pod_sandbox_id=sid))
            assert status.status.state == PodSandboxState.SANDBOX_READY
            await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
            assert d.leftovers() == {}, (step, nth)
    finally:
        await d.close()


async def test_stop_and_remove_are_idempotent(daemon: Daemon, fakes: Fakes) -> None:
    unknown = "0f" * 32
    # api.proto: both must not return an error when the sandbox is already gone.
    await daemon.call("StopPodSandbox", StopPodSandboxRequest(pod_sandbox_id=unknown))
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=unknown))
    with pytest.raises(NotFound):
        await daemon.call("PodSandboxStatus", PodSandboxStatusRequest(pod_sandbox_id=unknown))

    sid = (await daemon.call("RunPodSandbox", pod_request(shared_pid=True))).pod_sandbox_id
    assert sid in fakes.netd.networks and fakes.monitor.live
    for _ in range(2):
        await daemon.call("StopPodSandbox", StopPodSandboxRequest(pod_sandbox_id=sid))
        status = await daemon.call("PodSandboxStatus", PodSandboxStatusRequest(pod_sandbox_id=sid))
        assert status.status.state == PodSandboxState.SANDBOX_NOTREADY
        assert fakes.netd.networks == {} and fakes.monitor.live == set()
    assert fakes.steps.calls.count("netd.remove_pod_network") == 2  # asked each time

    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    await daemon.call("StopPodSandbox", StopPodSandboxRequest(pod_sandbox_id=sid))
    with pytest.raises(NotFound):
        await daemon.call("PodSandboxStatus", PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_infra_exit_marks_the_pod_notready(daemon: Daemon, fakes: Fakes) -> None:
    """catatonit holds the pod's PID namespace: once it dies (its exit file appears) the
    pod cannot run containers any more."""
    sid = (await daemon.call("RunPodSandbox", pod_request(shared_pid=True))).pod_sandbox_id
    fakes.runtime.exit(sid, 137)

    async def notready() -> bool:
        status = await daemon.call("PodSandboxStatus", PodSandboxStatusRequest(pod_sandbox_id=sid))
        return bool(status.status.state == PodSandboxState.SANDBOX_NOTREADY)

    await eventually(notready)
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_rollback_with_netd_down_leaves_the_network_to_the_sweep(
        daemon: Daemon, fakes: Fakes) -> None:
    """The create fails after the network was made and netd does not answer the
    rollback: everything local goes with the record, and the sweep the rollback calls for
    runs once the record is gone, so it releases the network (netd answers again)."""
    sweeps = daemon.sweeps_done
    fakes.steps.fail("host.mount_shm")
    fakes.steps.fail("netd.remove_pod_network")
    with pytest.raises(OSError, match="injected failure at host.mount_shm"):
        await daemon.call("RunPodSandbox", pod_request())
    left = daemon.leftovers()
    left.pop("networks", None)  # the sweep may be at it already
    assert left == {}
    await eventually(lambda: daemon.sweeps_done > sweeps)
    await eventually(lambda: not fakes.netd.networks)
    assert daemon.leftovers() == {}

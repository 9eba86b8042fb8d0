"""Container lifecycle (`lifecycle.containers`, `lifecycle.exits` through
`cri/container_*.py`) over fakes: CreateContainer rolled back at every step, a failed
start, StopContainer and RemoveContainer idempotent, stop timeouts, exits recorded."""

from __future__ import annotations

import signal
import time

import pytest

from crib_common.cri.runtime.v1 import (
    ContainerState,
    ContainerStatus,
    ContainerStatusRequest,
    RemoveContainerRequest,
    RemovePodSandboxRequest,
    RunPodSandboxRequest,
    StartContainerRequest,
    StopContainerRequest,
)
from crib_common.errors import CribError, DeadlineExceeded, InvalidArgument, NotFound

from .fakes import Fakes
from .lifecycle_support import Daemon, container_request, eventually, pod_request, steps_of


async def _pod(daemon: Daemon) -> tuple[str, RunPodSandboxRequest]:
    request = pod_request()
    return (await daemon.call("RunPodSandbox", request)).pod_sandbox_id, request


async def _running(daemon: Daemon, name: str = "app") -> tuple[str, str]:
    """A pod and a started container in it: (pod id, container id)."""
    sid, pod = await _pod(daemon)
    cid = (await daemon.call("CreateContainer", container_request(sid, pod, name))).container_id
    await daemon.call("StartContainer", StartContainerRequest(container_id=cid))
    return sid, cid


async def _status(daemon: Daemon, cid: str) -> ContainerStatus:
    return (await daemon.call("ContainerStatus",
                              ContainerStatusRequest(container_id=cid))).status


async def test_create_container_rolls_back_every_step(daemon: Daemon, fakes: Fakes) -> None:
    """Fail each step of a successful CreateContainer (image, rootfs snapshot and mount,
    image volume snapshot and mount, monitor) in turn: the error reaches the caller, the
    node is back to the pod alone, without help from the sweep, and the name is free."""
    sid, pod = await _pod(daemon)
    request = container_request(sid, pod)
    pod_only = daemon.leftovers()
    mark = len(fakes.steps.calls)
    cid = (await daemon.call("CreateContainer", request)).container_id
    steps = steps_of(fakes.steps.since(mark))
    assert [s for s, _ in steps].count("imaged.create_snapshot") == 2, steps
    assert {"imaged.resolve_image", "host.mount_all", "monitor.start"} <= {s for s, _ in steps}
    await daemon.call("RemoveContainer", RemoveContainerRequest(container_id=cid))
    assert daemon.leftovers() == pod_only

    for step, nth in steps:
        sweeps = daemon.sweeps_begun
        fakes.steps.fail(step, nth)
        with pytest.raises((CribError, OSError)) as failed:
            await daemon.call("CreateContainer", request)
        assert f"injected failure at {step}" in str(failed.value), (step, nth)
        assert daemon.leftovers() == pod_only, (step, nth)
        assert daemon.no_sweep_since(sweeps), (step, nth)

        cid = (await daemon.call("CreateContainer", request)).container_id
        assert (await _status(daemon, cid)).state == ContainerState.CONTAINER_CREATED
        await daemon.call("RemoveContainer", RemoveContainerRequest(container_id=cid))
        assert daemon.leftovers() == pod_only, (step, nth)
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_failed_start_leaves_an_exited_container(daemon: Daemon, fakes: Fakes) -> None:
    sid, pod = await _pod(daemon)
    cid = (await daemon.call("CreateContainer", container_request(sid, pod))).container_id
    fakes.steps.fail("runtime.start")
    with pytest.raises(CribError, match="injected failure at runtime.start"):
        await daemon.call("StartContainer", StartContainerRequest(container_id=cid))
    status = await _status(daemon, cid)
    assert status.state == ContainerState.CONTAINER_EXITED
    assert status.exit_code == 128 and "injected failure" in status.message
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_stop_and_remove_are_idempotent(daemon: Daemon, fakes: Fakes) -> None:
    unknown = "0e" * 32
    # api.proto: StopContainer "must not return an error if the container has already
    # been stopped", RemoveContainer "if the container has already been removed".
    await daemon.call("StopContainer", StopContainerRequest(container_id=unknown, timeout=5))
    await daemon.call("RemoveContainer", RemoveContainerRequest(container_id=unknown))
    with pytest.raises(InvalidArgument):
        await daemon.call("StopContainer", StopContainerRequest(container_id=unknown,
                                                                timeout=-1))

    sid, cid = await _running(daemon)
    await daemon.call("StopContainer", StopContainerRequest(container_id=cid, timeout=5))
    signals = list(fakes.runtime.signals)
    await daemon.call("StopContainer", StopContainerRequest(container_id=cid, timeout=5))
    assert fakes.runtime.signals == signals == [(cid, signal.SIGTERM)]  # nothing resent
    status = await _status(daemon, cid)
    assert status.state == ContainerState.CONTAINER_EXITED and status.exit_code == 143

    await daemon.call("RemoveContainer", RemoveContainerRequest(container_id=cid))
    await daemon.call("RemoveContainer", RemoveContainerRequest(container_id=cid))
    await daemon.call("StopContainer", StopContainerRequest(container_id=cid, timeout=5))
    with pytest.raises(NotFound):
        await _status(daemon, cid)
    assert cid not in fakes.imaged.snapshots and cid not in fakes.runtime.containers
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_remove_running_container_kills_it_first(daemon: Daemon, fakes: Fakes) -> None:
    sid, pod = await _pod(daemon)
    pod_only = daemon.leftovers()
    cid = (await daemon.call("CreateContainer", container_request(sid, pod))).container_id
    await daemon.call("StartContainer", StartContainerRequest(container_id=cid))
    await daemon.call("RemoveContainer", RemoveContainerRequest(container_id=cid))
    assert fakes.runtime.signals == [(cid, signal.SIGKILL)]
    assert daemon.leftovers() == pod_only


async def test_stop_signal_ignored_gets_sigkill_after_timeout(daemon: Daemon,
                                                              fakes: Fakes) -> None:
    sid, cid = await _running(daemon)
    fakes.runtime.ignore = {signal.SIGTERM}
    started = time.monotonic()
    await daemon.call("StopContainer", StopContainerRequest(container_id=cid, timeout=1))
    took = time.monotonic() - started
    assert 1.0 <= took < 3.0, took
    assert fakes.runtime.signals == [(cid, signal.SIGTERM), (cid, signal.SIGKILL)]
    status = await _status(daemon, cid)
    assert status.state == ContainerState.CONTAINER_EXITED
    assert status.exit_code == 137 and status.reason == "Error" and status.finished_at > 0
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_zero_timeout_kills_at_once(daemon: Daemon, fakes: Fakes) -> None:
    sid, cid = await _running(daemon)
    await daemon.call("StopContainer", StopContainerRequest(container_id=cid, timeout=0))
    assert fakes.runtime.signals == [(cid, signal.SIGKILL)]
    assert (await _status(daemon, cid)).exit_code == 137


async def test_process_surviving_sigkill_is_deadline_exceeded(
        daemon: Daemon, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process stuck in the kernel (D state) outlives SIGKILL: StopContainer says so
    instead of inventing an exit, and the container stays running."""
    monkeypatch.setattr("runtimed.lifecycle.containers.KILL_WAIT", 0.2)
    _sid, cid = await _running(daemon)
    fakes.runtime.ignore = {signal.SIGTERM, signal.SIGKILL}
    with pytest.raises(DeadlineExceeded, match="did not die"):
        await daemon.call("StopContainer", StopContainerRequest(container_id=cid, timeout=0))
    assert (await _status(daemon, cid)).state == ContainerState.CONTAINER_RUNNING


@pytest.mark.parametrize(("code", "reason"), [(0, "Completed"), (3, "Error")])
async def test_exit_is_recorded_from_the_exit_file(daemon: Daemon, fakes: Fakes, code: int,
                                                   reason: str) -> None:
    sid, cid = await _running(daemon)
    fakes.runtime.exit(cid, code)

    async def exited() -> bool:
        return bool((await _status(daemon, cid)).state == ContainerState.CONTAINER_EXITED)

    await eventually(exited)
    status = await _status(daemon, cid)
    assert status.exit_code == code and status.reason == reason
    # The runtime's state goes at once, in the background (as containerd on a task exit).
    await eventually(lambda: cid not in fakes.runtime.containers)
    await daemon.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert daemon.leftovers() == {}


async def test_rollback_with_imaged_down_leaves_snapshots_to_the_sweep(
        daemon: Daemon, fakes: Fakes) -> None:
    """The create fails at its last step and imaged does not answer the rollback's
    removals: the record goes anyway, the rollback calls for a sweep, and a sweep removes
    the snapshots once imaged answers again."""
    sid, pod = await _pod(daemon)
    pod_only = daemon.leftovers()
    sweeps = daemon.sweeps_done
    fakes.steps.fail("monitor.start")
    fakes.steps.fail("imaged.remove_snapshot", 1)
    fakes.steps.fail("imaged.remove_snapshot", 2)
    with pytest.raises(CribError, match="injected failure at monitor.start"):
        await daemon.call("CreateContainer", container_request(sid, pod))
    left = daemon.leftovers()
    left.pop("snapshots", None)  # the sweep may be at them already
    assert left == pod_only
    await eventually(lambda: daemon.sweeps_done > sweeps)
    daemon.node.sweep_wanted.set()  # the next pass (as reconcile_interval would)
    await eventually(lambda: not fakes.imaged.snapshots)
    assert daemon.leftovers() == pod_only

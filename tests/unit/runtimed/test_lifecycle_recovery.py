"""Recovery at start (`lifecycle.recovery`): a new `Runtimed` opened on the state another
left, against the same (fake) world. Exits that happened while runtimed was down, monitors
lost, creates cut short by a kill, pods whose infra is gone."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from crib_common.cri.runtime.v1 import (
    ContainerState,
    ContainerStatus,
    ContainerStatusRequest,
    PodSandboxState,
    PodSandboxStatusRequest,
    RemovePodSandboxRequest,
    StartContainerRequest,
)
from crib_common.settings import CribSettings

from .fakes import Fakes
from .lifecycle_support import (
    Daemon,
    container_request,
    eventually,
    make_settings,
    pod_request,
    steps_of,
)


async def _pod_and_container(d: Daemon, *, start: bool = True,
                             shared_pid: bool = False) -> tuple[str, str]:
    pod = pod_request(shared_pid=shared_pid)
    sid = (await d.call("RunPodSandbox", pod)).pod_sandbox_id
    cid = (await d.call("CreateContainer", container_request(sid, pod))).container_id
    if start:
        await d.call("StartContainer", StartContainerRequest(container_id=cid))
    return sid, cid


async def _status(d: Daemon, cid: str) -> ContainerStatus:
    return (await d.call("ContainerStatus", ContainerStatusRequest(container_id=cid))).status


async def _restart(d: Daemon, settings: CribSettings, fakes: Fakes) -> Daemon:
    """runtimed stops (leaving every container running) and a new one starts."""
    await d.close()
    return await Daemon.open(settings, fakes)


async def test_exit_while_down_is_recorded_at_start(daemon: Daemon, settings: CribSettings,
                                                    fakes: Fakes) -> None:
    sid, cid = await _pod_and_container(daemon)
    await daemon.close()
    # While runtimed is down the container exits: its monitor writes the exit file, ends.
    fakes.runtime.exit(cid, 42)
    mtime = (daemon.node.exit_dir / cid).stat().st_mtime_ns
    d = await Daemon.open(settings, fakes)
    try:
        status = await _status(d, cid)
        assert status.state == ContainerState.CONTAINER_EXITED
        assert status.exit_code == 42 and status.reason == "Error"
        assert status.finished_at == mtime
        await eventually(lambda: cid not in fakes.runtime.containers)
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()


async def test_running_container_survives_restart(daemon: Daemon, settings: CribSettings,
                                                  fakes: Fakes) -> None:
    sid, cid = await _pod_and_container(daemon)
    d = await _restart(daemon, settings, fakes)
    try:
        assert (await _status(d, cid)).state == ContainerState.CONTAINER_RUNNING
        assert fakes.runtime.containers[cid] == "running"
        # ...and its later exit is still seen by the new watcher.
        fakes.runtime.exit(cid, 0)

        async def exited() -> bool:
            return bool((await _status(d, cid)).state == ContainerState.CONTAINER_EXITED)

        await eventually(exited)
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()


async def test_monitor_lost_without_exit_file(daemon: Daemon, settings: CribSettings,
                                              fakes: Fakes) -> None:
    """The monitor died and the runtime no longer runs the container: the exit code is
    lost, and said so, rather than the container reported running forever."""
    sid, cid = await _pod_and_container(daemon)
    await daemon.close()
    fakes.runtime.containers[cid] = "stopped"
    fakes.monitor.live.clear()
    d = await Daemon.open(settings, fakes)
    try:
        status = await _status(d, cid)
        assert status.state == ContainerState.CONTAINER_EXITED and status.exit_code == 255
        assert "exit code is unknown" in status.message and status.reason == "MonitorLost"
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()


async def test_recorded_monitor_pid_reused_after_reboot(daemon: Daemon,
                                                        settings: CribSettings,
                                                        fakes: Fakes) -> None:
    """After a reboot the runtime's state is gone and the recorded conmon pid names some
    other process (another start time): the container is not taken for running."""
    sid, cid = await _pod_and_container(daemon)
    conmon_pid = fakes.runtime.pids[cid][0]
    await daemon.close()
    fakes.runtime.containers.pop(cid)
    fakes.monitor.starts[conmon_pid] += 1  # the same pid, started later: not conmon
    d = await Daemon.open(settings, fakes)
    try:
        status = await _status(d, cid)
        assert (status.state, status.exit_code) == (ContainerState.CONTAINER_EXITED, 255)
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
    finally:
        await d.close()


async def test_pod_whose_infra_is_gone_is_notready(daemon: Daemon, settings: CribSettings,
                                                   fakes: Fakes) -> None:
    sid = (await daemon.call("RunPodSandbox", pod_request(shared_pid=True))).pod_sandbox_id
    await daemon.close()
    fakes.monitor.live.clear()  # catatonit and its monitor gone, no exit file (a reboot)
    d = await Daemon.open(settings, fakes)
    try:
        status = await d.call("PodSandboxStatus", PodSandboxStatusRequest(pod_sandbox_id=sid))
        assert status.status.state == PodSandboxState.SANDBOX_NOTREADY
        await d.call("RemovePodSandbox", RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert d.leftovers() == {}
    finally:
        await d.close()


async def _learn_steps(tmp_path: Path, what: str) -> tuple[list[tuple[str, int]], set[str]]:
    """The steps of a successful create of `what` in a world of its own, and which of
    them are async (a kill can only be simulated while one is awaited)."""
    settings = make_settings(tmp_path / "learn")
    fakes = Fakes(exit_dir=settings.runtimed.run_dir / "exits")
    d = await Daemon.open(settings, fakes)
    try:
        await d.settle_sweep()
        pod = pod_request(shared_pid=True)
        mark = len(fakes.steps.calls)
        sid = (await d.call("RunPodSandbox", pod)).pod_sandbox_id
        if what == "container":
            mark = len(fakes.steps.calls)
            await d.call("CreateContainer", container_request(sid, pod))
        return steps_of(fakes.steps.since(mark)), fakes.steps.asynchronous
    finally:
        await d.close()


@pytest.mark.parametrize("what", ["sandbox", "container"])
async def test_create_cut_short_is_rolled_back_at_start(tmp_path: Path, what: str) -> None:
    """runtimed is killed while a create waits on each step in turn (frozen there, its
    record left "creating"); the next runtimed rolls the create back before it serves,
    leaving the node as it was before the create, and the name free."""
    steps, asynchronous = await _learn_steps(tmp_path, what)
    cut_at = [(s, n) for s, n in steps if s in asynchronous]
    assert {"monitor.start", "imaged.create_snapshot" if what == "container"
            else "netd.create_pod_network"} <= {s for s, _ in cut_at}, cut_at

    for index, (step, nth) in enumerate(cut_at):
        settings = make_settings(tmp_path / str(index))
        fakes = Fakes(exit_dir=settings.runtimed.run_dir / "exits")
        first = await Daemon.open(settings, fakes)
        await first.settle_sweep()
        pod = pod_request(shared_pid=True)
        sid = ""
        if what == "container":
            sid = (await first.call("RunPodSandbox", pod)).pod_sandbox_id
        before = first.leftovers()
        request = container_request(sid, pod) if what == "container" else pod
        rpc = "CreateContainer" if what == "container" else "RunPodSandbox"
        reached = fakes.steps.pause(step, nth)
        frozen = asyncio.ensure_future(first.call(rpc, request))
        await asyncio.wait_for(reached.wait(), 2)
        await first.close()  # "killed": the create never finishes nor rolls back

        second = await Daemon.open(settings, fakes)
        try:
            # Checked before anything else runs: recovery alone, not the sweep.
            assert second.leftovers() == before, (step, nth)
            created = await second.call(rpc, request)
            assert created.container_id if what == "container" else created.pod_sandbox_id
        finally:
            # The first daemon's create, still frozen, ends (its rollback finds its store
            # closed); only now, the checks being done.
            fakes.steps.thaw()
            with contextlib.suppress(Exception):
                await frozen
            await second.close()

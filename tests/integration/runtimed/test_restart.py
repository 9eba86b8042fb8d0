"""Kill -9 of runtimed in the middle of RPCs, then restart: every pod and container in its
true state, exits that happened while down recorded, half-done work rolled back, and
nothing left behind once the pods are removed."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.support.stack import Stack

from .conftest import Cri, leftovers, separate_processes

pytestmark = pytest.mark.integration


crib = pytest.fixture(scope="module", name="crib")(separate_processes)


def _restart(stack: Stack, crash_at: str = "") -> None:
    """Restart runtimed, optionally armed to SIGKILL itself at a failpoint."""
    proc = stack.procs.pop("runtimed", None)
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    if crash_at:
        stack.extra_env["CRIB_RUNTIMED_CRASH_AT"] = crash_at
    else:
        stack.extra_env.pop("CRIB_RUNTIMED_CRASH_AT", None)
    stack.start_one("runtimed")


def _crash(stack: Stack, call: object) -> None:
    """The armed runtimed dies during `call`; the RPC fails, the process is gone."""
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                grpc.StatusCode.UNKNOWN), err.value
    proc = stack.procs["runtimed"]
    proc.wait(timeout=10)
    assert proc.returncode == -9


def test_kill9_during_create_start_stop(crib: Stack, cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    # Survivors: one running through the restarts, one that exits while runtimed is down.
    keeper = cri.create(sid, pod, image, "keeper", command=["sleep", "300"])
    cri.start(keeper)
    quitter = cri.create(sid, pod, image, "quitter", command=["sh", "-c"],
                         args=["sleep 1; exit 42"])
    cri.start(quitter)

    # 1. Killed after the snapshot is mounted, before conmon: rolled back.
    _restart(crib, "create_after_mount")
    _crash(crib, lambda: cri.create(sid, pod, image, "half1", command=["true"]))
    time.sleep(1.5)  # the quitter exits while runtimed is down
    # 2. Killed after conmon created the container: rolled back too.
    _restart(crib, "create_after_conmon")
    assert cri.status(quitter).exit_code == 42  # recorded from conmon's exit file
    _crash(crib, lambda: cri.create(sid, pod, image, "half2", command=["sleep", "300"]))
    _restart(crib)
    names = {c.metadata.name: c for c in cri.rt.ListContainers(
        api_pb2.ListContainersRequest()).containers}
    assert set(names) == {"keeper", "quitter"}
    assert names["keeper"].state == api_pb2.CONTAINER_RUNNING
    st = cri.status(quitter)
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 42, "Error")
    # The half-done creates left no bundle, mount, snapshot or conmon behind.
    assert len(list((crib.root / "run/runtimed/c").iterdir())) == 2
    snaps = {s for s in leftovers(crib).get("snapshots", [])}
    assert snaps == {keeper, quitter}
    # A name of a rolled-back create is free again.
    half = cri.create(sid, pod, image, "half2", command=["sleep", "300"])

    # 3. Killed right after `runtime start`: running after restart.
    _restart(crib, "start_after_runtime")
    _crash(crib, lambda: cri.start(half))
    _restart(crib)
    assert cri.status(half).state == api_pb2.CONTAINER_RUNNING

    # 4. Killed after the stop signal: the exit is found at restart.
    trapper = cri.create(sid, pod, image, "trapper", command=["sh", "-c"],
                         args=["trap 'exit 9' TERM; sleep 300 & wait"])
    cri.start(trapper)
    time.sleep(0.2)
    _restart(crib, "stop_after_signal")
    _crash(crib, lambda: cri.rt.StopContainer(api_pb2.StopContainerRequest(
        container_id=trapper, timeout=30)))
    time.sleep(0.5)
    _restart(crib)
    st = cri.status(trapper)
    assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 9)

    # 5. Killed after RemoveContainer dropped the record and queued its release, before
    # the release ran (the answer may or may not have gone out): recovery finishes the
    # release, so nothing of the container is left (bundle, snapshot, runtime state).
    _restart(crib, "remove_before_release")
    try:
        cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=trapper))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
    proc = crib.procs["runtimed"]
    proc.wait(timeout=10)
    assert proc.returncode == -9
    assert (crib.root / "run/runtimed/c" / trapper).exists()  # not released yet
    _restart(crib)
    with pytest.raises(grpc.RpcError):
        cri.status(trapper)
    assert not (crib.root / "run/runtimed/c" / trapper).exists()
    left = leftovers(crib)
    assert trapper not in set(left.get("snapshots", []))
    assert f"container-release/{trapper}" not in left.get("state_rows", [])
    assert not list(crib.root.glob(f"run/**/{trapper}"))
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=trapper))

    # 6. Killed in RunPodSandbox after the network, and after catatonit started: both
    # rolled back (netns, pins, shm, infra container and its conmon).
    _restart(crib, "sandbox_after_network")
    _crash(crib, lambda: cri.run_pod())
    _restart(crib, "sandbox_before_ready")
    _crash(crib, lambda: cri.run_pod())
    _restart(crib)
    pods = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [p.id for p in pods] == [sid]
    assert cri.status(keeper).state == api_pb2.CONTAINER_RUNNING

    # 7. Killed in RemovePodSandbox after its containers went: the retry finishes it.
    _restart(crib, "remove_sandbox_after_containers")
    cri.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
    _crash(crib, lambda: cri.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(
        pod_sandbox_id=sid)))
    _restart(crib)
    pods = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [(p.id, p.state) for p in pods] == [(sid, api_pb2.SANDBOX_NOTREADY)]
    assert not cri.rt.ListContainers(api_pb2.ListContainersRequest()).containers
    cri.remove_pod(sid)
    assert leftovers(crib) == {}


def test_thirty_pods_leave_nothing(crib: Stack, cri: Cri, image: str) -> None:
    pods = []
    for i in range(30):
        handler = "crun" if i % 3 == 0 else "runc"
        sid, pod = cri.run_pod(handler=handler)
        cid = cri.create(sid, pod, image, "c", command=["sleep", "300"])
        cri.start(cid)
        pods.append(sid)
    assert len(cri.rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(
            state=api_pb2.CONTAINER_RUNNING)))).containers) >= 30
    for sid in pods:
        cri.remove_pod(sid)
    assert leftovers(crib) == {}
    assert Path(crib.root / "run/runtimed/s").exists()


def test_rollback_at_start_with_a_peer_down_is_finished_by_the_sweep(
        crib: Stack, cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    # A create cut short after its snapshot was mounted...
    _restart(crib, "create_after_mount")
    _crash(crib, lambda: cri.create(sid, pod, image, "half", command=["true"]))
    half = [s for s in leftovers(crib).get("snapshots", [])]
    assert len(half) == 1
    # ...is rolled back at start while imaged is down: the record goes, the snapshot
    # stays with imaged (nothing could remove it).
    crib.kill("imaged")
    _restart(crib)
    assert not cri.rt.ListContainers(api_pb2.ListContainersRequest()).containers
    crib.start_one("imaged")
    # Once imaged is back, the sweep (retrying after the failed rollback) removes it.
    end = time.monotonic() + 20
    while time.monotonic() < end and leftovers(crib).get("snapshots"):
        time.sleep(0.2)
    assert not leftovers(crib).get("snapshots")
    cri.remove_pod(sid)
    assert leftovers(crib) == {}

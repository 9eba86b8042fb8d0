"""What peers hold for pods and containers runtimed has no record of is swept away.

A create rolled back while netd or imaged was down drops its record but cannot remove the
network or snapshot it had made there; runtimed's sweep (at start, every
`reconcile_interval`, and soon after such a rollback) finds and removes them. Then a
chaos run: every daemon killed with -9 in turn while pods are being made and removed,
and once everything is removed through the CRI, nothing is left anywhere."""

from __future__ import annotations

import asyncio
import random
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from crib_common.clients.imaged import ImagedClient
from crib_common.clients.netd import NetdClient
from crib_common.models.imaged import SnapshotCreate
from crib_common.models.netd import PodNetworkCreate
from tests.support.stack import Stack

from .conftest import Cri, leftovers

pytestmark = pytest.mark.integration

CRIB = Path(sys.executable).parent / "crib"


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    # No timed sweep here: each test says when one runs (a failed rollback still asks
    # for one soon, which the chaos test relies on).
    with Stack.running(CRIB_RUNTIMED__RECONCILE_INTERVAL="3600") as stack:
        yield stack


def _wait_clean(stack: Stack, timeout: float = 20.0) -> dict[str, list[str]]:
    end = time.monotonic() + timeout
    while True:
        left = leftovers(stack)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


def test_sweep_removes_orphans_and_keeps_live_pods(crib: Stack, cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "live", command=["sleep", "300"])
    cri.start(cid)
    ghost_pod, ghost_ctr = secrets.token_hex(32), secrets.token_hex(32)

    async def make_orphans() -> None:
        async with NetdClient(crib.socket("netd")) as netd:
            await netd.create_pod_network(PodNetworkCreate(
                pod_id=ghost_pod, pod_name="ghost", pod_namespace="crib-test", pod_uid="g"))
        async with ImagedClient(crib.socket("imaged")) as imaged:
            await imaged.create_snapshot(SnapshotCreate(
                key=ghost_ctr, image=image,
                labels={"io.crib.container": ghost_ctr, "io.crib.pod": ghost_pod}))

    asyncio.run(make_orphans())
    pod_dir = crib.root / "run/runtimed/p" / ghost_pod
    pod_dir.mkdir(parents=True)
    (pod_dir / "hostname").write_text("ghost\n")
    bundle = crib.root / "run/runtimed/c" / ghost_ctr
    (bundle / "rootfs").mkdir(parents=True)
    left = leftovers(crib)
    assert ghost_pod in left["networks"] and ghost_ctr in left["snapshots"]

    # An operator's `crib sweep` runs it now (runtimed also sweeps at start and every
    # reconcile_interval).
    out = subprocess.run([str(CRIB), "sweep"], env=crib.env(), capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "removed: 2 directories, 1 networks, 1 snapshots" in out.stdout, out.stdout
    left = leftovers(crib)
    assert ghost_pod not in left.get("networks", [])
    assert ghost_ctr not in left.get("snapshots", [])
    assert not pod_dir.exists() and not bundle.exists()
    # The live pod kept its network, its container its snapshot, and it still runs.
    assert sid in left["networks"] and cid in left["snapshots"]
    assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
    cri.remove_pod(sid)
    assert _wait_clean(crib) == {}


def _lifecycle(cri: Cri, image: str, rng: random.Random, unexpected: list[Any]) -> None:
    """Make a pod and a container, then maybe stop and remove them; errors from a daemon
    being killed are expected, others are collected."""
    uid = uuid.uuid4().hex[:10]
    pod = cri.pod_config(f"chaos-{uid}")
    try:
        sid, _ = cri.run_pod(pod)
        cid = cri.create(sid, pod, image, "c", command=["sleep", "300"])
        cri.start(cid)
        if rng.random() < 0.5:
            cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1),
                                 timeout=30)
        if rng.random() < 0.5:
            cri.remove_pod(sid)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            unexpected.append((exc.code(), exc.details()))


def test_kill9_of_each_daemon_under_load_leaves_nothing(crib: Stack, cri: Cri,
                                                        image: str) -> None:
    rng = random.Random(5825)
    unexpected: list[Any] = []
    for victim in ("netd", "runtimed", "imaged", "gateway", "netd", "imaged"):
        workers = [threading.Thread(target=_lifecycle, args=(cri, image, rng, unexpected))
                   for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(0.05, 0.4))
        crib.kill(victim)
        time.sleep(rng.uniform(0.0, 0.3))
        crib.start_one(victim)
        for w in workers:
            w.join(120)
        # Whatever survived is listed in a state the kubelet understands.
        for p in cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items:
            assert p.state in (api_pb2.SANDBOX_READY, api_pb2.SANDBOX_NOTREADY)
    assert unexpected == []
    for p in cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items:
        cri.remove_pod(p.id)
    assert cri.rt.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers == []
    assert _wait_clean(crib) == {}

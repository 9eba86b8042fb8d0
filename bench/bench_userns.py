"""What a pod user namespace (hostUsers: false) costs: crib with one against crib without.

    sudo python -m bench.bench_userns [--iterations 30] [--handlers runc,crun]

For each runtime handler, ordinary and user-namespaced pods alternate (same image, same
kubelet-like pod: own network, IPC and UTS; PID per container), driven by the independent
grpcio client (`cri_api.v1`); p50/p90 in ms over N iterations each, after two warm-up
rounds:

- RunPodSandbox: with a user namespace, the namespace holder (util-linux `unshare`), its
  ID maps and pins, and netd's network namespace made inside it through `nsenter`;
- CreateContainer+StartContainer: with a user namespace, every lower layer of the rootfs
  ID-mapped (open_tree, mount_setattr, move_mount) before the overlay is mounted;
- StopPodSandbox+RemovePodSandbox, for the teardown.

Each user-namespaced pod gets its own range of 65536 host IDs, as the kubelet allocates
them. There is no containerd column: Debian 12's containerd (1.6) cannot run such pods
(user namespaces with ID-mapped mounts came with containerd 2.0), so the ordinary pod is
the reference and the ratio is the user namespace's cost.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from cri_api.v1 import api_pb2

from bench.bench_runtime import LOG_ROOT, TRAPPER, _container_config, _pod_config, _timed
from bench.harness import Row, Stats, image_stub, report, runtime_stub
from tests.support.images import busybox_image, push_image
from tests.support.registry import Registry
from tests.support.stack import Stack

OPS = ("RunPodSandbox", "Create+StartContainer", "Stop+RemovePodSandbox")
LENGTH = 65536


def _userns_pod(handler: str, n: int) -> Any:
    pod = _pod_config(f"{handler}-userns")
    mapping = [api_pb2.IDMapping(host_id=LENGTH * (64 + n), container_id=0, length=LENGTH)]
    ns = pod.linux.security_context.namespace_options
    ns.userns_options.CopyFrom(api_pb2.UserNamespace(mode=api_pb2.POD, uids=mapping,
                                                     gids=mapping))
    return pod


def _one(rt: Any, image: str, handler: str, pod: Any, samples: dict[str, list[float]]
         ) -> None:
    """One pod through its life: run, a container created and started, stop and remove."""
    sid = _timed(samples, "RunPodSandbox", lambda: rt.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=pod, runtime_handler=handler),
        timeout=120)).pod_sandbox_id
    pod_ns = pod.linux.security_context.namespace_options

    def create_start() -> str:
        config = _container_config(image, "c", [TRAPPER])
        if pod_ns.HasField("userns_options"):
            # The kubelet repeats the pod's options (PID per container) on each one.
            config.linux.security_context.namespace_options.CopyFrom(pod_ns)
        cid: str = rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=config, sandbox_config=pod),
            timeout=120).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    cid = _timed(samples, "Create+StartContainer", create_start)
    reply = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["id", "-u"],
                                                timeout=10), timeout=30)
    assert reply.stdout == b"0\n", reply

    def teardown() -> None:
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                            timeout=120)

    _timed(samples, "Stop+RemovePodSandbox", teardown)


def measure_handler(socket: Path, image: str, handler: str, iterations: int
                    ) -> tuple[dict[str, Stats], dict[str, Stats]]:
    """(user-namespaced, ordinary) figures for one handler, the two kinds alternating so
    that the machine's load falls on both alike."""
    rt, im = runtime_stub(socket), image_stub(socket)
    im.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
    userns: dict[str, list[float]] = {}
    plain: dict[str, list[float]] = {}
    for i in range(iterations + 2):
        warm = i < 2
        _one(rt, image, handler, _pod_config(handler), {} if warm else plain)
        _one(rt, image, handler, _userns_pod(handler, i), {} if warm else userns)
    return ({k: Stats.of(v) for k, v in userns.items()},
            {k: Stats.of(v) for k, v in plain.items()})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--handlers", default="runc,crun")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, tuple[dict[str, Stats], dict[str, Stats]]] = {}
    try:
        with Registry() as registry:
            pushed = push_image(registry, "crib-bench/busybox", "v1",
                                busybox_image(cmd=["sleep", "3600000"]))
            stack = Stack.create("process", CRIB_LOG__LEVEL="warning")
            try:
                stack.start()
                time.sleep(2)
                for h in [h for h in args.handlers.split(",") if h]:
                    results[h] = measure_handler(stack.cri_socket, pushed.reference, h,
                                                 args.iterations)
            finally:
                stack.cleanup()
    finally:
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
    for h, (userns, plain) in results.items():
        print()
        print(report([Row(op, userns.get(op), plain.get(op)) for op in OPS],
                     title=f"handler {h}: {args.iterations} pods of each kind, alternating",
                     ours="userns", peer="ordinary"))
        print("(here the ratio is userns / ordinary: what the user namespace costs)")


if __name__ == "__main__":
    main()

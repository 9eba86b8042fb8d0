"""Pod and container lifecycle latency, crib against Debian's containerd CRI plugin.

    sudo python -m bench.bench_runtime [--iterations 30] [--containers 100]

Both endpoints are driven by the same independent grpcio client (`cri_api.v1`), with the
same runc (and crun), the same busybox test image from a local docker-registry, and a
kubelet-like pod (own network, IPC and UTS; PID per container). Figures, p50/p90 in ms over
N iterations, for each runtime handler:

- RunPodSandbox; CreateContainer+StartContainer; ExecSync(echo); StopContainer (the
  container traps SIGTERM and exits at once); StopPodSandbox; RemovePodSandbox;
- ListContainers with `--containers` containers present (created, in one pod);
- idle RSS of the four crib daemons together vs containerd's.

Both run the same CNI chain unless `--cni default` is given: the peer's one bridge plugin
(host-local IPAM, no masquerade), each on its own bridge and subnet. crib's default chain
(bridge with masquerade, portmap, loopback) runs two more plugins and its iptables rules
on every pod, which is not the same workload.

crib runs as tests/support/stack.py's Stack (private sockets under /tmp); containerd as
bench/peer_containerd.py's PeerContainerd (private root/state/socket, its own bridge and
subnet). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from cri_api.v1 import api_pb2

from bench.harness import Row, Stats, image_stub, report, runtime_stub
from bench.peer_containerd import PeerContainerd
from tests.support.images import busybox_image, push_image
from tests.support.registry import Registry
from tests.support.stack import Stack

TRAPPER = "trap 'exit 0' TERM; sleep 100000 & wait"
# The pods' log directories (both runtimes write there); removed at the end.
LOG_ROOT = "/tmp/crib-bench-logs"


class Peer(PeerContainerd):
    """containerd clamping the pause container's oom_score_adj (-998) to its own: this
    machine has no CAP_SYS_RESOURCE and runc init fails on a negative value."""

    def config_text(self) -> str:
        return super().config_text().replace(
            "  enable_selinux = false",
            "  enable_selinux = false\n  restrict_oom_score_adj = true")


def _pod_config(tag: str) -> Any:
    uid = uuid.uuid4().hex[:10]
    ns = api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER,
                                 ipc=api_pb2.POD)
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=f"bench-{tag}-{uid}", uid=uid,
                                            namespace="bench"),
        hostname=f"bench-{uid}", log_directory=f"{LOG_ROOT}/{uid}",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))


def _container_config(image: str, name: str, args: list[str]) -> Any:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image),
        command=["sh", "-c"], args=args, log_path=f"{name}.log")


def same_cni_as_peer(stack: Stack) -> None:
    """Give the stack the peer's CNI chain (bench/peer_containerd.py) on its own bridge."""
    conf = {
        "cniVersion": "0.4.0",
        "name": "crib-bench",
        "plugins": [{
            "type": "bridge", "bridge": stack.bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": f"10.213.{stack.net_index}.0/24"}]],
                     "dataDir": str(stack.root / "lib/netd/ipam")},
        }],
    }
    conf_dir = stack.root / "cni"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-crib-bench.conflist").write_text(json.dumps(conf, indent=2))


def _timed(samples: dict[str, list[float]], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    samples.setdefault(key, []).append(time.perf_counter() - t0)
    return out


OPS = ("RunPodSandbox", "Create+StartContainer", "ExecSync(echo)", "StopContainer",
       "StopPodSandbox", "RemovePodSandbox", "ListContainers")


def measure_endpoint(socket: Path, image: str, handler: str, iterations: int,
                     containers: int) -> dict[str, Stats]:
    """Lifecycle figures for one endpoint and handler."""
    rt, im = runtime_stub(socket), image_stub(socket)
    im.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
    samples: dict[str, list[float]] = {}
    for i in range(iterations + 2):
        warm = i < 2  # the first pods pay for caches on both sides
        s: dict[str, list[float]] = {} if warm else samples
        pod = _pod_config(handler)
        sid = _timed(s, "RunPodSandbox", lambda: rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=pod, runtime_handler=handler), timeout=120)).pod_sandbox_id

        def create_start() -> str:
            cid: str = rt.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=sid, config=_container_config(image, "c", [TRAPPER]),
                sandbox_config=pod), timeout=120).container_id
            rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
            return cid

        cid = _timed(s, "Create+StartContainer", create_start)
        reply = _timed(s, "ExecSync(echo)", lambda: rt.ExecSync(api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["echo", "hi"], timeout=10), timeout=30))
        assert reply.stdout == b"hi\n", reply
        _timed(s, "StopContainer", lambda: rt.StopContainer(api_pb2.StopContainerRequest(
            container_id=cid, timeout=10), timeout=60))
        _timed(s, "StopPodSandbox", lambda: rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(
            pod_sandbox_id=sid), timeout=120))
        _timed(s, "RemovePodSandbox", lambda: rt.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120))
    # ListContainers with many containers present.
    pod = _pod_config(handler)
    sid = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod, runtime_handler=handler),
                           timeout=120).pod_sandbox_id
    try:
        for n in range(containers):
            rt.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=sid, config=_container_config(image, f"c{n}", [TRAPPER]),
                sandbox_config=pod), timeout=120)
        for _ in range(iterations + 5):
            got = _timed(samples, "ListContainers", lambda: rt.ListContainers(
                api_pb2.ListContainersRequest(), timeout=30))
        assert len(got.containers) >= containers
    finally:
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=300)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=300)
    return {op: Stats.of(v) for op, v in samples.items()}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared between processes (the interpreter's libraries
    mapped by all four daemons) are divided among them, so a sum over processes counts
    each page once, which a sum of RSS does not."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def memory_line(crib: dict[str, tuple[int, int]], ctd: tuple[int, int]) -> str:
    rss, pss = sum(v[0] for v in crib.values()), sum(v[1] for v in crib.values())
    each = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in crib.items())
    return (f"idle memory (KiB, RSS/PSS): {each}; crib total {rss}/{pss}; containerd "
            f"{ctd[0]}/{ctd[1]}; ratio RSS {rss / ctd[0]:.2f}, PSS {pss / ctd[1]:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--handlers", default="runc,crun")
    parser.add_argument("--cni", choices=("same", "default"), default="same",
                        help="same: crib runs the peer's CNI chain; default: crib's own")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    handlers = [h for h in args.handlers.split(",") if h]
    ours: dict[str, dict[str, Stats]] = {}
    peer: dict[str, dict[str, Stats]] = {}
    try:
        with Registry() as registry:
            pushed = push_image(registry, "crib-bench/busybox", "v1",
                                busybox_image(cmd=["sleep", "3600000"]))
            stack = Stack.create(CRIB_LOG__LEVEL="warning")
            if args.cni == "same":
                same_cni_as_peer(stack)
            try:
                stack.start()
                time.sleep(2)
                crib_mem = {svc: (rss_kib(p.pid), pss_kib(p.pid))
                            for svc, p in stack.procs.items()}
                for h in handlers:
                    ours[h] = measure_endpoint(stack.cri_socket, pushed.reference, h,
                                               args.iterations, args.containers)
            finally:
                stack.cleanup()
            # The busybox image doubles as containerd's pause image (its Cmd sleeps).
            with Peer(registries=[registry.host], sandbox_image=pushed.reference) as ctd:
                time.sleep(2)
                assert ctd.proc is not None
                ctd_mem = (rss_kib(ctd.proc.pid), pss_kib(ctd.proc.pid))
                for h in handlers:
                    peer[h] = measure_endpoint(ctd.cri_socket, pushed.reference, h,
                                               args.iterations, args.containers)
    finally:
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
    for h in handlers:
        rows = [Row(op if op != "ListContainers" else f"ListContainers ({args.containers})",
                    ours[h].get(op), peer[h].get(op)) for op in OPS]
        print()
        print(report(rows, title=f"handler {h}: {args.iterations} iterations, CNI chain: "
                     + ("the same for both" if args.cni == "same" else "crib's default")))
    print()
    print(memory_line(crib_mem, ctd_mem))


if __name__ == "__main__":
    main()

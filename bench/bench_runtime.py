"""Pod and container lifecycle latency, crib against Debian's containerd CRI plugin.

    sudo python -m bench.bench_runtime [--iterations 30] [--containers 100] [--pods 100]

Both endpoints are driven by the same independent grpcio client (`cri_api.v1`), with the
same runc (and crun), the same busybox test image from a local docker-registry, and a
kubelet-like pod (own network, IPC and UTS; PID per container). Figures, p50/p90 in ms over
N iterations, for each runtime handler:

- RunPodSandbox; CreateContainer+StartContainer; ExecSync(echo); StopContainer (the
  container traps SIGTERM and exits at once); RemoveContainer; StopPodSandbox;
  RemovePodSandbox;
- ListContainers with `--containers` containers present (created, in one pod);
- the reads the kubelet makes all the time (`--reads` sequential calls each):
  PodSandboxStatus, ContainerStatus, ImageStatus, ListImages, and ListPodSandbox and
  ListContainers with `--pods` pods of one running container each present;
- StopPodSandbox and RemovePodSandbox of those pods, each with its container in it;
- memory (KiB, PSS and RSS): idle, with 20 pods and with `--pods` pods of one running
  container each: crib's four daemons plus its per-pod processes (conmon, infra) against
  containerd plus its per-pod processes (shim, pause). The workload's own processes are
  counted on neither side.

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
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cri_api.v1 import api_pb2

from bench.harness import Row, Stats, image_stub, measure, report, runtime_stub
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
       "RemoveContainer", "StopPodSandbox", "RemovePodSandbox", "ListContainers")
READS = ("PodSandboxStatus", "ContainerStatus", "ImageStatus", "ListImages",
         "ListPodSandbox", "ListContainers")
# The scale phase's teardown, pods of one container each.
WITH_CONTAINER = ("StopPodSandbox (+1 ctr)", "RemovePodSandbox (+1 ctr)")
# Pod counts at which the memory table is taken (plus idle, and --pods).
MEMORY_AT = (20,)


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
        _timed(s, "RemoveContainer", lambda: rt.RemoveContainer(
            api_pb2.RemoveContainerRequest(container_id=cid), timeout=60))
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
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared between processes (the interpreter's libraries
    mapped by all four daemons) are divided among them, so a sum over processes counts
    each page once, which a sum of RSS does not."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes_named(binary: bytes, needle: bytes) -> list[int]:
    """PIDs whose argv[0] ends with `binary` and whose argv mentions `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(binary) and any(needle in a for a in argv):
            found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class Footprint:
    """Memory of one runtime at one moment, KiB: (RSS, PSS) of its daemons and of its
    per-pod processes (monitors or shims, infra or pause)."""

    daemons: tuple[int, int]
    per_pod: tuple[int, int]
    per_pod_count: int

    @property
    def pss(self) -> int:
        return self.daemons[1] + self.per_pod[1]

    @property
    def rss(self) -> int:
        return self.daemons[0] + self.per_pod[0]


def footprint(daemons: Sequence[int], per_pod: Sequence[int]) -> Footprint:
    def total(pids: Sequence[int]) -> tuple[int, int]:
        return sum(rss_kib(p) for p in pids), sum(pss_kib(p) for p in pids)

    return Footprint(total(daemons), total(per_pod), len(per_pod))


def memory_table(ours: dict[str, Footprint], peer: dict[str, Footprint]) -> str:
    """PSS (and RSS) of both runtimes at each moment measured, and the PSS ratio."""
    head = (f"{'memory (MiB)':<14} {'crib daemons':>14} {'crib per-pod':>14} "
            f"{'crib total':>12} {'ctd daemon':>12} {'ctd per-pod':>13} {'ctd total':>11} "
            f"{'ratio PSS':>10}")
    lines = [head, "-" * len(head)]

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f}"

    for when in ours:
        o, p = ours[when], peer.get(when)
        if p is None:
            continue
        lines.append(
            f"{when:<14} {mib(o.daemons[1]):>14} {mib(o.per_pod[1]):>14} {mib(o.pss):>12} "
            f"{mib(p.daemons[1]):>12} {mib(p.per_pod[1]):>13} {mib(p.pss):>11} "
            f"{o.pss / p.pss:9.2f}x")
        lines.append(
            f"{'  (RSS)':<14} {mib(o.daemons[0]):>14} {mib(o.per_pod[0]):>14} {mib(o.rss):>12} "
            f"{mib(p.daemons[0]):>12} {mib(p.per_pod[0]):>13} {mib(p.rss):>11} "
            f"{o.rss / p.rss:9.2f}x")
    lines.append("(PSS first, RSS below it; per-pod: crib's conmons and infra processes, "
                 "containerd's shims and pause processes; ratio = crib / containerd)")
    return "\n".join(lines)


def _verbose_pid(info: Any) -> int:
    with contextlib.suppress(KeyError, ValueError, TypeError):
        return int(json.loads(info["info"]).get("pid") or 0)
    return 0


def measure_scale(socket: Path, image: str, handler: str, pods: int, reads: int,
                  daemons: Callable[[], list[int]], monitors: Callable[[], list[int]],
                  ) -> tuple[dict[str, Stats], dict[str, Footprint]]:
    """`pods` pods of one running container each: memory at MEMORY_AT and at `pods`, then
    the reads with them present; everything removed at the end."""
    rt, im = runtime_stub(socket), image_stub(socket)
    im.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)
    memory: dict[str, Footprint] = {"idle": footprint(daemons(), [])}
    made: list[tuple[str, str]] = []
    stats: dict[str, Stats] = {}

    def per_pod_pids() -> list[int]:
        infra = [_verbose_pid(rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=sid, verbose=True), timeout=30).info) for sid, _ in made]
        return monitors() + [p for p in infra if p > 0]

    try:
        for n in range(1, pods + 1):
            pod = _pod_config(handler)
            sid = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(
                config=pod, runtime_handler=handler), timeout=120).pod_sandbox_id
            cid = rt.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=sid, config=_container_config(image, "c", [TRAPPER]),
                sandbox_config=pod), timeout=120).container_id
            rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
            made.append((sid, cid))
            if n in MEMORY_AT or n == pods:
                time.sleep(2)  # let both settle (crib's daemons trim after bursts)
                memory[f"{n} pods"] = footprint(daemons(), per_pod_pids())
        sid, cid = made[len(made) // 2]
        calls: dict[str, Callable[[], Any]] = {
            "PodSandboxStatus": lambda: rt.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10),
            "ContainerStatus": lambda: rt.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id=cid), timeout=10),
            "ImageStatus": lambda: im.ImageStatus(api_pb2.ImageStatusRequest(
                image=api_pb2.ImageSpec(image=image)), timeout=10),
            "ListImages": lambda: im.ListImages(api_pb2.ListImagesRequest(), timeout=10),
            "ListPodSandbox": lambda: rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(),
                                                        timeout=10),
            "ListContainers": lambda: rt.ListContainers(api_pb2.ListContainersRequest(),
                                                        timeout=10),
        }
        assert len(calls["ListPodSandbox"]().items) >= pods
        assert calls["ImageStatus"]().image.id
        stats.update({name: measure(fn, reads) for name, fn in calls.items()})
    finally:
        # Torn down as the kubelet does it: stop, then remove the pod with its (exited)
        # container still in it; both timed.
        samples: dict[str, list[float]] = {}
        for sid, _ in made:
            with contextlib.suppress(Exception):
                _timed(samples, WITH_CONTAINER[0], lambda: rt.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120))
                _timed(samples, WITH_CONTAINER[1], lambda: rt.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120))
    stats.update({k: Stats.of(v) for k, v in samples.items() if v})
    return stats, memory


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30,
                        help="lifecycle iterations per handler (0: skip the lifecycle)")
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--pods", type=int, default=100,
                        help="pods present for the reads and the last memory figure "
                             "(0: skip both)")
    parser.add_argument("--reads", type=int, default=1000, help="sequential calls per read")
    parser.add_argument("--handlers", default="runc,crun")
    parser.add_argument("--cni", choices=("same", "default"), default="same",
                        help="same: crib runs the peer's CNI chain; default: crib's own")
    parser.add_argument("--launcher", choices=("process", "node"), default="node",
                        help="node (the default, as make up): forked by crib-node (counted "
                             "with them); process: one process per daemon; see also "
                             "bench/bench_node.py")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    handlers = [h for h in args.handlers.split(",") if h]
    ours: dict[str, dict[str, Stats]] = {}
    peer: dict[str, dict[str, Stats]] = {}
    reads: dict[str, dict[str, Stats]] = {}
    memory: dict[str, dict[str, Footprint]] = {}

    def run(name: str, socket: Path, image: str, results: dict[str, dict[str, Stats]],
            daemons: Callable[[], list[int]], monitors: Callable[[], list[int]]) -> None:
        memory[name] = {"idle": footprint(daemons(), [])}
        if args.pods:
            # Reads and memory first, on a fresh runtime, with the first handler.
            reads[name], mem = measure_scale(socket, image, handlers[0], args.pods,
                                             args.reads, daemons, monitors)
            memory[name].update({k: v for k, v in mem.items() if k != "idle"})
        if args.iterations:
            for h in handlers:
                results[h] = measure_endpoint(socket, image, h, args.iterations,
                                              args.containers)

    try:
        with Registry() as registry:
            pushed = push_image(registry, "crib-bench/busybox", "v1",
                                busybox_image(cmd=["sleep", "3600000"]))
            stack = Stack.create(args.launcher, CRIB_LOG__LEVEL="warning")
            if args.cni == "same":
                same_cni_as_peer(stack)
            try:
                stack.start()
                time.sleep(2)
                run("crib", stack.cri_socket, pushed.reference, ours,
                    stack.daemon_pids,
                    lambda: processes_named(b"conmon", str(stack.root).encode() + b"/"))
            finally:
                stack.cleanup()
            # The busybox image doubles as containerd's pause image (its Cmd sleeps).
            with Peer(registries=[registry.host], sandbox_image=pushed.reference) as ctd:
                time.sleep(2)
                proc = ctd.proc
                assert proc is not None
                run("containerd", ctd.cri_socket, pushed.reference, peer,
                    lambda: [proc.pid],
                    lambda: processes_named(b"containerd-shim-runc-v2",
                                            str(ctd.cri_socket).encode()))
    finally:
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
    if args.pods:
        rows = [Row(op if not op.startswith("List") or op == "ListImages"
                    else f"{op} ({args.pods})",
                    reads["crib"].get(op), reads["containerd"].get(op))
                for op in READS + WITH_CONTAINER]
        print()
        print(report(rows, title=f"reads, {args.reads} sequential calls each, {args.pods} "
                     f"pods of one running container present (handler {handlers[0]})"))
    for h in handlers if args.iterations else []:
        rows = [Row(op if op != "ListContainers" else f"ListContainers ({args.containers})",
                    ours[h].get(op), peer[h].get(op)) for op in OPS]
        print()
        print(report(rows, title=f"handler {h}: {args.iterations} iterations, CNI chain: "
                     + ("the same for both" if args.cni == "same" else "crib's default")))
    print()
    print(memory_table(memory["crib"], memory["containerd"]))

if __name__ == "__main__":
    main()

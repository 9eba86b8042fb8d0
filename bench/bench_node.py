"""Memory of crib's daemons per launcher, and how it holds up under work (issue 14).

    sudo python -m bench.bench_node [--pods 20] [--lifecycles 200] [--launchers process,node]

For each way of starting crib (`process`: each daemon its own console script, as the
per-daemon systemd units; `node`: the four forked by one crib-node from a parent that
imported them once, which is counted with them) and for Debian's containerd, PSS and RSS
(MiB) of the daemons plus the per-pod processes:

- idle, right after start, and again once the test image is pulled;
- with `--pods` pods of one running container each (then removed);
- idle again after `--lifecycles` pod lifecycles (run pod, create and start a container,
  status and list reads, stop and remove the pod): the pages forked children share decay
  as the children write them (reference counts, caches, the allocator), so the first
  figure alone flatters crib-node;
- with `--pods` pods again, after that workload.

Also, for crib: how long a daemon killed with SIGKILL takes to serve its socket again
(`process`: started again as `crib restart` or systemd would; `node`: forked again by
crib-node), median of `--restarts` per daemon, the rounds MIN_UPTIME apart (a daemon that
keeps dying sooner is forked after a backoff, 0.25 s and up).

Same client, image, registry and CNI chain as bench/bench_runtime.py; everything is
removed at the end.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from cri_api.v1 import api_pb2

from bench.bench_runtime import (
    LOG_ROOT, TRAPPER, Footprint, Peer, _container_config, _pod_config, _verbose_pid,
    footprint, processes_named, same_cni_as_peer,
)
from bench.harness import image_stub, runtime_stub
from crib_cli.node_supervisor import MIN_UPTIME
from tests.support.images import busybox_image, push_image
from tests.support.registry import Registry
from tests.support.stack import SERVICES, Stack


def _pods(rt: object, image: str, count: int, handler: str) -> list[str]:
    made = []
    for _ in range(count):
        pod = _pod_config(handler)
        sid = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(  # type: ignore[attr-defined]
            config=pod, runtime_handler=handler), timeout=120).pod_sandbox_id
        cid = rt.CreateContainer(api_pb2.CreateContainerRequest(  # type: ignore[attr-defined]
            pod_sandbox_id=sid, config=_container_config(image, "c", [TRAPPER]),
            sandbox_config=pod), timeout=120).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(  # type: ignore[attr-defined]
            container_id=cid), timeout=60)
        made.append(sid)
    return made


def _remove(rt: object, sids: list[str]) -> None:
    for sid in sids:
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(  # type: ignore[attr-defined]
            pod_sandbox_id=sid), timeout=120)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(  # type: ignore[attr-defined]
            pod_sandbox_id=sid), timeout=120)


def _lifecycles(rt: object, im: object, image: str, count: int, handler: str) -> float:
    """`count` kubelet-like pod lifecycles; seconds taken."""
    start = time.monotonic()
    for _ in range(count):
        (sid,) = _pods(rt, image, 1, handler)
        rt.ListContainers(api_pb2.ListContainersRequest(), timeout=30)  # type: ignore[attr-defined]
        rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30)  # type: ignore[attr-defined]
        rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(  # type: ignore[attr-defined]
            pod_sandbox_id=sid, verbose=True), timeout=30)
        im.ImageStatus(api_pb2.ImageStatusRequest(  # type: ignore[attr-defined]
            image=api_pb2.ImageSpec(image=image)), timeout=30)
        _remove(rt, [sid])
    return time.monotonic() - start


def measure(socket: Path, image: str, pods: int, lifecycles: int, handler: str,
            daemons: Callable[[], list[int]], per_pod: Callable[[], list[int]],
            ) -> tuple[dict[str, Footprint], float]:
    """The four moments of the table for one runtime, and the workload's duration."""
    rt, im = runtime_stub(socket), image_stub(socket)
    mem: dict[str, Footprint] = {}
    time.sleep(2)
    mem["idle"] = footprint(daemons(), [])  # before any call, as bench_runtime's idle
    im.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300)

    def with_pods(label: str) -> None:
        sids = _pods(rt, image, pods, handler)
        try:
            time.sleep(2)  # let both settle (crib's daemons trim after bursts)
            infra = [_verbose_pid(rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
                pod_sandbox_id=s, verbose=True), timeout=30).info) for s in sids]
            mem[label] = footprint(daemons(), per_pod() + [p for p in infra if p > 0])
        finally:
            _remove(rt, sids)

    time.sleep(2)
    mem["idle, pulled"] = footprint(daemons(), [])
    with_pods(f"{pods} pods")
    took = _lifecycles(rt, im, image, lifecycles, handler)
    time.sleep(2)
    mem[f"idle, {lifecycles} runs"] = footprint(daemons(), [])
    with_pods(f"{pods} pods, after")
    return mem, took


def restart_times(stack: Stack, rounds: int) -> dict[str, float]:
    """Median seconds from SIGKILL of a daemon to its socket accepting again."""
    out: dict[str, list[float]] = {s: [] for s in SERVICES}
    for n in range(rounds):
        if n:
            # A daemon that dies again within MIN_UPTIME of its start is forked after a
            # backoff (crib-node's "keeps dying"); this measures a crash after a good run.
            time.sleep(MIN_UPTIME)
        for svc in SERVICES:
            start = time.monotonic()
            stack.kill(svc)
            stack.start_one(svc)  # under crib-node: waits for the fork crib-node makes
            out[svc].append(time.monotonic() - start)
    return {s: statistics.median(v) for s, v in out.items()}


def table(results: dict[str, dict[str, Footprint]]) -> str:
    names = list(results)
    moments = list(next(iter(results.values())))
    head = f"{'PSS MiB (RSS)':<20}" + "".join(f"{n:>26}" for n in names)
    lines = [head, "-" * len(head)]
    for when in moments:
        cells = []
        for n in names:
            f = results[n].get(when)
            cells.append("" if f is None else
                         f"{f.daemons[1] / 1024:6.1f}+{f.per_pod[1] / 1024:5.1f}"
                         f"={f.pss / 1024:6.1f} ({f.rss / 1024:5.0f})")
        lines.append(f"{when:<20}" + "".join(f"{c:>26}" for c in cells))
    lines.append("(daemons + per-pod processes = total PSS, RSS total in brackets; crib-node "
                 "counts its parent with the daemons; per-pod: crib's conmons and infra "
                 "processes, containerd's shims and pause processes)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=3, help="kill -9 rounds per daemon")
    parser.add_argument("--launchers", default="process,node")
    parser.add_argument("--handler", default="runc")
    parser.add_argument("--no-peer", action="store_true", help="skip containerd")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, dict[str, Footprint]] = {}
    took: dict[str, float] = {}
    restarts: dict[str, dict[str, float]] = {}
    try:
        with Registry() as registry:
            pushed = push_image(registry, "crib-bench/busybox", "v1",
                                busybox_image(cmd=["sleep", "3600000"]))
            for launcher in [x for x in args.launchers.split(",") if x]:
                name = f"crib ({launcher})"
                stack = Stack.create(launcher, CRIB_LOG__LEVEL="warning")
                same_cni_as_peer(stack)
                try:
                    stack.start()
                    results[name], took[name] = measure(
                        stack.cri_socket, pushed.reference, args.pods, args.lifecycles,
                        args.handler, stack.daemon_pids,
                        lambda: processes_named(b"conmon", str(stack.root).encode() + b"/"))
                    restarts[name] = restart_times(stack, args.restarts)
                finally:
                    stack.cleanup()
            if not args.no_peer:
                with Peer(registries=[registry.host], sandbox_image=pushed.reference) as ctd:
                    proc = ctd.proc
                    assert proc is not None
                    results["containerd"], took["containerd"] = measure(
                        ctd.cri_socket, pushed.reference, args.pods, args.lifecycles,
                        args.handler, lambda: [proc.pid],
                        lambda: processes_named(b"containerd-shim-runc-v2",
                                                str(ctd.cri_socket).encode()))
    finally:
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
    print()
    print(table(results))
    print()
    print(f"workload ({args.lifecycles} pod lifecycles, s): "
          + ", ".join(f"{n} {t:.1f}" for n, t in took.items()))
    for name, times in restarts.items():
        print(f"{name}: kill -9 to socket serving again, median of {args.restarts}, ms: "
              + ", ".join(f"{s} {t * 1000:.0f}" for s, t in times.items()))


if __name__ == "__main__":
    main()

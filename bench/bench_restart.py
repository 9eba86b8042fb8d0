"""Time from kill -9 to ready, for each crib daemon, against Debian's containerd.

    python -m bench.bench_restart [--runs 5] [--pods 2] [--images 4] [--no-peer]

Starts a crib node (all four daemons, `tests.support.stack.Stack`) with a few images
pulled and pods running, so every daemon has something to recover; then, for each daemon
in turn, `--runs` times: SIGKILL it, start the same program again, and time until it is
ready (netd, imaged, runtimed: /healthz says ready, which each says only once its
recovery is done; gateway: the CRI socket answers Version), polling every 20 ms. The same
for a private containerd (`bench.peer_containerd`, CRI Version answering) with the same
images pulled and pods running. Prints min/median/max per daemon and the ratio of crib's
median to containerd's. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import time
from pathlib import Path

from cri_api.v1 import api_pb2

from bench.bench_runtime import Peer
from bench.harness import image_stub, runtime_stub
from bench.peer_containerd import CONTAINERD, PeerContainerd
from crib_cli.commands.restart import DAEMONS, wait_ready
from crib_common.settings import CribSettings
from tests.support.images import Image, ImageConfig, busybox_image, push_image
from tests.support.registry import Registry
from tests.support.stack import BIN, Stack

POLL = 0.02


def _settings(stack: Stack) -> CribSettings:
    return CribSettings(
        gateway={"socket": stack.cri_socket, "http_socket": stack.socket("gateway")},
        imaged={"socket": stack.socket("imaged")}, runtimed={"socket": stack.socket("runtimed")},
        netd={"socket": stack.socket("netd")})


def _populate(cri_socket: Path, refs: list[str], pods: int) -> list[str]:
    """Pull `refs`, run `pods` pods each with one sleeping container; the pod IDs."""
    img, rt = image_stub(cri_socket), runtime_stub(cri_socket)
    for ref in refs:
        img.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)),
                      timeout=120)
    ids = []
    for n in range(pods):
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=f"bench-{n}", uid=f"bench-uid-{n}",
                                                namespace="crib-bench"),
            log_directory=f"/tmp/crib-bench-logs/{n}")
        sid = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config),
                               timeout=60).pod_sandbox_id
        cid = rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=config, config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name="c"),
                image=api_pb2.ImageSpec(image=refs[n % len(refs)]), log_path="c.log")),
            timeout=60).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
        ids.append(sid)
    return ids


def _remove_pods(cri_socket: Path, ids: list[str]) -> None:
    rt = runtime_stub(cri_socket)
    for sid in ids:
        with contextlib.suppress(Exception):
            rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                                timeout=60)


def _kill_and_restart(stack: Stack, daemon: str, settings: CribSettings) -> float:
    """Seconds from SIGKILL of `daemon` to its being ready again."""
    proc = stack.procs[daemon]
    started = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log = open(stack.root / f"{daemon}.log", "ab")
    stack.procs[daemon] = subprocess.Popen(
        [str(BIN / f"crib-{daemon}")], env=stack.env(), stdout=log, stderr=log,
        stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    error = asyncio.run(wait_ready(daemon, settings, 60.0, stack.procs[daemon]))
    if error:
        raise RuntimeError(f"{daemon} not ready after kill -9: {error}\n"
                           f"{stack.log(daemon)[-2000:]}")
    return time.monotonic() - started


def _kill_and_restart_peer(ctd: PeerContainerd) -> float:
    assert ctd.proc is not None
    started = time.monotonic()
    ctd.proc.send_signal(signal.SIGKILL)
    ctd.proc.wait(timeout=30)
    log = open(ctd.log_path, "ab")
    ctd.proc = subprocess.Popen([CONTAINERD, "--config", str(ctd.config_path)], stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = started + 60
    while not (ctd.cri_socket.exists() and ctd._cri_answers()):
        if time.monotonic() > deadline or ctd.proc.poll() is not None:
            raise RuntimeError(f"containerd not ready after kill -9:\n{ctd.log_tail()}")
        time.sleep(POLL)
    return time.monotonic() - started


def _row(name: str, samples: list[float], peer: float | None) -> str:
    med = statistics.median(samples)
    ratio = f"{med / peer:5.2f}x" if peer else "    -"
    return (f"{name:<12} {min(samples) * 1000:8.0f} {med * 1000:8.0f} "
            f"{max(samples) * 1000:8.0f}   {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--no-peer", action="store_true", help="skip containerd")
    args, _ = parser.parse_known_args()  # scripts/bench.sh passes its arguments to all
    base = busybox_image(cmd=["/bin/sleep", "86400"])
    results: dict[str, list[float]] = {}
    peer: list[float] = []
    with Registry() as registry:
        refs = [push_image(registry, f"crib-bench/restart{i}", "v1", Image(
            base.layers, ImageConfig(cmd=["/bin/sleep", "86400"], labels={"n": str(i)}))
        ).reference for i in range(args.images)]
        with Stack.running() as stack:
            settings = _settings(stack)
            pods = _populate(stack.cri_socket, refs, args.pods)
            try:
                for daemon in DAEMONS:
                    results[daemon] = [_kill_and_restart(stack, daemon, settings)
                                       for _ in range(args.runs)]
            finally:
                _remove_pods(stack.cri_socket, pods)
        if not args.no_peer:
            # Its pod sandboxes run a pause-like image from the same registry.
            # (`Peer`: containerd with the oom_score_adj clamp this machine needs.)
            with Peer(registries=[registry.host], sandbox_image=refs[0]) as ctd:
                pods = _populate(ctd.cri_socket, refs, args.pods)
                try:
                    peer = [_kill_and_restart_peer(ctd) for _ in range(args.runs)]
                finally:
                    _remove_pods(ctd.cri_socket, pods)
    peer_med = statistics.median(peer) if peer else None
    print(f"kill -9 to ready, {args.runs} runs each, {args.images} images, "
          f"{args.pods} pods running (ms)")
    print(f"{'daemon':<12} {'min':>8} {'median':>8} {'max':>8}   vs containerd")
    for daemon, samples in results.items():
        print(_row(daemon, samples, peer_med))
    if peer:
        print(_row("containerd", peer, None))


if __name__ == "__main__":
    main()

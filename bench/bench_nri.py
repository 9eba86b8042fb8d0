"""What NRI costs the kubelet's lifecycle calls (issue 15): RunPodSandbox and
CreateContainer+StartContainer p50/p90 (ms) on crib with no NRI plugin, with one plugin
subscribed to no lifecycle event, and with one subscribed to every event.

    sudo python -m bench.bench_nri [--iterations 30] [--handler runc]

The plugin is tests/support/nri_plugin.py's TestPlugin, in a thread of this process,
answering every event at once with an empty reply and without parsing it (raw mode; a Go
plugin parses in microseconds, betterproto in milliseconds): what is measured is
runtimed's side of the protocol (messages, framing, ttrpc round trips), not a plugin's
work. A last table times the events alone, in-process, with no CRI call around them.
"Subscribed to nothing" answers Configure with only UpdatePodSandbox (event 12), which
those calls never raise: an events mask of 0 would mean every event (NRI). The stack is
tests/support/stack.py's Stack on private sockets, the same busybox image from a local
registry; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from typing import Any

import structlog
from cri_api.v1 import api_pb2

from bench.bench_runtime import LOG_ROOT, TRAPPER, _container_config, _pod_config, _timed
from bench.harness import Row, Stats, image_stub, report, runtime_stub
from tests.support.images import busybox_image, push_image
from tests.support.nri_plugin import NodeStub, TestPlugin, ThreadedPlugin, mask
from tests.support.registry import Registry
from tests.support.stack import Stack

EVERYTHING = mask("RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "CreateContainer",
                  "PostCreateContainer", "StartContainer", "PostStartContainer",
                  "UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer")
NOTHING = 1 << (12 - 1)  # UpdatePodSandbox only (api.proto Event 12)
OPS = ("RunPodSandbox", "Create+StartContainer")
CONFIGS: dict[str, int | None] = {"none": None, "subscribed to nothing": NOTHING,
                                  "subscribed to everything": EVERYTHING}


def lifecycle(rt: Any, image: str, handler: str, iterations: int,
              samples: dict[str, list[float]]) -> None:
    """`iterations` pods, each with one container created and started, timed into
    `samples` (after one unmeasured round)."""
    for i in range(iterations + 1):
        s: dict[str, list[float]] = {} if i < 1 else samples
        pod = _pod_config(handler)
        sid = _timed(s, "RunPodSandbox", lambda: rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=pod, runtime_handler=handler), timeout=120)).pod_sandbox_id

        def create_start() -> None:
            cid = rt.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=sid, config=_container_config(image, "c", [TRAPPER]),
                sandbox_config=pod), timeout=120).container_id
            rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)

        _timed(s, "Create+StartContainer", create_start)
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)


def event_round_trips(n: int) -> dict[str, Stats]:
    """runtimed's NRI side alone, in this process: `Nri` on a temporary socket with one
    TestPlugin subscribed to every event, p50/p90 of RunPodSandbox, CreateContainer (a
    config.json of bench size) and StartContainer deliveries, no CRI, no runc. What a
    plugin costs apart from the machine's load."""
    import asyncio
    import tempfile

    from crib_common.settings import NriSection
    from runtimed.nri import Nri
    from runtimed.store.records import ContainerMeta, ContainerRecord, SandboxMeta, SandboxRecord

    spec = {"process": {"args": ["sh", "-c", TRAPPER], "env": [f"K{i}=v" for i in range(8)]},
            "mounts": [{"destination": f"/m{i}", "type": "bind", "source": "/s",
                        "options": ["rbind", "ro"]} for i in range(10)],
            "annotations": {f"io.kubernetes.cri.{i}": "v" for i in range(8)},
            "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
                      "resources": {"cpu": {"shares": 2}, "memory": {"limit": 1 << 28}}}}

    async def run(root: str) -> dict[str, Stats]:
        nri = Nri(NodeStub(), NriSection(socket=f"{root}/nri.sock",  # type: ignore[arg-type]
                                      plugin_dir=f"{root}/none"))
        await nri.start()
        plugin = TestPlugin(nri.cfg.socket, "bench", "50", EVERYTHING, raw=True)
        await plugin.connect()
        while not nri.plugins:
            await asyncio.sleep(0.01)
        pod = SandboxRecord(meta=SandboxMeta(id="p" * 64, name="p", namespace="n", uid="u",
                                             handler="runc", created_at=1))
        ctr = ContainerRecord(meta=ContainerMeta(id="c" * 64, pod_id=pod.meta.id, name="c",
                                                 handler="runc", image="i", bundle="/x",
                                                 created_at=1))
        samples: dict[str, list[float]] = {}
        clock = asyncio.get_running_loop().time
        for i in range(n + 20):
            for name, call in (
                    ("event: RunPodSandbox", lambda: nri.run_pod_sandbox(pod)),
                    ("event: CreateContainer", lambda: nri.create_container(
                        pod, ctr, json.loads(json.dumps(spec)))),
                    ("event: StartContainer", lambda: nri.start_container(pod, ctr))):
                t0 = clock()
                await call()
                if i >= 20:
                    samples.setdefault(name, []).append(clock() - t0)
        await plugin.close()
        await nri.close()
        return {k: Stats.of(v) for k, v in samples.items()}

    with tempfile.TemporaryDirectory(prefix="crib-nri-") as root:
        return asyncio.run(run(root))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3,
                        help="the iterations are split in rounds of each configuration")
    parser.add_argument("--handler", default="runc")
    parser.add_argument("--events", type=int, default=500,
                        help="in-process event round trips per event kind")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, dict[str, Stats]] = {}
    trips = event_round_trips(args.events)
    try:
        with Registry() as registry:
            pushed = push_image(registry, "crib-bench/busybox", "v1",
                                busybox_image(cmd=["sleep", "3600000"]))
            with Stack.running(CRIB_LOG__LEVEL="warning") as stack:
                time.sleep(1)
                rt, im = runtime_stub(stack.cri_socket), image_stub(stack.cri_socket)
                im.PullImage(api_pb2.PullImageRequest(
                    image=api_pb2.ImageSpec(image=pushed.reference)), timeout=300)
                # Rounds of each configuration in turn, so drift in the machine's load
                # (2 shared cores) falls on all three alike.
                samples: dict[str, dict[str, list[float]]] = {c: {} for c in CONFIGS}
                per_round = max(1, args.iterations // args.rounds)
                for _ in range(args.rounds):
                    for label, events in CONFIGS.items():
                        plugin = None if events is None else ThreadedPlugin(TestPlugin(
                            stack.root / "nri.sock", "bench", "50", events, raw=True)).start()
                        try:
                            lifecycle(rt, pushed.reference, args.handler, per_round,
                                      samples[label])
                        finally:
                            if plugin is not None:
                                plugin.stop()
                results = {c: {op: Stats.of(v) for op, v in samples[c].items()}
                           for c in CONFIGS}
    finally:
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
    for label in ("subscribed to nothing", "subscribed to everything"):
        rows = [Row(op, results[label].get(op), results["none"].get(op)) for op in OPS]
        print()
        table = report(rows, ours="plugin", peer="no plugin",
                       title=f"NRI: one plugin {label} vs no plugin, handler "
                             f"{args.handler}, {args.iterations} iterations in "
                             f"{args.rounds} rounds")
        # The harness' footer speaks of crib against a peer; here both sides are crib.
        print(table.rsplit("\n", 1)[0])
        print("(milliseconds; ratio = with the plugin / without)")
    print()
    print(report([Row(k, v) for k, v in trips.items()], ours="nri", peer="-",
                 title=f"NRI alone: one event to one plugin and its answer, in-process "
                       f"({args.events} each)").rsplit("\n", 1)[0])
    print("(milliseconds)")


if __name__ == "__main__":
    main()

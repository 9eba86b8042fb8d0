"""`crib pods`, `crib ps`, `crib inspect`, `crib logs`, `crib stopp`, `crib rmp`: pods and
containers through the gateway's CRI socket (what crictl does, in crib's words).

`crib pods` adds, for a pod whose container waits on an image, that pull's progress:
imaged's pull table names the pod each CRI pull is for (the kubelet sends the pod's
sandbox config with PullImage), matched here by uid, else by namespace and name."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import betterproto
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crib_common.cri.runtime.v1 import (
    ContainerFilter,
    ContainerStatusRequest,
    ListContainersRequest,
    ListPodSandboxRequest,
    PodSandboxFilter,
    PodSandboxStatusRequest,
    RemovePodSandboxRequest,
    RuntimeServiceStub,
    StopPodSandboxRequest,
)
from crib_common.models.imaged import PullInfo
from crib_common.settings import CribSettings

from .. import render
from .pulls import pulls_in_flight

_CSTATE = {0: "Created", 1: "Running", 2: "Exited", 3: "Unknown"}
_PSTATE = {0: "Ready", 1: "NotReady"}


def register(sub: Any) -> None:
    p = sub.add_parser("pods", help="list pod sandboxes")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE selector")
    p.add_argument("-q", "--quiet", action="store_true", help="IDs only")
    p.set_defaults(func=pods)
    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="include exited containers")
    p.add_argument("--pod", default="", help="only this pod (ID or prefix)")
    p.add_argument("-q", "--quiet", action="store_true", help="IDs only")
    p.set_defaults(func=ps)
    p = sub.add_parser("inspect", help="verbose status of a container or pod (JSON)")
    p.add_argument("id")
    p.set_defaults(func=inspect)
    p = sub.add_parser("logs", help="print a container's log (CRI log format decoded)")
    p.add_argument("id")
    p.add_argument("--raw", action="store_true", help="print the CRI log lines as stored")
    p.set_defaults(func=logs)
    p = sub.add_parser("stopp", help="stop pod sandboxes")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=stopp)
    p = sub.add_parser("rmp", help="stop and remove pod sandboxes")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=rmp)


def _stub(settings: CribSettings) -> tuple[Channel, RuntimeServiceStub]:
    channel = Channel(path=str(settings.gateway.socket))
    return channel, RuntimeServiceStub(channel)


def _age(ns: int) -> str:
    secs = max(int(time.time() - ns / 1e9), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _table(rows: list[list[str]]) -> None:
    render.table(rows[0], rows[1:])


def _pull_text(info: PullInfo) -> str:
    """"busybox:1.36 42% 3.1 MB/s" for the PULLING column."""
    name = info.reference.rsplit("/", 1)[-1]
    pct = f"{100 * info.done // info.size}%" if info.size else info.state
    return f"{name} {pct} {render.rate(info.rate)}"


def _pulls_by_pod(pulls: list[PullInfo]) -> dict[str, list[PullInfo]]:
    """Pulls keyed by the pod uid and by "namespace/name" they are for."""
    out: dict[str, list[PullInfo]] = {}
    for info in pulls:
        pod = info.requester.pod
        if pod is None:
            continue
        keys = {pod.uid, f"{pod.namespace}/{pod.name}"} - {"", "/"}
        for key in keys:
            out.setdefault(key, []).append(info)
    return out


async def pods(args: argparse.Namespace, settings: CribSettings) -> int:
    selector = dict(item.split("=", 1) for item in args.label if "=" in item)
    channel, stub = _stub(settings)
    try:
        items = (await stub.list_pod_sandbox(ListPodSandboxRequest(
            filter=PodSandboxFilter(label_selector=selector)), timeout=10)).items
    except GRPCError as exc:
        print(f"crib: {exc.message}")
        return 1
    finally:
        channel.close()
    if args.quiet:
        for p in items:
            print(p.id)
        return 0
    by_pod = _pulls_by_pod(await pulls_in_flight(settings))
    rows = [["POD ID", "NAME", "NAMESPACE", "STATE", "AGE", "HANDLER"]]
    pulling: list[str] = []
    for p in sorted(items, key=lambda x: -x.created_at):
        rows.append([p.id[:13], p.metadata.name, p.metadata.namespace,
                     _PSTATE.get(int(p.state), "?"), _age(p.created_at), p.runtime_handler])
        mine = by_pod.get(p.metadata.uid) or by_pod.get(
            f"{p.metadata.namespace}/{p.metadata.name}") or []
        pulling.append(", ".join(_pull_text(info) for info in mine))
    if any(pulling):
        rows[0].append("PULLING")
        for row, text in zip(rows[1:], pulling):
            row.append(text)
    _table(rows)
    return 0


async def ps(args: argparse.Namespace, settings: CribSettings) -> int:
    channel, stub = _stub(settings)
    try:
        items = (await stub.list_containers(ListContainersRequest(
            filter=ContainerFilter(pod_sandbox_id=args.pod)), timeout=10)).containers
    except GRPCError as exc:
        print(f"crib: {exc.message}")
        return 1
    finally:
        channel.close()
    if not args.all:
        items = [c for c in items if int(c.state) != 2]
    if args.quiet:
        for c in items:
            print(c.id)
        return 0
    rows = [["CONTAINER", "NAME", "STATE", "CREATED", "IMAGE", "POD ID"]]
    for c in sorted(items, key=lambda x: -x.created_at):
        rows.append([c.id[:13], c.metadata.name, _CSTATE.get(int(c.state), "?"),
                     _age(c.created_at), c.image.image, c.pod_sandbox_id[:13]])
    _table(rows)
    return 0


async def inspect(args: argparse.Namespace, settings: CribSettings) -> int:
    channel, stub = _stub(settings)
    try:
        try:
            reply: Any = await stub.container_status(
                ContainerStatusRequest(container_id=args.id, verbose=True), timeout=10)
        except GRPCError:
            reply = await stub.pod_sandbox_status(
                PodSandboxStatusRequest(pod_sandbox_id=args.id, verbose=True), timeout=10)
    except GRPCError as exc:
        print(f"crib: no container or pod {args.id!r}: {exc.message}")
        return 1
    finally:
        channel.close()
    out = reply.to_dict(casing=betterproto.Casing.SNAKE)
    for key, value in dict(out.get("info") or {}).items():
        try:
            out["info"][key] = json.loads(value)
        except ValueError:
            pass
    print(json.dumps(out, indent=2))
    return 0


async def logs(args: argparse.Namespace, settings: CribSettings) -> int:
    channel, stub = _stub(settings)
    try:
        st = (await stub.container_status(ContainerStatusRequest(container_id=args.id),
                                          timeout=10)).status
    except GRPCError as exc:
        print(f"crib: {exc.message}")
        return 1
    finally:
        channel.close()
    if not st.log_path:
        print("crib: the container has no log path")
        return 1
    try:
        lines = Path(st.log_path).read_text(errors="replace").splitlines()
    except OSError as exc:
        print(f"crib: cannot read {st.log_path}: {exc.strerror}")
        return 1
    partial = ""
    for line in lines:
        if args.raw:
            print(line)
            continue
        # "<RFC3339Nano> <stream> <P|F> <content>" (CRI log format).
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        content = parts[3] if len(parts) == 4 else ""
        if parts[2] == "P":
            partial += content
            continue
        print(partial + content)
        partial = ""
    if partial:
        print(partial)
    return 0


async def _each_pod(settings: CribSettings, ids: list[str], remove: bool) -> int:
    channel, stub = _stub(settings)
    rc = 0
    try:
        for pid in ids:
            try:
                await stub.stop_pod_sandbox(StopPodSandboxRequest(pod_sandbox_id=pid),
                                            timeout=120)
                if remove:
                    await stub.remove_pod_sandbox(RemovePodSandboxRequest(pod_sandbox_id=pid),
                                                  timeout=120)
                print(pid)
            except GRPCError as exc:
                print(f"crib: {pid}: {exc.message}")
                rc = 1
    finally:
        channel.close()
    return rc


async def stopp(args: argparse.Namespace, settings: CribSettings) -> int:
    return await _each_pod(settings, args.ids, remove=False)


async def rmp(args: argparse.Namespace, settings: CribSettings) -> int:
    return await _each_pod(settings, args.ids, remove=True)

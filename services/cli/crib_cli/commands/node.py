"""`crib version`, `crib status`, `crib wait`, `crib config`, `crib sweep`: the node as a
whole."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crib_common.cri.runtime.v1 import RuntimeServiceStub, StatusRequest, VersionRequest
from crib_common.errors import CribError
from crib_common.settings import CribSettings


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="CRI Version through the gateway")
    p.set_defaults(func=version)
    p = sub.add_parser("status", help="CRI Status (RuntimeReady, NetworkReady) and what "
                                      "imaged's recovery dropped or kept incomplete")
    p.set_defaults(func=status)
    p = sub.add_parser("wait", help="wait until the CRI socket answers")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=wait)
    p = sub.add_parser("config", help="print the effective configuration (TOML-like JSON)")
    p.set_defaults(func=config)
    p = sub.add_parser("sweep", help="remove networks, snapshots and directories left for "
                                     "pods and containers runtimed has no record of")
    p.set_defaults(func=sweep)


def _stub(settings: CribSettings) -> tuple[Channel, RuntimeServiceStub]:
    channel = Channel(path=str(settings.gateway.socket))
    return channel, RuntimeServiceStub(channel)


async def version(args: argparse.Namespace, settings: CribSettings) -> int:
    channel, stub = _stub(settings)
    try:
        reply = await stub.version(VersionRequest(), timeout=5)
        print(f"{reply.runtime_name} {reply.runtime_version} (CRI {reply.runtime_api_version})")
    finally:
        channel.close()
    return 0


async def status(args: argparse.Namespace, settings: CribSettings) -> int:
    ok = True
    channel, stub = _stub(settings)
    try:
        reply = await stub.status(StatusRequest(verbose=True), timeout=5)
    except (OSError, GRPCError, asyncio.TimeoutError) as exc:
        print(f"CRI: no answer on {settings.gateway.socket}: {exc}")
        ok = False
    else:
        for cond in reply.status.conditions:
            ok = ok and cond.status
            line = f"{cond.type}: {'true' if cond.status else 'false'}"
            if not cond.status:
                line += f" ({cond.reason}: {cond.message})"
            print(line)
        for line in cgroup_lines(reply.info.get("runtimed", "")):
            print(line)
        for line in nri_lines(reply.info.get("runtimed", "")):
            print(line)
    finally:
        channel.close()
    # Images recovery dropped are reported here, not only in imaged's log (issue 11).
    from crib_common.clients.imaged import ImagedClient

    from .images import recovery_lines

    try:
        async with ImagedClient(settings.imaged.socket) as client:
            report = await client.recovery(timeout=5)
    except CribError as exc:
        print(f"imaged: {exc.kind}: {exc.message}")
        return 1
    for line in recovery_lines(report):
        print(line)
    return 0 if ok and not report.dropped else 1


def cgroup_lines(runtimed_health: str) -> list[str]:
    """What runtimed's /healthz says of cgroups and OOM scores (Status verbose info), as
    `crib status` prints it; nothing when runtimed did not answer."""
    try:
        details = json.loads(runtimed_health).get("details") or {}
    except (ValueError, AttributeError):
        return []
    cg = details.get("cgroups") if isinstance(details, dict) else None
    if not isinstance(cg, dict):
        return []
    out = [f"cgroups: v{cg.get('version')} ({cg.get('mode')}), driver {cg.get('driver')}"]
    oom = cg.get("oom_score_adj") or {}
    if oom.get("restricted"):
        out.append(f"oom_score_adj: values below {oom.get('own_score')} are raised to it "
                   f"(runtimed lacks CAP_SYS_RESOURCE)")
    elif oom:
        out.append("oom_score_adj: applied as the kubelet asks")
    return out


def nri_lines(runtimed_health: str) -> list[str]:
    """The NRI socket and its connected plugins, in call order, from runtimed's /healthz
    (Status verbose info); nothing when runtimed did not answer."""
    try:
        details = json.loads(runtimed_health).get("details") or {}
    except (ValueError, AttributeError):
        return []
    nri = details.get("nri") if isinstance(details, dict) else None
    if not isinstance(nri, dict):
        return []
    if not nri.get("enabled"):
        return ["nri: disabled"]
    plugins = nri.get("plugins") or []
    out = [f"nri: {nri.get('socket')}, {len(plugins)} plugin(s)"]
    for p in plugins:
        events = ",".join(p.get("events") or []) or "none"
        out.append(f"  {p.get('id')} ({p.get('kind')}, pid {p.get('pid')}): {events}")
    return out


async def wait(args: argparse.Namespace, settings: CribSettings) -> int:
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        channel, stub = _stub(settings)
        try:
            await stub.version(VersionRequest(), timeout=2)
            return 0
        except (OSError, GRPCError, asyncio.TimeoutError) as exc:
            last = str(exc)
        finally:
            channel.close()
        await asyncio.sleep(0.2)
    print(f"crib: the CRI socket {settings.gateway.socket} did not answer: {last}")
    return 1


async def config(args: argparse.Namespace, settings: CribSettings) -> int:
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


async def sweep(args: argparse.Namespace, settings: CribSettings) -> int:
    from crib_common.client import DaemonClient

    async with DaemonClient("runtimed", settings.runtimed.socket) as client:
        _, raw = await client.request_bytes("POST", "/v1/sweep", data=b"{}", timeout=300,
                                            content_type="application/json")
    report = json.loads(raw)
    removed = report.get("removed") or {}
    print("removed: " + (", ".join(f"{v} {k}" for k, v in sorted(removed.items()))
                         or "nothing"))
    if not report.get("peers_answered"):
        print("netd or imaged did not answer: what they hold is swept once they do")
        return 1
    return 0

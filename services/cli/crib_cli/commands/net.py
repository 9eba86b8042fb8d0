"""`crib net`: pod attachments, namespaces and the CNI configuration netd uses."""

from __future__ import annotations

import argparse
import json
from typing import Any

from crib_common.clients.netd import NetdClient
from crib_common.settings import CribSettings


def register(sub: Any) -> None:
    """Add `crib net ...` to the CLI."""
    net = sub.add_parser("net", help="pod networking (netd): attachments, namespaces, CNI config")
    verbs = net.add_subparsers(dest="net_command", required=True)
    p = verbs.add_parser("list", aliases=["ls"], help="list pod attachments with their IPs")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=list_attachments)
    p = verbs.add_parser("show", help="one pod's attachment, with the CNI result")
    p.add_argument("pod_id")
    p.set_defaults(func=show)
    p = verbs.add_parser("config", help="the active CNI configuration and readiness")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=config)
    p = verbs.add_parser("namespaces", aliases=["ns"], help="pinned network namespaces")
    p.set_defaults(func=namespaces)
    p = verbs.add_parser("check", help="CNI CHECK of one pod's attachment")
    p.add_argument("pod_id")
    p.set_defaults(func=check)
    p = verbs.add_parser("rm", help="CNI DEL and remove the namespace of one pod")
    p.add_argument("pod_id")
    p.set_defaults(func=remove)
    p = verbs.add_parser("gc", help="remove orphan namespaces; CNI GC (CNI 1.1 plugins)")
    p.set_defaults(func=gc)


def _client(settings: CribSettings) -> NetdClient:
    return NetdClient(settings.netd.socket)


async def list_attachments(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        nets = await client.list_pod_networks()
    if args.json:
        print(json.dumps([n.model_dump(mode="json") for n in nets], indent=2))
        return 0
    print(f"{'POD ID':<14} {'POD':<36} {'STATE':<9} {'NETWORK':<16} {'IPS':<32} NETNS")
    for n in nets:
        ips = ",".join(ip.ip for ip in n.ips) or "-"
        pod = f"{n.pod_namespace}/{n.pod_name}" if n.pod_name else "-"
        netns = n.netns_path + ("" if n.netns_present else " (gone)")
        print(f"{n.pod_id[:13]:<14} {pod[:35]:<36} {n.state:<9} {n.network_name[:15]:<16} "
              f"{ips[:31]:<32} {netns}")
    return 0


async def show(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        net = await client.get_pod_network(args.pod_id)
    print(json.dumps(net.model_dump(mode="json"), indent=2))
    return 0


async def config(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        view = await client.get_config()
    if args.json:
        print(json.dumps(view.model_dump(mode="json"), indent=2))
        return 0 if view.ready else 1
    print(f"conf dir:     {view.conf_dir}")
    print(f"plugin dirs:  {':'.join(view.plugin_dirs)}")
    if not view.ready:
        print(f"ready:        false ({view.reason}: {view.message})")
        return 1
    print("ready:        true")
    print(f"file:         {view.source}")
    print(f"network:      {view.name} (cniVersion {view.cni_version}, "
          f"speaking {view.negotiated_version})")
    print(f"plugins:      {' -> '.join(view.plugins)}")
    print(json.dumps(view.config, indent=2))
    return 0


async def namespaces(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        items = await client.list_namespaces()
    print(f"{'PATH':<60} {'PINNED':<7} ATTACHED")
    for ns in items:
        print(f"{ns.path:<60} {str(ns.pinned).lower():<7} {str(ns.attached).lower()}")
    return 0


async def check(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        await client.check_pod_network(args.pod_id)
    print("ok")
    return 0


async def remove(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        await client.remove_pod_network(args.pod_id)
    return 0


async def gc(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        report = await client.gc()
    print(json.dumps(report.model_dump(mode="json"), indent=2))
    return 0 if not report.errors else 1

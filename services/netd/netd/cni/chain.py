"""Executing a network configuration list on an attachment (SPEC.md section 3).

ADD runs the plugins in order, each given the previous plugin's result as `prevResult`;
the final result is what netd caches. DEL runs them in reverse order, each given the final
ADD result; CHECK runs them in order with the same. STATUS and GC exist since spec 1.1.0:
they run only when the selected version is 1.1.0 or later, which is decided with the
plugins' own VERSION answers (Debian's plugins 1.1.1 implement spec versions up to 1.0.0,
so they are never sent STATUS or GC).

The request configuration of each call (section 3, "Deriving request configuration"):
the plugin's object with `cniVersion` and `name` of the list inserted, `capabilities`
removed, `runtimeConfig` holding the capability arguments this plugin declared and the
runtime provided, and `prevResult` where the operation calls for one.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .config import NetworkConfig, version_key, find_plugin
from .invoke import CniPluginError, Invocation, PluginExec

__all__ = ["Attachment", "ChainRunner", "parse_ips"]

log = structlog.get_logger("netd.cni")

# prevResult on DEL and the CHECK command appeared in spec 0.4.0 (SPEC.md version table).
_V040 = (0, 4, 0)
_V110 = (1, 1, 0)


@dataclass
class Attachment:
    """Per-attachment parameters (SPEC.md "Attachment Parameters")."""

    container_id: str
    netns: str
    ifname: str
    args: list[tuple[str, str]] = field(default_factory=list)
    # Capability arguments, by capability name (CONVENTIONS.md "Well-known Capabilities").
    capabilities: dict[str, Any] = field(default_factory=dict)


class ChainRunner:
    """Runs ADD/DEL/CHECK/STATUS/GC of one configuration list through a `PluginExec`."""

    def __init__(self, exec_: PluginExec, plugin_dirs: list[Path], timeout: float) -> None:
        self.exec = exec_
        self.plugin_dirs = plugin_dirs
        self.timeout = timeout
        # VERSION answers by (binary, mtime): plugins do not change under a running node
        # unless the package is upgraded, which changes the mtime.
        self._versions: dict[tuple[str, int], list[str]] = {}
        self._version_lock = asyncio.Lock()

    # ---------------------------------------------------------------- lookup

    def binary(self, plugin_type: str, command: str) -> Path:
        """SPEC.md section 3 step 1: a plugin that cannot be found is an error."""
        path = find_plugin(plugin_type, self.plugin_dirs)
        if path is None:
            raise CniPluginError(plugin_type, command, 0,
                                 f"plugin binary not found in "
                                 f"{':'.join(str(p) for p in self.plugin_dirs)}")
        return path

    async def supported_versions(self, plugin_type: str) -> list[str]:
        """The plugin's VERSION answer (`supportedVersions`), cached."""
        path = self.binary(plugin_type, "VERSION")
        key = (str(path), os.stat(path).st_mtime_ns)
        if key in self._versions:
            return self._versions[key]
        async with self._version_lock:
            if key not in self._versions:
                inv = Invocation("VERSION", plugin_dirs=self.plugin_dirs)
                result = await self.exec.run(path, inv, {"cniVersion": "1.1.0"}, self.timeout)
                versions = (result or {}).get("supportedVersions") or []
                self._versions[key] = [str(v) for v in versions]
        return self._versions[key]

    async def negotiate(self, config: NetworkConfig) -> str:
        """The version to speak: the highest of the list's versions every plugin supports
        (SPEC.md "Version considerations": runtimes MAY consider the plugins' VERSION)."""
        offered = {config.cni_version, *(v for v in config.raw.get("cniVersions") or []
                                        if isinstance(v, str))}
        common = set(offered)
        for plugin in config.plugins:
            try:
                supported = await self.supported_versions(str(plugin["type"]))
            except CniPluginError:
                continue  # reported by the call itself
            if supported:
                common &= set(supported)
        if not common:
            return config.cni_version
        return max(common, key=version_key)

    # ---------------------------------------------------------------- operations

    async def add(self, config: NetworkConfig, att: Attachment) -> dict[str, Any]:
        """ADD every plugin in order; returns the final result (to be cached)."""
        version = await self.negotiate(config)
        inv = self._invocation("ADD", att)
        prev: dict[str, Any] | None = None
        for plugin in config.plugins:
            request = self._request(config, plugin, version, att, prev)
            result = await self.exec.run(self.binary(plugin["type"], "ADD"), inv, request,
                                         self.timeout)
            if result is None:
                raise CniPluginError(plugin["type"], "ADD", 0, "printed no result")
            prev = result
        assert prev is not None
        return prev

    async def delete(self, config: NetworkConfig, att: Attachment,
                     result: dict[str, Any] | None, version: str | None = None) -> None:
        """DEL every plugin in reverse order, each given the ADD's final result."""
        version = version or await self.negotiate(config)
        inv = self._invocation("DEL", att)
        prev = result if result and version_key(version) >= _V040 else None
        for plugin in reversed(config.plugins):
            request = self._request(config, plugin, version, att, prev)
            try:
                await self.exec.run(self.binary(plugin["type"], "DEL"), inv, request,
                                    self.timeout)
            except CniPluginError as exc:
                if not _masquerade_chain_gone(exc):
                    raise
                log.warning("cni DEL: masquerade chain already gone", plugin=exc.plugin,
                            container_id=att.container_id, error=exc.msg[:300])

    async def check(self, config: NetworkConfig, att: Attachment,
                    result: dict[str, Any], version: str | None = None) -> None:
        """CHECK every plugin in order (skipped when `disableCheck` or before 0.4.0)."""
        version = version or await self.negotiate(config)
        if config.disable_check or version_key(version) < _V040:
            return
        inv = self._invocation("CHECK", att)
        for plugin in config.plugins:
            request = self._request(config, plugin, version, att, result)
            try:
                await self.exec.run(self.binary(plugin["type"], "CHECK"), inv, request,
                                    self.timeout)
            except CniPluginError as exc:
                if not _portmap_v6_check_bug(exc, result):
                    raise

    async def status(self, config: NetworkConfig) -> None:
        """STATUS every plugin when the negotiated version is 1.1.0 or later."""
        version = await self.negotiate(config)
        if version_key(version) < _V110:
            return
        inv = Invocation("STATUS", plugin_dirs=self.plugin_dirs)
        for plugin in config.plugins:
            request = self._request(config, plugin, version, None, None)
            await self.exec.run(self.binary(plugin["type"], "STATUS"), inv, request,
                                self.timeout)

    async def gc(self, config: NetworkConfig, valid: list[tuple[str, str]]) -> list[str]:
        """GC every plugin (1.1.0+, unless `disableGC`); errors are collected, not fatal."""
        version = await self.negotiate(config)
        if config.disable_gc or version_key(version) < _V110:
            return []
        inv = Invocation("GC", plugin_dirs=self.plugin_dirs)
        errors: list[str] = []
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        for plugin in config.plugins:
            request = self._request(config, plugin, version, None, None)
            request["cni.dev/valid-attachments"] = attachments
            try:
                await self.exec.run(self.binary(plugin["type"], "GC"), inv, request,
                                    self.timeout)
            except CniPluginError as exc:
                errors.append(str(exc))
        return errors

    # ---------------------------------------------------------------- helpers

    def _invocation(self, command: str, att: Attachment) -> Invocation:
        return Invocation(command, att.container_id, att.netns, att.ifname, list(att.args),
                          self.plugin_dirs)

    @staticmethod
    def _request(config: NetworkConfig, plugin: dict[str, Any], version: str,
                 att: Attachment | None, prev: dict[str, Any] | None) -> dict[str, Any]:
        request = copy.deepcopy(plugin)
        caps = request.pop("capabilities", None) or {}
        # Keys starting with cni.dev/ are reserved for the runtime (SPEC.md section 1).
        for key in [k for k in request if k.startswith("cni.dev/")]:
            del request[key]
        request["cniVersion"] = version
        request["name"] = config.name
        request.pop("runtimeConfig", None)
        request.pop("prevResult", None)
        if att is not None:
            runtime = {cap: att.capabilities[cap] for cap, on in caps.items()
                       if on and cap in att.capabilities}
            if runtime:
                request["runtimeConfig"] = runtime
        if prev is not None:
            request["prevResult"] = prev
        return request


def _masquerade_chain_gone(exc: CniPluginError) -> bool:
    """bridge 1.1.1 (Debian's) fails DEL when the masquerade chain of the attachment is
    already gone (a firewall reload flushed the nat table, say), though the spec asks a
    DEL to succeed when resources are missing. It releases the address and removes the
    veth before that step, so nothing is left to undo: without this the pod could never
    be removed."""
    text = f"{exc.msg} {exc.details}"
    return (exc.plugin == "bridge" and exc.command == "DEL" and "iptables" in text
            and "does not exist" in text)


def _portmap_v6_check_bug(exc: CniPluginError, result: dict[str, Any]) -> bool:
    """portmap up to 1.2.0 (Debian ships 1.1.1) fails CHECK on an IPv4-only attachment
    looking for ip6tables rules it never made (containernetworking/plugins#819). With no
    IPv6 address in the result that failure says nothing about the attachment."""
    if exc.plugin != "portmap" or "could not check ipv6 dnat" not in exc.msg:
        return False
    return not any(family == 6 for _, family, _, _ in parse_ips(result, ""))


def parse_ips(result: dict[str, Any], ifname: str) -> list[tuple[str, int, str, str]]:
    """(address, family, interface, gateway) of the pod's addresses in a CNI result.

    Addresses of the interface created in the sandbox named `ifname` come first; a result
    without interfaces (spec 0.2.0 style `ip4`/`ip6`, or an IPAM-only result) counts all.
    """
    out: list[tuple[str, int, str, str]] = []
    interfaces = result.get("interfaces") or []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        idx = entry.get("interface")
        name = ifname
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            iface = interfaces[idx]
            if not iface.get("sandbox"):
                continue  # a host-side address, not the pod's
            name = str(iface.get("name") or ifname)
        try:
            iface_addr = ipaddress.ip_interface(str(entry["address"]))
        except ValueError:
            continue
        out.append((str(iface_addr.ip), iface_addr.version, name, str(entry.get("gateway") or "")))
    for key in ("ip4", "ip6"):  # spec 0.2.0 results
        legacy = result.get(key)
        if isinstance(legacy, dict) and "ip" in legacy:
            with_prefix = ipaddress.ip_interface(str(legacy["ip"]))
            out.append((str(with_prefix.ip), with_prefix.version, ifname,
                        str(legacy.get("gateway") or "")))
    out.sort(key=lambda item: (item[2] != ifname, item[1]))
    return out

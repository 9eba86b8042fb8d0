"""Plugins' answers merged, in index order, and laid on what they change.

A CreateContainer adjustment is applied to the container's OCI config (`Adjuster`), one
plugin after another, each entry claimed by the plugin that set it: a second plugin
setting the same entry (an annotation, an env variable, a mount destination, a memory
limit, ...) is a conflict naming both, as containerd/nri's `result.go` with its owners.
A key or destination prefixed with "-" (NRI's `MarkForRemoval`) removes the entry and
frees it. Container updates (from CreateContainer, UpdateContainer, StopContainer,
Synchronize and UpdateContainers) are merged the same way per container (`Updates`).
"""

from __future__ import annotations

from typing import Any

from crib_common.errors import FailedPrecondition
from crib_common.nri import v1alpha1 as api

from ..oci.spec import is_set
from .convert import HOOK_LISTS, hook_oci, merge_resources, oci_resources

__all__ = ["AdjustmentConflict", "Adjuster", "Owners", "Updates"]

REMOVAL = "-"  # containerd/nri pkg/api: MarkForRemoval prefixes the key with "-"


class AdjustmentConflict(FailedPrecondition):
    """Two plugins adjusted the same thing."""


class Owners:
    """Which plugin set which entry of which container."""

    def __init__(self) -> None:
        self._owner: dict[tuple[str, str], str] = {}

    def claim(self, cid: str, what: str, plugin: str) -> None:
        owner = self._owner.get((cid, what))
        if owner is not None and owner != plugin:
            raise AdjustmentConflict(
                f"plugins {owner} and {plugin} both adjust {what} of container {cid}")
        self._owner[(cid, what)] = plugin

    def clear(self, cid: str, what: str) -> None:
        self._owner.pop((cid, what), None)


def _removal(key: str) -> tuple[str, bool]:
    return (key[1:], True) if key.startswith(REMOVAL) else (key, False)


class Adjuster:
    """Lays each plugin's ContainerAdjustment on the container's OCI config."""

    def __init__(self, cid: str, spec: dict[str, Any], owners: Owners) -> None:
        self.cid = cid
        self.spec = spec
        self.owners = owners
        self.cdi_devices: list[str] = []  # in the order the plugins asked for them

    def apply(self, adjust: api.ContainerAdjustment, plugin: str) -> None:
        self._annotations(adjust.annotations, plugin)
        self._mounts(adjust.mounts, plugin)
        self._env(adjust.env, plugin)
        if is_set(adjust.hooks):
            self._hooks(adjust.hooks)
        self._rlimits(adjust.rlimits, plugin)
        if adjust.args:
            self.owners.claim(self.cid, "args", plugin)
            self.spec.setdefault("process", {})["args"] = list(adjust.args)
        for device in adjust.cdi_devices:
            # Injected once: a second plugin asking for the same device is a conflict
            # (result.go adjustCDIDevices), resolved after every plugin (`cdi_devices`).
            self._claim(f"CDI device {device.name}", plugin)
            self.cdi_devices.append(device.name)
        if is_set(adjust.linux):
            self._linux(adjust.linux, plugin)

    def _claim(self, what: str, plugin: str) -> None:
        self.owners.claim(self.cid, what, plugin)

    def _annotations(self, annotations: dict[str, str], plugin: str) -> None:
        target = self.spec.setdefault("annotations", {})
        for raw, value in annotations.items():
            key, removed = _removal(raw)
            if removed:
                self.owners.clear(self.cid, f"annotation {key}")
                target.pop(key, None)
            else:
                self._claim(f"annotation {key}", plugin)
                target[key] = value

    def _mounts(self, mounts: list[api.Mount], plugin: str) -> None:
        if not mounts:
            return
        current: list[dict[str, Any]] = self.spec.setdefault("mounts", [])
        for m in mounts:
            dest, removed = _removal(m.destination)
            current[:] = [x for x in current if x.get("destination") != dest]
            if removed:
                self.owners.clear(self.cid, f"mount {dest}")
                continue
            self._claim(f"mount {dest}", plugin)
            entry: dict[str, Any] = {"destination": dest, "type": m.type or "bind",
                                     "source": m.source}
            if m.options:
                entry["options"] = list(m.options)
            current.append(entry)

    def _env(self, env: list[api.KeyValue], plugin: str) -> None:
        if not env:
            return
        process = self.spec.setdefault("process", {})
        current: list[str] = process.setdefault("env", [])
        for kv in env:
            key, removed = _removal(kv.key)
            current[:] = [e for e in current if e.split("=", 1)[0] != key]
            if removed:
                self.owners.clear(self.cid, f"env {key}")
                continue
            self._claim(f"env {key}", plugin)
            current.append(f"{key}={kv.value}")

    def _hooks(self, hooks: api.Hooks) -> None:
        # Hooks add up: NRI lets every plugin append its own (result.go adjustHooks).
        target = self.spec.setdefault("hooks", {})
        for oci, field in HOOK_LISTS:
            for h in getattr(hooks, field):
                target.setdefault(oci, []).append(hook_oci(h))

    def _rlimits(self, rlimits: list[api.PosixRlimit], plugin: str) -> None:
        if not rlimits:
            return
        current: list[dict[str, Any]] = self.spec.setdefault("process", {}).setdefault(
            "rlimits", [])
        for r in rlimits:
            self._claim(f"rlimit {r.type}", plugin)
            current[:] = [x for x in current if x.get("type") != r.type]
            current.append({"type": r.type, "hard": r.hard, "soft": r.soft})

    def _linux(self, linux: api.LinuxContainerAdjustment, plugin: str) -> None:
        spec_linux = self.spec.setdefault("linux", {})
        resources = spec_linux.setdefault("resources", {})
        for d in linux.devices:
            path, removed = _removal(d.path)
            devices = spec_linux.setdefault("devices", [])
            devices[:] = [x for x in devices if x.get("path") != path]
            if removed:
                self.owners.clear(self.cid, f"device {path}")
                continue
            self._claim(f"device {path}", plugin)
            dev: dict[str, Any] = {"path": path, "type": d.type, "major": d.major,
                                   "minor": d.minor}
            if is_set(d.file_mode):
                dev["fileMode"] = d.file_mode.value
            if is_set(d.uid):
                dev["uid"] = d.uid.value
            if is_set(d.gid):
                dev["gid"] = d.gid.value
            devices.append(dev)
            resources.setdefault("devices", []).append(
                {"allow": True, "type": d.type, "major": d.major, "minor": d.minor,
                 "access": "rwm"})
        if is_set(linux.resources):
            over = oci_resources(linux.resources)
            for group, values in over.items():
                if isinstance(values, dict):
                    for key in values:
                        self._claim(f"{group}.{key}", plugin)
                else:
                    self._claim(group, plugin)
            devices = resources.get("devices")
            merged = merge_resources(resources, over)
            if devices is not None:
                merged["devices"] = devices
            spec_linux["resources"] = merged
        if is_set(linux.oom_score_adj):
            self._claim("oom_score_adj", plugin)
            self.spec.setdefault("process", {})["oomScoreAdj"] = int(linux.oom_score_adj.value)
        for key, value in linux.sysctl.items():
            name, removed = _removal(key)
            sysctl = spec_linux.setdefault("sysctl", {})
            if removed:
                self.owners.clear(self.cid, f"sysctl {name}")
                sysctl.pop(name, None)
            else:
                self._claim(f"sysctl {name}", plugin)
                sysctl[name] = value
        unsupported = [name for name, present in (
            ("cgroups_path", bool(linux.cgroups_path)), ("io_priority", is_set(linux.io_priority)),
            ("seccomp_policy", is_set(linux.seccomp_policy)),
            ("namespaces", bool(linux.namespaces)), ("net_devices", bool(linux.net_devices)),
            ("scheduler", is_set(linux.scheduler)), ("rdt", is_set(linux.rdt)),
            ("memory_policy", is_set(linux.memory_policy))) if present]
        if unsupported:
            raise FailedPrecondition(f"plugin {plugin} adjusts {', '.join(unsupported)}: "
                                     "not supported by crib")


class Updates:
    """Container updates from several plugins, merged per container."""

    def __init__(self, owners: Owners | None = None) -> None:
        self.owners = owners or Owners()
        # container id -> (OCI resources, ignore failure)
        self.by_container: dict[str, tuple[dict[str, Any], bool]] = {}

    def add(self, updates: list[api.ContainerUpdate], plugin: str) -> None:
        for u in updates:
            if not u.container_id:
                continue
            over = oci_resources(u.linux.resources) if is_set(u.linux) \
                and is_set(u.linux.resources) else {}
            for group, values in over.items():
                for key in (values if isinstance(values, dict) else [""]):
                    self.owners.claim(u.container_id, f"update {group}.{key}".rstrip("."),
                                      plugin)
            base, ignore = self.by_container.get(u.container_id, ({}, True))
            self.by_container[u.container_id] = (merge_resources(base, over),
                                                 ignore and u.ignore_failure)

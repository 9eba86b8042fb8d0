"""CDI devices (cncf-tags/container-device-interface `SPEC.md`): a fully-qualified name
`vendor.com/class=name` resolved through the spec files in the spec directories, and
its edits laid on an OCI config. NRI plugins inject CDI devices by name
(ContainerAdjustment.CDI_devices); the runtime resolves them, as containerd does.

A spec file (JSON, or YAML) has `cdiVersion`, `kind` and `devices` (each `name` and
`containerEdits`), and optional spec-wide `containerEdits` applied once when any of its
devices is asked for. Edits: `env` ("K=V", appended), `deviceNodes` (`path`, `hostPath`,
`type`, `major`, `minor`, `fileMode`, `permissions`, `uid`, `gid`), `mounts`
(`hostPath`, `containerPath`, `type`, `options`), `hooks` (`hookName`, `path`, `args`,
`env`, `timeout`) and `additionalGids`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crib_common.errors import FailedPrecondition

from ..oci.devices import node_type

__all__ = ["CdiRegistry"]

_HOOKS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
          "poststop")


def _load(path: Path) -> Any:
    """A spec file's document. YAML is imported only when a device is asked for from a
    YAML spec (rare; the daemon does not carry the parser otherwise)."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    import yaml  # noqa: PLC0415

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


class CdiRegistry:
    """The spec files of `dirs`, read when a device is asked for (they change rarely and
    belong to device plugins: no cache to invalidate)."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)

    def _specs(self) -> dict[str, dict[str, Any]]:
        """kind -> spec; a later directory overrides an earlier one (SPEC.md: the
        dynamic directory after the static one)."""
        specs: dict[str, dict[str, Any]] = {}
        for directory in self.dirs:
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if path.suffix not in (".json", ".yaml", ".yml"):
                    continue
                try:
                    doc = _load(path)
                except (OSError, ValueError) as exc:
                    raise FailedPrecondition(f"CDI spec {path}: {exc}") from None
                if isinstance(doc, dict) and isinstance(doc.get("kind"), str):
                    specs[doc["kind"]] = doc
        return specs

    def inject(self, spec: dict[str, Any], names: Sequence[str]) -> None:
        """Apply the edits of every named device (and its spec's common edits, once)."""
        if not names:
            return
        specs = self._specs()
        common_done: set[str] = set()
        for name in names:
            kind, sep, device = name.partition("=")
            if not sep or not device:
                raise FailedPrecondition(f"CDI device {name!r}: not vendor.com/class=name")
            doc = specs.get(kind)
            if doc is None:
                raise FailedPrecondition(f"CDI device {name}: no spec of kind {kind} in "
                                         f"{', '.join(map(str, self.dirs))}")
            found = next((d for d in doc.get("devices") or []
                          if isinstance(d, dict) and d.get("name") == device), None)
            if found is None:
                raise FailedPrecondition(f"CDI device {name}: not in the {kind} spec")
            if kind not in common_done and doc.get("containerEdits"):
                common_done.add(kind)
                _apply(spec, doc["containerEdits"], name)
            _apply(spec, found.get("containerEdits") or {}, name)


def _apply(spec: dict[str, Any], edits: dict[str, Any], name: str) -> None:
    process = spec.setdefault("process", {})
    if edits.get("env"):
        process.setdefault("env", []).extend(str(e) for e in edits["env"])
    linux = spec.setdefault("linux", {})
    for node in edits.get("deviceNodes") or []:
        dev = _device(node, name)
        devices = linux.setdefault("devices", [])
        devices[:] = [d for d in devices if d.get("path") != dev["path"]]
        devices.append(dev)
        linux.setdefault("resources", {}).setdefault("devices", []).append(
            {"allow": True, "type": dev["type"], "major": dev["major"],
             "minor": dev["minor"], "access": node.get("permissions") or "rwm"})
    for m in edits.get("mounts") or []:
        mount = {"destination": m["containerPath"], "source": m["hostPath"],
                 "type": m.get("type") or "bind",
                 "options": list(m.get("options") or ["rbind", "rprivate"])}
        mounts = spec.setdefault("mounts", [])
        mounts[:] = [x for x in mounts if x.get("destination") != mount["destination"]]
        mounts.append(mount)
    for h in edits.get("hooks") or []:
        hook_name = h.get("hookName")
        if hook_name not in _HOOKS:
            raise FailedPrecondition(f"CDI device {name}: unknown hook {hook_name!r}")
        hook: dict[str, Any] = {"path": h["path"]}
        for key in ("args", "env", "timeout"):
            if h.get(key):
                hook[key] = h[key]
        spec.setdefault("hooks", {}).setdefault(hook_name, []).append(hook)
    # SPEC.md names the field additionalGids in its text and additionalGIDs in its example.
    gids = [int(g) for g in edits.get("additionalGids") or edits.get("additionalGIDs") or []
            if int(g) != 0]
    if gids:
        user = process.setdefault("user", {})
        user["additionalGids"] = sorted(set(user.get("additionalGids") or []) | set(gids))


def _device(node: dict[str, Any], name: str) -> dict[str, Any]:
    """An OCI linux.devices entry; type and numbers from the host node when not given."""
    path = node.get("path")
    if not path:
        raise FailedPrecondition(f"CDI device {name}: a device node without a path")
    dev: dict[str, Any] = {"path": path, "type": node.get("type", ""),
                           "major": node.get("major"), "minor": node.get("minor")}
    if not dev["type"] or dev["major"] is None:
        host = node.get("hostPath") or path
        try:
            st = os.stat(host)
        except OSError as exc:
            raise FailedPrecondition(f"CDI device {name}: {host}: {exc.strerror}") from None
        kind = node_type(st.st_mode)
        if kind is None:
            raise FailedPrecondition(f"CDI device {name}: {host} is not a device node")
        dev["type"] = dev["type"] or kind
        dev["major"] = os.major(st.st_rdev) if dev["major"] is None else dev["major"]
        dev["minor"] = os.minor(st.st_rdev) if dev["minor"] is None else dev["minor"]
        dev.setdefault("fileMode", stat.S_IMODE(st.st_mode))
    for key in ("fileMode", "uid", "gid"):
        if node.get(key) is not None:
            dev[key] = int(node[key])
    return dev

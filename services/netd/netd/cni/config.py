"""Network configuration: find it in `conf_dir`, validate it, install crib's default.

Choice of file, as kubelet's and containerd's libcni (`ConfFiles` then sort): every
`*.conflist`, `*.conf` and `*.json` in `conf_dir`, in lexical order, and the first one is
the network. A broken first file is an error, not a reason to fall back to the next one,
so an operator's typo shows as NetworkReady=false instead of silently changing the pod
network. A single-plugin `.conf`/`.json` is wrapped into a list as libcni's
`ConfListFromConf` does.

When `conf_dir` holds no configuration at all and `install_default_config` is on, netd
writes `10-crib.conflist`: bridge (settings.netd.default_bridge) with host-local IPAM on
settings.netd.default_subnet, leases under netd's own root (`dataDir`) so two crib nodes
on one host never share leases, then portmap (`portMappings` capability) and loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crib_common.settings import NetdSection

__all__ = [
    "CONF_EXTENSIONS",
    "ConfigProblem",
    "NetworkConfig",
    "default_conflist",
    "find_plugin",
    "install_default",
    "load_active",
    "parse_network_config",
    "select_version",
    "version_key",
]

CONF_EXTENSIONS = (".conflist", ".conf", ".json")
DEFAULT_FILE = "10-crib.conflist"
# Highest spec version crib speaks (SPEC.md "Version").
CRIB_CNI_VERSION = "1.1.0"
# Network names (SPEC.md section 1): alphanumeric start, then alphanumerics, _ . -
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ConfigProblem(Exception):
    """No usable configuration; `reason` is the CRI NetworkReady reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class NetworkConfig:
    """A parsed network configuration list, as the file said it (`raw`)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    raw: dict[str, Any]
    source: str = ""
    disable_check: bool = False
    disable_gc: bool = False
    digest: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        """The configuration list as netd caches it with each attachment."""
        return self.raw


def version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def select_version(cni_version: str, cni_versions: list[str] | None) -> str:
    """The highest version of `cniVersion` and `cniVersions` (SPEC.md "Version
    considerations"), capped at the version crib implements."""
    candidates = [v for v in [cni_version, *(cni_versions or [])] if v]
    usable = [v for v in candidates if version_key(v) <= version_key(CRIB_CNI_VERSION)]
    pool = usable or candidates
    return max(pool, key=version_key) if pool else "0.4.0"


def parse_network_config(data: bytes | str, source: str = "") -> NetworkConfig:
    """Parse and validate one configuration file's content; ConfigProblem on any fault."""
    where = source or "network configuration"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigProblem("CNIConfigInvalid", f"{where}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigProblem("CNIConfigInvalid", f"{where}: must be a JSON object")
    if "plugins" not in doc:
        # A single plugin configuration (.conf): wrap it into a list, as libcni does.
        if "type" not in doc:
            raise ConfigProblem("CNIConfigInvalid",
                                f"{where}: neither a \"plugins\" list nor a plugin \"type\"")
        plugin = {k: v for k, v in doc.items() if k not in ("cniVersion", "name")}
        doc = {"cniVersion": doc.get("cniVersion", ""), "name": doc.get("name", ""),
               "plugins": [plugin]}
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigProblem("CNIConfigInvalid", f"{where}: bad or missing network \"name\" "
                            f"{name!r} (SPEC.md section 1)")
    version = doc.get("cniVersion", "")
    versions = doc.get("cniVersions")
    if not isinstance(version, str) or (versions is not None and not (
            isinstance(versions, list) and all(isinstance(v, str) for v in versions))):
        raise ConfigProblem("CNIConfigInvalid", f"{where}: bad \"cniVersion\"/\"cniVersions\"")
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ConfigProblem("CNIConfigInvalid", f"{where}: \"plugins\" must be a non-empty list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise ConfigProblem("CNIConfigInvalid", f"{where}: plugins[{i}] is not an object")
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not ptype or "/" in ptype or ptype in (".", ".."):
            raise ConfigProblem("CNIConfigInvalid",
                                f"{where}: plugins[{i}] has a bad \"type\" {ptype!r}")
        ipam = plugin.get("ipam")
        if ipam is not None:
            itype = ipam.get("type") if isinstance(ipam, dict) else None
            if not isinstance(itype, str) or not itype or "/" in itype:
                raise ConfigProblem("CNIConfigInvalid",
                                    f"{where}: plugins[{i}].ipam has a bad \"type\" {itype!r}")
        caps = plugin.get("capabilities", {})
        if not isinstance(caps, dict):
            raise ConfigProblem("CNIConfigInvalid",
                                f"{where}: plugins[{i}].capabilities must be an object")
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return NetworkConfig(
        name=name,
        cni_version=select_version(version, versions),
        plugins=tuple(plugins),
        raw=doc,
        source=source,
        disable_check=bool(doc.get("disableCheck", False)),
        disable_gc=bool(doc.get("disableGC", False)),
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def config_files(conf_dir: Path) -> list[Path]:
    """Configuration files in lexical order (libcni `ConfFiles` + sort)."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    return [conf_dir / n for n in names
            if n.endswith(CONF_EXTENSIONS) and (conf_dir / n).is_file()]


def find_plugin(plugin_type: str, plugin_dirs: list[Path]) -> Path | None:
    """The first executable named `plugin_type` in `plugin_dirs` (CNI_PATH order)."""
    for directory in plugin_dirs:
        candidate = directory / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def required_binaries(config: NetworkConfig) -> list[str]:
    """Plugin types the configuration executes directly or by delegation (IPAM)."""
    seen: list[str] = []
    for plugin in config.plugins:
        for name in (plugin.get("type"), (plugin.get("ipam") or {}).get("type")):
            if isinstance(name, str) and name and name not in seen:
                seen.append(name)
    return seen


def load_active(conf_dir: Path, plugin_dirs: list[Path]) -> NetworkConfig:
    """The network configuration in force now, checked for missing plugin binaries."""
    files = config_files(conf_dir)
    if not files:
        raise ConfigProblem("NoCNIConfiguration",
                            f"no network configuration (*.conflist, *.conf, *.json) in {conf_dir}")
    first = files[0]
    try:
        data = first.read_bytes()
    except OSError as exc:
        raise ConfigProblem("CNIConfigInvalid", f"{first}: {exc.strerror}") from None
    config = parse_network_config(data, str(first))
    for binary in required_binaries(config):
        if find_plugin(binary, plugin_dirs) is None:
            raise ConfigProblem(
                "CNIPluginMissing",
                f"{first}: plugin {binary!r} not found in {':'.join(map(str, plugin_dirs))}",
            )
    return config


def default_conflist(settings: NetdSection) -> dict[str, Any]:
    """crib's default network: bridge + host-local, portmap, loopback."""
    ranges: list[list[dict[str, str]]] = [[{"subnet": settings.default_subnet}]]
    routes = [{"dst": "0.0.0.0/0"}]
    if settings.default_subnet6:
        ranges.append([{"subnet": settings.default_subnet6}])
        routes.append({"dst": "::/0"})
    # Plugins name iptables chains and host-local directories after the network name and
    # container id: a node on a non-default bridge gets its own name so that two crib
    # nodes on one host (tests) never share a chain.
    name = "crib" if settings.default_bridge == "crib0" else f"crib-{settings.default_bridge}"
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": settings.default_bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes,
                    # Leases under netd's root: two crib nodes never share them.
                    "dataDir": str(settings.root / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def install_default(settings: NetdSection) -> Path | None:
    """Write the default configuration when `conf_dir` has none; returns the file written."""
    if not settings.install_default_config or config_files(settings.conf_dir):
        return None
    settings.conf_dir.mkdir(parents=True, exist_ok=True)
    target = settings.conf_dir / DEFAULT_FILE
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(default_conflist(settings), fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, target)
    return target

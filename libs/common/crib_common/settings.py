"""Settings for every crib daemon: defaults, then `/etc/crib/crib.toml`, then environment.

One file configures the whole node; each daemon reads its own section. Environment
variables win over the file: `CRIB_<SECTION>__<KEY>`, e.g. `CRIB_RUNTIMED__DEFAULT_HANDLER=crun`.
The file is chosen with `CRIB_CONFIG` (default `/etc/crib/crib.toml`; a missing file is
fine, a malformed one is an error naming the file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "CribSettings",
    "GatewaySection",
    "ImagedSection",
    "LogSection",
    "NetdSection",
    "RegistryConfig",
    "RuntimeHandler",
    "RuntimedSection",
    "SettingsError",
    "load_settings",
    "DEFAULT_CONFIG_PATH",
]

DEFAULT_CONFIG_PATH = Path("/etc/crib/crib.toml")

_Section = ConfigDict(extra="forbid")


class LogSection(BaseModel):
    model_config = _Section
    level: Literal["debug", "info", "warning", "error"] = "info"
    # "auto": JSON lines unless stderr is a terminal.
    format: Literal["auto", "json", "console"] = "auto"


class GatewaySection(BaseModel):
    model_config = _Section
    socket: Path = Path("/run/crib/cri.sock")
    socket_mode: int = 0o660
    # Operator REST (/healthz, /metrics, /openapi.json) of the gateway itself.
    http_socket: Path = Path("/run/crib/gateway.sock")
    # The kubelet's own limit on CRI messages (its remote runtime uses 16 MiB), as in
    # containerd and CRI-O.
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # Connecting to a daemon's socket is local: anything slower means it is down.
    connect_timeout: float = Field(default=1.0, gt=0)
    # Used when the kubelet sent no deadline.
    default_timeout: float = Field(default=240.0, gt=0)


class RegistryConfig(BaseModel):
    model_config = _Section
    mirrors: list[str] = Field(default_factory=list)
    insecure: bool = False  # plain HTTP
    ca_file: Path | None = None
    skip_verify: bool = False


class ImagedSection(BaseModel):
    model_config = _Section
    socket: Path = Path("/run/crib/imaged.sock")
    root: Path = Path("/var/lib/crib/imaged")
    run_dir: Path = Path("/run/crib/imaged")
    max_concurrent_downloads: int = Field(default=3, gt=0)
    # Keyed by registry host ("docker.io", "localhost:5000").
    registries: dict[str, RegistryConfig] = Field(default_factory=dict)
    # Hosts answered over plain HTTP, besides loopback which always is (as in containerd).
    insecure_registries: list[str] = Field(default_factory=list)
    # A pull fails when no byte of its layers has arrived for this many seconds while a
    # download is under way (containerd's CRI `image_pull_progress_timeout`, default 5
    # minutes); 0 = never. A slow pull that keeps moving runs as long as it needs.
    image_pull_progress_timeout: float = Field(default=300.0, ge=0)
    # Where the short per-layer links overlay's lowerdir names live (default <root>/l).
    # The option string must fit one page (4096 bytes): each layer costs len(link_dir)+7
    # bytes, so a short directory (e.g. /run/crib/l) fits more layers.
    link_dir: Path | None = None
    # Registry requests answered 429/5xx, refused, reset or timed out are tried this many
    # times in all, waiting retry_base_delay * 2**n between tries (or the registry's
    # Retry-After), never more than retry_max_delay.
    retry_attempts: int = Field(default=4, ge=1)
    retry_base_delay: float = Field(default=0.5, ge=0)
    retry_max_delay: float = Field(default=10.0, ge=0)


class RuntimeHandler(BaseModel):
    model_config = _Section
    path: str
    # Extra arguments placed before the runtime's subcommand (e.g. "--systemd-cgroup").
    root: Path | None = None


def _default_handlers() -> dict[str, RuntimeHandler]:
    return {
        "runc": RuntimeHandler(path="/usr/sbin/runc"),
        "crun": RuntimeHandler(path="/usr/bin/crun"),
    }


class RuntimedSection(BaseModel):
    model_config = _Section
    socket: Path = Path("/run/crib/runtimed.sock")
    root: Path = Path("/var/lib/crib/runtimed")
    run_dir: Path = Path("/run/crib/runtimed")
    handlers: dict[str, RuntimeHandler] = Field(default_factory=_default_handlers)
    default_handler: str = "runc"
    conmon: str = "/usr/bin/conmon"
    pinns_dir: Path = Path("/run/crib/ns")
    # Where the kubelet puts pod logs (PodSandboxConfig.log_directory lives below): one of
    # the directories that must propagate mounts to the host (checked at start).
    pod_log_dir: Path = Path("/var/log/pods")
    catatonit: str = "/usr/bin/catatonit"
    # Empty: sandboxes hold namespaces by bind mounts, no infra container (CRI-O's
    # drop_infra_ctr). Set an image to run a pause container instead.
    pause_image: str = ""
    # Parent of the pods that name none (the kubelet always names one, used as given):
    # a cgroupfs path, or with the systemd driver a slice ("/crib" stands for crib.slice).
    cgroup_parent: str = "/crib"
    # How pod and container cgroups are named and made: "cgroupfs" paths, or systemd
    # slices and scopes through runc/crun's systemd cgroup manager. Must match the
    # kubelet's cgroupDriver; "systemd" needs systemd as PID 1.
    cgroup_driver: Literal["cgroupfs", "systemd"] = "cgroupfs"
    # Where each container's monitor (conmon) runs, always in a cgroup of its own outside
    # runtimed's, so that killing runtimed's cgroup (its container, its unit) leaves the
    # containers running (CRI-O's conmon_cgroup): "pod" under the pod's cgroup parent,
    # charged to the pod; or a cgroupfs path ("/crib.monitors"), with the systemd driver a
    # slice ("system.slice").
    monitor_cgroup: str = "pod"
    # pids.max of every container (0: unlimited); the CRI has no per-container field.
    pids_limit: int = Field(default=0, ge=0)
    # conmon --log-size-max per container log file (0: unlimited; kubelet rotates).
    log_size_max: int = Field(default=0, ge=0)
    # Bound on conmon + `<runtime> create` and on `<runtime> start`.
    create_timeout: float = Field(default=60.0, gt=0)
    # Seconds between sweeps for what netd, imaged and the host still hold for pods and
    # containers runtimed no longer knows (a rollback that could not reach a peer).
    reconcile_interval: float = Field(default=60.0, gt=0)
    # Streaming server for Exec/Attach/PortForward.
    stream_address: str = "127.0.0.1"
    stream_port: int = Field(default=0, ge=0, le=65535)
    stream_url_ttl: float = Field(default=60.0, gt=0)
    # A session with no byte either way for this long is closed and its process killed
    # (containerd's stream_idle_timeout, 4h; 0: never).
    stream_idle_timeout: float = Field(default=4 * 3600.0, ge=0)
    # RuntimeDefault seccomp profile: a file in the Docker/containerd/CRI-O format (e.g.
    # /usr/share/containers/seccomp.json); unset: crib's own allow-list. A missing or
    # invalid file stops runtimed at start.
    seccomp_profile: Path | None = None
    # AppArmor profile of RuntimeDefault on AppArmor hosts: loaded from crib's template
    # under this name when the kernel does not hold it yet.
    apparmor_profile: str = "crib-default"

    @field_validator("apparmor_profile")
    @classmethod
    def _apparmor_name(cls, value: str) -> str:
        # A profile name in apparmor.d(5) syntax, kept to what needs no quoting.
        if not value or not all(c.isalnum() or c in "-_.+" for c in value):
            raise ValueError("must be a profile name of letters, digits and -_.+")
        return value

    @field_validator("default_handler")
    @classmethod
    def _handler_name(cls, value: str) -> str:
        if not value:
            raise ValueError("must name a runtime handler")
        return value


class NetdSection(BaseModel):
    model_config = _Section
    socket: Path = Path("/run/crib/netd.sock")
    root: Path = Path("/var/lib/crib/netd")
    conf_dir: Path = Path("/etc/cni/net.d")
    plugin_dirs: list[Path] = Field(
        default_factory=lambda: [Path("/usr/lib/cni"), Path("/opt/cni/bin")]
    )
    netns_dir: Path = Path("/run/netns")
    cache_dir: Path = Path("/var/lib/crib/netd/cache")
    # Written to conf_dir when it holds no configuration at all.
    install_default_config: bool = True
    default_bridge: str = "crib0"
    default_subnet: str = "10.88.0.0/16"
    # Optional IPv6 range for the default network (dual stack); empty: IPv4 only.
    default_subnet6: str = ""
    plugin_timeout: float = Field(default=60.0, gt=0)
    # Interface name inside the pod (CNI_IFNAME).
    pod_ifname: str = "eth0"
    # Per-attachment limit when settling records at start (containerd loadContainerTimeout).
    recover_timeout: float = Field(default=30.0, gt=0)

    @field_validator("default_bridge")
    @classmethod
    def _bridge_name(cls, value: str) -> str:
        # IFNAMSIZ is 16 with the NUL (<linux/if.h>).
        if not value or len(value) > 15 or "/" in value or " " in value:
            raise ValueError("must be a Linux interface name of 1-15 characters")
        return value

    @field_validator("default_subnet", "default_subnet6")
    @classmethod
    def _subnet(cls, value: str) -> str:
        import ipaddress

        if value:
            ipaddress.ip_network(value, strict=False)
        return value


class CribSettings(BaseSettings):
    """Everything a crib node can be told; each daemon reads its own section."""

    model_config = SettingsConfigDict(
        env_prefix="CRIB_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    log: LogSection = Field(default_factory=LogSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    imaged: ImagedSection = Field(default_factory=ImagedSection)
    runtimed: RuntimedSection = Field(default_factory=RuntimedSection)
    netd: NetdSection = Field(default_factory=NetdSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("CRIB_CONFIG", str(DEFAULT_CONFIG_PATH)))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path))


class SettingsError(Exception):
    """A bad configuration; the message names the key and the source."""


def load_settings(**overrides: object) -> CribSettings:
    """Read and validate the settings, or raise `SettingsError` with a readable message."""
    path = os.environ.get("CRIB_CONFIG", str(DEFAULT_CONFIG_PATH))
    try:
        return CribSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError(
            f"invalid crib configuration (file {path}, env CRIB_*):\n" + "\n".join(lines)
        ) from None
    except ValueError as exc:  # TOML syntax errors
        raise SettingsError(f"cannot read crib configuration {path}: {exc}") from None

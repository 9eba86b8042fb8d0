"""A container's security settings in its OCI config: seccomp, AppArmor, SELinux,
masked and read-only paths.

The host side (the RuntimeDefault seccomp profile, AppArmor and SELinux on this host) is
one `SecurityDefaults`, made at start by `load_security` and installed for
`build_container_spec`; a bad RuntimeDefault file or an AppArmor profile that cannot be
loaded stops runtimed there, with `SecurityError` naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crib_common.cri.runtime.v1 import (
    LinuxContainerSecurityContext,
    SeLinuxOption,
    SecurityProfileProfileType,
)
from crib_common.errors import InvalidArgument
from crib_common.settings import RuntimedSection

from .apparmor import AppArmor, ParserError
from .seccomp import ProfileError, SeccompProfile, builtin_profile, load_default_profile, \
    load_localhost_profile
from .selinux import SELinux

__all__ = [
    "DEFAULT_MASKED",
    "DEFAULT_READONLY",
    "SecurityDefaults",
    "SecurityError",
    "apply_security",
    "current",
    "install",
    "load_security",
]

# What is masked and read-only when the CRI sends no security context at all (crictl
# without one): containerd's defaults (pkg/oci/spec.go), which the kubelet also sends for
# procMount Default. With a security context the kubelet's lists are taken as they are.
DEFAULT_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi", "/sys/devices/virtual/powercap",
]
DEFAULT_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


class SecurityError(Exception):
    """The security configuration cannot be honoured: runtimed must not start."""


@dataclass(frozen=True)
class SecurityDefaults:
    """The host side of container security."""

    seccomp: SeccompProfile
    apparmor: AppArmor = field(default_factory=AppArmor)
    selinux: SELinux = field(default_factory=SELinux)


def load_security(cfg: RuntimedSection) -> SecurityDefaults:
    """Read RuntimeDefault's seccomp profile and load crib's AppArmor profile where
    AppArmor is on; SecurityError with the reason otherwise."""
    try:
        profile = load_default_profile(cfg)
    except ProfileError as exc:
        raise SecurityError(str(exc)) from None
    apparmor = AppArmor(cfg.apparmor_profile)
    try:
        apparmor.ensure_default_loaded()
    except ParserError as exc:
        raise SecurityError(f"runtimed.apparmor_profile: cannot load AppArmor profile "
                            f"{cfg.apparmor_profile}: {exc}") from None
    return SecurityDefaults(seccomp=profile, apparmor=apparmor)


_current: SecurityDefaults | None = None


def install(defaults: SecurityDefaults) -> None:
    """Make `defaults` what containers are built with (runtimed's start-up)."""
    global _current
    _current = defaults


def current() -> SecurityDefaults:
    """The installed defaults; crib's built-in ones before any (unit tests, tools)."""
    global _current
    if _current is None:
        _current = SecurityDefaults(seccomp=builtin_profile())
    return _current


def apply_security(security: LinuxContainerSecurityContext | None, caps: list[str],
                   privileged: bool, defaults: SecurityDefaults,
                   pod_selinux: SeLinuxOption | None, pod_id: str,
                   process: dict[str, Any], linux: dict[str, Any]) -> None:
    """Set the security parts of a container's `process` and `linux` objects."""
    if security is None:
        linux["maskedPaths"] = list(DEFAULT_MASKED)
        linux["readonlyPaths"] = list(DEFAULT_READONLY)
    elif not privileged:
        # Exactly the kubelet's lists: empty masked_paths is procMount Unmasked.
        if security.masked_paths:
            linux["maskedPaths"] = list(security.masked_paths)
        if security.readonly_paths:
            linux["readonlyPaths"] = list(security.readonly_paths)
    if not privileged:
        seccomp = _seccomp(security, frozenset(caps), defaults)
        if seccomp is not None:
            linux["seccomp"] = seccomp
    kind, ref = _apparmor_request(security)
    profile = defaults.apparmor.profile_for(kind, ref, privileged)
    if profile:
        process["apparmorProfile"] = profile
    own = security.selinux_options \
        if security is not None and _is_set(security.selinux_options) else None
    pod = pod_selinux if pod_selinux is not None and _is_set(pod_selinux) else None
    labels = defaults.selinux.labels(own, pod, pod_id, privileged)
    if labels is not None:
        process["selinuxLabel"] = labels.process
        linux["mountLabel"] = labels.mount


def _is_set(msg: Any) -> bool:
    import betterproto

    return msg is not None and betterproto.serialized_on_wire(msg)


def _seccomp(security: LinuxContainerSecurityContext | None, caps: frozenset[str],
             defaults: SecurityDefaults) -> dict[str, Any] | None:
    """RuntimeDefault, Unconfined or Localhost; with nothing said, the kubelet's default
    is Unconfined (its seccompDefault is off unless configured, and then it says
    RuntimeDefault itself)."""
    if security is None:
        return None
    if _is_set(security.seccomp):
        kind = security.seccomp.profile_type
        if kind == SecurityProfileProfileType.RuntimeDefault:
            return defaults.seccomp.evaluate(caps)
        if kind == SecurityProfileProfileType.Localhost:
            return load_localhost_profile(security.seccomp.localhost_ref, caps)
        return None
    path = security.seccomp_profile_path  # the deprecated string form
    if path in ("runtime/default", "docker/default"):
        return defaults.seccomp.evaluate(caps)
    if path.startswith("localhost/"):
        return load_localhost_profile(path[len("localhost/"):], caps)
    if path in ("", "unconfined"):
        return None
    raise InvalidArgument(f"unknown seccomp profile {path!r}")


def _apparmor_request(security: LinuxContainerSecurityContext | None) -> tuple[str, str]:
    """("runtime/default" | "unconfined" | "localhost" | "", profile name)."""
    if security is None:
        return "", ""
    if _is_set(security.apparmor):
        kind = security.apparmor.profile_type
        if kind == SecurityProfileProfileType.Localhost:
            return "localhost", security.apparmor.localhost_ref
        if kind == SecurityProfileProfileType.Unconfined:
            return "unconfined", ""
        return "runtime/default", ""
    old = security.apparmor_profile  # deprecated string form
    if old.startswith("localhost/"):
        return "localhost", old
    if old in ("", "runtime/default", "unconfined"):
        return old, ""
    raise InvalidArgument(f"unknown AppArmor profile {old!r}")

"""Seccomp profiles in the format Docker, containerd, CRI-O and the kubelet's Localhost
profiles share, evaluated per container into the OCI `linux.seccomp` object
(runtime-spec config-linux.md, "Seccomp").

A profile file holds `defaultAction` (with `defaultErrnoRet`), `archMap` (each native
architecture with the sub-architectures it also runs) or a flat `architectures` list,
and `syscalls`: rules of `names`, `action`, `errnoRet`, `args`, and `includes`/`excludes`
conditions on the container's capabilities (`caps`), the host architecture (`arches`,
Go's names: amd64, arm64, ...) and the host kernel (`minKernel`, includes only). The
evaluation follows moby's profiles/seccomp: a rule is kept when every capability it
includes is held, none it excludes is held, the host arch is among its included arches
and not among its excluded ones, and the kernel is at least its minKernel.

crib's RuntimeDefault is `runtimed/data/seccomp.json`: an allow-list whose unlisted
syscalls fail with ENOSYS. The setting `runtimed.seccomp_profile` points RuntimeDefault
at another file of the same format; `load_default_profile` reads and checks it at start,
and a bad file stops runtimed there (never a silent allow-all).
"""

from __future__ import annotations

import functools
import json
import platform
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crib_common.errors import InvalidArgument
from crib_common.settings import RuntimedSection

__all__ = [
    "BUILTIN_PROFILE",
    "ProfileError",
    "SeccompFile",
    "SeccompProfile",
    "host_arch",
    "host_kernel",
    "load_default_profile",
    "load_localhost_profile",
    "read_profile",
]

BUILTIN_PROFILE = "seccomp.json"  # in runtimed/data

Action = Literal["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
                 "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW",
                 "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"]
Operator = Literal["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                   "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"]
# runtime-spec schema/defs-linux.json SeccompArch.
Arch = Literal["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
               "SCMP_ARCH_AARCH64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
               "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
               "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
               "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
               "SCMP_ARCH_SH", "SCMP_ARCH_SHEB", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64",
               "SCMP_ARCH_RISCV64"]
Flag = Literal["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
               "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]

# The files carry fields crib does not use ("comment", podman's "errno" names): ignored.
_File = ConfigDict(extra="ignore", frozen=True)
_U32 = 2**32 - 1
_U64 = 2**64 - 1


class ProfileError(Exception):
    """A profile file that cannot be read or is not a valid profile."""


class SeccompArg(BaseModel):
    model_config = _File
    index: int = Field(ge=0, le=5)  # a syscall has at most six arguments
    value: int = Field(ge=0, le=_U64)
    valueTwo: int = Field(default=0, ge=0, le=_U64)
    op: Operator


class Filter(BaseModel):
    model_config = _File
    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    minKernel: str = ""

    @field_validator("minKernel")
    @classmethod
    def _kernel(cls, value: str) -> str:
        if value:
            _kernel_tuple(value)
        return value

    @field_validator("caps", "arches", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value


class SeccompRule(BaseModel):
    model_config = _File
    names: tuple[str, ...] = ()
    name: str = ""  # the older one-name form
    action: Action
    errnoRet: int | None = Field(default=None, ge=0, le=_U32)
    args: tuple[SeccompArg, ...] = ()
    includes: Filter = Field(default_factory=Filter)
    excludes: Filter = Field(default_factory=Filter)

    @field_validator("args", "names", "includes", "excludes", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any, info: Any) -> Any:
        if value is None:
            return {} if info.field_name in ("includes", "excludes") else ()
        return value

    def all_names(self) -> list[str]:
        return list(self.names) or ([self.name] if self.name else [])


class ArchMapEntry(BaseModel):
    model_config = _File
    architecture: Arch
    subArchitectures: tuple[Arch, ...] = ()

    @field_validator("subArchitectures", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value


class SeccompFile(BaseModel):
    """A profile file as Docker, containerd and CRI-O write it (or a bare OCI object)."""

    model_config = _File
    defaultAction: Action
    defaultErrnoRet: int | None = Field(default=None, ge=0, le=_U32)
    architectures: tuple[Arch, ...] = ()
    archMap: tuple[ArchMapEntry, ...] = ()
    flags: tuple[Flag, ...] = ()
    listenerPath: str = ""
    listenerMetadata: str = ""
    syscalls: tuple[SeccompRule, ...] = ()

    @field_validator("architectures", "archMap", "flags", "syscalls", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value


# platform.machine() -> the Go GOARCH name profiles use in includes/excludes.arches, and
# the libseccomp native architecture that picks the archMap entry.
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "i686": ("386", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}


def host_arch() -> str:
    """The host's architecture by Go's name (what profiles' `arches` list)."""
    machine = platform.machine()
    return _MACHINES.get(machine, (machine, ""))[0]


def host_kernel() -> tuple[int, int]:
    """The running kernel's major.minor (what profiles' `minKernel` compares with)."""
    return _kernel_tuple(platform.release())


def _kernel_tuple(text: str) -> tuple[int, int]:
    parts = text.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"{text!r} is not a kernel version (major.minor)") from None


def _native(arch: str) -> str:
    for goarch, scmp in _MACHINES.values():
        if goarch == arch:
            return scmp
    return ""


@dataclass(frozen=True, eq=False)  # hashed by identity: the cache key
class SeccompProfile:
    """A checked profile file, evaluated per container by `evaluate`."""

    source: str
    file: SeccompFile

    def evaluate(self, caps: frozenset[str] | set[str], arch: str | None = None,
                 kernel: tuple[int, int] | None = None) -> dict[str, Any]:
        """The OCI `linux.seccomp` object for a container holding `caps` (its bounding
        set) on `arch` (Go's name; default the host's) and `kernel` (default the host's).
        Cached per capability set: every container of a pod usually shares one. The
        caller gets its own copy, free to change."""
        cached = _evaluate(self, frozenset(caps), arch or host_arch(),
                           kernel or host_kernel())
        copied: dict[str, Any] = _copy_json(cached)
        return copied


@functools.lru_cache(maxsize=256)
def _evaluate(profile: SeccompProfile, caps: frozenset[str], arch: str,
              kernel: tuple[int, int]) -> dict[str, Any]:
    f = profile.file
    out: dict[str, Any] = {"defaultAction": f.defaultAction}
    if f.defaultErrnoRet is not None:
        out["defaultErrnoRet"] = f.defaultErrnoRet
    arches: list[str] = list(f.architectures)
    native = _native(arch)
    for entry in f.archMap:
        # Only the host's own entry (and what it also runs): moby's arches().
        if entry.architecture == native:
            arches += [entry.architecture, *entry.subArchitectures]
    if arches:
        out["architectures"] = list(dict.fromkeys(arches))
    if f.flags:
        out["flags"] = list(f.flags)
    if f.listenerPath:
        out["listenerPath"] = f.listenerPath
        if f.listenerMetadata:
            out["listenerMetadata"] = f.listenerMetadata
    syscalls: list[dict[str, Any]] = []
    for rule in f.syscalls:
        if not _applies(rule, caps, arch, kernel):
            continue
        item: dict[str, Any] = {"names": rule.all_names(), "action": rule.action}
        if rule.errnoRet is not None:
            item["errnoRet"] = rule.errnoRet
        if rule.args:
            item["args"] = [a.model_dump() for a in rule.args]
        syscalls.append(item)
    if syscalls:
        out["syscalls"] = syscalls
    return out


def _copy_json(value: Any) -> Any:
    # A third of copy.deepcopy's time: the object is plain JSON (dicts, lists, scalars).
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def _applies(rule: SeccompRule, caps: frozenset[str], arch: str,
             kernel: tuple[int, int]) -> bool:
    inc, exc = rule.includes, rule.excludes
    if inc.caps and not all(c in caps for c in inc.caps):
        return False
    if exc.caps and any(c in caps for c in exc.caps):
        return False
    if inc.arches and arch not in inc.arches:
        return False
    if exc.arches and arch in exc.arches:
        return False
    return not (inc.minKernel and kernel < _kernel_tuple(inc.minKernel))


def parse_profile(text: str, source: str) -> SeccompProfile:
    """Check a profile's JSON text; ProfileError says what is wrong and where."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ProfileError(f"seccomp profile {source} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"seccomp profile {source} is not a JSON object")
    try:
        parsed = SeccompFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"seccomp profile {source}: {where}: {first['msg']} "
                           f"({exc.error_count()} error(s))") from None
    for i, rule in enumerate(parsed.syscalls):
        if not rule.all_names():
            raise ProfileError(f"seccomp profile {source}: syscalls.{i} names no syscall")
    return SeccompProfile(source=source, file=parsed)


def read_profile(path: Path) -> SeccompProfile:
    """Read and check a profile file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"cannot read seccomp profile {path}: "
                           f"{exc.strerror or exc}") from None
    return parse_profile(text, str(path))


def builtin_profile() -> SeccompProfile:
    """crib's RuntimeDefault, shipped as package data."""
    text = resources.files("runtimed").joinpath("data", BUILTIN_PROFILE).read_text()
    return parse_profile(text, f"runtimed/data/{BUILTIN_PROFILE}")


def load_default_profile(settings: RuntimedSection) -> SeccompProfile:
    """RuntimeDefault as configured: `runtimed.seccomp_profile` when set, else crib's
    own. Raises ProfileError with a message naming the setting and the file, which stops
    runtimed at start: a node must never fall back to no filter."""
    if settings.seccomp_profile is None:
        return builtin_profile()
    try:
        profile = read_profile(settings.seccomp_profile)
        profile.evaluate(frozenset())  # arch/kernel conditions that cannot be evaluated
    except (ProfileError, ValueError) as exc:
        raise ProfileError(f"runtimed.seccomp_profile: {exc}") from None
    return profile


def load_localhost_profile(path: str, caps: frozenset[str] | set[str]) -> dict[str, Any]:
    """A kubelet Localhost profile (an absolute host path) evaluated for the container;
    InvalidArgument when it is not an absolute path, cannot be read or is not valid."""
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp localhost profile {path!r} must be an absolute path")
    try:
        profile = read_profile(Path(path))
        return profile.evaluate(frozenset(caps))
    except (ProfileError, ValueError) as exc:
        raise InvalidArgument(str(exc)) from None

"""OCI runtimes behind one small interface: argv lists, never a shell, argv logged at debug.

`OciRuntime` wraps one handler's binary (runc, crun, or any OCI runtime named in the
settings) with its own `--root`, so two handlers never share a state directory. `create`
is not here: conmon runs `<runtime> create` itself (see `conmon.monitor`).
"""

from __future__ import annotations

import json
import os
import re
import signal as _signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

import crib_common.proc as proc
from crib_common.errors import DeadlineExceeded, FailedPrecondition, Internal, NotFound

__all__ = [
    "CommandResult",
    "OciRuntime",
    "RuntimeImpl",
    "check_hybrid_cgroups",
    "run_command",
    "without_warnings",
]

log = structlog.get_logger("crib.runtimed.oci")


@dataclass
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run_command(argv: list[str], *, timeout: float, stdin: bytes | None = None,
                      env: dict[str, str] | None = None) -> CommandResult:
    """Run argv with a deadline; the child is killed when the deadline passes."""
    log.debug("exec", argv=argv)
    try:
        done = await proc.run(argv, timeout=timeout, input=stdin, env=env)
    except TimeoutError:
        raise DeadlineExceeded(f"{argv[0]} {argv[1:4]} did not finish within {timeout}s") from None
    return CommandResult(done.returncode, done.stdout, done.stderr)


class RuntimeImpl(Protocol):
    """An OCI runtime handler as the lifecycles use it, besides `create` (which the
    monitor runs). `OciRuntime` is the real one; unit tests use a fake."""

    name: str
    path: str
    root: Path
    usable: bool
    reason: str
    version: str

    @property
    def recursive_read_only(self) -> bool: ...
    def global_args(self) -> list[str]: ...
    def exec_argv(self, cid: str, process_json: Path) -> list[str]: ...
    async def probe(self) -> None: ...
    async def state(self, cid: str, *, timeout: float = 10.0) -> dict[str, Any] | None: ...
    async def start(self, cid: str, *, timeout: float = 30.0) -> None: ...
    async def kill(self, cid: str, sig: int, *, all_procs: bool = False,
                   timeout: float = 10.0) -> None: ...
    async def delete(self, cid: str, *, timeout: float = 30.0) -> None: ...
    async def update(self, cid: str, resources: dict[str, Any], *,
                     timeout: float = 30.0) -> None: ...


def _msg(res: CommandResult) -> str:
    text = without_warnings((res.stderr or res.stdout).decode("utf-8", "replace"))
    # runc and crun log JSON lines or "time=... level=error msg=..."; keep the last line.
    last = text.splitlines()[-1] if text else f"exit status {res.returncode}"
    try:
        return str(json.loads(last).get("msg", last))
    except (ValueError, AttributeError):
        return last


_WARNING = re.compile(r'(^|\s)level=("?)warn(ing)?\2(\s|$)|"level"\s*:\s*"warn(ing)?"'
                      r'|^(warn(ing)?)\b[:\[]?', re.IGNORECASE)


def without_warnings(text: str) -> str:
    """A runtime's error output without its warning lines (runc prefixes a cgroup
    freezer warning to unrelated errors): what is passed on is the error itself."""
    return "\n".join(line for line in text.strip().splitlines()
                     if line.strip() and not _WARNING.search(line.strip())).strip()


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release
    try:
        have = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return have >= (major, minor)


def _is_missing(text: str) -> bool:
    t = text.lower()
    return "does not exist" in t or "not found" in t or "no such file" in t or "not exist" in t


@dataclass
class OciRuntime:
    """One runtime handler: binary path and its private state root."""

    name: str
    path: str
    root: Path
    usable: bool = True
    reason: str = ""
    version: str = ""
    extra: list[str] = field(default_factory=list)
    # From `<runtime> features` (runtime-spec features.md), when the runtime has it.
    mount_options: frozenset[str] = frozenset()

    @property
    def recursive_read_only(self) -> bool:
        """Recursive read-only mounts work: the runtime takes "rro" and the kernel has
        mount_setattr(2) (5.12 and later), the check api.proto gives for runc-compatible
        runtimes."""
        return "rro" in self.mount_options and _kernel_at_least(5, 12)

    def global_args(self) -> list[str]:
        """Arguments before the subcommand (also handed to conmon as --runtime-arg)."""
        return [f"--root={self.root}", *self.extra]

    def _argv(self, *args: str) -> list[str]:
        return [self.path, *self.global_args(), *args]

    async def probe(self) -> None:
        """Check the binary answers `--version`; mark the handler unusable otherwise."""
        if not os.access(self.path, os.X_OK):
            self.usable, self.reason = False, f"{self.path} is not an executable"
            return
        try:
            res = await run_command([self.path, "--version"], timeout=10)
        except Exception as exc:  # a hung or broken binary must not stop runtimed
            self.usable, self.reason = False, f"{self.path} --version failed: {exc}"
            return
        if res.returncode != 0:
            self.usable, self.reason = False, f"{self.path} --version: {_msg(res)}"
            return
        self.version = res.stdout.decode(errors="replace").splitlines()[0] if res.stdout else ""
        self.root.mkdir(parents=True, exist_ok=True)
        self.mount_options = await self._features_mount_options()

    async def _features_mount_options(self) -> frozenset[str]:
        """`mountOptions` of `<runtime> features`; empty when the runtime has no such
        command (crun 1.8) or answers something else."""
        try:
            res = await run_command([self.path, "features"], timeout=10)
            doc = json.loads(res.stdout) if res.returncode == 0 else {}
        except Exception:  # noqa: BLE001 - a missing feature list only disables features
            return frozenset()
        options = doc.get("mountOptions") if isinstance(doc, dict) else None
        if not isinstance(options, list):
            return frozenset()
        return frozenset(o for o in options if isinstance(o, str))

    async def state(self, cid: str, *, timeout: float = 10.0) -> dict[str, Any] | None:
        """The runtime's state JSON, or None when the runtime does not know the container."""
        res = await run_command(self._argv("state", cid), timeout=timeout)
        if res.returncode != 0:
            if _is_missing(_msg(res)):
                return None
            raise Internal(f"{self.name} state {cid}: {_msg(res)}")
        try:
            value = json.loads(res.stdout)
        except ValueError:
            raise Internal(f"{self.name} state {cid}: unreadable output") from None
        return value if isinstance(value, dict) else None

    async def start(self, cid: str, *, timeout: float = 30.0) -> None:
        res = await run_command(self._argv("start", cid), timeout=timeout)
        if res.returncode != 0:
            raise FailedPrecondition(f"{self.name} start {cid}: {_msg(res)}")

    async def kill(self, cid: str, sig: int, *, all_procs: bool = False,
                   timeout: float = 10.0) -> None:
        """Signal the container; an already stopped or missing one is not an error."""
        args = ["kill"] + (["--all"] if all_procs else []) + [cid, str(sig)]
        res = await run_command(self._argv(*args), timeout=timeout)
        if res.returncode != 0:
            text = _msg(res)
            low = text.lower()
            if _is_missing(text) or "not running" in low or "process already finished" in low \
                    or "no such process" in low or "container not running" in low:
                return
            raise Internal(f"{self.name} kill {cid} {sig}: {text}")

    async def delete(self, cid: str, *, timeout: float = 30.0) -> None:
        """Forcefully delete the runtime's state; a missing container is success."""
        res = await run_command(self._argv("delete", "--force", cid), timeout=timeout)
        if res.returncode != 0 and not _is_missing(_msg(res)):
            raise Internal(f"{self.name} delete {cid}: {_msg(res)}")

    async def update(self, cid: str, resources: dict[str, Any], *,
                     timeout: float = 30.0) -> None:
        """Apply OCI `linux.resources` to the live cgroup (`runc update --resources -`)."""
        res = await run_command(self._argv("update", "--resources", "-", cid), timeout=timeout,
                                stdin=json.dumps(resources).encode())
        if res.returncode != 0:
            text = _msg(res)
            if _is_missing(text):
                raise NotFound(f"container {cid} is not known to {self.name}")
            raise FailedPrecondition(f"{self.name} update {cid}: {text}")

    def exec_argv(self, cid: str, process_json: Path) -> list[str]:
        """argv of `exec --process <file> <id>` (stdio wired by the caller)."""
        return self._argv("exec", "--process", str(process_json), cid)


def signal_number(name: str) -> int:
    """SIGTERM, TERM, 15 -> 15; unknown names raise ValueError."""
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIGRTMIN+"):
        return int(_signal.SIGRTMIN) + int(name.split("+", 1)[1])
    if name.startswith("SIGRTMAX-"):
        return int(_signal.SIGRTMAX) - int(name.split("-", 1)[1])
    aliases = {"SIGCLD": "SIGCHLD", "SIGPOLL": "SIGIO", "SIGIOT": "SIGABRT"}
    name = aliases.get(name, name)
    return int(getattr(_signal, name))


def check_hybrid_cgroups(cgroup_root: Path = Path("/sys/fs/cgroup"),
                         fix: bool = True) -> tuple[bool, str]:
    """crun 1.8 refuses a hybrid host where cgroup2 owns a controller ("cgroups in hybrid
    mode not supported, drop all controllers from cgroupv2"). Move each such controller
    back to a v1 hierarchy of its own when cgroup2 does not use it; returns (ok, message).
    The kernel allows the move only while no cgroup2 subtree enables the controller
    (Documentation/admin-guide/cgroup-v2.rst, "Mounting")."""
    unified = cgroup_root / "unified"
    controllers_file = unified / "cgroup.controllers"
    if not controllers_file.exists():
        return True, "no hybrid cgroup2 hierarchy"
    owned = controllers_file.read_text().split()
    if not owned:
        return True, "cgroup2 owns no controller"
    if not fix:
        return False, f"cgroup2 at {unified} owns {','.join(owned)}"
    enabled = set((unified / "cgroup.subtree_control").read_text().split()) \
        if (unified / "cgroup.subtree_control").exists() else set()
    problems: list[str] = []
    for ctrl in owned:
        if ctrl in enabled:
            problems.append(f"{ctrl} is enabled in {unified}/cgroup.subtree_control")
            continue
        target = cgroup_root / ctrl
        try:
            target.mkdir(exist_ok=True)
        except OSError as exc:
            problems.append(f"cannot create {target}: {exc.strerror}")
            continue
        res = _mount_v1(ctrl, target)
        if res:
            problems.append(res)
    left = controllers_file.read_text().split()
    if left:
        return False, ("cgroup2 at %s still owns %s (%s); crun cannot run on this hybrid "
                       "host: unmount the v2 use of it or use runc" %
                       (unified, ",".join(left), "; ".join(problems) or "move refused"))
    return True, f"moved {','.join(owned)} from cgroup2 to cgroup v1"


def _mount_v1(ctrl: str, target: Path) -> str:
    import subprocess

    res = subprocess.run(["mount", "-t", "cgroup", "-o", ctrl, "cgroup", str(target)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return f"mount -t cgroup -o {ctrl} {target}: {res.stderr.strip()}"
    return ""

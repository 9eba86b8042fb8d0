"""Running one CNI plugin binary (SPEC.md section 2, "Execution Protocol").

The plugin gets its parameters in `CNI_*` environment variables and its configuration on
stdin; it answers a result (or, on failure, the spec's error object) on stdout and logs
on stderr. `PluginExec` is the seam: `ExecPlugin` runs real binaries as child processes
(crib_common.proc: an argument list, never a shell, under a timeout, argv logged at
debug); tests of edge cases plug a small fake in instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from crib_common import proc

__all__ = [
    "CniPluginError",
    "ExecPlugin",
    "Invocation",
    "PluginExec",
]

log = structlog.get_logger("netd.cni")

# Error code 11 (SPEC.md "Error"): "Try again later".
CODE_TRY_AGAIN = 11
# Only what plugins need from our environment: PATH finds iptables, ip6tables, modprobe.
_PASS_ENV = ("PATH", "LANG", "LC_ALL")


class CniPluginError(Exception):
    """A plugin failed; carries the spec's error object fields when it printed one."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "",
                 stderr: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        self.stderr = stderr
        text = f"CNI plugin {plugin} {command} failed"
        if code:
            text += f" (code {code})"
        text += f": {msg}"
        if details and details != msg:
            text += f": {details}"
        super().__init__(text)


@dataclass
class Invocation:
    """The attachment parameters of one plugin call (SPEC.md section 3)."""

    command: str  # ADD, DEL, CHECK, STATUS, VERSION, GC
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: list[tuple[str, str]] = field(default_factory=list)
    plugin_dirs: list[Path] = field(default_factory=list)

    def environ(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env["CNI_COMMAND"] = self.command
        env["CNI_PATH"] = ":".join(str(p) for p in self.plugin_dirs)
        if self.container_id:
            env["CNI_CONTAINERID"] = self.container_id
        if self.netns:
            env["CNI_NETNS"] = self.netns
        if self.ifname:
            env["CNI_IFNAME"] = self.ifname
        if self.args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in self.args)
        return env


class PluginExec(Protocol):
    """Runs a plugin binary and returns its parsed stdout (None when it printed nothing)."""

    async def run(self, binary: Path, invocation: Invocation, stdin: dict[str, Any],
                  timeout: float) -> dict[str, Any] | None: ...


# Called with (plugin, command, seconds, ok) after every call; the app wires it to
# Prometheus.
Observer = Callable[[str, str, float, bool], None]


class ExecPlugin:
    """The real thing: one child process per call."""

    def __init__(self, observer: Observer | None = None) -> None:
        self.observer = observer

    def _observe(self, plugin: str, command: str, seconds: float, ok: bool) -> None:
        if self.observer is not None:
            self.observer(plugin, command, seconds, ok)

    async def run(self, binary: Path, invocation: Invocation, stdin: dict[str, Any],
                  timeout: float) -> dict[str, Any] | None:
        argv = [str(binary)]
        env = invocation.environ()
        log.debug("cni exec", argv=argv, command=invocation.command,
                  container_id=invocation.container_id, netns=invocation.netns,
                  ifname=invocation.ifname, cni_args=env.get("CNI_ARGS", ""))
        start = time.perf_counter()
        try:
            # The configuration goes in through an in-memory file (crib_common.proc): a
            # plugin that exits before reading all of it is no broken pipe on our side.
            done = await proc.run(argv, timeout=timeout, input=json.dumps(stdin).encode(),
                                  env=env)
        except TimeoutError:
            self._observe(binary.name, invocation.command, time.perf_counter() - start, False)
            raise CniPluginError(binary.name, invocation.command, 0,
                                 f"did not finish within {timeout:g}s") from None
        out, err = done.stdout, done.stderr
        elapsed = time.perf_counter() - start
        self._observe(binary.name, invocation.command, elapsed, done.returncode == 0)
        stderr = err.decode("utf-8", "replace").strip()
        if done.returncode != 0:
            log.debug("cni exec failed", plugin=binary.name, command=invocation.command,
                      rc=done.returncode, stdout=out[:4096].decode("utf-8", "replace"),
                      stderr=stderr[-4096:], ms=round(elapsed * 1000, 2))
            raise _error_of(binary.name, invocation.command, done.returncode, out, stderr)
        log.debug("cni exec done", plugin=binary.name, command=invocation.command,
                  ms=round(elapsed * 1000, 2))
        text = out.strip()
        if not text:
            return None
        try:
            result = json.loads(text)
        except ValueError:
            raise CniPluginError(binary.name, invocation.command, 0,
                                 f"printed a result that is not JSON: {text[:200]!r}") from None
        if not isinstance(result, dict):
            raise CniPluginError(binary.name, invocation.command, 0,
                                 f"printed a result that is not an object: {text[:200]!r}")
        return result


def _error_of(plugin: str, command: str, rc: int | None, out: bytes,
              stderr: str) -> CniPluginError:
    """The spec's error object from stdout, else the exit status and stderr."""
    with contextlib.suppress(ValueError):
        doc = json.loads(out)
        if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
            code = doc.get("code")
            return CniPluginError(plugin, command, code if isinstance(code, int) else 0,
                                  str(doc.get("msg") or ""), str(doc.get("details") or ""),
                                  stderr)
    tail = stderr[-1000:] or out[-1000:].decode("utf-8", "replace").strip()
    return CniPluginError(plugin, command, 0, f"exit status {rc}: {tail or 'no output'}",
                          stderr=stderr)

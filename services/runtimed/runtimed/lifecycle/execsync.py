"""ExecSync: a command run in a running container through `<runtime> exec`, its stdout
and stderr collected apart (capped), under the caller's timeout.

    (none) ──runtime exec──> running ──exits──> (code, output)
                                └──timeout──> killed, with everything it started
                                              in the container ──> DeadlineExceeded
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import structlog

from crib_common.errors import DeadlineExceeded
from crib_common.proc import Child, read_fd

from ..bundle import read_config
from ..node import Node
from ..oci.runtime import RuntimeImpl
from ..store.records import ContainerRecord

__all__ = ["EXEC_REPLY_ROOM", "ExecSync", "MAX_EXEC_OUTPUT"]

log = structlog.get_logger("crib.runtimed")

# ExecSync output is capped at 16 MiB, as CRI-O's maxExecSyncSize; since the kubelet's
# message limit is also 16 MiB, stdout and stderr together keep 1 KiB for the framing
# (stderr is kept whole first: it explains failures).
MAX_EXEC_OUTPUT = 16 * 1024 * 1024
EXEC_REPLY_ROOM = MAX_EXEC_OUTPUT - 1024


class ExecSync:
    """Runs ExecSync commands; keeps each container's process spec as a template."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # ExecSync runs the container's own process spec with other args (config.json's).
        self._templates: dict[str, dict[str, Any]] = {}
        node.on_drop.append(self._forget)

    def _forget(self, oid: str) -> None:
        self._templates.pop(oid, None)

    async def run(self, rec: ContainerRecord, rt: RuntimeImpl, cmd: list[str],
                  timeout: int) -> tuple[bytes, bytes, int]:
        """(stdout, stderr, exit code); DeadlineExceeded after `timeout` seconds (0 = none)."""
        bundle = Path(rec.meta.bundle)
        template = self._templates.get(rec.meta.id)
        if template is None:
            template = read_config(bundle)["process"]
            self._templates[rec.meta.id] = template
        process = dict(template)
        process["args"] = list(cmd)
        process["terminal"] = False
        token = secrets.token_hex(6)
        pfile = bundle / f".exec-{token}.json"
        pidfile = bundle / f".exec-{token}.pid"
        pfile.write_text(json.dumps(process))
        argv = rt.exec_argv(rec.meta.id, pfile)
        argv[-1:-1] = ["--pid-file", str(pidfile)]
        log.debug("exec", argv=argv)
        try:
            child = Child(argv)
            assert child.stdout is not None and child.stderr is not None
            try:
                async with asyncio.timeout(timeout if timeout > 0 else None):
                    out, err, code = await asyncio.gather(
                        read_fd(child.stdout.fileno(), MAX_EXEC_OUTPUT),
                        read_fd(child.stderr.fileno(), MAX_EXEC_OUTPUT), child.wait())
            except BaseException as exc:
                # The runtime's exec waits for the process it started: kill that, and
                # everything it started in the container (a probe's `sh -c 'a | b'`).
                with contextlib.suppress(OSError, ValueError):
                    await asyncio.to_thread(kill_tree, int(pidfile.read_text().strip()))
                await child.reap()
                if isinstance(exc, TimeoutError):
                    raise DeadlineExceeded(f"command {cmd[0]!r} in {rec.meta.id} timed out "
                                           f"after {timeout}s") from None
                raise
            finally:
                child.close_pipes()
        finally:
            for p in (pfile, pidfile):
                with contextlib.suppress(OSError):
                    p.unlink()
        err = err[:EXEC_REPLY_ROOM]
        out = out[:EXEC_REPLY_ROOM - len(err)]
        if code < 0:
            code = 128 - code
        return out, err, code


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc/<pid>/stat (field 4 after the comm)."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def kill_tree(pid: int) -> int:
    """SIGKILL `pid` and all its descendants; returns how many were signalled. Each is
    stopped first (a stopped process cannot fork, and its children keep it as their
    parent, so the tree holds still) until no new one appears."""
    seen: set[int] = set()
    for _ in range(20):
        tree = _children()
        found, todo = set(), [pid]
        while todo:
            p = todo.pop()
            if p not in found:
                found.add(p)
                todo.extend(tree.get(p, []))
        new = found - seen
        if not new:
            break
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        seen |= new
    for p in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return len(seen)

"""`crib restart DAEMON`: restart one daemon and wait until it is ready again.

Two kinds of node:
- a real node runs each daemon as a systemd unit (deploy/systemd/crib-<daemon>.service):
  `crib restart` asks systemd (`systemctl restart`), as an operator would;
- the dev stack (`make up`, scripts/up.sh) keeps a pid file per daemon in /run/crib and
  its log in /var/log/crib: `crib restart` stops the process by its pid (SIGTERM, or
  SIGKILL with --kill, as a crash would), starts the same program again the way up.sh
  does, and rewrites the pid file;
- under crib-node (deploy/systemd/crib-node.service, or `make up`, its default), whose
  own pid file `node.pid` sits beside the daemons': `crib restart` only stops the daemon
  (by its pid, SIGTERM or with --kill SIGKILL) and crib-node forks it again; starting one
  here as well would make a twin.

Either way it returns once the daemon is ready (its /healthz says ready; for the gateway,
the CRI socket answers Version), and prints how long that took. Every daemon recovers its
own state at start, so nothing else needs restarting with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crib_common.client import DaemonClient
from crib_common.cri.runtime.v1 import RuntimeServiceStub, VersionRequest
from crib_common.errors import CribError
from crib_common.settings import CribSettings

__all__ = ["DAEMONS", "register", "wait_ready"]

DAEMONS = ("netd", "imaged", "runtimed", "gateway")
# Where scripts/up.sh keeps the dev stack's pid files and logs.
PID_DIR = Path("/run/crib")
LOG_DIR = Path("/var/log/crib")
# As scripts/down.sh: SIGTERM gets 10 s to finish calls in flight, then SIGKILL.
STOP_TIMEOUT = 10.0


def register(sub: Any) -> None:
    p = sub.add_parser("restart", help="restart one daemon (systemd unit, or the dev "
                                       "stack's process) and wait until it is ready")
    p.add_argument("daemon", choices=DAEMONS)
    p.add_argument("--kill", action="store_true",
                   help="dev stack: SIGKILL instead of SIGTERM, as a crash would")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for ready")
    p.add_argument("--pid-dir", type=Path, default=PID_DIR)
    p.add_argument("--log-dir", type=Path, default=LOG_DIR)
    p.set_defaults(func=restart)


async def restart(args: argparse.Namespace, settings: CribSettings) -> int:
    pidfile = args.pid_dir / f"{args.daemon}.pid"
    started = time.monotonic()
    node = _read_pid(args.pid_dir / "node.pid")
    if node is not None and _comm(node) == "crib-node":
        old = _read_pid(pidfile)
        if old is not None and _is_daemon(old, args.daemon):
            await _stop(old, signal.SIGKILL if args.kill else signal.SIGTERM)
        new = await _wait_new_pid(pidfile, old, args.daemon, args.timeout)
        if new is None:
            print(f"crib: crib-node (pid {node}) did not fork {args.daemon} again",
                  file=sys.stderr)
            return 1
        how = f"crib-{args.daemon} forked again by crib-node (pid {node}) as pid {new}"
        child = None
    elif not pidfile.exists() and _systemd_unit(args.daemon):
        unit = f"crib-{args.daemon}.service"
        proc = await asyncio.create_subprocess_exec("systemctl", "restart", unit)
        if await proc.wait() != 0:
            print(f"crib: systemctl restart {unit} failed", file=sys.stderr)
            return 1
        how = f"{unit} restarted by systemd"
        child = None
    else:
        old = _read_pid(pidfile)
        if old is not None and _is_daemon(old, args.daemon):
            await _stop(old, signal.SIGKILL if args.kill else signal.SIGTERM)
        started = time.monotonic()
        child = _spawn(args.daemon, args.log_dir)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{child.pid}\n")
        how = f"crib-{args.daemon} started (pid {child.pid}, log {args.log_dir}/" \
              f"{args.daemon}.log)"
    error = await wait_ready(args.daemon, settings, args.timeout, child)
    if error:
        print(f"crib: {args.daemon} is not ready: {error}", file=sys.stderr)
        return 1
    print(f"{how}; ready in {time.monotonic() - started:.2f} s")
    return 0


async def wait_ready(daemon: str, settings: CribSettings, timeout: float,
                     child: subprocess.Popen[bytes] | None = None) -> str:
    """Poll until `daemon` is ready; "" when it is, else why not (it exited, or the
    last answer when `timeout` ran out)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return f"exited with {child.returncode}"
        try:
            if await _ready_once(daemon, settings):
                return ""
            last = "not ready (recovering)"
        except (CribError, OSError, GRPCError, TimeoutError) as exc:
            last = str(exc)
        await asyncio.sleep(0.02)
    return last


async def _ready_once(daemon: str, settings: CribSettings) -> bool:
    if daemon == "gateway":
        # The gateway is ready when the kubelet's socket answers.
        channel = Channel(path=str(settings.gateway.socket))
        try:
            await RuntimeServiceStub(channel).version(VersionRequest(), timeout=2)
            return True
        finally:
            channel.close()
    sock: Path = getattr(settings, daemon).socket
    if not sock.exists():
        return False
    async with DaemonClient(daemon, sock, connect_timeout=1.0) as client:
        health = await client.health(timeout=2.0)
    return bool(health.get("ready"))


def _systemd_unit(daemon: str) -> bool:
    """systemd runs this node (sd_booted(3): /run/systemd/system exists) and knows the unit."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    out = subprocess.run(["systemctl", "cat", f"crib-{daemon}.service"],
                         capture_output=True, check=False)
    return out.returncode == 0


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_daemon(pid: int, daemon: str) -> bool:
    """The pid still names crib-<daemon> (a pid file outlives its process, and pids are
    reused): never signal anything else. A daemon forked by crib-node keeps crib-node's
    command line but carries its own name in /proc/<pid>/comm."""
    if _comm(pid) == f"crib-{daemon}"[:15]:
        return True
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    name = f"crib-{daemon}".encode()
    return any(Path(a.decode(errors="replace")).name.encode() == name for a in argv[:2])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() if _alive(pid) else ""
    except OSError:
        return ""


async def _wait_new_pid(pidfile: Path, old: int | None, daemon: str,
                        timeout: float) -> int | None:
    """The pid of the daemon crib-node forked in place of `old`, once its pid file says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _read_pid(pidfile)
        if new is not None and new != old and _is_daemon(new, daemon):
            return new
        await asyncio.sleep(0.01)
    return None


async def _stop(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and _alive(pid):
        await asyncio.sleep(0.02)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running and not a zombie (the dev stack's daemons are not our children, but a
    zombie would still answer kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _spawn(daemon: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start crib-<daemon> as scripts/up.sh does: its own session, log appended."""
    program = Path(sys.executable).parent / f"crib-{daemon}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{daemon}.log", "ab") as log:
        return subprocess.Popen([str(program)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)

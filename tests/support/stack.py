"""Run the real crib daemons as subprocesses on private sockets and directories.

Every test stack lives under a short directory in /tmp (UNIX socket paths must stay under
108 bytes), uses its own CNI conf dir, bridge name and subnet, and is torn down by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("netd", "imaged", "runtimed", "gateway")
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """A crib node for tests: `start()`, `kill('imaged')`, `start_one('imaged')`, `stop()`."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def create(cls, **extra_env: str) -> Stack:
        root = Path(tempfile.mkdtemp(prefix="crib-", dir="/tmp"))
        return cls(root=root, extra_env=extra_env)

    # ------------------------------------------------------------- paths
    @property
    def cri_socket(self) -> Path:
        return self.root / "cri.sock"

    def socket(self, service: str) -> Path:
        return self.root / ("gateway.sock" if service == "gateway" else f"{service}.sock")

    def env(self) -> dict[str, str]:
        r = self.root
        env = dict(os.environ)
        env.update(
            {
                "CRIB_CONFIG": str(r / "crib.toml"),
                "CRIB_LOG__FORMAT": "json",
                "CRIB_LOG__LEVEL": "debug",
                "CRIB_GATEWAY__SOCKET": str(self.cri_socket),
                "CRIB_GATEWAY__HTTP_SOCKET": str(self.socket("gateway")),
                "CRIB_IMAGED__SOCKET": str(self.socket("imaged")),
                "CRIB_IMAGED__ROOT": str(r / "lib/imaged"),
                "CRIB_IMAGED__RUN_DIR": str(r / "run/imaged"),
                "CRIB_RUNTIMED__SOCKET": str(self.socket("runtimed")),
                "CRIB_RUNTIMED__ROOT": str(r / "lib/runtimed"),
                "CRIB_RUNTIMED__RUN_DIR": str(r / "run/runtimed"),
                "CRIB_RUNTIMED__PINNS_DIR": str(r / "run/ns"),
                "CRIB_RUNTIMED__CGROUP_PARENT": f"/crib-test-{r.name[5:]}",
                "CRIB_NETD__SOCKET": str(self.socket("netd")),
                "CRIB_NETD__ROOT": str(r / "lib/netd"),
                "CRIB_NETD__CACHE_DIR": str(r / "lib/netd/cache"),
                "CRIB_NETD__CONF_DIR": str(r / "cni"),
                "CRIB_NETD__DEFAULT_BRIDGE": "cribt0",
                "CRIB_NETD__DEFAULT_SUBNET": "10.213.0.0/24",
            }
        )
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------- lifecycle
    def start(self, services: tuple[str, ...] = SERVICES) -> Stack:
        for svc in services:
            self.start_one(svc)
        return self

    def start_one(self, service: str, timeout: float = 30.0) -> None:
        log = open(self.root / f"{service}.log", "ab")
        sock = self.socket(service)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        proc = subprocess.Popen(
            [str(BIN / f"crib-{service}")], env=self.env(), stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.procs[service] = proc
        wait_for_socket(self.cri_socket if service == "gateway" else sock, timeout, proc,
                        self.root / f"{service}.log")

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(service, None)
        if proc is None:
            return
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for svc in reversed(SERVICES):
            proc = self.procs.pop(svc, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, service: str) -> str:
        path = self.root / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for_socket(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                    log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear within {timeout}s")

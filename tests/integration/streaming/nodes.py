"""Real runc containers (and conmon-monitored ones for attach) for the streaming tests, and a
`StreamTargets` that points the server at them.

The rootfs is Debian's static busybox with applet symlinks: enough for the shell, cat, stty
and head that these tests run. Everything lives under a private runc --root and is deleted
(containers killed by runc, conmon by PID, netns removed) at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from crib_common.errors import NotFound
from runtimed.streaming import ContainerTarget, SandboxTarget

RUNC = "/usr/sbin/runc"
CONMON = "/usr/bin/conmon"
BUSYBOX = "/bin/busybox"


@dataclass
class Container:
    id: str
    bundle: Path
    tty: bool = False
    stdin: bool = False
    conmon_pid: int | None = None
    socket_dir: Path | None = None
    exit_dir: Path | None = None


@dataclass
class Node:
    """A private runc root plus the containers and netns made in it."""

    base: Path
    rootfs: Path
    containers: dict[str, Container] = field(default_factory=dict)
    netns: list[str] = field(default_factory=list)

    @property
    def cgroup_parent(self) -> str:
        return f"crib-test-stream-{self.base.name}"

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"

    def _bundle(self, cid: str, args: list[str], tty: bool, netns: str | None) -> Path:
        bundle = self.base / "b" / cid
        bundle.mkdir(parents=True)
        subprocess.run([RUNC, "spec", "--bundle", str(bundle)], check=True)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["root"] = {"path": str(self.rootfs), "readonly": True}
        cfg["process"]["terminal"] = tty
        cfg["process"]["args"] = args
        cfg["hostname"] = cid[:12]
        cfg["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                              "options": ["nosuid", "nodev", "mode=1777"]})
        cfg["linux"]["cgroupsPath"] = f"/{self.cgroup_parent}/{cid}"
        if netns is not None:
            for ns in cfg["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = netns
        (bundle / "config.json").write_text(json.dumps(cfg))
        return bundle

    def run(self, args: list[str], netns: str | None = None) -> Container:
        """A detached runc container running `args` (no tty, stdio to /dev/null)."""
        cid = f"crib-st-{uuid.uuid4().hex[:10]}"
        bundle = self._bundle(cid, args, tty=False, netns=netns)
        c = Container(cid, bundle)
        self.containers[cid] = c  # registered first: cleanup must find a half-made one
        # The container inherits runc's stdio: nothing may be a pipe we wait on.
        subprocess.run([RUNC, "--root", str(self.runc_root), "run", "-d", "--bundle",
                        str(bundle), cid], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        return c

    def run_conmon(self, args: list[str], tty: bool, stdin: bool = True) -> Container:
        """A container started through conmon, as runtimed does, with its attach socket."""
        cid = f"crib-st-{uuid.uuid4().hex[:10]}"
        bundle = self._bundle(cid, args, tty=tty, netns=None)
        socket_dir = self.base / "s"
        exit_dir = self.base / "exits"
        socket_dir.mkdir(exist_ok=True)
        exit_dir.mkdir(exist_ok=True)
        argv = [CONMON, "--api-version", "1", "-c", cid, "-u", cid, "-n", cid,
                "-r", RUNC, "-b", str(bundle), "-p", str(bundle / "pidfile"),
                "-P", str(bundle / "conmon.pid"), "-l", f"k8s-file:{bundle / 'ctr.log'}",
                "--exit-dir", str(exit_dir), "--socket-dir-path", str(socket_dir),
                "--runtime-arg", "--root", "--runtime-arg", str(self.runc_root),
                "--log-level", "info", "--leave-stdin-open", "--syslog"]
        c = Container(cid, bundle, tty=tty, stdin=stdin, socket_dir=socket_dir,
                      exit_dir=exit_dir)
        self.containers[cid] = c
        if tty:
            argv.append("-t")
        if stdin:
            argv.append("-i")
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        # conmon returns once it forked; the container exists when its pid file does.
        deadline = time.monotonic() + 15
        while not (bundle / "pidfile").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"conmon did not create {cid}")
            time.sleep(0.02)
        c.conmon_pid = int((bundle / "conmon.pid").read_text())
        subprocess.run([RUNC, "--root", str(self.runc_root), "start", cid], check=True,
                       timeout=30)
        return c

    def add_netns(self) -> str:
        name = f"crib-st-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        self.netns.append(name)
        return f"/run/netns/{name}"

    def state(self, cid: str) -> str:
        out = subprocess.run([RUNC, "--root", str(self.runc_root), "state", cid],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return "gone"
        return str(json.loads(out.stdout)["status"])

    def processes(self, cid: str) -> list[int]:
        out = subprocess.run([RUNC, "--root", str(self.runc_root), "ps", "--format", "json",
                              cid], capture_output=True, text=True)
        return json.loads(out.stdout or "[]") if out.returncode == 0 else []

    def cleanup(self) -> None:
        for c in self.containers.values():
            subprocess.run([RUNC, "--root", str(self.runc_root), "delete", "--force", c.id],
                           capture_output=True)
            if c.conmon_pid:
                try:
                    os.kill(c.conmon_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for parent in Path("/sys/fs/cgroup").glob(f"**/{self.cgroup_parent}"):
            try:
                parent.rmdir()
            except OSError:
                pass
        for name in self.netns:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


class FakeTargets:
    """StreamTargets over the Node's real containers (runtimed's store stands aside)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sandboxes: dict[str, str | None] = {}

    async def container_target(self, container_id: str) -> ContainerTarget:
        c = self.node.containers.get(container_id)
        if c is None:
            raise NotFound(f"container {container_id} not found")
        running = await asyncio.to_thread(self.node.state, container_id) == "running"
        attach = c.socket_dir / c.id / "attach" if c.socket_dir else None
        return ContainerTarget(id=c.id, running=running, runtime_path=RUNC,
                               runtime_root=self.node.runc_root, tty=c.tty, stdin=c.stdin,
                               attach_socket=attach, ctl_fifo=c.bundle / "ctl")

    async def sandbox_target(self, sandbox_id: str) -> SandboxTarget:
        if sandbox_id not in self.sandboxes:
            raise NotFound(f"pod sandbox {sandbox_id} not found")
        path = self.sandboxes[sandbox_id]
        return SandboxTarget(id=sandbox_id, ready=True,
                             netns_path=Path(path) if path else None)

    async def container_exit_code(self, container_id: str, timeout: float) -> int | None:
        c = self.node.containers.get(container_id)
        if c is None or c.exit_dir is None:
            return None
        deadline = time.monotonic() + timeout
        path = c.exit_dir / c.id
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().strip())
            await asyncio.sleep(0.05)
        return None


def make_rootfs(root: Path) -> None:
    """A static busybox rootfs with applet symlinks."""
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")




def make_node() -> Node:
    """A fresh Node under a private temporary directory (call `cleanup()` when done)."""
    base = Path(tempfile.mkdtemp(prefix="crib-st-"))
    make_rootfs(base / "rootfs")
    return Node(base, base / "rootfs")

"""Run the real crib daemons as subprocesses on private sockets and directories.

Every test stack lives under a short directory in /tmp (UNIX socket paths must stay under
108 bytes), uses its own CNI conf dir, bridge name and subnet, and is torn down by PID.
That directory is bound onto itself and made shared, as runtimed requires of its state
directories (`runtimed.propagation`); cleanup unmounts it. A daemon named in
`own_cgroups` runs in a cgroup of its own (as under a container engine or a systemd
unit), which `kill_cgroup` empties with SIGKILL as an engine stopping its container does.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import iptables

SERVICES = ("netd", "imaged", "runtimed", "gateway")
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """A crib node for tests: `start()`, `kill('imaged')`, `start_one('imaged')`, `stop()`."""

    root: Path
    # Each stack gets its own bridge and /24 so stacks of parallel runs never share IPs,
    # held by a lock (see `_claim_net_index`) until cleanup.
    net_index: int = field(default_factory=lambda: _claim_net_index())
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # argv put before a daemon's own (e.g. unshare + mount for a private cgroup2 view).
    wrappers: dict[str, list[str]] = field(default_factory=dict)
    # "node": the daemons forked by one crib-node (issue 14; scripts/up.sh's default), pid
    # files under `pid_dir`; "process": each daemon its own console script. The default is
    # $CRIB_TEST_LAUNCHER, else "node". A test that restarts one daemon with another
    # environment, keeps one down, starts one alone or reads `procs` names "process"; a
    # stack with `wrappers` runs as separate processes (crib-node cannot wrap a fork).
    launcher: str = "node"
    node: subprocess.Popen[bytes] | None = None
    # Under crib-node, the pid `kill` took last per daemon: `start_one` waits for another.
    killed: dict[str, int] = field(default_factory=dict)
    # Daemons started in their own cgroup (`daemon_cgroup`), joined before exec.
    own_cgroups: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, launcher: str | None = None, **extra_env: str) -> Stack:
        root = Path(tempfile.mkdtemp(prefix="crib-", dir="/tmp"))
        # Searchable by others, as /run is: a pod user namespace's root (an unprivileged
        # host ID) reaches its rootfs under here.
        root.chmod(0o711)
        _make_shared(root)
        return cls(root=root, extra_env=extra_env, launcher=launcher or default_launcher())

    @classmethod
    @contextlib.contextmanager
    def running(cls, services: tuple[str, ...] = SERVICES, launcher: str | None = None,
                **extra_env: str) -> Iterator[Stack]:
        """A started stack, cleaned up afterwards, also when a daemon fails to start."""
        stack = cls.create(launcher, **extra_env)
        try:
            stack.start(services)
            yield stack
        finally:
            stack.cleanup()

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
                "CRIB_RUNTIMED__POD_LOG_DIR": str(r / "podlogs"),
                "CRIB_RUNTIMED__CGROUP_PARENT": self.cgroup_parent,
                # NRI on the stack's own socket, never /var/run/nri (issue 15).
                "CRIB_RUNTIMED__NRI__SOCKET": str(r / "nri.sock"),
                "CRIB_RUNTIMED__NRI__PLUGIN_DIR": str(r / "nri-plugins"),
                "CRIB_RUNTIMED__NRI__PLUGIN_CONFIG_DIR": str(r / "nri-conf"),
                "CRIB_NETD__SOCKET": str(self.socket("netd")),
                "CRIB_NETD__ROOT": str(r / "lib/netd"),
                "CRIB_NETD__CACHE_DIR": str(r / "lib/netd/cache"),
                "CRIB_NETD__CONF_DIR": str(r / "cni"),
                "CRIB_NETD__NETNS_DIR": str(r / "run/netns"),
                "CRIB_NETD__DEFAULT_BRIDGE": self.bridge,
                "CRIB_NETD__DEFAULT_SUBNET": f"10.213.{self.net_index}.0/24",
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def bridge(self) -> str:
        return f"cribt{self.net_index}"

    @property
    def cgroup_parent(self) -> str:
        return f"/crib-test-{self.root.name[5:]}"

    def daemon_cgroup(self, service: str) -> str:
        """The cgroup a daemon of `own_cgroups` runs in: under the stack's parent, so
        cleanup finds it, apart from the pods' cgroups."""
        return f"{self.cgroup_parent}/daemon-{service}"

    def _cgroup_dirs(self, service: str) -> list[Path]:
        """That cgroup in every hierarchy but memory's, which belongs to the host here
        (the test process's own memory cgroup is left as it is)."""
        rel = self.daemon_cgroup(service).lstrip("/")
        return [h / rel for h in _hierarchies() if h.name != "memory"]

    def _join_before_exec(self, service: str) -> Callable[[], None] | None:
        """A preexec function moving the child into its cgroup before it execs (the test
        runner can afford the fork that preexec_fn costs)."""
        if service not in self.own_cgroups:
            return None
        procs = []
        for d in self._cgroup_dirs(service):
            _mkdir_cgroup(d)
            procs.append(str(d / "cgroup.procs"))

        def join() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write("0")  # "0": the writing process itself (cgroup-v2.rst)

        return join

    def cgroup_pids(self, service: str) -> set[int]:
        return _pids_in([d for d in self._cgroup_dirs(service) if d.is_dir()])

    def kill_cgroup(self, service: str, timeout: float = 10.0) -> set[int]:
        """SIGKILL every process in the daemon's cgroup, in any hierarchy, until none is
        left (as an engine stops a container, or systemd a unit's control group);
        returns the pids killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while pids := self.cgroup_pids(service) - {os.getpid()}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service}'s cgroup still holds {sorted(pids)}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed |= pids
            time.sleep(0.02)
        proc = self.procs.pop(service, None)
        if proc is not None:
            proc.wait(timeout=30)
        return killed

    # ------------------------------------------------------------- lifecycle
    def start(self, services: tuple[str, ...] = SERVICES) -> Stack:
        if self.wrappers:
            self.launcher = "process"
        if self.launcher == "node":
            self.start_node(services)
            return self
        for svc in services:
            self.start_one(svc)
        return self

    # ------------------------------------------------------------- under crib-node
    @property
    def pid_dir(self) -> Path:
        return self.root / "pids"

    def daemon_pid(self, service: str) -> int:
        """The pid the launcher recorded for `service` (crib-node's pid file), or 0."""
        if self.launcher != "node":
            proc = self.procs.get(service)
            return proc.pid if proc is not None else 0
        with contextlib.suppress(OSError, ValueError):
            return int((self.pid_dir / f"{service}.pid").read_text())
        return 0

    def daemon_pids(self) -> list[int]:
        """Every process of the stack's daemons (with crib-node itself when it runs)."""
        if self.launcher != "node":
            return [p.pid for p in self.procs.values()]
        pids = [self.daemon_pid(s) for s in SERVICES]
        if self.node is not None and self.node.poll() is None:
            pids.append(self.node.pid)
        return [p for p in pids if p > 0]

    def start_node(self, services: tuple[str, ...] = SERVICES, timeout: float = 30.0) -> None:
        """Start (or start again) crib-node; returns once every daemon's socket answers."""
        log = open(self.root / "node.log", "ab")
        self.node = subprocess.Popen(
            [str(BIN / "crib-node"), "--pid-dir", str(self.pid_dir), "--log-dir",
             str(self.root), "--daemons", ",".join(services)],
            env=self.env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        for svc in services:
            wait_for_socket(self.cri_socket if svc == "gateway" else self.socket(svc),
                            timeout, self.node, self.root / "node.log")

    def wait_forked(self, service: str, old_pid: int, timeout: float = 30.0) -> int:
        """Under crib-node: wait until a new `service` (not `old_pid`) serves; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.daemon_pid(service)
            if pid and pid != old_pid and process_alive(pid):
                sock = self.cri_socket if service == "gateway" else self.socket(service)
                wait_for_socket(sock, deadline - time.monotonic())
                return pid
            time.sleep(0.01)
        raise TimeoutError(f"crib-node did not fork {service} again within {timeout}s")

    def start_one(self, service: str, timeout: float = 30.0) -> None:
        if self.launcher == "node":
            # crib-node forks it again by itself; starting one here would make a twin.
            self.wait_forked(service, self.killed.pop(service, 0), timeout)
            return
        log = open(self.root / f"{service}.log", "ab")
        sock = self.socket(service)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        proc = subprocess.Popen(
            [*self.wrappers.get(service, []), str(BIN / f"crib-{service}")], env=self.env(), stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=self._join_before_exec(service),
        )
        self.procs[service] = proc
        wait_for_socket(self.cri_socket if service == "gateway" else sock, timeout, proc,
                        self.root / f"{service}.log")

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        if self.launcher == "node":
            # crib-node forks it again; `wait_forked` waits for that.
            pid = self.daemon_pid(service)
            if pid:
                self.killed[service] = pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                wait_gone(pid, 30.0)
            return
        proc = self.procs.pop(service, None)
        if proc is None:
            return
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        if self.launcher == "node":
            self._stop_node()
            return
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

    def _stop_node(self) -> None:
        """SIGTERM to crib-node stops the daemons; any it left (or that outlived a crib-node
        killed by a test) are stopped by their pid files."""
        node, self.node = self.node, None
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        for svc in SERVICES:
            pid = self.daemon_pid(svc)
            if pid and _comm(pid) == f"crib-{svc}":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not wait_gone(pid, 15.0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 5.0)

    def _kill_leftover_processes(self) -> None:
        tops = [ctrl / self.cgroup_parent.lstrip("/") for ctrl in Path("/sys/fs/cgroup").iterdir()]
        for _ in range(50):
            pids = _pids_in([t for t in tops if t.is_dir()]) | _conmons_of(self.root)
            pids.discard(os.getpid())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def log(self, service: str) -> str:
        path = self.root / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        """Stop the daemons and remove what the stack made on the host."""
        try:
            self._cleanup()
        finally:
            _release_net_index(self.net_index)

    def _cleanup(self) -> None:
        self.stop()
        # Containers keep running when runtimed stops (by design): after a test that
        # failed before removing its pods, kill their monitors and every process in the
        # stack's cgroups, by PID, so that nothing of this stack outlives it.
        self._kill_leftover_processes()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        # Rules of pods a test never removed (their CNI chains carry the network name).
        iptables.remove_matching([f"crib-{self.bridge}", f"10.213.{self.net_index}."])
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            rmdir_tree(ctrl / self.cgroup_parent.lstrip("/"))
        # Anything still mounted under the stack (snapshots, netns pins) goes first.
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for target in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _make_shared(root: Path) -> None:
    """Bind `root` onto itself and make it shared (`mount --make-rshared`): runtimed
    requires its directories to propagate mounts, and /tmp is private on hosts without
    systemd. `cleanup` unmounts it with everything below."""
    for argv in (["mount", "--bind", str(root), str(root)],
                 ["mount", "--make-rshared", str(root)]):
        subprocess.run(argv, check=True, capture_output=True)


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the hybrid cgroup2;
    or the one v2 tree)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.procs").exists():
        return [root]
    return [h for h in sorted(root.iterdir())
            if not h.is_symlink() and (h / "cgroup.procs").exists()]


def _mkdir_cgroup(d: Path) -> None:
    """mkdir -p a cgroup; new v1 cpuset levels get their parent's cpus and mems."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for level in reversed(missing):
        level.mkdir()
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (level / name).exists() and not (level / name).read_text().strip():
                (level / name).write_text((level.parent / name).read_text())


def _pids_in(cgroup_dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs:
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(x) for x in procs.read_text().split()}
    return pids


def _conmons_of(root: Path) -> set[int]:
    """conmon processes whose command line names a path under `root`."""
    found: set[int] = set()
    needle = str(root).encode() + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"conmon") and any(needle in a for a in argv):
                found.add(int(entry.name))
    return found


# Net indices this process holds, each by a bound abstract UNIX socket.
_NET_LOCKS: dict[int, socket.socket] = {}


def rmdir_tree(top: Path) -> None:
    """Remove an (empty) cgroup directory and its children, leaves first (a cgroup
    directory is removed with rmdir); one still holding a process stays."""
    if not top.is_dir():
        return
    for cg in sorted((p for p in top.rglob("*") if p.is_dir()),
                     key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            cg.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def default_launcher() -> str:
    """How test stacks run their daemons unless a test says: $CRIB_TEST_LAUNCHER."""
    launcher = os.environ.get("CRIB_TEST_LAUNCHER", "node")
    if launcher not in ("process", "node"):
        raise ValueError(f"CRIB_TEST_LAUNCHER must be process or node, not {launcher!r}")
    return launcher


def _claim_net_index() -> int:
    """A /24 index (10.213.<n>.0, bridge cribt<n>) no live stack of any process holds.

    Two stacks on one index would share a bridge, and one's cleanup (which removes the
    iptables rules of its network and subnet) would delete the other's CNI chains. The
    claim is an abstract UNIX socket name: one process can bind it, the kernel frees it
    when the holder closes it or dies, and it leaves no file behind. An index whose
    bridge a crashed run left is skipped."""
    for n in random.sample(range(1, 251), 250):
        if n in _NET_LOCKS or Path(f"/sys/class/net/cribt{n}").exists():
            continue
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            claim.bind(f"\0crib-test-net-{n}")
        except OSError:
            claim.close()
            continue
        _NET_LOCKS[n] = claim
        return n
    raise RuntimeError("no free test network index (10.213.1-250.0/24)")


def _release_net_index(n: int) -> None:
    claim = _NET_LOCKS.pop(n, None)
    if claim is not None:
        claim.close()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """Running and not a zombie: a daemon orphaned by a killed crib-node is reaped by PID 1,
    which may leave it a zombie here for a while."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` is no longer running; False if it still is after `timeout`."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


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

"""Small fakes of everything runtimed reaches outside itself, for lifecycle unit tests
without root: the OCI runtime (`oci.runtime.RuntimeImpl`), the monitor
(`conmon.monitor.Monitor`), the host (`ports.Host`) and the two peers (`ports.ImagedPeer`,
`ports.NetdPeer`). No mock library: each is a plain class that keeps the world it changes
in dicts (and, for what runtimed itself reads back from disk, in the test's tmp dirs).

All fakes share one `Steps`: every call that does work is logged there by name
("<fake>.<method>", e.g. "imaged.create_snapshot"), so a test can take the log of a
successful create as the list of its steps, then fail (`Steps.fail`) or freeze
(`Steps.pause`, a daemon killed mid-create) the n-th call of each step in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crib_common.errors import FailedPrecondition, NotFound, Unavailable
from crib_common.models.imaged import (
    ImageInfo,
    Mount,
    PullEvent,
    PullRequest,
    Snapshot,
    SnapshotCreate,
    SnapshotUsage,
)
from crib_common.models.netd import PodIP, PodNetwork, PodNetworkCreate
from runtimed.cgroups import CgroupStats
from runtimed.conmon.monitor import ConmonSpec
from runtimed.node import Node
from runtimed.store.records import CONTAINER_KIND, SANDBOX_KIND, ContainerRecord, SandboxRecord

__all__ = ["BUSYBOX", "PAUSE", "FakeHost", "FakeImaged", "FakeMonitor", "FakeNetd",
           "FakeRuntime", "Fakes", "Steps"]

BUSYBOX = ImageInfo(id="sha256:" + "b" * 64, repo_tags=["crib.test/busybox:1"],
                    repo_digests=["crib.test/busybox@sha256:" + "d" * 64],
                    config={"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}})
PAUSE = ImageInfo(id="sha256:" + "a" * 64, repo_tags=["crib.test/pause:3"],
                  config={"config": {"Entrypoint": ["/pause"]}})


def _default_error(step: str) -> Exception:
    """What a failing step raises unless told otherwise: the host's calls fail as the
    kernel does (OSError), the peers as unreachable, runtime and monitor as refused."""
    if step.startswith("host."):
        return OSError(errno.EIO, f"injected failure at {step}")
    if step.startswith(("imaged.", "netd.")):
        return Unavailable(f"injected failure at {step}")
    return FailedPrecondition(f"injected failure at {step}")


class Steps:
    """The shared call log, and the plan of which call fails or freezes."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.asynchronous: set[str] = set()  # steps that can be paused
        self._seen: Counter[str] = Counter()
        self._fail: dict[tuple[str, int], Exception] = {}
        self._pause: dict[tuple[str, int], asyncio.Event] = {}
        self._frozen: list[asyncio.Future[None]] = []

    def fail(self, step: str, nth: int = 1, error: Exception | None = None) -> None:
        """The `nth` call of `step` (counted from now) raises `error`."""
        self._fail[(step, self._seen[step] + nth)] = error or _default_error(step)

    def pause(self, step: str, nth: int = 1) -> asyncio.Event:
        """The `nth` call of `step` (an async one) never returns: the daemon is "killed"
        there. The event is set once it is reached."""
        reached = asyncio.Event()
        self._pause[(step, self._seen[step] + nth)] = reached
        return reached

    def thaw(self) -> None:
        """Let every paused call fail at last, so the task it froze can end (a test's
        cleanup, once its checks are done)."""
        for frozen in self._frozen:
            if not frozen.done():
                frozen.set_exception(Unavailable("the daemon was killed here"))
        self._frozen.clear()

    def clear(self) -> None:
        self._fail.clear()
        self._pause.clear()

    def hit(self, step: str) -> None:
        self._seen[step] += 1
        self.calls.append(step)
        error = self._fail.pop((step, self._seen[step]), None)
        if error is not None:
            raise error

    async def ahit(self, step: str) -> None:
        self.asynchronous.add(step)
        self.hit(step)
        reached = self._pause.pop((step, self._seen[step]), None)
        if reached is not None:
            reached.set()
            frozen = asyncio.get_running_loop().create_future()
            self._frozen.append(frozen)
            await frozen  # until thawed
        await asyncio.sleep(0)  # a real call yields; let others run in between

    def since(self, mark: int) -> list[str]:
        return self.calls[mark:]


class FakeRuntime:
    """`RuntimeImpl`: containers and their states in a dict. `kill` ends the process and
    writes the exit file the monitor would write, unless the signal is in `ignore`."""

    def __init__(self, steps: Steps, monitor: FakeMonitor, exit_dir: Path,
                 name: str = "runc") -> None:
        self.steps = steps
        self.monitor = monitor
        self.exit_dir = exit_dir
        self.name = name
        self.path = f"/fake/bin/{name}"
        self.root = Path(f"/fake/run/{name}")
        self.usable = True
        self.reason = ""
        self.version = f"{name} version 0.0-fake"
        self.containers: dict[str, str] = {}  # id -> created | running | stopped
        self.pids: dict[str, tuple[int, int]] = {}  # id -> (monitor pid, process pid)
        self.ignore: set[int] = set()
        self.signals: list[tuple[str, int]] = []
        self.updates: dict[str, dict[str, Any]] = {}
        monitor.runtimes[self.path] = self

    @property
    def recursive_read_only(self) -> bool:
        return False

    def global_args(self) -> list[str]:
        return [f"--root={self.root}"]

    def exec_argv(self, cid: str, process_json: Path) -> list[str]:
        return [self.path, *self.global_args(), "exec", "--process", str(process_json), cid]

    async def probe(self) -> None:
        await self.steps.ahit("runtime.probe")

    async def state(self, cid: str, *, timeout: float = 10.0) -> dict[str, Any] | None:
        await self.steps.ahit("runtime.state")
        status = self.containers.get(cid)
        if status is None:
            return None
        return {"ociVersion": "1.0.2", "id": cid, "status": status,
                "pid": self.pids.get(cid, (0, 0))[1]}

    async def start(self, cid: str, *, timeout: float = 30.0) -> None:
        await self.steps.ahit("runtime.start")
        if self.containers.get(cid) != "created":
            raise FailedPrecondition(f"{self.name} start {cid}: container is not created")
        self.containers[cid] = "running"

    async def kill(self, cid: str, sig: int, *, all_procs: bool = False,
                   timeout: float = 10.0) -> None:
        await self.steps.ahit("runtime.kill")
        self.signals.append((cid, sig))
        if self.containers.get(cid) not in ("created", "running") or sig in self.ignore:
            return
        self.exit(cid, 128 + sig)

    async def delete(self, cid: str, *, timeout: float = 30.0) -> None:
        """`delete --force`: a live process is killed first (its monitor records it)."""
        await self.steps.ahit("runtime.delete")
        if self.containers.get(cid) in ("created", "running"):
            self.exit(cid, 137)
        self.containers.pop(cid, None)
        self.pids.pop(cid, None)

    async def update(self, cid: str, resources: dict[str, Any], *,
                     timeout: float = 30.0) -> None:
        await self.steps.ahit("runtime.update")
        if cid not in self.containers:
            raise NotFound(f"container {cid} is not known to {self.name}")
        self.updates[cid] = resources

    def exit(self, cid: str, code: int) -> None:
        """The container's process ends with `code`: its monitor writes the exit file
        (as conmon writes `<exit-dir>/<id>`) and exits too."""
        self.containers[cid] = "stopped"
        monitor_pid, pid = self.pids.get(cid, (0, 0))
        self.monitor.live.discard(pid)
        if monitor_pid in self.monitor.live:
            self.exit_dir.mkdir(parents=True, exist_ok=True)
            (self.exit_dir / cid).write_text(str(code))
            self.monitor.live.discard(monitor_pid)


class FakeMonitor:
    """`Monitor`: "starts" a monitor that creates the container in its fake runtime,
    hands out pids that never name a real process."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.runtimes: dict[str, FakeRuntime] = {}
        self.live: set[int] = set()
        self.controls: list[tuple[str, int]] = []
        self.starts: dict[int, int] = {}
        self._next_pid = 4_000_000  # above any pid_max: never a real process
        # Placed as `Conmon(join=host.join_cgroup)` places it, when a host is given.
        self.host: FakeHost | None = None

    async def start(self, spec: ConmonSpec, *, timeout: float = 60.0,
                    ready: asyncio.Event | None = None) -> tuple[int, int]:
        if ready is not None:
            await ready.wait()
        await self.steps.ahit("monitor.start")
        runtime = self.runtimes[spec.runtime_path]
        monitor_pid, pid = self._next_pid, self._next_pid + 1
        self._next_pid += 2
        # What conmon leaves on disk: its persist dir and the attach socket's link.
        spec.persist_dir.mkdir(parents=True, exist_ok=True)
        spec.socket_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(spec.bundle, spec.socket_dir / spec.cid)
        if spec.cgroup and self.host is not None:
            self.host.join_cgroup(spec.cgroup, monitor_pid)
        self.live |= {monitor_pid, pid}
        self.starts[monitor_pid] = self.starts[pid] = monitor_pid  # any stable number
        runtime.containers[spec.cid] = "created"
        runtime.pids[spec.cid] = (monitor_pid, pid)
        return monitor_pid, pid

    def alive(self, pid: int, started: int = 0) -> bool:
        return pid in self.live and (not started or self.starts.get(pid) == started)

    def started(self, pid: int) -> int:
        return self.starts.get(pid, 0) if pid in self.live else 0

    async def wait(self, pid: int) -> None:
        while pid in self.live:
            await asyncio.sleep(0.01)

    def kill(self, pid: int) -> None:
        self.steps.hit("monitor.kill")
        self.live.discard(pid)

    def control(self, bundle: Path, msg_type: int) -> None:
        self.steps.hit("monitor.control")
        self.controls.append((str(bundle), msg_type))


class FakeHost:
    """`ports.Host`: mounts, namespace pins and cgroups in dicts; the directories and pod
    files runtimed reads back are made on disk (under the test's tmp dirs)."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.swap_controller = False
        self.mounts: dict[str, list[Mount]] = {}
        self.pins: dict[str, dict[str, str]] = {}
        self.pod_files: dict[str, dict[str, Any]] = {}
        self.cgroups: dict[str, dict[str, Any]] = {}
        self.oom: set[str] = set()
        # Pod user namespaces: the mapping of each pinned one, and whether a holder runs.
        self.userns_maps: dict[str, Any] = {}
        self.holding = False

    def mount_all(self, mounts: list[Mount], target: Path) -> None:
        self.steps.hit("host.mount_all")
        target.mkdir(parents=True, exist_ok=True)
        self.mounts[str(target)] = list(mounts)

    def unmount_under(self, path: str) -> None:
        self.steps.hit("host.unmount_under")
        for target in [t for t in self.mounts if t == path or t.startswith(path + "/")]:
            del self.mounts[target]

    async def pin_namespaces(self, ns_dir: Path, *, ipc: bool, uts: bool,
                             hostname: str) -> dict[str, str]:
        await self.steps.ahit("host.pin_namespaces")
        ns_dir.mkdir(parents=True, exist_ok=True)
        pins = {}
        for kind, wanted in (("ipc", ipc), ("uts", uts)):
            if wanted:
                (ns_dir / kind).touch()
                pins[kind] = str(ns_dir / kind)
        self.pins[str(ns_dir)] = pins
        return pins

    @contextlib.asynccontextmanager
    async def pod_namespaces(self, ns_dir: Path, pod: Any, *, ipc: bool, uts: bool,
                             hostname: str) -> AsyncIterator[dict[str, str]]:
        """As `pin_namespaces`, with the user namespace; "held" is a /proc path that only
        works inside the block (`holding`), as the real holder's."""
        await self.steps.ahit("host.pod_namespaces")
        ns_dir.mkdir(parents=True, exist_ok=True)
        pins = {}
        for kind, wanted in (("user", True), ("ipc", ipc), ("uts", uts)):
            if wanted:
                (ns_dir / kind).touch()
                pins[kind] = str(ns_dir / kind)
        self.pins[str(ns_dir)] = pins
        self.userns_maps[str(ns_dir / "user")] = pod
        self.holding = True
        try:
            yield {**pins, "held": "/proc/4242/ns/user"}
        finally:
            self.holding = False

    def mount_overlay_idmapped(self, mounts: list[Mount], target: Path, userns_path: str,
                               root: tuple[int, int], work: Path) -> None:
        self.steps.hit("host.mount_overlay_idmapped")
        target.mkdir(parents=True, exist_ok=True)
        self.mounts[str(target)] = [Mount(type=m.type, source=m.source,
                                          options=[*m.options, f"idmap={userns_path}"])
                                    for m in mounts]

    def idmapped_clone(self, source: str, target: Path, userns_path: str) -> None:
        self.steps.hit("host.idmapped_clone")
        target.mkdir(parents=True, exist_ok=True)
        self.mounts[str(target)] = [Mount(type="bind", source=source,
                                          options=[f"idmap={userns_path}"])]

    def lost_pins(self, pins: dict[str, str]) -> list[str]:
        held = {path for p in self.pins.values() for path in p.values()}
        return [kind for kind, path in pins.items() if path not in held]

    def unpin_namespaces(self, ns_dir: Path) -> None:
        self.steps.hit("host.unpin_namespaces")
        self.pins.pop(str(ns_dir), None)
        shutil.rmtree(ns_dir, ignore_errors=True)

    def write_pod_files(self, pod_dir: Path, hostname: str, dns: Any, ips: list[str],
                        host_network: bool, owner: tuple[int, int] | None = None) -> None:
        self.steps.hit("host.write_pod_files")
        for name, text in (("hostname", hostname + "\n"), ("hosts", "127.0.0.1 localhost\n"),
                           ("resolv.conf", "nameserver 127.0.0.53\n")):
            (pod_dir / name).write_text(text)
        self.pod_files[str(pod_dir)] = {"hostname": hostname, "ips": ips}

    def mount_shm(self, target: Path) -> None:
        self.steps.hit("host.mount_shm")
        target.mkdir(parents=True, exist_ok=True)
        self.mounts[str(target)] = [Mount(type="tmpfs", source="shm", options=["size=65536k"])]

    def apply_pod_resources(self, cgroup_path: str, res: dict[str, Any]) -> None:
        self.steps.hit("host.apply_pod_resources")
        self.cgroups[cgroup_path] = dict(res)

    def kill_cgroup(self, cgroup_path: str) -> int:
        self.steps.hit("host.kill_cgroup")
        return 0

    def join_cgroup(self, cgroup_path: str, pid: int) -> None:
        self.steps.hit("host.join_cgroup")
        self.cgroups.setdefault(cgroup_path, {}).setdefault("procs", []).append(pid)

    def cgroup_children(self, cgroup_path: str) -> set[str]:
        prefix = cgroup_path.rstrip("/") + "/"
        return {p[len(prefix):].split("/")[0] for p in self.cgroups if p.startswith(prefix)}

    def remove_cgroup(self, cgroup_path: str) -> list[str]:
        self.steps.hit("host.remove_cgroup")
        for path in [p for p in self.cgroups
                     if p == cgroup_path or p.startswith(cgroup_path + "/")]:
            del self.cgroups[path]
        return []

    def read_stats(self, cgroup_path: str) -> CgroupStats:
        return CgroupStats(timestamp=0, cpu_usage_ns=0, memory_usage=0, working_set=0, rss=0,
                           page_faults=0, major_page_faults=0, pids=0,
                           exists=cgroup_path in self.cgroups)

    def oom_killed(self, cgroup_path: str) -> bool:
        return cgroup_path in self.oom


class FakeImaged:
    """`ports.ImagedPeer`: images and snapshots in dicts. `pullable` images are stored
    once pulled."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.images: dict[str, ImageInfo] = {}
        self.pullable: dict[str, ImageInfo] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.add(BUSYBOX)

    def add(self, image: ImageInfo) -> None:
        for ref in (image.id, *image.repo_tags, *image.repo_digests):
            self.images[ref] = image

    def forget(self, image: ImageInfo) -> None:
        """As if the image had been garbage-collected."""
        for ref in (image.id, *image.repo_tags, *image.repo_digests):
            self.images.pop(ref, None)

    async def resolve_image(self, ref: str, *, timeout: float | None = None) -> ImageInfo:
        await self.steps.ahit("imaged.resolve_image")
        image = self.images.get(ref)
        if image is None:
            raise NotFound(f"image {ref!r} not found")
        return image

    async def pull(self, request: PullRequest, *,
                   timeout: float | None = None) -> AsyncIterator[PullEvent]:
        await self.steps.ahit("imaged.pull")
        yield PullEvent(reference=request.reference, status="resolving")
        image = self.pullable.get(request.reference)
        if image is None:
            yield PullEvent(reference=request.reference, status="error",
                            error_kind="not_found", error="no such image")
            return
        self.add(image)
        yield PullEvent(reference=request.reference, status="done", image_id=image.id)

    async def create_snapshot(self, request: SnapshotCreate, *,
                              timeout: float | None = None) -> Snapshot:
        await self.steps.ahit("imaged.create_snapshot")
        image = self.images.get(request.image)
        if image is None:
            raise NotFound(f"image {request.image!r} not found")
        snap = Snapshot(key=request.key, image_id=image.id, upperdir=f"/fake/{request.key}/fs",
                        labels=dict(request.labels),
                        mounts=[Mount(type="overlay", source="overlay",
                                      options=[f"lowerdir=/fake/{image.id[7:19]}",
                                               f"upperdir=/fake/{request.key}/fs"])])
        self.snapshots[request.key] = snap
        return snap

    async def list_snapshots(self, *, timeout: float | None = None) -> list[Snapshot]:
        await self.steps.ahit("imaged.list_snapshots")
        return list(self.snapshots.values())

    async def snapshot_usage(self, key: str, *, timeout: float | None = None) -> SnapshotUsage:
        if key not in self.snapshots:
            raise NotFound(f"snapshot {key!r} not found")
        return SnapshotUsage(key=key, bytes=4096, inodes=1)

    async def remove_snapshot(self, key: str, *, timeout: float | None = None) -> None:
        await self.steps.ahit("imaged.remove_snapshot")
        self.snapshots.pop(key, None)

    async def close(self) -> None:
        pass


class FakeNetd:
    """`ports.NetdPeer`: pod networks in a dict, one IPv4 address each."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.networks: dict[str, PodNetwork] = {}
        self.requests: list[PodNetworkCreate] = []
        self._next_ip = 2

    async def create_pod_network(self, request: PodNetworkCreate, *,
                                 timeout: float | None = None) -> PodNetwork:
        await self.steps.ahit("netd.create_pod_network")
        self.requests.append(request)
        net = self.networks.get(request.pod_id)
        if net is None:
            net = PodNetwork(pod_id=request.pod_id, pod_name=request.pod_name,
                             netns_path=f"/run/netns/crib-fake-{request.pod_id[:12]}",
                             ips=[PodIP(ip=f"10.213.0.{self._next_ip}")])
            self._next_ip += 1
            self.networks[request.pod_id] = net
        return net

    async def list_pod_networks(self, *, timeout: float | None = None) -> list[PodNetwork]:
        await self.steps.ahit("netd.list_pod_networks")
        return list(self.networks.values())

    async def remove_pod_network(self, pod_id: str, *, timeout: float | None = None) -> None:
        await self.steps.ahit("netd.remove_pod_network")
        self.networks.pop(pod_id, None)

    async def close(self) -> None:
        pass


@dataclass
class Fakes:
    """One fake world: what `Runtimed(...)` takes, sharing one `Steps`. It outlives a
    Runtimed, so a test can "restart" the daemon against the same world."""

    exit_dir: Path
    steps: Steps = field(default_factory=Steps)

    def __post_init__(self) -> None:
        self.monitor = FakeMonitor(self.steps)
        self.runtime = FakeRuntime(self.steps, self.monitor, self.exit_dir)
        self.host = FakeHost(self.steps)
        self.monitor.host = self.host
        self.imaged = FakeImaged(self.steps)
        self.netd = FakeNetd(self.steps)

    def parts(self) -> dict[str, Any]:
        """Keyword arguments for `Runtimed`."""
        return {"runtimes": {self.runtime.name: self.runtime}, "monitor": self.monitor,
                "host": self.host, "imaged": self.imaged, "netd": self.netd}

    def leftovers(self, node: Node) -> dict[str, Any]:
        """Everything the world and runtimed still hold; {} when a node is clean."""
        def entries(path: Path) -> list[str]:
            try:
                return sorted(os.listdir(path))
            except FileNotFoundError:
                return []

        left = {
            "snapshots": sorted(self.imaged.snapshots),
            "networks": sorted(self.netd.networks),
            "mounts": sorted(self.host.mounts),
            "pins": sorted(self.host.pins),
            "cgroups": sorted(self.host.cgroups),
            "runtime containers": sorted(self.runtime.containers),
            "live pids": sorted(self.monitor.live),
            "pod dirs": entries(node.pods_dir),
            "bundles": entries(node.bundles),
            "pin dirs": entries(Path(node.cfg.pinns_dir)),
            "socket links": entries(node.sock_dir),
            "exit files": entries(node.exit_dir),
            "sandboxes": sorted(node.sandboxes),
            "containers": sorted(node.containers),
            "names": sorted(node.names),
            "stored sandboxes": [r.meta.id for r in node.store.list(SANDBOX_KIND, SandboxRecord)],
            "stored containers": [r.meta.id
                                  for r in node.store.list(CONTAINER_KIND, ContainerRecord)],
        }
        return {what: held for what, held in left.items() if held}

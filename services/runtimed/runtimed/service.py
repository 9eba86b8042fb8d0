"""The runtime service: pods and containers, their records, conmon and the OCI runtimes.

The CRI modules in `cri/` check input and call into `Runtime`; everything that changes
the world lives here so recovery (`recover`) and the RPCs share one implementation.

Multi-step creates persist a "creating" record first, push an undo for each step on an
`AsyncExitStack`, and keep the steps only on success; undo runs shielded under its own
timeout (containerd's DeferContext, CRI-O's resourcecleaner). A "creating" record found at
start is a create that was killed half-way: recovery rolls it back with the same undo
steps, each of which tolerates the step never having happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog

from crib_common.clients.imaged import ImagedClient
from crib_common.clients.netd import NetdClient
from crib_common.cri.runtime.v1 import (
    ContainerConfig,
    ContainerEventResponse,
    ContainerEventType,
    NamespaceMode,
    NamespaceOption,
    PodSandboxConfig,
    SupplementalGroupsPolicy,
)
from crib_common.errors import (
    AlreadyExists,
    CribError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from crib_common.models.imaged import ImageInfo, Mount, PullEvent, PullRequest, SnapshotCreate
from crib_common.models.netd import DnsConfig as NetDns
from crib_common.models.netd import PodNetworkCreate, PortMapping
from crib_common.proc import Child, read_fd
from crib_common.settings import CribSettings
from crib_common.state import StateStore

from . import cgroups
from .conmon.monitor import (
    REOPEN_LOGS_EVENT,
    ConmonSpec,
    ExitWatcher,
    control,
    process_alive,
    read_exit_file,
    start_conmon,
)
from .oci.mount import mount_all
from .oci.runtime import OciRuntime, check_hybrid_cgroups, signal_number
from .oci.spec import (
    ContainerSpecInput,
    build_container_spec,
    build_pause_spec,
    build_sandbox_spec,
    check_host_userns,
    is_set,
    resources_to_dict,
    resources_to_oci,
)
from .oci.user import resolve_user
from .sandbox.files import mount_shm, write_pod_files
from .sandbox.namespaces import mounts_under, pin_namespaces, umount, unpin_namespaces
from .views import forget_item
from .store.records import (
    CONTAINER_KIND,
    SANDBOX_KIND,
    ContainerMeta,
    ContainerRecord,
    SandboxMeta,
    SandboxRecord,
)

__all__ = ["Runtime", "ID_LEN", "MAX_EXEC_OUTPUT"]

log = structlog.get_logger("crib.runtimed")

ID_LEN = 64
# ExecSync output is capped at 16 MiB, as CRI-O's maxExecSyncSize; since the kubelet's
# message limit is also 16 MiB, stdout and stderr together keep 1 KiB for the framing
# (stderr is kept whole first: it explains failures).
MAX_EXEC_OUTPUT = 16 * 1024 * 1024
EXEC_REPLY_ROOM = MAX_EXEC_OUTPUT - 1024
# Undo steps run under their own bound, never the caller's (maybe expired) deadline.
UNDO_TIMEOUT = 60.0
# How long a create finished after its caller's deadline waits for the kubelet's retry.
PARK_TTL = 300.0
# How long StopContainer waits for conmon's exit file after SIGKILL.
KILL_WAIT = 10.0


# Test-only failpoints (containerd's integration/failpoint idea): a comma list of names in
# CRIB_RUNTIMED_CRASH_AT makes runtimed SIGKILL itself at that point, so restart tests hit
# every half-done state deterministically.
_CRASH_AT = frozenset(filter(None, os.environ.get("CRIB_RUNTIMED_CRASH_AT", "").split(",")))


def failpoint(name: str) -> None:
    if name in _CRASH_AT:
        log.warning("failpoint: killing runtimed", failpoint=name)
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> int:
    return time.time_ns()


def _new_id() -> str:
    return secrets.token_hex(ID_LEN // 2)


def _check_id(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{what} id is empty")
    if len(value) > ID_LEN or any(c not in "0123456789abcdef" for c in value):
        raise NotFound(f"{what} {value!r} not found")
    return value


class Runtime:
    """All of runtimed's pods and containers."""

    def __init__(self, settings: CribSettings) -> None:
        self.settings = settings
        cfg = settings.runtimed
        self.cfg = cfg
        self.root = cfg.root
        self.run_dir = cfg.run_dir
        self.exit_dir = cfg.run_dir / "exits"
        self.sock_dir = cfg.run_dir / "s"
        self.bundles = cfg.run_dir / "c"
        self.pods_dir = cfg.run_dir / "p"
        self.store = StateStore(cfg.root / "state.db")
        self.sandboxes: dict[str, SandboxRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}
        self.names: dict[str, str] = {}
        self.runtimes: dict[str, OciRuntime] = {
            name: OciRuntime(name=name, path=h.path,
                             root=h.root or cfg.run_dir / "rt" / name)
            for name, h in cfg.handlers.items()
        }
        self.imaged = ImagedClient(settings.imaged.socket)
        self.netd = NetdClient(settings.netd.socket)
        self.watcher = ExitWatcher(self.exit_dir, self._on_exit)
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._subscribers: set[asyncio.Queue[ContainerEventResponse]] = set()
        # ExecSync runs the container's own process spec with other args (config.json's).
        self._process_templates: dict[str, dict[str, Any]] = {}
        self._parked: dict[str, asyncio.Future[str]] = {}
        # Runtime deletes started when a container exited (see `_release_runtime`).
        self._releases: dict[str, asyncio.Future[bool]] = {}
        # The sweep for what peers still hold for unknown pods and containers.
        self._reconcile_wanted = asyncio.Event()
        self._reconciler: asyncio.Task[None] | None = None
        self.swap_controller = cgroups.swap_controller()
        self.ready = False
        # Bumped by every record write or drop: list replies are cached per generation.
        self.generation = 0

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Probe handlers, recover state, start watching exits. Runs before serving."""
        for d in (self.exit_dir, self.sock_dir, self.bundles, self.pods_dir, self.cfg.pinns_dir):
            d.mkdir(parents=True, exist_ok=True)
        for rt in self.runtimes.values():
            await rt.probe()
            if rt.usable and os.path.basename(rt.path).startswith("crun"):
                ok, message = await asyncio.to_thread(check_hybrid_cgroups)
                if not ok:
                    rt.usable, rt.reason = False, message
                    log.error("crun not usable", handler=rt.name, reason=message)
                else:
                    log.info("cgroup check", handler=rt.name, result=message)
            if not rt.usable:
                log.error("runtime handler not usable", handler=rt.name, reason=rt.reason)
        await self.recover()
        await self.watcher.start()
        self._reconcile_wanted.set()  # the first sweep right after start
        self._reconciler = asyncio.create_task(self._reconcile_loop())
        self.ready = True

    async def close(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        await self.watcher.close()
        if self._releases:
            # Let runtime deletes under way finish; one cut short is done again by
            # RemoveContainer after the restart (it always deletes unless this one did).
            await asyncio.wait(list(self._releases.values()), timeout=10)
        await self.imaged.close()
        await self.netd.close()
        self.store.close()

    def health(self) -> tuple[bool, str, str, dict[str, Any]]:
        usable = [n for n, r in self.runtimes.items() if r.usable]
        details = {n: {"path": r.path, "usable": r.usable, "reason": r.reason,
                       "version": r.version, "default": n == self.cfg.default_handler,
                       "features": {"recursive_read_only_mounts": r.recursive_read_only,
                                    "user_namespaces": False}}
                   for n, r in self.runtimes.items()}
        if not usable:
            return False, "NoRuntimeHandler", "no OCI runtime handler works: " + "; ".join(
                f"{n}: {r.reason}" for n, r in self.runtimes.items()), details
        if self.cfg.default_handler not in usable:
            return False, "DefaultHandlerUnusable", (
                f"default handler {self.cfg.default_handler!r} is not usable"), details
        return True, "", "", details

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------ lookup

    def find_sandbox(self, sid: str) -> SandboxRecord:
        """Full ID or unique prefix; NotFound otherwise ("creating" ones are invisible)."""
        sid = _check_id(sid, "pod sandbox")
        rec = self.sandboxes.get(sid)
        if rec is not None:
            return rec
        hits = [r for k, r in self.sandboxes.items() if k.startswith(sid)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InvalidArgument(f"pod sandbox id prefix {sid!r} is ambiguous")
        raise NotFound(f"pod sandbox {sid!r} not found")

    def find_container(self, cid: str) -> ContainerRecord:
        cid = _check_id(cid, "container")
        rec = self.containers.get(cid)
        if rec is not None:
            return rec
        hits = [r for k, r in self.containers.items() if k.startswith(cid)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InvalidArgument(f"container id prefix {cid!r} is ambiguous")
        raise NotFound(f"container {cid!r} not found")

    def runtime_for(self, handler: str) -> OciRuntime:
        name = handler or self.cfg.default_handler
        rt = self.runtimes.get(name)
        if rt is None:
            raise InvalidArgument(
                f"unknown runtime handler {name!r} (configured: {', '.join(self.runtimes)})")
        if not rt.usable:
            raise FailedPrecondition(f"runtime handler {name!r} is not usable: {rt.reason}")
        return rt

    def pod_containers(self, sid: str) -> list[ContainerRecord]:
        return [c for c in self.containers.values() if c.meta.pod_id == sid]

    # ------------------------------------------------------------ persistence

    def _put_sandbox(self, rec: SandboxRecord) -> None:
        self.store.put(SANDBOX_KIND, rec.meta.id, rec)
        self.sandboxes[rec.meta.id] = rec
        self.generation += 1

    def _put_container(self, rec: ContainerRecord) -> None:
        self.store.put(CONTAINER_KIND, rec.meta.id, rec)
        self.containers[rec.meta.id] = rec
        self.generation += 1

    def _drop_sandbox(self, sid: str) -> None:
        self.store.delete(SANDBOX_KIND, sid)
        rec = self.sandboxes.pop(sid, None)
        self.generation += 1
        if rec is not None:
            self._release(_sandbox_name(rec.meta), sid)
        forget_item(sid)

    def _drop_container(self, cid: str) -> None:
        self.store.delete(CONTAINER_KIND, cid)
        rec = self.containers.pop(cid, None)
        self.generation += 1
        if rec is not None:
            self._release(_container_name(rec.meta), cid)
        self._exited.pop(cid, None)
        self._locks.pop(cid, None)
        self._releases.pop(cid, None)
        self._process_templates.pop(cid, None)
        forget_item(cid)

    def _reserve(self, name: str, oid: str) -> None:
        owner = self.names.get(name)
        if owner is not None and owner != oid:
            raise AlreadyExists(f"name {name!r} is reserved for {owner}")
        self.names[name] = oid

    def _release(self, name: str, oid: str) -> None:
        if self.names.get(name) == oid:
            del self.names[name]

    # ------------------------------------------------------------ events

    def subscribe(self) -> asyncio.Queue[ContainerEventResponse]:
        q: asyncio.Queue[ContainerEventResponse] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[ContainerEventResponse]) -> None:
        self._subscribers.discard(q)

    def _emit(self, oid: str, kind: int, pod: SandboxRecord | str | None = None) -> None:
        """One event to every GetContainerEvents stream. `oid` is a container, or a pod
        for the pod's own events (containerd sends those with container_id = sandbox id).
        api.proto's ContainerEventResponse: each carries the pod's status and the statuses
        of all its containers; `pod` is its id, or its record once dropped (DELETED)."""
        if not self._subscribers:
            return
        from .views import container_status, sandbox_status  # avoid an import cycle

        if pod is None:
            rec = self.containers.get(oid)
            pod = rec.meta.pod_id if rec is not None else None
        if isinstance(pod, str):
            pod = self.sandboxes.get(pod)
        ev = ContainerEventResponse(container_id=oid,
                                    container_event_type=ContainerEventType(kind),
                                    created_at=_now())
        if pod is not None:
            ev.pod_sandbox_status = sandbox_status(self, pod)
            ev.containers_statuses = [container_status(c)
                                      for c in self.pod_containers(pod.meta.id)]
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(ev)

    # ============================================================ sandboxes

    async def _parkable(self, name: str, make: Callable[[], Awaitable[str]]) -> str:
        """Run a create so that the caller's deadline does not undo it: if the kubelet gives
        up, the work goes on and its retry (same name) gets the result instead of a twin
        or an AlreadyExists (CRI-O's resourcestore). A failed create is forgotten at once;
        a finished one is kept for the retry for PARK_TTL seconds."""
        task = self._parked.get(name)
        if task is None:
            task = asyncio.ensure_future(make())
            self._parked[name] = task

            def finished(t: asyncio.Future[str]) -> None:
                if t.cancelled() or t.exception() is not None:
                    if self._parked.get(name) is t:
                        del self._parked[name]
                else:
                    asyncio.get_running_loop().call_later(
                        PARK_TTL, lambda: self._parked.get(name) is t
                        and self._parked.pop(name))

            task.add_done_callback(finished)
        else:
            log.info("collecting parked create", name=name)
        result = await asyncio.shield(task)
        if self._parked.get(name) is task:
            del self._parked[name]
        return result

    async def run_sandbox(self, config: PodSandboxConfig, handler: str) -> str:
        md = config.metadata
        if is_set(md) and md.name and md.namespace and md.uid:
            name = f"pod/{md.name}_{md.namespace}_{md.uid}_{md.attempt}"
            return await self._parkable(name, lambda: self._run_sandbox(config, handler))
        return await self._run_sandbox(config, handler)

    async def _run_sandbox(self, config: PodSandboxConfig, handler: str) -> str:
        md = config.metadata
        if not is_set(md) or not md.name or not md.namespace or not md.uid:
            raise InvalidArgument("sandbox metadata needs name, namespace and uid")
        rt = self.runtime_for(handler)
        _check_hostname(config.hostname)
        if config.log_directory and not config.log_directory.startswith("/"):
            raise InvalidArgument(f"log_directory {config.log_directory!r} must be absolute")
        linux = config.linux
        sc = linux.security_context if is_set(linux) else None
        # Unset options mean POD for every namespace (api.proto: POD = 0 is the default);
        # the kubelet sends pid=CONTAINER unless the pod shares its process namespace.
        nso = sc.namespace_options if sc is not None else NamespaceOption()
        check_host_userns(nso)
        host_net = nso.network == NamespaceMode.NODE
        host_pid = nso.pid == NamespaceMode.NODE
        host_ipc = nso.ipc == NamespaceMode.NODE
        shared_pid = nso.pid == NamespaceMode.POD
        sysctls = dict(linux.sysctls) if is_set(linux) else {}
        for key in sysctls:
            if host_net and key.startswith("net."):
                raise InvalidArgument(f"sysctl {key} needs the pod's own network namespace")
            if host_ipc and (key.startswith("kernel.shm") or key.startswith("kernel.msg")
                             or key.startswith("kernel.sem") or key.startswith("fs.mqueue.")):
                raise InvalidArgument(f"sysctl {key} needs the pod's own IPC namespace")
        sid = _new_id()
        parent = linux.cgroup_parent if is_set(linux) and linux.cgroup_parent else f"crib-{sid[:16]}"
        cgroup_parent = "/" + "/".join(
            p for p in (self.cfg.cgroup_parent.strip("/") + "/" + parent.strip("/")).split("/")
            if p)
        meta = SandboxMeta(
            id=sid, name=md.name, namespace=md.namespace, uid=md.uid, attempt=md.attempt,
            handler=rt.name, created_at=_now(), labels=dict(config.labels),
            annotations=dict(config.annotations), hostname=config.hostname,
            log_directory=config.log_directory, host_network=host_net, host_pid=host_pid,
            host_ipc=host_ipc, shared_pid=shared_pid and not host_pid,
            cgroup_parent=cgroup_parent, pod_dir=str(self.pods_dir / sid), sysctls=sysctls,
            port_mappings=[{"protocol": int(p.protocol), "container_port": p.container_port,
                            "host_port": p.host_port, "host_ip": p.host_ip}
                           for p in config.port_mappings],
            config=bytes(config).hex(),
        )
        name = _sandbox_name(meta)
        self._reserve(name, sid)
        rec = SandboxRecord(meta=meta)
        if is_set(linux):
            rec.status.resources = cgroups.pod_resources(
                resources_to_dict(linux.resources if is_set(linux.resources) else None),
                resources_to_dict(linux.overhead if is_set(linux.overhead) else None))
        try:
            self._put_sandbox(rec)
        except BaseException:
            self._release(name, sid)
            raise
        log.info("sandbox creating", pod=sid, name=md.name, namespace=md.namespace,
                 handler=rt.name)
        try:
            async with AsyncExitStack() as undo:
                undo.push_async_callback(self._undo, self._teardown_sandbox, rec)
                await self._setup_sandbox(rec, config, rt)
                failpoint("sandbox_before_ready")
                rec.status.state = "ready"
                self._put_sandbox(rec)
                undo.pop_all()
        except BaseException:
            with contextlib.suppress(Exception):
                self._drop_sandbox(sid)
            raise
        log.info("sandbox ready", pod=sid, ips=rec.status.ips)
        # containerd's RunPodSandbox sends both, for the sandbox id.
        self._emit(sid, ContainerEventType.CONTAINER_CREATED_EVENT, sid)
        self._emit(sid, ContainerEventType.CONTAINER_STARTED_EVENT, sid)
        return sid

    async def _setup_sandbox(self, rec: SandboxRecord, config: PodSandboxConfig,
                             rt: OciRuntime) -> None:
        meta = rec.meta
        pod_dir = Path(meta.pod_dir)
        pod_dir.mkdir(parents=True, exist_ok=True)
        if rec.status.resources:
            await self._apply_pod_resources(meta.cgroup_parent, rec.status.resources)
        ips: list[str] = []
        if not meta.host_network:
            dns = config.dns_config if is_set(config.dns_config) else None
            net = await self.netd.create_pod_network(PodNetworkCreate(
                pod_id=meta.id, pod_name=meta.name, pod_namespace=meta.namespace,
                pod_uid=meta.uid,
                port_mappings=[PortMapping(
                    host_port=p["host_port"], container_port=p["container_port"],
                    protocol=("tcp", "udp", "sctp")[p["protocol"]] if 0 <= p["protocol"] < 3
                    else "tcp", host_ip=p["host_ip"]) for p in meta.port_mappings
                    if p["host_port"]],
                dns=NetDns(servers=list(dns.servers), searches=list(dns.searches),
                           options=list(dns.options)) if dns else None,
                annotations=meta.annotations,
            ))
            meta.netns_path = net.netns_path
            ips = [ip.ip for ip in net.ips]
            rec.status.ips = ips
            self._put_sandbox(rec)
            failpoint("sandbox_after_network")
        pins = await pin_namespaces(Path(self.cfg.pinns_dir) / meta.id,
                                    ipc=not meta.host_ipc,
                                    uts=not meta.host_network, hostname=meta.hostname)
        meta.ipc_ns = pins.get("ipc", "")
        meta.uts_ns = pins.get("uts", "")
        self._put_sandbox(rec)
        write_pod_files(pod_dir, meta.hostname, config.dns_config
                        if is_set(config.dns_config) else None, ips, meta.host_network)
        if not meta.host_ipc:
            mount_shm(pod_dir / "shm")
        if self.cfg.pause_image:
            await self._start_pause(rec, rt)
        elif meta.shared_pid:
            await self._start_infra(rec, rt)

    async def _start_infra(self, rec: SandboxRecord, rt: OciRuntime) -> None:
        """catatonit -P as PID 1 of the pod's shared PID namespace, run like a container
        (through conmon, so it outlives runtimed)."""
        meta = rec.meta
        bundle = Path(meta.pod_dir) / "infra"
        rootfs = bundle / "rootfs"
        for sub in ("proc", "dev"):
            (rootfs / sub).mkdir(parents=True, exist_ok=True)
        (rootfs / "catatonit").touch()
        spec = build_sandbox_spec(meta, rootfs, "/catatonit", self.cfg.catatonit,
                                  f"{meta.cgroup_parent}/crib-{meta.id}")
        (bundle / "config.json").write_text(json.dumps(spec))
        await self._run_infra(rec, rt, bundle)

    async def _pause_image(self) -> ImageInfo:
        """The configured pause image, pulled through imaged when it is not stored yet."""
        ref = self.cfg.pause_image
        try:
            return await self.imaged.resolve_image(ref)
        except NotFound:
            pass
        log.info("pulling pause image", image=ref)
        last: PullEvent | None = None
        async for event in self.imaged.pull(PullRequest(reference=ref)):
            last = event
        if last is None or last.status != "done":
            raise Unavailable(f"pulling pause image {ref!r} failed: "
                              f"{last.error if last else 'no answer from imaged'}")
        return await self.imaged.resolve_image(last.image_id or ref)

    async def _start_pause(self, rec: SandboxRecord, rt: OciRuntime) -> None:
        """The configured pause image as the pod's infra container: a writable snapshot
        of it, config.json from its Entrypoint/Cmd, run under conmon like catatonit."""
        meta = rec.meta
        image = await self._pause_image()
        bundle = Path(meta.pod_dir) / "infra"
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        meta.pause_image = image.id
        meta.infra_snapshot = f"infra-{meta.id}"
        self._put_sandbox(rec)  # before the snapshot exists, so undo and recovery see it
        snap = await self.imaged.create_snapshot(SnapshotCreate(
            key=meta.infra_snapshot, image=image.id,
            labels={"io.crib.pod": meta.id, "io.crib.infra": "true"}))
        await asyncio.to_thread(mount_all, snap.mounts, rootfs)
        img = image.config.get("config") or {}
        user = await asyncio.to_thread(resolve_user, rootfs,
                                       image_user=str(img.get("User") or ""),
                                       run_as_user=None, run_as_username="",
                                       run_as_group=None, supplemental=[])
        spec = build_pause_spec(meta, rootfs, image.config, user.uid, user.gid,
                                f"{meta.cgroup_parent}/crib-{meta.id}")
        (bundle / "config.json").write_text(json.dumps(spec))
        await self._run_infra(rec, rt, bundle)

    async def _run_infra(self, rec: SandboxRecord, rt: OciRuntime, bundle: Path) -> None:
        meta = rec.meta
        cm = ConmonSpec(conmon=self.cfg.conmon, cid=meta.id, name=f"infra-{meta.name}",
                        runtime_path=rt.path, runtime_args=rt.global_args(), bundle=bundle,
                        log_path=str(bundle / "infra.log"), exit_dir=self.exit_dir,
                        socket_dir=self.sock_dir)
        conmon_pid, pid = await start_conmon(cm)
        rec.status.infra_pid, rec.status.infra_conmon_pid = pid, conmon_pid
        self._put_sandbox(rec)
        await rt.start(meta.id)

    async def _undo(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one undo step shielded from cancellation, under its own timeout."""
        async def guarded() -> None:
            try:
                async with asyncio.timeout(UNDO_TIMEOUT):
                    await fn(*args)
            except CribError as exc:
                # A peer (netd, imaged) down: the record goes with the failed create, and
                # the sweep removes what the step left there once the peer is back.
                log.warning("undo step failed; the sweep finishes it", step=fn.__name__,
                            error=exc.message)
                self._reconcile_wanted.set()
            except Exception:
                log.exception("undo step failed", step=fn.__name__)
                self._reconcile_wanted.set()

        await asyncio.shield(asyncio.ensure_future(guarded()))

    async def _stop_infra(self, rec: SandboxRecord) -> None:
        rt = self.runtimes.get(rec.meta.handler)
        if rt is None or not rec.meta.has_infra:
            return
        await rt.kill(rec.meta.id, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline and process_alive(rec.status.infra_pid) \
                and rec.status.infra_pid:
            await asyncio.sleep(0.05)

    async def _teardown_sandbox(self, rec: SandboxRecord, network: bool = True) -> None:
        """Undo every step of `_setup_sandbox`; each one tolerates not having happened.
        `network=False` when StopPodSandbox has just released it. A step that fails (a
        peer down) does not stop the local ones; the first failure is raised at the end."""
        meta = rec.meta
        failed: list[Exception] = []
        await _attempt(failed, "stop infra", self._stop_infra(rec), pod=meta.id)
        rt = self.runtimes.get(meta.handler)
        if rt is not None and meta.has_infra:
            await _attempt(failed, "delete infra", rt.delete(meta.id), pod=meta.id)
            _kill_conmon(rec.status.infra_conmon_pid)
        if network and not meta.host_network:
            await _attempt(failed, "remove network", self.netd.remove_pod_network(meta.id),
                           pod=meta.id)
        await self._unmount_and_remove(
            failed, meta.pod_dir, [meta.infra_snapshot],
            first=lambda: unpin_namespaces(Path(self.cfg.pinns_dir) / meta.id), pod=meta.id)
        with contextlib.suppress(OSError):
            (self.exit_dir / meta.id).unlink()
        left = await asyncio.to_thread(cgroups.remove_cgroup, meta.cgroup_parent)
        if left:
            log.warning("cgroups left behind", pod=meta.id, cgroups=left)
        if failed:
            raise failed[0]

    async def stop_sandbox(self, sid: str) -> None:
        try:
            rec = self.find_sandbox(sid)
        except NotFound:
            # api.proto: "If there are any running containers in the sandbox, they must be
            # forcibly terminated. ... this call is idempotent, and must not return an
            # error if all relevant resources have already been reclaimed."
            return
        async with self._lock(rec.meta.id):
            for c in self.pod_containers(rec.meta.id):
                await self.stop_container(c.meta.id, 0)
            await self._stop_infra(rec)
            if not rec.meta.host_network:
                # Idempotent in netd; always asked, so a pod marked NotReady by its infra's
                # death still gets its IP released.
                await self.netd.remove_pod_network(rec.meta.id)
            if rec.status.state != "notready":
                rec.status.state = "notready"
                self._put_sandbox(rec)
                log.info("sandbox stopped", pod=rec.meta.id)
                self._emit(rec.meta.id, ContainerEventType.CONTAINER_STOPPED_EVENT,
                           rec.meta.id)

    async def remove_sandbox(self, sid: str) -> None:
        try:
            rec = self.find_sandbox(sid)
        except NotFound:
            return  # api.proto: RemovePodSandbox "must not return an error" if removed
        await self.stop_sandbox(rec.meta.id)
        async with self._lock(rec.meta.id):
            for c in self.pod_containers(rec.meta.id):
                await self.remove_container(c.meta.id)
            failpoint("remove_sandbox_after_containers")
            await self._teardown_sandbox(rec, network=False)
            self._drop_sandbox(rec.meta.id)
        self._locks.pop(rec.meta.id, None)
        log.info("sandbox removed", pod=rec.meta.id)
        self._emit(rec.meta.id, ContainerEventType.CONTAINER_DELETED_EVENT, rec)

    async def _apply_pod_resources(self, cgroup_parent: str, res: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(cgroups.apply_pod_resources, cgroup_parent, res,
                                    swap=self.swap_controller)
        except OSError as exc:
            raise FailedPrecondition(
                f"pod cgroup {cgroup_parent}: cannot apply {res}: {exc.strerror}") from None

    async def update_sandbox_resources(self, sid: str, resources: dict[str, Any],
                                       overhead: dict[str, Any]) -> None:
        """UpdatePodSandboxResources: the kubelet's new pod-level resources (after it
        resized the pod cgroup itself, api.proto) applied to our pod cgroup too."""
        rec = self.find_sandbox(sid)
        async with self._lock(rec.meta.id):
            if rec.status.state != "ready":
                raise FailedPrecondition(f"pod sandbox {rec.meta.id} is not ready")
            res = cgroups.pod_resources(resources, overhead)
            await self._apply_pod_resources(rec.meta.cgroup_parent, res)
            rec.status.resources = res
            self._put_sandbox(rec)
        log.info("sandbox resources updated", pod=rec.meta.id, resources=res)

    # ============================================================ containers

    async def create_container(self, sid: str, config: ContainerConfig,
                               sandbox_config: PodSandboxConfig | None) -> str:
        pod = self.find_sandbox(sid)
        md = config.metadata
        if is_set(md) and md.name:
            name = f"ctr/{pod.meta.id}/{md.name}_{md.attempt}"
            return await self._parkable(
                name, lambda: self._create_container(pod.meta.id, config, sandbox_config))
        return await self._create_container(sid, config, sandbox_config)

    async def _create_container(self, sid: str, config: ContainerConfig,
                                sandbox_config: PodSandboxConfig | None) -> str:
        pod = self.find_sandbox(sid)
        if pod.status.state != "ready":
            raise FailedPrecondition(f"pod sandbox {pod.meta.id} is not ready")
        md = config.metadata
        if not is_set(md) or not md.name:
            raise InvalidArgument("container metadata needs a name")
        if not is_set(config.image) or not config.image.image:
            raise InvalidArgument("container config needs an image")
        rt = self.runtime_for(pod.meta.handler)
        image = await self.imaged.resolve_image(config.image.image)
        cid = _new_id()
        bundle = self.bundles / cid
        log_path = _log_path(pod.meta.log_directory, config.log_path)
        img_cfg = image.config.get("config") or {}
        stop_signal = img_cfg.get("StopSignal") or "SIGTERM"
        if config.stop_signal:
            stop_signal = config.stop_signal.name or stop_signal
        try:
            signal_number(stop_signal)
        except (ValueError, AttributeError):
            stop_signal = "SIGTERM"
        meta = ContainerMeta(
            id=cid, pod_id=pod.meta.id, name=md.name, attempt=md.attempt, handler=rt.name,
            created_at=_now(), image=config.image.image, image_id=image.id,
            image_ref=(image.repo_digests[0] if image.repo_digests else image.id),
            labels=dict(config.labels), annotations=dict(config.annotations),
            log_path=log_path, bundle=str(bundle), snapshot_key=cid, stop_signal=stop_signal,
            tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once,
            mounts=[_mount_record(m) for m in config.mounts],
            cgroup_path=f"{pod.meta.cgroup_parent}/crib-{cid}",
        )
        name = _container_name(meta)
        self._reserve(name, cid)
        rec = ContainerRecord(meta=meta)
        rec.status.resources = resources_to_dict(
            config.linux.resources if is_set(config.linux) else None)
        try:
            self._put_container(rec)
        except BaseException:
            self._release(name, cid)
            raise
        log.info("container creating", container=cid, pod=pod.meta.id, name=md.name,
                 image=config.image.image)
        try:
            async with AsyncExitStack() as undo:
                undo.push_async_callback(self._undo, self._teardown_container, rec)
                await self._setup_container(rec, pod, config, image.config, rt)
                rec.status.state = "created"
                self._put_container(rec)
                undo.pop_all()
        except BaseException:
            with contextlib.suppress(Exception):
                self._drop_container(cid)
            raise
        log.info("container created", container=cid, pid=rec.status.pid)
        self._emit(cid, ContainerEventType.CONTAINER_CREATED_EVENT)
        return cid

    async def _setup_container(self, rec: ContainerRecord, pod: SandboxRecord,
                               config: ContainerConfig, image_config: dict[str, Any],
                               rt: OciRuntime) -> None:
        meta = rec.meta
        bundle = Path(meta.bundle)
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        snap = await self.imaged.create_snapshot(SnapshotCreate(
            key=meta.snapshot_key, image=meta.image_id,
            labels={"io.crib.container": meta.id, "io.crib.pod": meta.pod_id}))
        await asyncio.to_thread(mount_all, snap.mounts, rootfs)
        failpoint("create_after_mount")
        img = image_config.get("config") or {}
        sc = config.linux.security_context if is_set(config.linux) else None
        if sc is not None and not is_set(sc):
            sc = None
        user = await asyncio.to_thread(
            resolve_user, rootfs, image_user=str(img.get("User") or ""),
            run_as_user=sc.run_as_user.value if sc and is_set(sc.run_as_user) else None,
            run_as_username=sc.run_as_username if sc else "",
            run_as_group=sc.run_as_group.value if sc and is_set(sc.run_as_group) else None,
            supplemental=list(sc.supplemental_groups) if sc else [],
            strict_groups=sc is not None
            and sc.supplemental_groups_policy == SupplementalGroupsPolicy.Strict,
        )
        meta.uid, meta.gid, meta.groups = user.uid, user.gid, user.groups
        target_pids = {c.meta.id: c.status.pid for c in self.pod_containers(pod.meta.id)
                       if c.status.state == "running"}
        annotations = dict(config.annotations)
        annotations.update({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": meta.name,
            "io.kubernetes.cri.sandbox-id": pod.meta.id,
            "io.kubernetes.cri.sandbox-name": pod.meta.name,
            "io.kubernetes.cri.sandbox-namespace": pod.meta.namespace,
            "io.kubernetes.cri.sandbox-uid": pod.meta.uid,
            "io.kubernetes.cri.image-name": meta.image,
        })
        image_sources = await self._mount_images(rec, config)
        spec = build_container_spec(config, ContainerSpecInput(
            cid=meta.id, rootfs=rootfs, sandbox=pod.meta, image_config=image_config,
            user=user, cgroup_path=meta.cgroup_path, infra_pid=pod.status.infra_pid,
            pids_limit=self.cfg.pids_limit, swap_controller=self.swap_controller,
            annotations=annotations, target_pids=target_pids,
            recursive_read_only=rt.recursive_read_only, handler=rt.name,
            image_sources=image_sources))
        tmp = bundle / ".config.json.tmp"
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, bundle / "config.json")
        self._put_container(rec)
        cm = ConmonSpec(conmon=self.cfg.conmon, cid=meta.id, name=meta.name,
                        runtime_path=rt.path, runtime_args=rt.global_args(), bundle=bundle,
                        log_path=meta.log_path or str(bundle / "ctr.log"),
                        exit_dir=self.exit_dir, socket_dir=self.sock_dir, tty=meta.tty,
                        stdin=meta.stdin, stdin_once=meta.stdin_once,
                        log_size_max=self.cfg.log_size_max)
        conmon_pid, pid = await start_conmon(cm, timeout=self.cfg.create_timeout)
        rec.status.conmon_pid, rec.status.pid = conmon_pid, pid
        failpoint("create_after_conmon")

    async def _unmount_and_remove(self, failed: list[Exception], path: str,
                                  snapshots: list[str],
                                  first: Callable[[], None] | None = None,
                                  **where: str) -> None:
        """Unmount everything under `path` (after `first`), then remove the snapshots and
        the directory. Only once nothing is mounted: taking a mounted overlay's upper
        directory would pull it from under the kernel, so after a failed unmount both
        wait for the next try. Failures go to `failed`, as with `_attempt`."""
        try:
            if first is not None:
                first()
            for target in mounts_under(path):
                umount(target)
        except OSError as exc:
            failed.append(exc)
            log.warning("teardown step failed", step="unmount", error=str(exc), **where)
            return
        for key in snapshots:
            if key:
                await _attempt(failed, "remove snapshot", self.imaged.remove_snapshot(key),
                               **where)
        shutil.rmtree(path, ignore_errors=True)

    async def _mount_images(self, rec: ContainerRecord,
                            config: ContainerConfig) -> dict[str, str]:
        """Image volumes (CRI Mount.image, the kubelet's ImageVolume): each image gets a
        snapshot from imaged, mounted read-only under the bundle; the container binds it
        (or its `image_sub_path`) read-only. Returns container path -> host source."""
        meta = rec.meta
        sources: dict[str, str] = {}
        for index, m in enumerate(config.mounts):
            if not (is_set(m.image) and m.image.image):
                continue
            if m.host_path:
                raise InvalidArgument(f"mount {m.container_path}: an image mount has no "
                                      "host_path")
            key = f"{meta.id}-img{index}"
            meta.image_mounts.append(key)
            self._put_container(rec)  # before the snapshot exists: undo and sweep see it
            snap = await self.imaged.create_snapshot(SnapshotCreate(
                key=key, image=m.image.image,
                labels={"io.crib.container": meta.id, "io.crib.image-volume": "true"}))
            target = Path(meta.bundle) / "images" / str(index)
            ro = [Mount(type=x.type, source=x.source, options=[*x.options, "ro"])
                  for x in snap.mounts]
            await asyncio.to_thread(mount_all, ro, target)
            sources[m.container_path] = _image_sub_path(target, m.image_sub_path)
        return sources

    async def _teardown_container(self, rec: ContainerRecord) -> None:
        """Undo every step of `_setup_container` (each tolerates never having happened).
        A step that fails (imaged down) does not stop the local ones; the first failure
        is raised at the end."""
        meta = rec.meta
        failed: list[Exception] = []
        rt = self.runtimes.get(meta.handler)
        release = self._releases.pop(meta.id, None)
        released = False
        if release is not None:
            await asyncio.wait({release})  # its failure is ours to retry, not to raise
            released = not release.cancelled() and release.result()
        if rt is not None and not released:
            await _attempt(failed, "runtime delete", rt.delete(meta.id), container=meta.id)
        _kill_conmon(rec.status.conmon_pid)
        await self._unmount_and_remove(failed, meta.bundle,
                                       [meta.snapshot_key, *meta.image_mounts],
                                       container=meta.id)
        with contextlib.suppress(OSError):
            (self.sock_dir / meta.id).unlink()
        with contextlib.suppress(OSError):
            (self.exit_dir / meta.id).unlink()
        if failed:
            raise failed[0]

    async def start_container(self, cid: str) -> None:
        rec = self.find_container(cid)
        async with self._lock(rec.meta.id):
            if rec.status.state == "running":
                raise FailedPrecondition(f"container {rec.meta.id} is already running")
            if rec.status.state != "created":
                raise FailedPrecondition(
                    f"container {rec.meta.id} is {rec.status.state}, not created")
            rt = self.runtime_for(rec.meta.handler)
            started = _now()
            try:
                await rt.start(rec.meta.id, timeout=self.cfg.create_timeout)
                failpoint("start_after_runtime")
            except CribError as exc:
                # The runtime failed the process start (bad binary, ...): conmon records
                # the exit; report it like containerd, as an exited container with Error.
                await self._settle_exit(rec, fallback_code=128, message=exc.message)
                raise
            if rec.status.state == "created":  # the exit watcher may have been faster
                rec.status.state = "running"
            rec.status.started_at = started
            if rec.status.finished_at and rec.status.finished_at < started:
                rec.status.finished_at = started
            self._put_container(rec)
        log.info("container started", container=rec.meta.id)
        self._emit(rec.meta.id, ContainerEventType.CONTAINER_STARTED_EVENT)

    def _exit_event(self, cid: str) -> asyncio.Event:
        ev = self._exited.get(cid)
        if ev is None:
            ev = self._exited[cid] = asyncio.Event()
        return ev

    async def _on_exit(self, oid: str) -> None:
        """conmon wrote `<exit-dir>/<oid>`."""
        rec = self.containers.get(oid)
        if rec is None:
            pod = self.sandboxes.get(oid)
            if pod is not None and pod.status.infra_pid and pod.status.state == "ready":
                # The PID namespace holder died: the pod cannot run new containers (CRI-O
                # marks the sandbox stopped when its infra exits).
                log.warning("sandbox infra exited", pod=oid)
                pod.status.state = "notready"
                self._put_sandbox(pod)
                self._emit(oid, ContainerEventType.CONTAINER_STOPPED_EVENT, oid)
            return
        await self._settle_exit(rec)

    async def _settle_exit(self, rec: ContainerRecord, fallback_code: int | None = None,
                           message: str = "") -> bool:
        """Record the container's exit from conmon's exit file; True once exited."""
        if rec.status.state in ("exited", "creating"):
            if rec.status.state == "exited":
                self._exit_event(rec.meta.id).set()
            return rec.status.state == "exited"
        found = read_exit_file(self.exit_dir / rec.meta.id) or \
            read_exit_file(Path(rec.meta.bundle) / "persist" / "exit")
        if found is None:
            if fallback_code is None:
                return False
            found = (fallback_code, _now())
        code, finished = found
        oom = any((Path(rec.meta.bundle) / p).exists() for p in ("persist/oom", "oom")) or (
            code == 137 and cgroups.oom_killed(rec.meta.cgroup_path))
        rec.status.state = "exited"
        rec.status.exit_code = code
        rec.status.finished_at = finished
        rec.status.reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        if message:
            rec.status.message = message
        self._put_container(rec)
        self._exit_event(rec.meta.id).set()
        self._release_runtime(rec)
        log.info("container exited", container=rec.meta.id, exit_code=code,
                 reason=rec.status.reason)
        self._emit(rec.meta.id, ContainerEventType.CONTAINER_STOPPED_EVENT)
        return True

    def _release_runtime(self, rec: ContainerRecord) -> None:
        """Delete an exited container's runtime state (and with it its cgroup) at once,
        in the background, as containerd deletes a task on its exit event: the status,
        exit code and logs are ours and stay; RemoveContainer and RemovePodSandbox then
        find the runtime's part done. Called after the exit (and OOM) are recorded."""
        rt = self.runtimes.get(rec.meta.handler)
        cid = rec.meta.id
        if rt is None or cid in self._releases:
            return

        async def release() -> bool:
            try:
                await rt.delete(cid)
            except Exception as exc:  # RemoveContainer deletes again and reports it
                log.warning("runtime delete after exit failed", container=cid,
                            error=str(exc))
                return False
            return True

        self._releases[cid] = asyncio.ensure_future(release())

    async def _wait_exit(self, rec: ContainerRecord, timeout: float) -> bool:
        if await self._settle_exit(rec):
            return True
        ev = self._exit_event(rec.meta.id)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                async with asyncio.timeout(min(0.25, max(end - time.monotonic(), 0.01))):
                    await ev.wait()
                return True
            except TimeoutError:
                # inotify may be slower than the poll; check the file ourselves too.
                if await self._settle_exit(rec):
                    return True
                if not process_alive(rec.status.conmon_pid) and rec.status.conmon_pid:
                    return await self._settle_exit(rec, fallback_code=137)
        return await self._settle_exit(rec)

    async def stop_container(self, cid: str, timeout: int) -> None:
        try:
            rec = self.find_container(cid)
        except NotFound:
            # api.proto: StopContainer "must not return an error if the container has
            # already been stopped"; a removed one is stopped too (CRI-O container_stop.go).
            return
        if rec.status.state in ("exited", "creating"):
            return
        rt = self.runtimes.get(rec.meta.handler)
        if rt is None:
            raise FailedPrecondition(f"runtime handler {rec.meta.handler!r} is gone")
        log.info("container stopping", container=rec.meta.id, timeout=timeout)
        if timeout > 0 and rec.status.state == "running":
            await rt.kill(rec.meta.id, signal_number(rec.meta.stop_signal))
            failpoint("stop_after_signal")
            if await self._wait_exit(rec, float(timeout)):
                return
        await rt.kill(rec.meta.id, signal.SIGKILL, all_procs=rec.status.state == "running")
        if not await self._wait_exit(rec, KILL_WAIT):
            if not process_alive(rec.status.pid):
                await self._settle_exit(rec, fallback_code=137)
                return
            raise DeadlineExceeded(f"container {rec.meta.id} did not die after SIGKILL")

    async def remove_container(self, cid: str) -> None:
        try:
            rec = self.find_container(cid)
        except NotFound:
            return  # api.proto: RemoveContainer "must not return an error" if removed
        if rec.status.state in ("running", "created", "unknown"):
            await self.stop_container(rec.meta.id, 0)
        async with self._lock(rec.meta.id):
            if rec.meta.id not in self.containers:
                return
            await self._teardown_container(rec)
            failpoint("remove_after_teardown")
            self._drop_container(rec.meta.id)
        log.info("container removed", container=rec.meta.id)
        self._emit(rec.meta.id, ContainerEventType.CONTAINER_DELETED_EVENT, rec.meta.pod_id)

    async def update_resources(self, cid: str, resources: dict[str, Any]) -> None:
        rec = self.find_container(cid)
        if rec.status.state not in ("created", "running"):
            raise FailedPrecondition(f"container {rec.meta.id} is {rec.status.state}")
        rt = self.runtime_for(rec.meta.handler)
        oci = resources_to_oci(resources, pids_limit=self.cfg.pids_limit,
                               swap_controller=self.swap_controller)
        oci.pop("devices", None)
        await rt.update(rec.meta.id, oci)
        merged = dict(rec.status.resources)
        merged.update({k: v for k, v in resources.items() if v not in (None, "", 0, [], {})})
        rec.status.resources = merged
        self._put_container(rec)

    async def reopen_log(self, cid: str) -> None:
        rec = self.find_container(cid)
        if rec.status.state != "running":
            raise FailedPrecondition(f"container {rec.meta.id} is not running")
        control(Path(rec.meta.bundle), REOPEN_LOGS_EVENT)
        # conmon reopens asynchronously; the kubelet expects the new file when we answer.
        if rec.meta.log_path:
            end = time.monotonic() + 5
            while time.monotonic() < end and not os.path.exists(rec.meta.log_path):
                await asyncio.sleep(0.02)

    async def exec_sync(self, cid: str, cmd: list[str], timeout: int) -> tuple[bytes, bytes, int]:
        """Run cmd in the container, collecting stdout and stderr apart (capped)."""
        rec = self.find_container(cid)
        if not cmd:
            raise InvalidArgument("exec needs a command")
        if rec.status.state != "running":
            raise FailedPrecondition(f"container {rec.meta.id} is not running")
        rt = self.runtime_for(rec.meta.handler)
        bundle = Path(rec.meta.bundle)
        template = self._process_templates.get(rec.meta.id)
        if template is None:
            template = json.loads((bundle / "config.json").read_text())["process"]
            self._process_templates[rec.meta.id] = template
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
                # The runtime's exec waits for the process it started: kill that too.
                with contextlib.suppress(Exception):
                    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
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

    # ============================================================ reconcile

    async def _reconcile_loop(self) -> None:
        """Sweep every `reconcile_interval` seconds, or soon after a failed rollback; while
        a peer is unreachable, try again with a growing pause."""
        retry = 0
        while True:
            wait = self.cfg.reconcile_interval if not retry else min(
                2.0 ** retry, self.cfg.reconcile_interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                clean, _ = await self.reconcile()
            except Exception:
                log.exception("reconcile failed")
                clean = False
            retry = 0 if clean else retry + 1

    async def reconcile(self) -> tuple[bool, dict[str, int]]:
        """Remove what netd, imaged and the host still hold for pods and containers this
        runtimed has no record of: a create rolled back while netd or imaged was down
        dropped its record but not the network or snapshot it had made. A record is
        always written before the work it covers, so anything being made right now is
        known and left alone. Returns whether both peers answered, and what went."""
        nets_ok, nets = await _sweep_peer(
            "network", self.netd.list_pod_networks,
            lambda n: n.pod_id if len(n.pod_id) == ID_LEN and n.pod_id not in self.sandboxes
            else None,
            self.netd.remove_pod_network)
        snaps_ok, snaps = await _sweep_peer(
            "snapshot", self.imaged.list_snapshots,
            lambda snap: snap.key if self._orphan_snapshot(snap.labels) else None,
            self.imaged.remove_snapshot)
        clean = nets_ok and snaps_ok
        removed = {"networks": nets, "snapshots": snaps}
        removed["directories"] = await asyncio.to_thread(self._sweep_pod_dirs)
        removed = {k: v for k, v in removed.items() if v}
        if removed:
            log.warning("orphans removed", **removed)
        return clean, removed

    def _orphan_snapshot(self, labels: dict[str, str]) -> bool:
        """A snapshot runtimed made (its labels say for what) for a container or pod
        without a record."""
        cid = labels.get("io.crib.container", "")
        if cid:
            return cid not in self.containers
        pod_id = labels.get("io.crib.pod", "")
        return bool(pod_id and labels.get("io.crib.infra")) and pod_id not in self.sandboxes

    def _sweep_pod_dirs(self) -> int:
        """Pod directories, namespace pins and container bundles without a record."""
        count = 0
        for base, known, undo in ((self.pods_dir, self.sandboxes, None),
                                  (Path(self.cfg.pinns_dir), self.sandboxes, unpin_namespaces),
                                  (self.bundles, self.containers, None)):
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for entry in entries:
                if entry.name in known or len(entry.name) != ID_LEN:
                    continue
                try:
                    if undo is not None:
                        undo(Path(entry.path))
                    else:
                        for target in mounts_under(entry.path):
                            umount(target)
                        shutil.rmtree(entry.path, ignore_errors=True)
                    count += 1
                except OSError as exc:
                    log.warning("orphan directory not removed", path=entry.path,
                                error=str(exc))
        return count

    # ============================================================ recovery

    async def recover(self) -> None:
        """Reload records and settle them against the world (containerd restart.go,
        CRI-O restore): exits that happened while down are read from conmon's files,
        half-done creates are rolled back, orphaned bundles removed."""
        sandboxes = self.store.list(SANDBOX_KIND, SandboxRecord)
        containers = self.store.list(CONTAINER_KIND, ContainerRecord)
        for s in sandboxes:
            self.sandboxes[s.meta.id] = s
            self.names[_sandbox_name(s.meta)] = s.meta.id
        for c in containers:
            self.containers[c.meta.id] = c
            self.names[_container_name(c.meta)] = c.meta.id
        for c in containers:
            try:
                async with asyncio.timeout(30):
                    await self._recover_container(c)
            except Exception:
                log.exception("container recovery failed", container=c.meta.id)
                if c.status.state != "creating":
                    c.status.state = "unknown"
                    with contextlib.suppress(Exception):
                        self._put_container(c)
        for s in sandboxes:
            try:
                async with asyncio.timeout(60):
                    await self._recover_sandbox(s)
            except Exception:
                log.exception("sandbox recovery failed", pod=s.meta.id)
        known = set(self.containers) | set(self.sandboxes)
        for entry in list(os.scandir(self.bundles)):
            if entry.name not in self.containers:
                log.warning("removing orphaned bundle", bundle=entry.path)
                for target in mounts_under(entry.path):
                    with contextlib.suppress(OSError):
                        umount(target)
                shutil.rmtree(entry.path, ignore_errors=True)
        for entry in list(os.scandir(self.exit_dir)):
            if entry.name not in known:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        log.info("recovered", pods=len(self.sandboxes), containers=len(self.containers))

    async def _recover_container(self, c: ContainerRecord) -> None:
        if c.status.state == "creating":
            log.warning("rolling back half-done create", container=c.meta.id)
            await self._rollback(self._teardown_container, c)
            self._drop_container(c.meta.id)
            return
        if c.status.state == "exited":
            return
        if await self._settle_exit(c):
            return
        rt = self.runtimes.get(c.meta.handler)
        st = await rt.state(c.meta.id) if rt is not None else None
        status = (st or {}).get("status", "")
        if process_alive(c.status.conmon_pid):
            if status == "running" and c.status.state == "created":
                # Killed between `runtime start` and persisting "running".
                c.status.state = "running"
                c.status.started_at = c.status.started_at or _now()
                self._put_container(c)
            return
        # conmon is gone and left no exit file: the exit code is lost.
        if status in ("stopped", "") or st is None:
            await self._settle_exit(c, fallback_code=255,
                                    message="conmon exited without recording the exit code")
        else:
            c.status.state = "unknown"
            self._put_container(c)

    async def _rollback(self, teardown: Callable[[Any], Awaitable[None]], rec: Any) -> None:
        """Tear down a half-done create found at start. Its record goes either way: what a
        peer that is not up yet still holds, or a directory that would not unmount, is
        left to the sweep, which finds it once nothing names it."""
        try:
            await teardown(rec)
        except Exception as exc:  # noqa: BLE001 - the sweep takes over
            log.warning("rollback incomplete; the sweep finishes it", id=rec.meta.id,
                        error=str(exc))
            self._reconcile_wanted.set()

    async def _recover_sandbox(self, s: SandboxRecord) -> None:
        if s.status.state == "creating":
            log.warning("rolling back half-done sandbox", pod=s.meta.id)
            for c in self.pod_containers(s.meta.id):
                await self._rollback(self._teardown_container, c)
                self._drop_container(c.meta.id)
            await self._rollback(self._teardown_sandbox, s)
            self._drop_sandbox(s.meta.id)
            return
        if s.status.state == "ready" and s.meta.has_infra and \
                not process_alive(s.status.infra_pid):
            s.status.state = "notready"
            self._put_sandbox(s)


def _mount_record(m: Any) -> dict[str, Any]:
    """What ContainerStatus reports of a CRI Mount."""
    out: dict[str, Any] = {"container_path": m.container_path, "host_path": m.host_path,
                           "readonly": m.readonly, "propagation": int(m.propagation)}
    if m.recursive_read_only:
        out["recursive_read_only"] = True
    if is_set(m.image) and m.image.image:
        out.update(image=m.image.image, image_sub_path=m.image_sub_path, readonly=True)
    return out


def _image_sub_path(root: Path, sub: str) -> str:
    """`root`, or the directory `sub` names inside it; never a path out of it (a symlink
    in the image is resolved inside the image or refused)."""
    if not sub:
        return str(root)
    if sub.startswith("/") or ".." in Path(sub).parts:
        raise InvalidArgument(f"image_sub_path {sub!r} must be relative, without '..'")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, sub))
    if real != base and not real.startswith(base + os.sep):
        raise InvalidArgument(f"image_sub_path {sub!r} leads out of the image")
    if not os.path.exists(real):
        raise InvalidArgument(f"image_sub_path {sub!r} does not exist in the image")
    return real


async def _sweep_peer(what: str, listing: Callable[[], Awaitable[list[Any]]],
                      orphan: Callable[[Any], str | None],
                      remove: Callable[[str], Awaitable[None]]) -> tuple[bool, int]:
    """Remove what a peer lists and `orphan` names; (the peer answered throughout, how
    many went)."""
    try:
        items = await listing()
    except CribError as exc:
        log.debug("reconcile: peer not reachable", what=what, error=exc.message)
        return False, 0
    clean, count = True, 0
    for item in items:
        key = orphan(item)
        if key is None:
            continue
        try:
            await remove(key)
            count += 1
        except CribError as exc:
            log.warning("orphan not removed", what=what, key=key, error=exc.message)
            clean = False
    return clean, count


async def _attempt(failed: list[Exception], step: str, work: Awaitable[Any],
                   **where: str) -> None:
    """Await one teardown step; a failure is logged and kept in `failed`, not raised."""
    try:
        await work
    except (CribError, OSError) as exc:
        failed.append(exc)
        log.warning("teardown step failed", step=step, error=str(exc), **where)


def _check_hostname(name: str) -> None:
    """A pod hostname is what sethostname(2) takes (at most 64 bytes) and a DNS label set
    (RFC 1123); it is also an argument of hostname(1), so no leading dash."""
    if not name:
        return
    if len(name) > 64 or name.startswith(("-", ".")) or any(
            not (c.isascii() and (c.isalnum() or c in "-.")) for c in name):
        raise InvalidArgument(f"invalid pod hostname {name!r}")


def _log_path(log_directory: str, log_path: str) -> str:
    """The kubelet's log_path is relative to the pod's log_directory (api.proto); it may
    not climb out of it."""
    if not log_path:
        return ""
    if log_path.startswith("/"):
        return os.path.normpath(log_path)
    base = log_directory or "/"
    full = os.path.normpath(os.path.join(base, log_path))
    if not (full + "/").startswith(base.rstrip("/") + "/"):
        raise InvalidArgument(f"log_path {log_path!r} leaves the pod's log directory")
    return full


def _kill_conmon(pid: int) -> None:
    if pid > 0 and process_alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"conmon" in cmdline.split(b"\0", 1)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _sandbox_name(m: SandboxMeta) -> str:
    return f"pod/{m.name}_{m.namespace}_{m.uid}_{m.attempt}"


def _container_name(m: ContainerMeta) -> str:
    return f"ctr/{m.pod_id}/{m.name}_{m.attempt}"


async def iterate_events(runtime: Runtime) -> AsyncIterator[ContainerEventResponse]:
    q = runtime.subscribe()
    try:
        while True:
            yield await q.get()
    finally:
        runtime.unsubscribe(q)


"""The pod network manager: namespaces + CNI attachments, persisted and recovered.

One `NetworkManager` per netd. Operations on one pod are serialised by a per-pod lock
(SPEC.md section 3: "The container runtime must not invoke parallel operations for the
same container"); different pods run in parallel. GC takes every pod lock's place through
a reader/writer gate, since GC must run alone (same section, "Exception").

Create and remove run as shielded tasks: when the caller goes away (the kubelet's deadline,
a dropped connection) the operation still finishes or rolls back, and the kubelet's retry
finds the outcome (create is idempotent per pod id, remove of a missing pod is success),
as CRI-O parks a create that outlived its deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, TypeVar

import structlog

from crib_common.errors import (
    CribError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from crib_common.models.netd import (
    CniConfigView,
    GcReport,
    NetworkNamespace,
    PodIP,
    PodNetwork,
    PodNetworkCreate,
)
from crib_common.server import Health
from crib_common.settings import NetdSection
from crib_common.state import StateStore

from .cni.chain import Attachment, ChainRunner, parse_ips
from .cni.config import (
    ConfigProblem,
    NetworkConfig,
    version_key,
    install_default,
    load_active,
    parse_network_config,
)
from .cni.invoke import CODE_TRY_AGAIN, CniPluginError, ExecPlugin, PluginExec
from .netns import NamespaceManager, NetnsError, is_pinned_netns, is_user_namespace
from .orphans import wait_for_plugins
from .store import AttachmentRecord, AttachmentStore

__all__ = ["NetworkManager", "validate_pod_id"]

log = structlog.get_logger("netd")
T = TypeVar("T")

# CNI_CONTAINERID (SPEC.md section 2): alphanumeric first, then alphanumerics, _ . -;
# capped so "crib-<id>" stays a valid file name.
_POD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
# CNI_ARGS values are joined with ';' and '=' (SPEC.md section 2).
_ARG_BAD = re.compile(r"[;=\s]")
# Time a rollback or teardown may take even when the caller already gave up.
_UNDO_TIMEOUT = 120.0
# Plugin error codes that mean the configuration (not the moment) is wrong (SPEC.md "Error").
_CONFIG_CODES = {1, 2, 6, 7}


class _PodLock:
    """A pod's lock and how many operations hold or await it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def validate_pod_id(pod_id: str) -> str:
    """Check a pod id at the edge; it becomes CNI_CONTAINERID and a file name."""
    if not _POD_ID_RE.match(pod_id):
        raise InvalidArgument(
            f"bad pod id {pod_id!r}: must start with a letter or digit and contain only "
            f"letters, digits, '_', '.', '-' (at most 200 characters)"
        )
    return pod_id


def _crib_error(exc: CniPluginError, pod_id: str) -> CribError:
    message = f"pod {pod_id}: {exc}"
    if exc.code == CODE_TRY_AGAIN:
        return Unavailable(message)
    if exc.code in _CONFIG_CODES:
        return FailedPrecondition(message)
    return Internal(message)


class NetworkManager:
    """Owns netns pins, CNI calls and attachment records of one node."""

    def __init__(self, settings: NetdSection, exec_: PluginExec | None = None) -> None:
        self.settings = settings
        self.namespaces = NamespaceManager(settings.netns_dir)
        self.chain = ChainRunner(exec_ or ExecPlugin(), list(settings.plugin_dirs),
                                 settings.plugin_timeout)
        self._store: AttachmentStore | None = None
        self._locks: dict[str, _PodLock] = {}
        self._active = 0  # pod operations in flight (GC waits for zero)
        self._idle = asyncio.Condition()
        self._gc_running = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- lifecycle

    @property
    def store(self) -> AttachmentStore:
        if self._store is None:
            raise Unavailable("netd is starting")
        return self._store

    async def start(self) -> None:
        """Open the store, install the default config if none, settle every record."""
        self.settings.root.mkdir(parents=True, exist_ok=True)
        self._store = AttachmentStore(StateStore(self.settings.root / "netd.db"))
        try:
            written = install_default(self.settings)
        except OSError as exc:
            # Not fatal: /healthz reports NoCNIConfiguration until an operator fixes it.
            log.error("default network configuration not installed",
                      conf_dir=str(self.settings.conf_dir), error=str(exc))
            written = None
        if written is not None:
            log.info("default network configuration installed", file=str(written),
                     bridge=self.settings.default_bridge, subnet=self.settings.default_subnet)
        self.namespaces.prepare()
        await self.recover()

    async def close(self) -> None:
        """Wait for shielded operations (bounded), then close the store."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)
        if self._store is not None:
            self._store.close()
            self._store = None

    async def recover(self) -> None:
        """Settle what a previous netd left: finish half-done work, remove orphans."""
        records = self.store.list()
        known = set()
        for record in records:
            known.add(record.pod_id)
            try:
                async with asyncio.timeout(self.settings.recover_timeout):
                    await self._recover_one(record)
            except (Exception, TimeoutError) as exc:  # one bad record must not stop netd
                log.error("attachment not settled", pod_id=record.pod_id, state=record.state,
                          error=str(exc))
        for path in self.namespaces.list():
            pod_id = path.name[len(self.namespaces.prefix):]
            if pod_id in known:
                continue
            try:
                await self.namespaces.remove(path)
                log.warning("orphan namespace removed", netns=str(path))
            except NetnsError as exc:
                log.error("orphan namespace not removed", netns=str(path), error=str(exc))
        log.info("attachments recovered", count=len(self.store.list()))
        await self._gc_at_start()

    async def _gc_at_start(self) -> None:
        """CNI GC once recovery is done and before any ADD/DEL can start (so it runs
        alone, SPEC.md section 3), when the plugins speak CNI 1.1; also warms the cache of
        the plugins' VERSION answers."""
        try:
            config = load_active(self.settings.conf_dir, list(self.settings.plugin_dirs))
        except ConfigProblem:
            return  # reported by /healthz
        valid = [(r.pod_id, r.ifname) for r in self.store.list()
                 if r.config.get("name") == config.name]
        try:
            errors = await self.chain.gc(config, valid)
        except CniPluginError as exc:
            errors = [str(exc)]
        for error in errors:
            log.warning("cni gc error", network=config.name, error=error)

    async def _recover_one(self, record: AttachmentRecord) -> None:
        if record.state == "ready":
            if not is_pinned_netns(Path(record.netns_path)):
                log.warning("pod namespace missing", pod_id=record.pod_id,
                            netns=record.netns_path)
            return
        # "creating": the ADD was cut short, roll it back (SPEC.md section 3: a delete must
        # be executed even if the add fails). "deleting": finish the DEL.
        log.warning("half-done attachment found", pod_id=record.pod_id, state=record.state)
        killed = await wait_for_plugins(record.pod_id, record.netns_path,
                                        min(self.settings.plugin_timeout,
                                            self.settings.recover_timeout / 2))
        if killed:
            log.warning("orphan plugins killed", pod_id=record.pod_id, pids=killed)
        await self._teardown(record)
        log.info("half-done attachment rolled back", pod_id=record.pod_id)

    # ---------------------------------------------------------------- gates

    @asynccontextmanager
    async def _pod_op(self, pod_id: str) -> AsyncIterator[None]:
        """One operation on one pod at a time; none while GC runs."""
        async with self._idle:
            await self._idle.wait_for(lambda: not self._gc_running)
            self._active += 1
        # Reference-counted so the lock is dropped only when nobody holds or awaits it.
        entry = self._locks.setdefault(pod_id, _PodLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._locks.get(pod_id) is entry:
                del self._locks[pod_id]
            async with self._idle:
                self._active -= 1
                self._idle.notify_all()

    async def _shielded(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` to its end even if our caller is cancelled."""
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    # ---------------------------------------------------------------- configuration

    def active_config(self) -> NetworkConfig:
        """The configuration in force (re-read each call: it is small and may change)."""
        try:
            return load_active(self.settings.conf_dir, list(self.settings.plugin_dirs))
        except ConfigProblem as exc:
            raise FailedPrecondition(f"{exc.reason}: {exc.message}") from None

    async def config_view(self) -> CniConfigView:
        view = CniConfigView(ready=True, conf_dir=str(self.settings.conf_dir),
                             plugin_dirs=[str(p) for p in self.settings.plugin_dirs])
        try:
            config = load_active(self.settings.conf_dir, list(self.settings.plugin_dirs))
        except ConfigProblem as exc:
            view.ready, view.reason, view.message = False, exc.reason, exc.message
            return view
        view.source, view.name, view.cni_version = config.source, config.name, config.cni_version
        view.plugins = [str(p["type"]) for p in config.plugins]
        view.config = config.raw
        try:
            view.negotiated_version = await self.chain.negotiate(config)
        except CniPluginError as exc:
            view.ready, view.reason, view.message = False, "CNIPluginFailed", str(exc)
        return view

    async def health(self) -> Health:
        """NetworkReady: a usable configuration whose plugins exist (and, for 1.1.0
        plugins, answer STATUS). Re-read on every call so a fix shows without a restart."""
        health = Health(service="netd")
        if self._store is None:
            health.ready, health.reason, health.message = False, "NetdStarting", "recovering"
            return health
        try:
            config = load_active(self.settings.conf_dir, list(self.settings.plugin_dirs))
        except ConfigProblem as exc:
            health.ready, health.reason, health.message = False, exc.reason, exc.message
            return health
        try:
            await self.chain.status(config)
        except CniPluginError as exc:
            health.ready, health.reason, health.message = False, "CNIPluginNotReady", str(exc)
            return health
        health.details = {"network": config.name, "config": config.source,
                          "attachments": len(self.store.list())}
        return health

    # ---------------------------------------------------------------- operations

    def view(self, record: AttachmentRecord) -> PodNetwork:
        ips = [PodIP(ip=ip, family=family, interface=iface, gateway=gw)
               for ip, family, iface, gw in parse_ips(record.result or {}, record.ifname)]
        return PodNetwork(
            pod_id=record.pod_id, netns_path=record.netns_path,
            network_name=str(record.config.get("name", "")), ips=ips,
            result=record.result or {}, created_at=record.created_at, state=record.state,
            pod_name=record.pod_name, pod_namespace=record.pod_namespace,
            ifname=record.ifname, config_source=record.config_source,
            cni_version=record.cni_version, port_mappings=record.port_mappings,
            netns_present=is_pinned_netns(Path(record.netns_path)),
        )

    def resolve(self, pod_id: str) -> str:
        """A full pod id from an id or a unique prefix of one (operators type prefixes)."""
        validate_pod_id(pod_id)
        if self.store.get(pod_id) is not None:
            return pod_id
        matches = [r.pod_id for r in self.store.list() if r.pod_id.startswith(pod_id)]
        if len(matches) > 1:
            raise InvalidArgument(f"pod id prefix {pod_id!r} is ambiguous ({len(matches)} pods)")
        if not matches:
            raise NotFound(f"pod network {pod_id} not found")
        return matches[0]

    def get(self, pod_id: str) -> PodNetwork:
        """One attachment, by pod id or unique prefix."""
        record = self.store.get(self.resolve(pod_id))
        if record is None:
            raise NotFound(f"pod network {pod_id} not found")
        return self.view(record)

    def list_networks(self) -> list[PodNetwork]:
        return [self.view(r) for r in self.store.list()]

    def list_namespaces(self) -> list[NetworkNamespace]:
        records = {r.pod_id for r in self.store.list()}
        out = []
        for path in self.namespaces.list():
            pod_id = path.name[len(self.namespaces.prefix):]
            out.append(NetworkNamespace(path=str(path), pod_id=pod_id,
                                        pinned=is_pinned_netns(path), attached=pod_id in records))
        return out

    async def create(self, request: PodNetworkCreate) -> PodNetwork:
        """Pin a namespace and run CNI ADD; idempotent per pod id."""
        validate_pod_id(request.pod_id)
        if request.userns_path and not is_user_namespace(Path(request.userns_path)):
            raise InvalidArgument(f"userns_path {request.userns_path!r} is not a pinned "
                                  "user namespace")
        args = self._cni_args(request)
        return await self._shielded(lambda: self._create(request, args))

    async def _create(self, request: PodNetworkCreate, args: list[tuple[str, str]]) -> PodNetwork:
        pod_id = request.pod_id
        async with self._pod_op(pod_id):
            existing = self.store.get(pod_id)
            if existing is not None and existing.state == "ready":
                return self.view(existing)
            if existing is not None:
                # A previous attempt failed half-way and could not be undone then.
                try:
                    await self._teardown(existing)
                except CniPluginError as exc:
                    raise _crib_error(exc, pod_id) from None
            config = self.active_config()
            version = await self._negotiate(config, pod_id)
            record = AttachmentRecord(
                pod_id=pod_id, pod_name=request.pod_name, pod_namespace=request.pod_namespace,
                pod_uid=request.pod_uid, state="creating",
                netns_path=str(self.namespaces.path_for(pod_id)),
                ifname=self.settings.pod_ifname, config=config.raw,
                config_source=config.source, cni_version=version, cni_args=args,
                capabilities=self._capabilities(request),
                port_mappings=[p for p in request.port_mappings if p.host_port > 0],
                created_at=time.time_ns(),
            )
            # Persist the intent first: from here a crash is undone at the next start.
            await self.store.put(record)
            start = time.perf_counter()
            try:
                await self.namespaces.create(pod_id, request.userns_path)
                record.result = await self.chain.add(config, self._attachment(record))
            except BaseException as exc:
                await self._rollback(record, exc)
                if isinstance(exc, CniPluginError):
                    raise _crib_error(exc, pod_id) from None
                if isinstance(exc, NetnsError):
                    raise Internal(f"pod {pod_id}: {exc}") from None
                raise
            record.state = "ready"
            await self.store.put(record)
            view = self.view(record)
            log.info("pod network created", pod_id=pod_id, netns=record.netns_path,
                     ips=[i.ip for i in view.ips], ms=round((time.perf_counter() - start) * 1000, 2))
            return view

    async def _negotiate(self, config: NetworkConfig, pod_id: str) -> str:
        try:
            return await self.chain.negotiate(config)
        except CniPluginError as exc:
            raise _crib_error(exc, pod_id) from None

    async def _rollback(self, record: AttachmentRecord, cause: BaseException) -> None:
        log.warning("pod network create failed, rolling back", pod_id=record.pod_id,
                    error=str(cause))
        try:
            async with asyncio.timeout(_UNDO_TIMEOUT):
                await self._teardown(record)
        except (Exception, TimeoutError) as exc:
            # The record stays "deleting": the next remove (or start) retries.
            log.error("rollback failed", pod_id=record.pod_id, error=str(exc))

    async def remove(self, pod_id: str) -> None:
        """CNI DEL (reverse order) and unpin the namespace; an unknown pod is success."""
        validate_pod_id(pod_id)
        await self._shielded(lambda: self._remove(pod_id))

    async def _remove(self, pod_id: str) -> None:
        async with self._pod_op(pod_id):
            record = self.store.get(pod_id)
            if record is None:
                # StopPodSandbox/RemovePodSandbox are idempotent (CRI api.proto: "If there
                # are any running containers in the sandbox, they must be forcibly
                # terminated ... this call is idempotent"); a stray pin of ours still goes.
                path = self.namespaces.path_for(pod_id)
                if path.exists():
                    await self._remove_netns(path, pod_id)
                return
            try:
                await self._teardown(record)
            except CniPluginError as exc:
                raise _crib_error(exc, pod_id) from None
            log.info("pod network removed", pod_id=pod_id)

    async def _teardown(self, record: AttachmentRecord) -> None:
        """DEL with the cached configuration and result, unpin, forget the record."""
        if record.state != "deleting":
            record.state = "deleting"
            await self.store.put(record)
        config = parse_network_config(
            json.dumps(record.config), record.config_source)
        att = self._attachment(record)
        if not is_pinned_netns(Path(record.netns_path)):
            # DEL is best effort without the namespace (SPEC.md "DEL"); an empty file left
            # by a crash before the bind mount is no namespace, so CNI_NETNS stays unset.
            att.netns = ""
        await self.chain.delete(config, att, record.result, record.cni_version or None)
        await self._remove_netns(Path(record.netns_path), record.pod_id)
        await self.store.delete(record.pod_id)

    async def _remove_netns(self, path: Path, pod_id: str) -> None:
        try:
            await self.namespaces.remove(path)
        except NetnsError as exc:
            raise Internal(f"pod {pod_id}: {exc}") from None

    async def check(self, pod_id: str) -> None:
        """CNI CHECK with the configuration and result of the ADD (id or unique prefix)."""
        pod_id = self.resolve(pod_id)
        async with self._pod_op(pod_id):
            record = self.store.get(pod_id)
            if record is None:
                raise NotFound(f"pod network {pod_id} not found")
            if record.state != "ready" or record.result is None:
                raise FailedPrecondition(f"pod network {pod_id} is {record.state}")
            if not is_pinned_netns(Path(record.netns_path)):
                raise FailedPrecondition(
                    f"pod network {pod_id}: namespace {record.netns_path} is gone")
            config = parse_network_config(json.dumps(record.config),
                                          record.config_source)
            try:
                await self.chain.check(config, self._attachment(record), record.result,
                                       record.cni_version or None)
            except CniPluginError as exc:
                raise _crib_error(exc, pod_id) from None

    async def gc(self) -> GcReport:
        """Remove orphan pins and, for 1.1.0 plugins, run CNI GC with the live attachments;
        runs alone (SPEC.md section 3: GC excludes ADD and DEL)."""
        report = GcReport()
        async with self._idle:
            await self._idle.wait_for(lambda: self._active == 0 and not self._gc_running)
            self._gc_running = True
        try:
            records = self.store.list()
            known = {r.pod_id for r in records}
            for path in self.namespaces.list():
                if path.name[len(self.namespaces.prefix):] not in known:
                    try:
                        await self.namespaces.remove(path)
                        report.removed_namespaces.append(str(path))
                    except NetnsError as exc:
                        report.errors.append(str(exc))
            try:
                config = load_active(self.settings.conf_dir, list(self.settings.plugin_dirs))
            except ConfigProblem as exc:
                report.errors.append(exc.message)
                return report
            valid = [(r.pod_id, r.ifname) for r in records
                     if r.config.get("name") == config.name]
            try:
                version = await self.chain.negotiate(config)
                report.cni_gc_ran = version_key(version) >= (1, 1, 0) and not config.disable_gc
                report.errors += await self.chain.gc(config, valid)
            except CniPluginError as exc:
                report.errors.append(str(exc))
            return report
        finally:
            async with self._idle:
                self._gc_running = False
                self._idle.notify_all()

    # ---------------------------------------------------------------- helpers

    def _attachment(self, record: AttachmentRecord) -> Attachment:
        return Attachment(container_id=record.pod_id, netns=record.netns_path,
                          ifname=record.ifname, args=[tuple(a) for a in record.cni_args],  # type: ignore[misc]
                          capabilities=record.capabilities)

    @staticmethod
    def _cni_args(request: PodNetworkCreate) -> list[tuple[str, str]]:
        """CNI_ARGS as the kubelet's runtimes pass them (containerd, CRI-O)."""
        args = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", request.pod_namespace),
                ("K8S_POD_NAME", request.pod_name),
                ("K8S_POD_INFRA_CONTAINER_ID", request.pod_id)]
        if request.pod_uid:
            args.append(("K8S_POD_UID", request.pod_uid))
        for key, value in args:
            if _ARG_BAD.search(value):
                raise InvalidArgument(f"{key} {value!r} may not contain ';', '=' or spaces")
        return args

    @staticmethod
    def _capabilities(request: PodNetworkCreate) -> dict[str, Any]:
        """Capability arguments (CONVENTIONS.md); only plugins declaring one receive it."""
        caps: dict[str, Any] = {}
        mappings = []
        for p in request.port_mappings:
            if p.host_port <= 0:
                continue  # no hostPort: nothing to map (as containerd skips them)
            if not (0 < p.container_port < 65536 and p.host_port < 65536):
                raise InvalidArgument(f"bad port mapping {p.host_port}->{p.container_port}")
            entry: dict[str, Any] = {"hostPort": p.host_port, "containerPort": p.container_port,
                                     "protocol": (p.protocol or "tcp").lower()}
            if p.host_ip:
                entry["hostIP"] = p.host_ip
            mappings.append(entry)
        if mappings:
            caps["portMappings"] = mappings
        if request.dns is not None:
            caps["dns"] = {"servers": request.dns.servers, "searches": request.dns.searches,
                           "options": request.dns.options}
        if request.bandwidth:
            caps["bandwidth"] = dict(request.bandwidth)
        ips = request.annotations.get("crib.io/ips", "")
        if ips:
            caps["ips"] = [s.strip() for s in ips.split(",") if s.strip()]
        return caps

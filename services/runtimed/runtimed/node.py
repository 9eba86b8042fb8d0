"""The centre of runtimed: the record registry, per-object locks, the peers and events.

Everything else is a room around this one (`lifecycle/`): each owns one concern and
reaches the world only through what `Node` holds:

    Node ─┬─ records    sandboxes, containers and their reserved names, in memory and in
          │             the state store (disk first, then memory, as containerd's
          │             UpdateSync); `generation` counts every change, for list caches
          ├─ locks      one asyncio.Lock per pod or container id
          ├─ runtimes   OCI runtime handlers (`oci.runtime.RuntimeImpl`)
          ├─ monitor    the per-container monitor (`conmon.monitor.Monitor`)
          ├─ host       mounts, namespaces, pod files, cgroups (`ports.Host`)
          ├─ peers      imaged and netd (`ports.ImagedPeer`, `ports.NetdPeer`)
          └─ events     domain events to every subscriber, rendered by the subscriber
                        when they happen (GetContainerEvents turns them into CRI messages)

No CRI message is built here: `messages/` converts records at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import structlog

from crib_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from crib_common.settings import CribSettings
from crib_common.state import StateStore

from .conmon.monitor import Monitor
from .nri import Nri
from .oci.runtime import RuntimeImpl
from .ports import Host, ImagedPeer, NetdPeer
from .store.records import (
    CONTAINER_KIND,
    SANDBOX_KIND,
    ContainerMeta,
    ContainerRecord,
    SandboxMeta,
    SandboxRecord,
)

__all__ = ["Event", "EventKind", "ID_LEN", "Node", "check_id", "failpoint", "new_id", "now"]

log = structlog.get_logger("crib.runtimed")

ID_LEN = 64

# Test-only failpoints (containerd's integration/failpoint idea): a comma list of names in
# CRIB_RUNTIMED_CRASH_AT makes runtimed SIGKILL itself at that point, so restart tests hit
# every half-done state deterministically.
_CRASH_AT = frozenset(filter(None, os.environ.get("CRIB_RUNTIMED_CRASH_AT", "").split(",")))


def failpoint(name: str) -> None:
    if name in _CRASH_AT:
        log.warning("failpoint: killing runtimed", failpoint=name)
        os.kill(os.getpid(), signal.SIGKILL)


def now() -> int:
    """Unix time in nanoseconds, as every CRI timestamp."""
    return time.time_ns()


def new_id() -> str:
    return secrets.token_hex(ID_LEN // 2)


def check_id(value: str, what: str) -> str:
    """An ID as the kubelet sends it: hex, at most ID_LEN; empty is InvalidArgument,
    anything else that cannot be ours is NotFound."""
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{what} id is empty")
    if len(value) > ID_LEN or any(c not in "0123456789abcdef" for c in value):
        raise NotFound(f"{what} {value!r} not found")
    return value


def sandbox_name(m: SandboxMeta) -> str:
    return f"pod/{m.name}_{m.namespace}_{m.uid}_{m.attempt}"


def container_name(m: ContainerMeta) -> str:
    return f"ctr/{m.pod_id}/{m.name}_{m.attempt}"


EventKind = Literal["created", "started", "stopped", "deleted"]
_T = TypeVar("_T")


@dataclass
class Event:
    """A pod or container changed. `oid` is a container, or a pod for the pod's own
    events (containerd sends those with container_id = sandbox id); `pod` and
    `containers` are the pod's record and its containers' as they are now (the pod's
    record even once it is dropped, for "deleted")."""

    oid: str
    kind: EventKind
    created_at: int
    pod: SandboxRecord | None
    containers: list[ContainerRecord]


@dataclass(eq=False)
class Subscription(Generic[_T]):
    """One listener: `render` turns each event into what it queues, at once, so the
    queued item shows the state of the moment the event happened."""

    render: Callable[[Event], _T]
    queue: asyncio.Queue[_T] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))


class Node:
    """All of runtimed's pods and containers, and what the rooms need to change them."""

    def __init__(self, settings: CribSettings, *, runtimes: dict[str, RuntimeImpl],
                 monitor: Monitor, host: Host, imaged: ImagedPeer, netd: NetdPeer,
                 store: StateStore | None = None) -> None:
        cfg = settings.runtimed
        self.settings = settings
        self.cfg = cfg
        self.exit_dir = cfg.run_dir / "exits"
        self.sock_dir = cfg.run_dir / "s"
        self.bundles = cfg.run_dir / "c"
        self.pods_dir = cfg.run_dir / "p"
        # Set by the start-up probe (Runtimed._probe_userns): pod user namespaces work
        # here, and what the probe found. Off until it ran.
        self.userns_supported = False
        self.userns_reason = "not probed yet"
        self.store = store if store is not None else StateStore(cfg.root / "state.db")
        self.runtimes = runtimes
        self.monitor = monitor
        self.host = host
        self.imaged = imaged
        self.netd = netd
        self.sandboxes: dict[str, SandboxRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}
        self.names: dict[str, str] = {}
        # Bumped by every record write or drop: list replies are cached per generation.
        self.generation = 0
        # Called with the id of every dropped record (caches and rooms forget it).
        self.on_drop: list[Callable[[str], None]] = []
        # Set when a rollback left something to a peer that was down: the sweep runs soon.
        self.sweep_wanted = asyncio.Event()
        self._sweep_after: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._subscribers: set[Subscription[Any]] = set()
        # NRI plugins (issue 15): the rooms call its events; served from app.py.
        self.nri = Nri(self, cfg.nri)

    def directories(self) -> list[Any]:
        return [self.exit_dir, self.sock_dir, self.bundles, self.pods_dir, self.cfg.pinns_dir]

    # ------------------------------------------------------------ lookup

    def find_sandbox(self, sid: str) -> SandboxRecord:
        """Full ID or unique prefix; NotFound otherwise."""
        return _find(self.sandboxes, check_id(sid, "pod sandbox"), "pod sandbox")

    def find_container(self, cid: str) -> ContainerRecord:
        return _find(self.containers, check_id(cid, "container"), "container")

    def runtime_for(self, handler: str) -> RuntimeImpl:
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

    def lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------ persistence

    def put_sandbox(self, rec: SandboxRecord) -> None:
        self.store.put(SANDBOX_KIND, rec.meta.id, rec)
        self.sandboxes[rec.meta.id] = rec
        self.generation += 1

    def put_container(self, rec: ContainerRecord) -> None:
        self.store.put(CONTAINER_KIND, rec.meta.id, rec)
        self.containers[rec.meta.id] = rec
        self.generation += 1

    def drop_sandbox(self, sid: str) -> None:
        self.store.delete(SANDBOX_KIND, sid)
        rec = self.sandboxes.pop(sid, None)
        if rec is not None:
            self.release(sandbox_name(rec.meta), sid)
        self._dropped(sid)

    def drop_container(self, cid: str) -> None:
        self.store.delete(CONTAINER_KIND, cid)
        rec = self.containers.pop(cid, None)
        if rec is not None:
            self.release(container_name(rec.meta), cid)
        self._dropped(cid)

    def want_sweep(self, after: str = "") -> None:
        """Ask for an orphan sweep: now, or once record `after` is dropped (a sweep that
        still saw the record of a failed create would leave what its rollback could not
        undo until the next timed sweep)."""
        if after and (after in self.sandboxes or after in self.containers):
            self._sweep_after.add(after)
        else:
            self.sweep_wanted.set()

    def _dropped(self, oid: str) -> None:
        if oid in self._sweep_after:
            self._sweep_after.discard(oid)
            self.sweep_wanted.set()
        self.generation += 1
        self._locks.pop(oid, None)
        for forget in self.on_drop:
            forget(oid)

    def add_sandbox(self, rec: SandboxRecord) -> None:
        """A new pod's record: its name reserved (AlreadyExists if taken), then stored."""
        self._add(sandbox_name(rec.meta), rec.meta.id, lambda: self.put_sandbox(rec))

    def add_container(self, rec: ContainerRecord) -> None:
        """A new container's record: its name reserved (AlreadyExists if taken), then
        stored."""
        self._add(container_name(rec.meta), rec.meta.id, lambda: self.put_container(rec))

    def _add(self, name: str, oid: str, put: Callable[[], None]) -> None:
        self.reserve(name, oid)
        try:
            put()
        except BaseException:
            self.release(name, oid)
            raise

    def reserve(self, name: str, oid: str) -> None:
        owner = self.names.get(name)
        if owner is not None and owner != oid:
            raise AlreadyExists(f"name {name!r} is reserved for {owner}")
        self.names[name] = oid

    def release(self, name: str, oid: str) -> None:
        if self.names.get(name) == oid:
            del self.names[name]

    def load(self) -> tuple[list[SandboxRecord], list[ContainerRecord]]:
        """Every stored record into memory, names reserved (recovery settles them)."""
        sandboxes = self.store.list(SANDBOX_KIND, SandboxRecord)
        containers = self.store.list(CONTAINER_KIND, ContainerRecord)
        for s in sandboxes:
            self.sandboxes[s.meta.id] = s
            self.names[sandbox_name(s.meta)] = s.meta.id
        for c in containers:
            self.containers[c.meta.id] = c
            self.names[container_name(c.meta)] = c.meta.id
        return sandboxes, containers

    # ------------------------------------------------------------ events

    def subscribe(self, render: Callable[[Event], _T]) -> Subscription[_T]:
        sub = Subscription(render)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription[Any]) -> None:
        self._subscribers.discard(sub)

    def emit(self, oid: str, kind: EventKind, pod: SandboxRecord | str | None = None) -> None:
        """One event to every subscriber. `pod` is the pod's id, or its record once
        dropped (DELETED); None means the pod of container `oid`."""
        if not self._subscribers:
            return
        if pod is None:
            rec = self.containers.get(oid)
            pod = rec.meta.pod_id if rec is not None else None
        if isinstance(pod, str):
            pod = self.sandboxes.get(pod)
        event = Event(oid=oid, kind=kind, created_at=now(), pod=pod,
                      containers=self.pod_containers(pod.meta.id) if pod else [])
        for sub in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(sub.render(event))

    # ------------------------------------------------------------ health

    def health(self) -> tuple[bool, str, str, dict[str, Any]]:
        usable = [n for n, r in self.runtimes.items() if r.usable]
        details = {n: {"path": r.path, "usable": r.usable, "reason": r.reason,
                       "version": r.version, "default": n == self.cfg.default_handler,
                       "features": {"recursive_read_only_mounts": r.recursive_read_only,
                                    "user_namespaces": self.userns_supported}}
                   for n, r in self.runtimes.items()}
        if not usable:
            return False, "NoRuntimeHandler", "no OCI runtime handler works: " + "; ".join(
                f"{n}: {r.reason}" for n, r in self.runtimes.items()), details
        if self.cfg.default_handler not in usable:
            return False, "DefaultHandlerUnusable", (
                f"default handler {self.cfg.default_handler!r} is not usable"), details
        return True, "", "", details


_R = TypeVar("_R", SandboxRecord, ContainerRecord)


def _find(records: dict[str, _R], oid: str, what: str) -> _R:
    rec = records.get(oid)
    if rec is not None:
        return rec
    hits = [r for k, r in records.items() if k.startswith(oid)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise InvalidArgument(f"{what} id prefix {oid!r} is ambiguous")
    raise NotFound(f"{what} {oid!r} not found")

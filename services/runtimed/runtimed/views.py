"""Records -> CRI messages (status, list items, stats), shared by the cri/ modules."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import betterproto

from crib_common.cri.runtime.v1 import (
    Container,
    ContainerAttributes,
    ContainerMetadata,
    ContainerResources,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ContainerUser,
    CpuUsage,
    FilesystemIdentifier,
    FilesystemUsage,
    ImageSpec,
    LinuxContainerResources,
    LinuxContainerUser,
    LinuxPodSandboxStats,
    LinuxPodSandboxStatus,
    MemoryUsage,
    Mount,
    MountPropagation,
    Namespace,
    NamespaceMode,
    NamespaceOption,
    NetworkInterfaceUsage,
    NetworkUsage,
    PodIp,
    PodSandbox,
    PodSandboxAttributes,
    PodSandboxMetadata,
    PodSandboxNetworkStatus,
    PodSandboxState,
    PodSandboxStats,
    PodSandboxStatus,
    ProcessUsage,
    UInt64Value,
)


from . import cgroups
from .store.records import ContainerRecord, SandboxRecord

if TYPE_CHECKING:
    from .service import Runtime

_STATE = {
    "creating": ContainerState.CONTAINER_CREATED,
    "created": ContainerState.CONTAINER_CREATED,
    "running": ContainerState.CONTAINER_RUNNING,
    "exited": ContainerState.CONTAINER_EXITED,
    "unknown": ContainerState.CONTAINER_UNKNOWN,
}


def container_state(rec: ContainerRecord) -> ContainerState:
    return ContainerState(_STATE[rec.status.state])


def sandbox_state(rec: SandboxRecord) -> PodSandboxState:
    return PodSandboxState(PodSandboxState.SANDBOX_READY if rec.status.state == "ready"
                           else PodSandboxState.SANDBOX_NOTREADY)


def _meta(rec: SandboxRecord) -> PodSandboxMetadata:
    m = rec.meta
    return PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def sandbox_item(rec: SandboxRecord) -> PodSandbox:
    return PodSandbox(id=rec.meta.id, metadata=_meta(rec), state=sandbox_state(rec),
                      created_at=rec.meta.created_at, labels=dict(rec.meta.labels),
                      annotations=dict(rec.meta.annotations),
                      runtime_handler=rec.meta.handler)


def sandbox_status(rt: Runtime, rec: SandboxRecord) -> PodSandboxStatus:
    m = rec.meta
    ips = rec.status.ips if rec.status.state == "ready" else []

    def mode(host: bool, pod: bool) -> NamespaceMode:
        return NamespaceMode(NamespaceMode.NODE if host else
                             NamespaceMode.POD if pod else NamespaceMode.CONTAINER)

    return PodSandboxStatus(
        id=m.id, metadata=_meta(rec), state=sandbox_state(rec), created_at=m.created_at,
        network=PodSandboxNetworkStatus(ip=ips[0] if ips else "",
                                        additional_ips=[PodIp(ip=i) for i in ips[1:]]),
        linux=LinuxPodSandboxStatus(namespaces=Namespace(options=NamespaceOption(
            network=mode(m.host_network, True), pid=mode(m.host_pid, m.shared_pid),
            ipc=mode(m.host_ipc, True)))),
        labels=dict(m.labels), annotations=dict(m.annotations), runtime_handler=m.handler)


def sandbox_info(rt: Runtime, rec: SandboxRecord) -> dict[str, str]:
    """The verbose `info` map (free-form JSON, as containerd's "info" key)."""
    m = rec.meta
    info = {
        "pid": rec.status.infra_pid, "netns": m.netns_path, "ipc": m.ipc_ns, "uts": m.uts_ns,
        "cgroupParent": m.cgroup_parent, "podDir": m.pod_dir, "hostname": m.hostname,
        "runtimeHandler": m.handler, "state": rec.status.state,
        "containers": [c.meta.id for c in rt.pod_containers(m.id)],
    }
    return {"info": json.dumps(info)}


def _image(rec: ContainerRecord) -> ImageSpec:
    return ImageSpec(image=rec.meta.image, user_specified_image=rec.meta.image)


def container_item(rec: ContainerRecord) -> Container:
    m = rec.meta
    return Container(id=m.id, pod_sandbox_id=m.pod_id,
                     metadata=ContainerMetadata(name=m.name, attempt=m.attempt),
                     image=_image(rec), image_ref=m.image_ref, state=container_state(rec),
                     created_at=m.created_at, labels=dict(m.labels),
                     annotations=dict(m.annotations), image_id=m.image_id)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# List replies are assembled from per-item encodings (betterproto costs ~1 ms to build and
# encode one Container) and handed to the CRI dispatcher as bytes, which it sends as they
# are. Per object id: (state key, the item's encoding, the same framed as field 1 of a list
# reply). Both ListContainersResponse.containers and ListPodSandboxResponse.items are
# `repeated ... = 1`, so the framed form is reused.
_ITEM_CACHE: dict[str, tuple[str, bytes, bytes]] = {}
_FIELD1 = _varint((1 << 3) | 2)


def _cached(
    oid: str, key: str, build: Callable[[], betterproto.Message]
) -> tuple[str, bytes, bytes]:
    hit = _ITEM_CACHE.get(oid)
    if hit is not None and hit[0] == key:
        return hit
    data = bytes(build())
    entry = (key, data, _FIELD1 + _varint(len(data)) + data)
    _ITEM_CACHE[oid] = entry
    return entry


def container_item_bytes(rec: ContainerRecord) -> bytes:
    """The encoded `Container` of a record, re-encoded only when its state changed."""
    return _cached(rec.meta.id, rec.status.state, lambda: container_item(rec))[1]


def container_entry(rec: ContainerRecord) -> bytes:
    """`container_item_bytes` framed as field 1 (ListContainersResponse.containers)."""
    return _cached(rec.meta.id, rec.status.state, lambda: container_item(rec))[2]


def sandbox_entry(rec: SandboxRecord) -> bytes:
    """The encoded `PodSandbox` framed as field 1 (ListPodSandboxResponse.items)."""
    return _cached(rec.meta.id, "pod:" + rec.status.state, lambda: sandbox_item(rec))[2]


_R = TypeVar("_R", ContainerRecord, SandboxRecord)
_S = TypeVar("_S")
_M = TypeVar("_M")

# A page of a Stream* reply (CRIListStreaming, KEP 5825): at most this many items and,
# past the first item, this many bytes, far below the kubelet's 16 MiB receive limit even
# for items with large annotations.
PAGE_ITEMS = 500
PAGE_BYTES = 4 << 20


async def pages(entries: list[bytes], max_items: int = PAGE_ITEMS,
                max_bytes: int = PAGE_BYTES) -> AsyncIterator[bytes]:
    """Framed entries joined into pages of at least one entry each; none for no entries
    (api.proto: "lists of at least one item", then EOF)."""
    page: list[bytes] = []
    size = 0
    for entry in entries:
        if page and (len(page) >= max_items or size + len(entry) > max_bytes):
            yield b"".join(page)
            page, size = [], 0
        page.append(entry)
        size += len(entry)
    if page:
        yield b"".join(page)


async def stats_pages(records: list[_R], alive: Callable[[_R], bool],
                      stats: Callable[[_R], Awaitable[_S]],
                      reply: Callable[[list[_S]], _M]) -> AsyncIterator[_M]:
    """Stats of `records` as `reply` messages of a page (PAGE_ITEMS) each, each page read
    when it is sent, its records at once; a record gone before its page (`alive` false)
    is left out."""
    for start in range(0, len(records), PAGE_ITEMS):
        page = [r for r in records[start:start + PAGE_ITEMS] if alive(r)]
        if page:
            yield reply(list(await asyncio.gather(*(stats(r) for r in page))))


class ListCache:
    """List replies by filter, valid for one `Runtime.generation` (every record write or
    drop bumps it): a kubelet polling an unchanged node gets the bytes already built."""

    # Distinct filters kept per generation; the kubelet uses a handful.
    MAX_KEYS = 32

    def __init__(self) -> None:
        self.generation = -1
        self.replies: dict[Any, bytes] = {}

    def get(self, generation: int, key: Any) -> bytes | None:
        if generation != self.generation:
            self.generation = generation
            self.replies.clear()
            return None
        return self.replies.get(key)

    def put(self, key: Any, reply: bytes) -> bytes:
        if len(self.replies) < self.MAX_KEYS:
            self.replies[key] = reply
        return reply


def wire_field(msg: Any, name: str) -> Any:
    """`msg.<name>` if that sub-message was on the wire, else None. Reading an unset
    message field through betterproto builds its default (about 100 us for a list
    filter); the raw slot holds betterproto's PLACEHOLDER until then."""
    value = object.__getattribute__(msg, name)
    if value is betterproto.PLACEHOLDER or not betterproto.serialized_on_wire(value):
        return None
    return value


def forget_item(oid: str) -> None:
    _ITEM_CACHE.pop(oid, None)


def resources_message(res: dict[str, Any]) -> LinuxContainerResources:
    msg = LinuxContainerResources()
    if res:
        with contextlib.suppress(Exception):
            msg = LinuxContainerResources().from_dict(res)
    return msg


def container_status(rec: ContainerRecord) -> ContainerStatus:
    m, s = rec.meta, rec.status
    mounts = []
    for x in m.mounts:
        mount = Mount(container_path=x["container_path"], host_path=x["host_path"],
                      readonly=bool(x.get("readonly")),
                      propagation=MountPropagation(int(x.get("propagation", 0))),
                      recursive_read_only=bool(x.get("recursive_read_only")),
                      image_sub_path=x.get("image_sub_path", ""))
        if x.get("image"):
            mount.image = ImageSpec(image=x["image"])
        mounts.append(mount)
    return ContainerStatus(
        id=m.id, metadata=ContainerMetadata(name=m.name, attempt=m.attempt),
        state=container_state(rec), created_at=m.created_at, started_at=s.started_at,
        finished_at=s.finished_at, exit_code=s.exit_code, image=_image(rec),
        image_ref=m.image_ref, image_id=m.image_id, reason=s.reason, message=s.message,
        labels=dict(m.labels), annotations=dict(m.annotations), mounts=mounts,
        log_path=m.log_path,
        resources=ContainerResources(linux=resources_message(s.resources)),
        user=ContainerUser(linux=LinuxContainerUser(uid=m.uid, gid=m.gid,
                                                    supplemental_groups=[m.gid, *m.groups])),
    )


def container_info(rec: ContainerRecord) -> dict[str, str]:
    info: dict[str, Any] = {"pid": rec.status.pid, "conmonPid": rec.status.conmon_pid,
                            "bundle": rec.meta.bundle, "runtimeHandler": rec.meta.handler,
                            "cgroupPath": rec.meta.cgroup_path,
                            "snapshotKey": rec.meta.snapshot_key}
    with contextlib.suppress(OSError, ValueError):
        info["runtimeSpec"] = json.loads((Path(rec.meta.bundle) / "config.json").read_text())
    return {"info": json.dumps(info)}


def _u(v: int) -> UInt64Value:
    return UInt64Value(value=max(int(v), 0))


async def container_stats(rt: Runtime, rec: ContainerRecord) -> ContainerStats:
    st = await asyncio.to_thread(cgroups.read_stats, rec.meta.cgroup_path)
    stats = ContainerStats(
        attributes=ContainerAttributes(
            id=rec.meta.id, metadata=ContainerMetadata(name=rec.meta.name,
                                                       attempt=rec.meta.attempt),
            labels=dict(rec.meta.labels), annotations=dict(rec.meta.annotations)),
        cpu=CpuUsage(timestamp=st.timestamp, usage_core_nano_seconds=_u(st.cpu_usage_ns)),
        memory=MemoryUsage(timestamp=st.timestamp, working_set_bytes=_u(st.working_set),
                           usage_bytes=_u(st.memory_usage), rss_bytes=_u(st.rss),
                           page_faults=_u(st.page_faults),
                           major_page_faults=_u(st.major_page_faults)),
    )
    try:
        usage = await rt.imaged.snapshot_usage(rec.meta.snapshot_key, timeout=5)
        stats.writable_layer = FilesystemUsage(
            timestamp=st.timestamp,
            fs_id=FilesystemIdentifier(mountpoint=str(rt.settings.imaged.root)),
            used_bytes=_u(usage.bytes), inodes_used=_u(usage.inodes))
    except Exception:  # imaged down or snapshot gone: stats without the layer
        pass
    return stats


def _net_dev(pid: int) -> list[NetworkInterfaceUsage]:
    try:
        return _parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())
    except OSError:
        return []


_CLONE_NEWNET = 0x40000000  # <linux/sched.h>


def _read_net_dev_in(netns_path: str) -> str:
    """/proc/net/dev as seen from a network namespace file (a pod with no process to look
    through, e.g. no infra and no running container). Runs in a thread made for it:
    setns(2) moves only the calling thread, and a thread that failed to move back must
    never serve anything else, so it ends right after."""
    result: list[str] = []

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(target, _CLONE_NEWNET) != 0:
                    return
                try:
                    result.append(Path("/proc/thread-self/net/dev").read_text())
                finally:
                    libc.setns(own, _CLONE_NEWNET)
            finally:
                os.close(target)
        except OSError:
            pass
        finally:
            os.close(own)

    t = threading.Thread(target=work, name="crib-netns-stats", daemon=True)
    t.start()
    t.join(5)
    return result[0] if result else ""


def _parse_net_dev(text: str) -> list[NetworkInterfaceUsage]:
    """Interfaces of a /proc/net/dev text except loopback (the kubelet reports eth0)."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        name = name.strip()
        if name == "lo" or len(f) < 16:
            continue
        out.append(NetworkInterfaceUsage(name=name, rx_bytes=_u(int(f[0])),
                                         rx_errors=_u(int(f[2])), tx_bytes=_u(int(f[8])),
                                         tx_errors=_u(int(f[10]))))
    return out


async def sandbox_stats(rt: Runtime, rec: SandboxRecord) -> PodSandboxStats:
    st = await asyncio.to_thread(cgroups.read_stats, rec.meta.cgroup_parent)
    containers = [c for c in rt.pod_containers(rec.meta.id)
                  if c.status.state in ("created", "running", "exited")]
    cstats = list(await asyncio.gather(*(container_stats(rt, c) for c in containers)))
    linux = LinuxPodSandboxStats(
        cpu=CpuUsage(timestamp=st.timestamp, usage_core_nano_seconds=_u(st.cpu_usage_ns)),
        memory=MemoryUsage(timestamp=st.timestamp, working_set_bytes=_u(st.working_set),
                           usage_bytes=_u(st.memory_usage), rss_bytes=_u(st.rss),
                           page_faults=_u(st.page_faults),
                           major_page_faults=_u(st.major_page_faults)),
        process=ProcessUsage(timestamp=st.timestamp, process_count=_u(st.pids)),
        containers=cstats,
    )
    pids = [c.status.pid for c in containers if c.status.state == "running"]
    pids.append(rec.status.infra_pid)
    if not rec.meta.host_network:
        ifaces = []
        for pid in pids:
            ifaces = _net_dev(pid) if pid else []
            if ifaces:
                break
        if not ifaces and rec.meta.netns_path:
            ifaces = _parse_net_dev(await asyncio.to_thread(_read_net_dev_in,
                                                            rec.meta.netns_path))
        if ifaces:
            default = next((i for i in ifaces if i.name == "eth0"), ifaces[0])
            linux.network = NetworkUsage(timestamp=st.timestamp,
                                         default_interface=default, interfaces=ifaces)
    return PodSandboxStats(
        attributes=PodSandboxAttributes(id=rec.meta.id, metadata=_meta(rec),
                                        labels=dict(rec.meta.labels),
                                        annotations=dict(rec.meta.annotations)),
        linux=linux)


def labels_match(labels: dict[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())




def select(records: Iterable[_R], id_prefix: str = "",
           selector: Mapping[str, str] | None = None) -> list[_R]:
    """The records a CRI filter keeps: the ID by unique prefix, the labels by selector."""
    out = list(records)
    if id_prefix:
        out = [r for r in out if r.meta.id.startswith(id_prefix)]
    if selector:
        out = [r for r in out if labels_match(r.meta.labels, selector)]
    return out

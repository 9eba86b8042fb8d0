"""Pulling an image: resolve, fetch manifest(s) and config, download and unpack layers.

    reference -> manifest (or index -> manifest for the host platform) -> config
              -> layers: download (bounded, shared between pulls) -> unpack (thread,
                 shared) -> layer record
              -> image record (tags moved, repo digest added) in one transaction

Every blob is verified against its descriptor before it is stored (content store); every
layer against its diff_id while it is unpacked. Two pulls needing one blob or one layer
share the same task (containerd's `unpackDuplicationSuppressor`); downloads are bounded by
`max_concurrent_downloads` (its `downloadLimiter`). While a pull runs, the digests it
names are leased so garbage collection leaves them alone.

Every pull is a row of the pull table (`pulls.table`) from start to end, whoever asked;
its layers follow shared transfers there, so a layer two pulls need is fetched once and
its bytes show in both. A pull with a download under way and no byte arriving for
`image_pull_progress_timeout` seconds is cancelled by the table's ticker and fails with
DeadlineExceeded naming the stalled layers; there is no limit on a pull that moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import structlog

from crib_common.errors import CribError, DeadlineExceeded, InvalidArgument
from crib_common.models.imaged import PullRequester
from crib_common.settings import ImagedSection

from .oci.manifest import (
    INDEX_TYPES,
    LAYER_COMPRESSION,
    MANIFEST_TYPES,
    Descriptor,
    host_platform,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
)
from .oci.reference import Reference, parse_reference
from .pulls import Pull, PullTable, Transfer
from .registry.auth import Credentials
from .registry.client import RegistrySession
from .store.content import DigestMismatch
from .store.images import ImageStore
from .store.records import ImageLayer, ImageRecord, LayerRecord

__all__ = ["Puller"]

log = structlog.get_logger("imaged.pull")
T = TypeVar("T")

# Unpacking spends most of its time in file-creating syscalls (measured on ext4: ~0.5 ms
# per create, which overlaps across threads: 4 threads create 2.5x faster than one) and
# in zlib, both outside the GIL; so more threads than cores still pay.
UNPACK_THREADS = 4


class Puller:
    def __init__(self, store: ImageStore, settings: ImagedSection,
                 http: aiohttp.ClientSession, table: PullTable | None = None) -> None:
        self.store = store
        self.settings = settings
        self.http = http
        self.table = table or PullTable(settings.image_pull_progress_timeout)
        self.downloads = asyncio.Semaphore(settings.max_concurrent_downloads)
        self.unpacks = asyncio.Semaphore(UNPACK_THREADS)
        self._blob_tasks: dict[str, list[Any]] = {}
        self._layer_tasks: dict[str, list[Any]] = {}

    async def pull(self, raw_ref: str, creds: Credentials,
                   requester: PullRequester | None = None,
                   pull: Pull | None = None) -> ImageRecord:
        """Pull `raw_ref` as a row of the pull table (`pull` if the caller opened it, to
        watch it from the start); returns the stored image. Errors are CribErrors."""
        pull = pull or self.table.open(raw_ref, requester or PullRequester(kind="rest"))
        start = time.monotonic()
        leased: list[str] = []
        try:
            ref = parse_reference(raw_ref)
            pull.reference, pull.registry = str(ref), ref.domain
            pull.changed()
            log.info("pull started", image=str(ref), pull=pull.id,
                     requester=pull.requester.kind,
                     pod=pull.requester.pod.name if pull.requester.pod else None)
            session = RegistrySession(self.http, self.settings, ref, creds)
            try:
                async with asyncio.timeout(None) as deadline:
                    pull.deadline = deadline
                    img = await self._pull(ref, session, pull, leased)
            except TimeoutError:
                if not pull.stall:
                    raise
                raise DeadlineExceeded(pull.stall) from None
            finally:
                pull.deadline = None
        except BaseException as exc:
            self.table.finish(pull, error=exc)
            log.info("pull failed", image=pull.reference, pull=pull.id,
                     error=str(exc)[:500] or type(exc).__name__)
            self._release(leased)
            # What this pull stored and nothing references goes: a failed pull leaves
            # the store as it found it.
            await asyncio.shield(self.store.collect())
            raise
        self._release(leased)
        self.table.finish(pull, image_id=img.id)
        log.info("pull done", image=pull.reference, pull=pull.id, image_id=img.id,
                 seconds=round(time.monotonic() - start, 3))
        return img

    async def repair(self, image_id: str, creds: Credentials | None = None) -> bool:
        """Fetch again the blobs a stored image has marked missing (recovery found them
        gone), by pulling it once more by each digest it was pulled by; tags stay as they
        are. True once nothing is missing; a failure is logged and leaves the marks for
        the next pull (a private registry needs the kubelet's credentials)."""
        for ref in list(self.store.images[image_id].repo_digests
                        if image_id in self.store.images else []):
            img = self.store.images.get(image_id)
            if img is None or not img.missing:
                break
            try:
                await self.pull(ref, creds or Credentials(), PullRequester(kind="repair"))
            except CribError as exc:
                log.warning("repair failed", image=image_id, ref=ref, error=exc.message[:300])
        img = self.store.images.get(image_id)
        done = img is None or not img.missing
        if img is not None:
            log.info("image repaired" if done else "image still missing blobs",
                     image=image_id, missing=sorted(img.missing)[:3])
        return done

    def _release(self, leased: list[str]) -> None:
        for name in leased:
            self.store.leases[name] -= 1
            if self.store.leases[name] <= 0:
                del self.store.leases[name]
        leased.clear()

    def _lease(self, leased: list[str], *names: str) -> None:
        for name in names:
            self.store.leases[name] += 1
            leased.append(name)

    async def _pull(self, ref: Reference, session: RegistrySession, pull: Pull,
                    leased: list[str]) -> ImageRecord:
        raw, media_type, header_digest = await session.fetch_manifest(ref.object)
        top_digest = self._check_manifest_digest(ref, raw, header_digest)
        pull.digest = top_digest  # what `repo@digest` names: the index, if there is one
        pull.changed()
        content = [top_digest]
        self._lease(leased, top_digest)
        await _settled(self.store.content.put, top_digest, raw)
        manifest_digest = top_digest
        if media_type in INDEX_TYPES:
            entry = select_manifest(parse_index(raw, media_type), host_platform())
            raw, media_type, _ = await session.fetch_manifest(entry.digest)
            manifest_digest = _sha256(raw)
            if manifest_digest != entry.digest or len(raw) != entry.size:
                raise DigestMismatch(f"manifest {entry.digest} from the index does not "
                                     f"match its content ({manifest_digest}, {len(raw)} bytes)")
            self._lease(leased, manifest_digest)
            await _settled(self.store.content.put, manifest_digest, raw)
            content.append(manifest_digest)
        elif media_type not in MANIFEST_TYPES:
            raise InvalidArgument(f"unsupported manifest media type {media_type!r} for {ref}")
        manifest = parse_manifest(raw, media_type)
        self._lease(leased, manifest.config.digest)
        config_raw = await self._config(session, manifest.config)
        config = parse_config(config_raw)
        content.append(manifest.config.digest)
        diff_ids: list[str] = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(manifest.layers):
            raise InvalidArgument(f"image config names {len(diff_ids)} layers, the manifest "
                                  f"{len(manifest.layers)}")
        self._check_platform(config)
        self.table.set_layers(pull, [(desc.digest, desc.size) for desc in manifest.layers])
        for desc, diff_id in zip(manifest.layers, diff_ids):
            self._lease(leased, desc.digest, diff_id)
            content.append(desc.digest)
        tasks = [asyncio.ensure_future(self._ensure_layer(session, desc, diff_id, pull))
                 for desc, diff_id in zip(manifest.layers, diff_ids)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        layers = [ImageLayer(diff_id=d, digest=desc.digest, size=desc.size,
                             media_type=desc.media_type)
                  for desc, d in zip(manifest.layers, diff_ids)]
        record = ImageRecord(
            id=manifest.config.digest, manifest_digest=manifest_digest,
            content=sorted(set(content)), layers=layers,
            size=sum(lay.size for lay in layers) + manifest.config.size,
            config=config, created_at=time.time_ns(),
        )
        tag = str(ref) if ref.tag else None
        return await self.store.commit_image(record, tag, f"{ref.repository}@{top_digest}")

    @staticmethod
    def _check_manifest_digest(ref: Reference, raw: bytes, header_digest: str) -> str:
        actual = _sha256(raw)
        if ref.digest and ref.digest != actual:
            raise DigestMismatch(f"manifest of {ref} does not match its digest "
                                 f"(content is {actual})")
        if header_digest and header_digest.startswith("sha256:") and header_digest != actual:
            raise DigestMismatch(f"manifest of {ref}: registry says {header_digest}, "
                                 f"content is {actual}")
        return actual

    def _check_platform(self, config: dict[str, Any]) -> None:
        want = host_platform()
        os_, arch = config.get("os", ""), config.get("architecture", "")
        if os_ and os_ != want.os:
            raise InvalidArgument(f"image is for OS {os_!r}, this node runs {want.os}")
        if arch and arch != want.architecture:
            raise InvalidArgument(f"image is for architecture {arch!r}, this node runs "
                                  f"{want.architecture}")

    async def _config(self, session: RegistrySession, desc: Descriptor) -> bytes:
        if self.store.content.has(desc.digest):
            return await asyncio.to_thread(self.store.content.read, desc.digest)
        raw = await session.fetch_small_blob(desc)
        actual = _sha256(raw)
        if actual != desc.digest or len(raw) != desc.size:
            raise DigestMismatch(f"image config {desc.digest} does not match its content "
                                 f"({actual}, {len(raw)} bytes)")
        await _settled(self.store.content.put, desc.digest, raw)
        return raw

    # ---------------------------------------------------------------- layers
    async def _ensure_layer(self, session: RegistrySession, desc: Descriptor, diff_id: str,
                            pull: Pull) -> None:
        if self.store.layer_exists(diff_id):
            if not self.store.content.has(desc.digest):
                # Unpacked for a container whose image was removed, so its compressed
                # blob went with the image: fetch it again, or the image would name a
                # blob that is not there (issue 11: recovery then dropped it).
                tr = self.table.attach(pull, desc.digest)
                await _shared(self._blob_tasks, desc.digest,
                              lambda: self._download(session, desc, tr))
                self.table.layer_done(pull, desc.digest)
            else:
                self.table.layer_present(pull, desc.digest)
            return
        tr = self.table.attach(pull, desc.digest)
        await _shared(self._layer_tasks, diff_id,
                      lambda: self._unpack(session, desc, diff_id, tr))
        self.table.layer_done(pull, desc.digest)

    async def _unpack(self, session: RegistrySession, desc: Descriptor, diff_id: str,
                      tr: Transfer) -> None:
        if self.store.layer_exists(diff_id):
            return
        # The task may outlive the pull that started it: it holds its own lease.
        with self.store.lease(desc.digest, diff_id):
            await self._download_and_unpack(session, desc, diff_id, tr)

    async def _download_and_unpack(self, session: RegistrySession, desc: Descriptor,
                                   diff_id: str, tr: Transfer) -> None:
        await _shared(self._blob_tasks, desc.digest,
                      lambda: self._download(session, desc, tr))
        tr.state = "unpacking"
        compression = LAYER_COMPRESSION[desc.media_type]
        link = self.store.layers.new_link()
        blob = self.store.content.path_of(desc.digest)
        async with self.unpacks:
            started = time.monotonic()
            cancel = threading.Event()
            work = asyncio.ensure_future(asyncio.to_thread(
                self.store.layers.unpack, blob, compression, diff_id, link, cancel))
            try:
                stats = await asyncio.shield(work)
            except asyncio.CancelledError:
                # A thread cannot be interrupted: tell it to stop and wait, so no
                # directory appears behind the store's back after we return.
                cancel.set()
                try:
                    stats = await work
                except BaseException:
                    raise asyncio.CancelledError from None
                self.store.put_layer(LayerRecord(diff_id=diff_id, link=link, bytes=stats.bytes,
                                                 inodes=stats.inodes,
                                                 created_at=time.time_ns()))
                raise
        self.store.put_layer(LayerRecord(diff_id=diff_id, link=link, bytes=stats.bytes,
                                         inodes=stats.inodes, created_at=time.time_ns()))
        tr.state = "done"
        log.debug("layer unpacked", diff_id=diff_id, entries=stats.entries,
                  seconds=round(time.monotonic() - started, 3))

    async def _download(self, session: RegistrySession, desc: Descriptor,
                        tr: Transfer) -> None:
        if self.store.content.has(desc.digest):
            tr.done = desc.size
            return
        async with self.downloads:
            tr.state = "downloading"
            # A stall is counted from here: waiting for a slot is not one.
            tr.moved_at = asyncio.get_running_loop().time()

            def advance(n: int) -> None:
                # The only work per chunk: the table's ticker derives the rest.
                tr.done += n

            # A kept partial download (imaged killed mid-pull) is taken over; if the
            # spliced whole fails its digest, the blob is fetched once more from zero:
            # the kept bytes are trusted for nothing but saving a transfer.
            for fresh in (False, True):
                writer = await _settled(self.store.content.writer, desc.digest, desc.size,
                                        True, on_cancel=lambda w: w.abort())
                if fresh:
                    writer.reset()
                if writer.resumed:
                    log.info("download resumed", digest=desc.digest, bytes=writer.resumed,
                             size=desc.size)
                # Bytes kept from before count as done, not as downloaded (metrics).
                tr.done = tr.seen = writer.written
                tr.state = "downloading"
                try:
                    await session.fetch_blob(desc, writer, advance)
                except BaseException:
                    writer.abort()
                    raise
                spliced = writer.spliced
                tr.state = "verifying"
                try:
                    await _settled(writer.commit)
                    return
                except DigestMismatch:
                    if not spliced or fresh:
                        raise
                    log.warning("resumed download failed its digest; fetching it again",
                                digest=desc.digest)


async def _settled(fn: Callable[..., T], *args: Any,
                   on_cancel: Callable[[T], object] | None = None) -> T:
    """`fn(*args)` in a thread. A thread cannot be interrupted, so a cancel waits for it
    to finish (then `on_cancel` undoes what it made) before the cancel goes on: nothing it
    writes lands after the pull that started it has failed and collected its garbage."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({work})
        if on_cancel is not None and work.exception() is None:
            on_cancel(work.result())
        raise


async def _shared(tasks: dict[str, list[Any]], key: str,
                  make: Callable[[], Awaitable[None]]) -> None:
    """Run `make()` once per key at a time; other callers await the same task. A caller
    that gives up does not hurt the others; the last one to give up cancels the work and
    waits for it to wind down."""
    entry = tasks.get(key)
    if entry is None:
        async def run() -> None:
            try:
                await make()
            finally:
                tasks.pop(key, None)
        entry = [asyncio.ensure_future(run()), 0]
        tasks[key] = entry
    task: asyncio.Task[None] = entry[0]
    entry[1] += 1
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        entry[1] -= 1
        if entry[1] == 0 and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        raise
    entry[1] -= 1


def _sha256(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


"""Exits: how a container becomes "exited", and what follows.

The monitor writes `<exit-dir>/<id>` (and `<bundle>/persist/exit`) when the container's
process ends; `ExitWatcher` sees the file and calls `on_exit`:

    created | running ──(exit file, or a fallback code)──> exited
                                                              │
                            runtime state deleted in the background (release)

An exit file named after a pod is its infra's (catatonit or pause): the pod goes
ready -> notready, since it can no longer hold its namespaces. Exits that happened while
runtimed was down are found by recovery through the same `settle`.

A monitor can be lost (kill -9 of conmon): nothing would then write the exit file. Each
created or running container's monitor is watched (`watch`, a pidfd); when it ends
without an exit file, the container's own process is watched instead, and its end is
recorded as exit code 255 with reason MonitorLost (containerd does the same for a lost
shim). Its status message says that its log is no longer written.

    created | running ──monitor lost──> (message set) ──process ends──> exited (255)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from ..conmon.monitor import ExitWatcher, read_exit_file
from ..node import Node, now
from ..store.records import ContainerRecord

__all__ = ["Exits"]

log = structlog.get_logger("crib.runtimed")

LOST_REASON = "MonitorLost"
LOST_MESSAGE = ("the container's monitor (conmon) was lost: its output is no longer logged "
                "and its exit code is unknown")
# conmon writes the exit file before it exits; how long a watcher that saw it go waits
# for the file before calling the monitor lost.
EXIT_FILE_GRACE = 1.0


class Exits:
    """Records exits, wakes whoever waits for one, and releases the runtime's state."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.watcher = ExitWatcher(node.exit_dir, self.on_exit)
        self._exited: dict[str, asyncio.Event] = {}
        # Runtime deletes started when a container exited (see `release`).
        self._releases: dict[str, asyncio.Future[bool]] = {}
        # Per container: the task watching its monitor (then its process).
        self._watches: dict[str, asyncio.Task[None]] = {}
        node.on_drop.append(self._forget)

    def _forget(self, oid: str) -> None:
        self._exited.pop(oid, None)
        self._releases.pop(oid, None)
        watch = self._watches.pop(oid, None)
        if watch is not None:
            watch.cancel()

    async def start(self) -> None:
        await self.watcher.start()

    async def close(self) -> None:
        for watch in list(self._watches.values()):
            watch.cancel()
        await self.watcher.close()
        if self._releases:
            # Let runtime deletes under way finish; one cut short is done again by
            # RemoveContainer after the restart (it always deletes unless this one did).
            await asyncio.wait(list(self._releases.values()), timeout=10)

    def _event(self, cid: str) -> asyncio.Event:
        ev = self._exited.get(cid)
        if ev is None:
            ev = self._exited[cid] = asyncio.Event()
        return ev

    async def on_exit(self, oid: str) -> None:
        """The monitor wrote `<exit-dir>/<oid>`."""
        node = self.node
        rec = node.containers.get(oid)
        if rec is None:
            pod = node.sandboxes.get(oid)
            if pod is not None and pod.status.infra_pid and pod.status.state == "ready":
                # The PID namespace holder died: the pod cannot run new containers (CRI-O
                # marks the sandbox stopped when its infra exits).
                log.warning("sandbox infra exited", pod=oid)
                pod.status.state = "notready"
                node.put_sandbox(pod)
                node.emit(oid, "stopped", oid)
            return
        await self.settle(rec)

    async def settle(self, rec: ContainerRecord, fallback_code: int | None = None,
                     message: str = "", reason: str = "") -> bool:
        """Record the container's exit from the monitor's exit file, or `fallback_code`
        (with `reason`, if given) when there is none and one is given; True once exited."""
        node = self.node
        if rec.status.state in ("exited", "creating"):
            if rec.status.state == "exited":
                self._event(rec.meta.id).set()
            return rec.status.state == "exited"
        found = read_exit_file(node.exit_dir / rec.meta.id) or \
            read_exit_file(Path(rec.meta.bundle) / "persist" / "exit")
        if found is None:
            if fallback_code is None:
                return False
            found = (fallback_code, now())
        else:
            reason = ""
        code, finished = found
        oom = any((Path(rec.meta.bundle) / p).exists() for p in ("persist/oom", "oom")) or (
            code == 137 and node.host.oom_killed(rec.meta.cgroup_path))
        rec.status.state = "exited"
        rec.status.exit_code = code
        rec.status.finished_at = finished
        rec.status.reason = reason or (
            "OOMKilled" if oom else ("Completed" if code == 0 else "Error"))
        if message:
            rec.status.message = message
        node.put_container(rec)
        self._event(rec.meta.id).set()
        self.release(rec)
        log.info("container exited", container=rec.meta.id, exit_code=code,
                 reason=rec.status.reason)
        node.emit(rec.meta.id, "stopped")
        node.nri.container_exited(rec)  # NRI StopContainer for an exit of its own
        return True

    def watch(self, rec: ContainerRecord) -> None:
        """Watch the monitor of a created or running container (see the module doc)."""
        cid = rec.meta.id
        if cid in self._watches or rec.status.state not in ("created", "running"):
            return
        task = asyncio.ensure_future(self._watch(rec))
        self._watches[cid] = task
        task.add_done_callback(lambda t: self._watches.get(cid) is t and self._watches.pop(cid))

    async def _watch(self, rec: ContainerRecord) -> None:
        node = self.node
        if node.monitor.alive(rec.status.conmon_pid, rec.status.conmon_started):
            await node.monitor.wait(rec.status.conmon_pid)
        end = time.monotonic() + EXIT_FILE_GRACE
        while True:
            if rec.meta.id not in node.containers or await self.settle(rec):
                return
            if time.monotonic() >= end:
                break
            await asyncio.sleep(0.05)
        await self.monitor_lost(rec)

    async def monitor_lost(self, rec: ContainerRecord) -> None:
        """The monitor is gone and wrote no exit file: say so, wait for the container's
        own process, record its end as 255 (MonitorLost)."""
        node = self.node
        if rec.status.state not in ("created", "running"):
            return
        log.warning("container monitor lost", container=rec.meta.id,
                    conmon_pid=rec.status.conmon_pid, pid=rec.status.pid)
        if rec.status.message != LOST_MESSAGE:
            rec.status.message = LOST_MESSAGE
            node.put_container(rec)
        if rec.status.state == "running":
            # A created container's process only waits for a start that can no longer
            # be served: it ends now (the runtime delete at exit takes it).
            await node.monitor.wait(rec.status.pid)
        await self.settle(rec, fallback_code=255, message=LOST_MESSAGE, reason=LOST_REASON)

    def release(self, rec: ContainerRecord) -> None:
        """Delete an exited container's runtime state (and with it its cgroup) at once,
        in the background, as containerd deletes a task on its exit event: the status,
        exit code and logs are ours and stay; RemoveContainer and RemovePodSandbox then
        find the runtime's part done. Called after the exit (and OOM) are recorded."""
        rt = self.node.runtimes.get(rec.meta.handler)
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

    async def released(self, cid: str) -> bool:
        """Wait for the background delete of `cid`, if one was started; whether it
        succeeded (its failure is the caller's to retry, not to raise)."""
        release = self._releases.pop(cid, None)
        if release is None:
            return False
        await asyncio.wait({release})
        return not release.cancelled() and release.result()

    async def wait(self, rec: ContainerRecord, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the exit to be recorded; True once it is."""
        if await self.settle(rec):
            return True
        ev = self._event(rec.meta.id)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                async with asyncio.timeout(min(0.25, max(end - time.monotonic(), 0.01))):
                    await ev.wait()
                return True
            except TimeoutError:
                # inotify may be slower than the poll; check the file ourselves too.
                if await self.settle(rec):
                    return True
                monitor = self.node.monitor
                if rec.status.conmon_pid and not monitor.alive(rec.status.conmon_pid) \
                        and not monitor.alive(rec.status.pid):
                    # Monitor and process both gone, no exit file: the monitor was lost.
                    return await self.settle(rec, fallback_code=255, message=LOST_MESSAGE,
                                             reason=LOST_REASON)
        return await self.settle(rec)

"""Plugin processes a killed netd left running.

A plugin is a child of netd, but SIGKILL of netd does not kill it: a bridge ADD cut loose
from its parent goes on allocating an address. Rolling back that attachment while the
orphan still runs could release the address *before* the orphan records it, and leak it.
So before settling a half-done attachment at start, netd waits for the plugins still
working on it (recognised by their `CNI_CONTAINERID` and `CNI_NETNS` environment, which
the CNI protocol gives every plugin), and kills them when they outlive the wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

__all__ = ["plugin_pids", "wait_for_plugins"]


def plugin_pids(container_id: str, netns: str) -> list[int]:
    """PIDs of processes whose environment says they are CNI plugins working on this
    attachment (CNI_NETNS equal to `netns`, or unset as on a DEL without namespace)."""
    want_id = f"CNI_CONTAINERID={container_id}".encode()
    want_ns = f"CNI_NETNS={netns}".encode()
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue  # exited, or a kernel thread
        if want_id not in env:
            continue
        ns = [item for item in env if item.startswith(b"CNI_NETNS=")]
        if not ns or want_ns in ns:
            found.append(int(entry.name))
    return found


async def wait_for_plugins(container_id: str, netns: str, timeout: float) -> list[int]:
    """Wait until no plugin works on the attachment; SIGKILL those left after `timeout`.
    Returns the PIDs that had to be killed."""
    deadline = time.monotonic() + timeout
    while True:
        pids = await asyncio.to_thread(plugin_pids, container_id, netns)
        if not pids:
            return []
        if time.monotonic() >= deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return pids
        await asyncio.sleep(0.05)

"""What one reading of a cgroup holds, the same for v1 and v2, and the small parsers both
readers share. Every counter is what the kernel reported, converted to bytes and
nanoseconds; a file the kernel does not have reads as 0."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupStats", "IoDeviceStats", "flat_keyed", "read_int", "read_text"]


@dataclass
class IoDeviceStats:
    """Block I/O of one device (v2 io.stat; v1 blkio.throttle.io_service*_recursive)."""

    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass
class CgroupStats:
    """One reading of a cgroup. The first nine fields are the ones the CRI stats RPCs
    have always used (positional, kept for compatibility); the rest feed the cAdvisor
    metrics (`runtimed.metrics`)."""

    timestamp: int
    cpu_usage_ns: int
    memory_usage: int
    # Usage minus inactive file pages, never below 0: the kubelet's eviction signal
    # (cAdvisor setMemoryStats, the kubelet's summary working_set_bytes).
    working_set: int
    rss: int
    page_faults: int
    major_page_faults: int
    pids: int
    exists: bool
    version: int = 1
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_ns: int = 0
    memory_cache: int = 0
    memory_kernel: int = 0
    memory_mapped_file: int = 0
    memory_swap: int = 0
    # Times usage hit the limit: v1 memory.failcnt, v2 memory.events `max`.
    memory_failcnt: int = 0
    # Highest usage seen: v1 memory.max_usage_in_bytes, v2 memory.peak (Linux >= 5.19).
    memory_max_usage: int = 0
    oom_kills: int = 0
    # Processes (lines of cgroup.procs); `pids` counts tasks, i.e. threads.
    processes: int = 0
    # pids.max, 0 when unlimited ("max").
    pids_max: int = 0
    io: list[IoDeviceStats] = field(default_factory=list)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_int(path: Path) -> int:
    """A single-value file; "max" and anything unreadable read as 0."""
    try:
        return int(read_text(path).strip())
    except ValueError:
        return 0


def flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (cgroup-v2.rst "Interface Files", flat keyed; also v1's
    memory.stat and cpu.stat)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value.strip())
        except ValueError:
            continue
    return out

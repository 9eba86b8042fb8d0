"""crib-node's pieces that need no daemon: backoff, pid files, and which process it adopts
(the whole launcher runs in tests/integration/runtimed/test_node_launcher.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_RICH = sys.modules.get("rich")
from crib_cli import node_supervisor as ns  # noqa: E402

# crib-node, as each daemon's __main__, keeps rich out of its process (sys.modules["rich"]
# = None, issue 14); the CLI's own tests in this process draw with it.
if _RICH is not None or sys.modules.get("rich", 0) is None:
    if _RICH is None:
        del sys.modules["rich"]
    else:
        sys.modules["rich"] = _RICH


def test_restart_delay_is_immediate_then_backs_off_to_a_cap() -> None:
    assert ns.restart_delay(0) == 0.0
    assert ns.restart_delay(1) == 0.0  # one crash: forked again at once
    delays = [ns.restart_delay(n) for n in range(2, 12)]
    assert delays[0] == ns.BACKOFF_FIRST
    assert delays == sorted(delays) and delays[1] == 2 * delays[0]
    assert max(delays) == ns.BACKOFF_MAX


def test_pid_files_are_written_whole_and_removed_only_when_they_still_name_the_pid(
    tmp_path: Path,
) -> None:
    assert ns.pid_of(tmp_path, "imaged") == 0
    ns._write_pid(tmp_path, "imaged", 4242)
    assert (tmp_path / "imaged.pid").read_text() == "4242\n"
    assert ns.pid_of(tmp_path, "imaged") == 4242
    assert not list(tmp_path.glob(".*.tmp"))
    ns._remove_pid(tmp_path, "imaged", 1111)  # rewritten by a restart meanwhile: kept
    assert ns.pid_of(tmp_path, "imaged") == 4242
    ns._remove_pid(tmp_path, "imaged", 4242)
    assert not (tmp_path / "imaged.pid").exists()
    (tmp_path / "netd.pid").write_text("garbage\n")
    assert ns.pid_of(tmp_path, "netd") == 0


def _fork_named(name: str) -> int:
    """A child that names itself as crib-node names a daemon, then sleeps."""
    pid = os.fork()
    if pid == 0:
        try:
            ns._set_comm(name)
            time.sleep(30)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 5
    while ns.comm_of(pid) != name and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def test_only_a_live_process_named_for_the_daemon_is_adopted() -> None:
    # This test process is not crib-netd: a pid file naming a reused pid adopts nothing.
    assert ns._pidfd_of(os.getpid(), "netd") == -1
    assert ns._pidfd_of(2**22 + 1, "netd") == -1  # no such pid
    pid = _fork_named("crib-netd")
    try:
        assert ns._pidfd_of(pid, "imaged") == -1
        fd = ns._pidfd_of(pid, "netd")
        assert fd >= 0 and not ns._readable(fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert ns._readable(fd)  # the pidfd reports the exit crib-node waits for
        os.close(fd)
        assert ns.comm_of(pid) == ""
    finally:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _fresh(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; the words it printed."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_preload_loads_every_daemon_without_a_thread() -> None:
    # In a fresh interpreter: this test process may hold threads of earlier tests.
    code = ("import sys; from crib_cli import node_supervisor as ns; ns.preload(); "
            "missing = [m for m in ns.MAINS.values() if m not in sys.modules]; "
            "print('missing', missing) if missing else print('ok')")
    assert _fresh(code) == ["ok"]


def test_library_pages_are_dropped_and_the_process_still_runs() -> None:
    # In a fresh interpreter, as crib-node after its imports: the library pages it mapped
    # leave its PSS, and what it runs next (code in those libraries) works unchanged.
    code = (
        "import hashlib, json; from crib_cli import node_memory as nm, node_supervisor as ns\n"
        "ns.preload()\n"
        "def file_pss():\n"
        "    for line in open('/proc/self/smaps_rollup'):\n"
        "        if line.startswith('Pss_File:'): return int(line.split()[1])\n"
        "before = file_pss(); nm.drop_file_pages(); after = file_pss()\n"
        "digest = hashlib.sha256(json.dumps({'a': 1}).encode()).hexdigest()\n"
        "print(before, after, digest[:8])\n"
    )
    before, after, digest = out = _fresh(code)
    assert int(after) < int(before) / 2, out
    assert digest == "f9d86028"  # sha256 of {"a": 1}, computed with the pages dropped


def test_free_blocks_are_plugged_before_forking() -> None:
    # In a fresh interpreter, as crib-node before it forks: holes made on purpose in the
    # small-object pools and in malloc's heap are taken, and the process still runs.
    code = (
        "import ctypes, gc, json; from crib_cli import node_memory as nm\n"
        "gc.disable()\n"
        "small = [{'k': i} for i in range(40000)]; del small[::2]\n"
        "big = [bytes(4000 + i) for i in range(2000)]; del big[::2]\n"
        "gc.freeze(); gc.enable(); gc.collect()\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = nm._MallInfo2\n"
        "def heap_free():\n"
        "    info = libc.mallinfo2(); return info.fordblks - info.keepcost\n"
        "before = sum(nm.free_small_blocks().values()); nm.trim_heap(); heap_before = heap_free()\n"
        "nm.plug_free_blocks()\n"
        "left = nm.free_small_blocks(); heap_after = heap_free()\n"
        "worst = max(count * size for size, count in left.items())\n"
        "check = json.loads(json.dumps([{'k': i} for i in range(10000)]))[-1]['k']\n"
        "print(before, worst, heap_before, heap_after, check)\n"
    )
    out = _fresh(code)
    before, worst, heap_before, heap_after, check = map(int, out)
    assert before > 10000, out  # the holes were there and were seen
    assert worst <= 16 * 1024, out  # at most one pool's worth free in any size
    assert heap_before > 1_000_000 and heap_after < 64 * 1024, out
    assert check == 9999

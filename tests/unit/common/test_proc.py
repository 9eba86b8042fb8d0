"""crib_common.proc: children started with vfork, awaited through a pidfd."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from crib_common import proc


def _zombies_of_ours() -> list[int]:
    """Children of this process that have exited and not been reaped."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            found.append(int(entry.name))
    return found


async def test_output_status_and_environment() -> None:
    done = await proc.run(["sh", "-c", "echo out; echo err >&2; echo $CRIB_X; exit 3"],
                          timeout=10, env={"CRIB_X": "from-env", "PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\nfrom-env\n", b"err\n")


async def test_input_reaches_stdin_and_unread_input_is_no_error() -> None:
    data = os.urandom(3 << 20)
    done = await proc.run(["cat"], timeout=10, input=data)
    assert done.stdout == data and done.returncode == 0
    # A child that never reads its (large) input must not fail or hang the call.
    done = await proc.run(["true"], timeout=10, input=data)
    assert done.returncode == 0


async def test_large_output_on_both_streams_is_intact() -> None:
    done = await proc.run(["sh", "-c", "head -c 5000000 /dev/zero; head -c 4000000 /dev/zero >&2"],
                          timeout=20)
    assert len(done.stdout) == 5_000_000 and len(done.stderr) == 4_000_000


async def test_cap_keeps_the_first_bytes_and_drains_the_rest() -> None:
    done = await proc.run(["head", "-c", "2000000", "/dev/zero"], timeout=10, cap=1000)
    assert done.stdout == b"\0" * 1000 and done.returncode == 0


async def test_killed_by_a_signal_is_a_negative_status() -> None:
    done = await proc.run(["sh", "-c", "kill -TERM $$"], timeout=10)
    assert done.returncode == -signal.SIGTERM


async def test_timeout_kills_and_reaps() -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await proc.run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert _zombies_of_ours() == []


async def test_cancel_kills_and_reaps() -> None:
    task = asyncio.ensure_future(proc.run(["sleep", "30"], timeout=None))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _zombies_of_ours() == []


async def test_missing_binary_raises_at_start() -> None:
    with pytest.raises(FileNotFoundError):
        await proc.run(["/nonexistent/crib-binary"], timeout=5)


async def test_child_wait_and_pass_fds() -> None:
    r, w = os.pipe()
    try:
        # (sh's redirections take one-digit descriptors only; w may be larger.)
        child = proc.Child([sys.executable, "-c", f"import os; os.write({w}, b'hello\\n')"],
                           stdout=proc.DEVNULL,
                           stderr=proc.DEVNULL, pass_fds=[w])
    finally:
        os.close(w)
    try:
        assert await child.wait() == 0
        os.set_blocking(r, False)
        assert await proc.read_fd(r) == b"hello\n"
    finally:
        os.close(r)
    assert child.returncode == 0
    assert await child.wait() == 0  # again: the status is kept

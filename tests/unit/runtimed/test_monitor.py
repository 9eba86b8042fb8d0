"""conmon helpers: argv, exit files, the inotify exit watcher, the control FIFO."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from crib_common.errors import FailedPrecondition
from runtimed.conmon.monitor import (
    ConmonSpec,
    ExitWatcher,
    control,
    process_alive,
    process_start_time,
    read_exit_file,
)


def test_argv_has_the_monitoring_contract(tmp_path: Path) -> None:
    spec = ConmonSpec(conmon="/usr/bin/conmon", cid="c1", name="n", runtime_path="/usr/sbin/runc",
                      runtime_args=["--root=/r"], bundle=tmp_path, log_path="/l/c.log",
                      exit_dir=tmp_path / "exits", socket_dir=tmp_path / "s", tty=True,
                      stdin=True, stdin_once=False, log_size_max=1000)
    argv = spec.argv()
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["-l"] == "k8s-file:/l/c.log"
    assert pairs["--exit-dir"] == str(tmp_path / "exits")
    assert pairs["--persist-dir"] == str(tmp_path / "persist")
    assert pairs["-p"] == str(tmp_path / "pidfile")
    assert pairs["-P"] == str(tmp_path / "conmon.pid")
    assert pairs["--runtime-arg"] == "--root=/r"
    assert pairs["--log-size-max"] == "1000"
    assert "-t" in argv and "-i" in argv and "--leave-stdin-open" in argv


def test_read_exit_file(tmp_path: Path) -> None:
    assert read_exit_file(tmp_path / "none") is None
    (tmp_path / "empty").write_text("")
    assert read_exit_file(tmp_path / "empty") is None
    (tmp_path / "c").write_text("137")
    code, when = read_exit_file(tmp_path / "c")  # type: ignore[misc]
    assert code == 137 and when > 0


def test_process_identity() -> None:
    assert process_alive(os.getpid())
    assert process_start_time(os.getpid()) > 0
    assert not process_alive(0)
    assert process_start_time(2 ** 22 + 12345) == 0


async def test_exit_watcher_sees_new_and_existing_files(tmp_path: Path) -> None:
    seen: list[str] = []
    got = asyncio.Event()

    async def on_exit(cid: str) -> None:
        seen.append(cid)
        got.set()

    exits = tmp_path / "exits"
    exits.mkdir()
    (exits / "old").write_text("0")
    watcher = ExitWatcher(exits, on_exit, sweep_interval=0.2)
    await watcher.start()
    try:
        assert watcher.sweep() == ["old"]
        (exits / "new").write_text("3")
        await asyncio.wait_for(got.wait(), 2)
        assert "new" in seen
        # The slow sweep also reports files it has not dispatched yet.
        await asyncio.sleep(0.5)
        assert "old" in seen
    finally:
        await watcher.close()


async def test_exit_watcher_retries_a_failing_handler(tmp_path: Path) -> None:
    calls: list[str] = []

    async def flaky(cid: str) -> None:
        calls.append(cid)
        if len(calls) == 1:
            raise RuntimeError("runtime hiccup")

    watcher = ExitWatcher(tmp_path, flaky, sweep_interval=60)
    await watcher.start()
    try:
        (tmp_path / "x").write_text("1")
        for _ in range(40):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.05)
        assert calls[:2] == ["x", "x"]
    finally:
        await watcher.close()


def test_control_fifo(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition):
        control(tmp_path, 2)
    os.mkfifo(tmp_path / "ctl")
    with pytest.raises(FailedPrecondition):
        control(tmp_path, 2)  # nobody reading: conmon is gone
    fd = os.open(tmp_path / "ctl", os.O_RDONLY | os.O_NONBLOCK)
    try:
        control(tmp_path, 2)
        assert os.read(fd, 100) == b"2 0 0\n"
    finally:
        os.close(fd)

"""The stack under crib-node (issue 14): the four daemons forked from one parent serve the
CRI as the per-process stack does; each daemon killed with SIGKILL is forked again; a
crib-node killed with SIGKILL leaves the daemons serving and a new one adopts them without
twins; SIGTERM to crib-node stops the daemons, leaves no process of its own nor socket
behind, and leaves the containers running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.support.stack import SERVICES, Stack, process_alive, wait_gone

from .conftest import Cri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    # Overrides conftest's per-process stack for this module: `cri` and `image` use it.
    with Stack.running(launcher="node") as stack:
        yield stack


def _daemons_of(stack: Stack) -> dict[str, list[int]]:
    """Every live crib-<daemon> process of this stack, by name, found by /proc scan (not by
    pid file): the daemons inherit crib-node's environment, which names the stack's config."""
    needle = f"CRIB_CONFIG={stack.root}/crib.toml".encode()
    found: dict[str, list[int]] = {s: [] for s in SERVICES}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        name = comm.removeprefix("crib-")
        if name in found and needle in env and process_alive(int(entry.name)):
            found[name].append(int(entry.name))
    return found


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_pod_lifecycle_under_crib_node(crib: Stack, cri: Cri, image: str) -> None:
    assert crib.node is not None
    for svc in SERVICES:
        pid = crib.daemon_pid(svc)
        # Forked by crib-node, named as the console script would be, one of each.
        assert _parent_of(pid) == crib.node.pid
        assert Path(f"/proc/{pid}/comm").read_text().strip() == f"crib-{svc}"
    assert {k: len(v) for k, v in _daemons_of(crib).items()} == {s: 1 for s in SERVICES}
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "echo", command=["sh", "-c"], args=["echo hi; exit 3"])
    cri.start(cid)
    st = cri.wait_exit(cid)
    assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 3)
    cri.remove_pod(sid)
    assert not cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items


def test_kill9_of_each_daemon_is_forked_again(crib: Stack, cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    keeper = cri.create(sid, pod, image, "keeper", command=["sleep", "300"])
    cri.start(keeper)
    times: dict[str, float] = {}
    for svc in SERVICES:
        old = crib.daemon_pid(svc)
        started = time.monotonic()
        crib.kill(svc)  # SIGKILL, waits until it is gone
        new = crib.wait_forked(svc, old)
        times[svc] = time.monotonic() - started
        assert new != old and not process_alive(old)
        assert _parent_of(new) == crib.node.pid  # type: ignore[union-attr]
    print("\nkill -9 to socket answering again, s:",
          {k: round(v, 3) for k, v in times.items()})
    cri.reconnect()
    # The container kept running through every daemon's death, and is still managed.
    assert cri.status(keeper).state == api_pb2.CONTAINER_RUNNING
    assert {k: len(v) for k, v in _daemons_of(crib).items()} == {s: 1 for s in SERVICES}
    cri.remove_pod(sid)


def test_crib_restart_under_crib_node(crib: Stack) -> None:
    old = crib.daemon_pid("imaged")
    out = subprocess.run(
        [sys.executable, "-m", "crib_cli", "restart", "imaged", "--kill", "--timeout", "30",
         "--pid-dir", str(crib.pid_dir), "--log-dir", str(crib.root)],
        env=crib.env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    new = crib.daemon_pid("imaged")
    assert "forked again by crib-node" in out.stdout and str(new) in out.stdout
    assert new != old and not process_alive(old)
    # Not a twin started by the CLI beside the one crib-node forked.
    assert _daemons_of(crib)["imaged"] == [new]
    assert _parent_of(new) == crib.node.pid  # type: ignore[union-attr]


def test_kill9_of_crib_node_leaves_daemons_and_a_new_one_adopts(
    crib: Stack, cri: Cri, image: str
) -> None:
    first = crib.node
    assert first is not None
    before = {svc: crib.daemon_pid(svc) for svc in SERVICES}
    first.kill()
    first.wait(timeout=10)
    time.sleep(0.5)
    assert all(process_alive(pid) for pid in before.values())
    cri.reconnect()
    sid, pod = cri.run_pod()  # the orphaned daemons still serve the whole path
    assert cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid)).status.state == api_pb2.SANDBOX_READY

    crib.start_node()
    second = crib.node
    assert second is not None and second.pid != first.pid
    time.sleep(1.0)  # long enough for a twin to show up, were one forked
    assert {svc: crib.daemon_pid(svc) for svc in SERVICES} == before
    assert _daemons_of(crib) == {svc: [pid] for svc, pid in before.items()}
    # An adopted daemon that dies is forked again by the new crib-node, as its own child.
    crib.kill("runtimed")
    new = crib.wait_forked("runtimed", before["runtimed"])
    assert _parent_of(new) == second.pid
    cri.reconnect()
    cri.remove_pod(sid)
    assert not cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items


def test_sigterm_to_crib_node_stops_its_daemons_and_leaves_containers(
    crib: Stack, cri: Cri, image: str
) -> None:
    node = crib.node
    assert node is not None
    sid, pod = cri.run_pod()
    keeper = cri.create(sid, pod, image, "keeper", command=["sleep", "300"])
    cri.start(keeper)
    conmons = _conmons(crib)
    assert conmons  # the container's (and the infra's, when it has its own)
    pids = {svc: crib.daemon_pid(svc) for svc in SERVICES}
    sockets = [crib.cri_socket, *(crib.socket(s) for s in SERVICES)]
    assert all(s.exists() for s in sockets)
    node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=30) == 0
    for svc, pid in pids.items():
        assert wait_gone(pid, 5.0), f"crib-{svc} (pid {pid}) outlived crib-node's SIGTERM"
    assert _daemons_of(crib) == {s: [] for s in SERVICES}
    assert [s for s in sockets if s.exists()] == []
    assert sorted(p.name for p in crib.pid_dir.glob("*.pid")) == []
    crib.node = None
    # Nothing crib-node started is left (its command line names the stack's pid dir)...
    assert not [p for p in _live_pids() if str(crib.pid_dir).encode() in _cmdline(p)]
    # ...but the container is: conmon outlives the daemons as it outlives runtimed.
    assert all(process_alive(pid) for pid in conmons)
    # (the module's fixture kills it with the rest of the stack)


def _live_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and process_alive(int(p))]


def _conmons(stack: Stack) -> list[int]:
    return [p for p in _live_pids() if _cmdline(p).split(b"\0")[0].endswith(b"conmon")
            and f"{stack.root}/".encode() in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""

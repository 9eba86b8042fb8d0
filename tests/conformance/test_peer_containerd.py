"""crib and Debian's containerd answer the runtime-level CRI calls with the same contract.

Also the smoke test of `bench.peer_containerd`, which the benchmarks build on: it starts a
private containerd with its CRI plugin, and stopping it leaves nothing behind.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")
from cri_api.v1 import api_pb2  # noqa: E402

from bench.harness import runtime_stub  # noqa: E402
from bench.peer_containerd import BRIDGE, PeerContainerd  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerContainerd]:
    if not Path("/usr/bin/containerd").exists():
        pytest.skip("Debian's containerd is not installed")
    with PeerContainerd() as p:
        yield p
    assert not p.dir.exists(), "peer_containerd left its directory"


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    with Stack.running(("runtimed", "gateway")) as s:
        yield s


def test_version_contract_matches_containerd(peer: PeerContainerd, crib: Stack) -> None:
    theirs = runtime_stub(peer.cri_socket).Version(api_pb2.VersionRequest(), timeout=10)
    ours = runtime_stub(crib.cri_socket).Version(api_pb2.VersionRequest(), timeout=10)
    assert theirs.runtime_name == "containerd"
    # The kubelet checks these two; both runtimes must give the same.
    assert ours.version == theirs.version == "0.1.0"
    assert ours.runtime_api_version == theirs.runtime_api_version == "v1"
    assert ours.runtime_name == "crib" and ours.runtime_version


def test_status_contract_matches_containerd(peer: PeerContainerd, crib: Stack) -> None:
    theirs = runtime_stub(peer.cri_socket).Status(api_pb2.StatusRequest(), timeout=10)
    ours = runtime_stub(crib.cri_socket).Status(api_pb2.StatusRequest(), timeout=10)
    kinds = {c.type for c in theirs.status.conditions}
    assert kinds == {"RuntimeReady", "NetworkReady"}
    assert {c.type for c in ours.status.conditions} == kinds
    # A condition that is false carries a reason, as containerd's do.
    for cond in ours.status.conditions:
        assert cond.status or cond.reason


def test_peer_uses_its_own_private_config(peer: PeerContainerd) -> None:
    reply = runtime_stub(peer.cri_socket).Status(api_pb2.StatusRequest(verbose=True),
                                                 timeout=10)
    import json

    config = json.loads(reply.info["config"])
    assert config["containerd"]["snapshotter"] == "overlayfs"
    assert config["containerd"]["defaultRuntimeName"] == "runc"
    assert set(config["containerd"]["runtimes"]) == {"runc", "crun"}
    assert config["cni"]["binDir"] == "/usr/lib/cni"
    assert config["cni"]["confDir"].startswith(str(peer.dir))
    assert config["registry"]["configPath"].startswith(str(peer.dir))
    assert config["containerdRootDir"].startswith(str(peer.dir))


def test_stop_leaves_no_process_bridge_or_directory() -> None:
    if not Path("/usr/bin/containerd").exists():
        pytest.skip("Debian's containerd is not installed")
    p = PeerContainerd().start()
    assert p.proc is not None
    pid = p.proc.pid
    p.stop()
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert not p.dir.exists()
    links = subprocess.run(["ip", "-o", "link", "show", BRIDGE], capture_output=True)
    assert links.returncode != 0, "the peer's bridge is still there"
    assert not any(str(p.dir) in line for line in Path("/proc/self/mounts").read_text()
                   .splitlines())


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_harness_measures_and_reports(crib: Stack) -> None:
    from bench.harness import Row, Stats, measure, report

    stub = runtime_stub(crib.cri_socket)
    stats = measure(lambda: stub.Version(api_pb2.VersionRequest(), timeout=10), 50, warmup=5)
    assert stats.n == 50 and 0 < stats.min <= stats.p50 <= stats.p90 <= stats.max
    fixed = Stats.of([0.001, 0.002, 0.003, 0.004])
    assert (fixed.p50, fixed.p90) == (2.0, 4.0)
    table = report([Row("Version", stats, fixed)], title="t")
    assert "Version" in table and "x" in table.splitlines()[3]
    assert table.startswith("t")

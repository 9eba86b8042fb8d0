"""NRI against the real stack (runc, conmon, CNI): test plugins (tests/support/nri_plugin.py)
on the stack's own NRI socket see every event in index order, adjust containers, fail and
hang, and are synchronised with what exists and what is being created."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from crib_common.nri import v1alpha1 as nri
from tests.support.images import wait_until
from tests.support.nri_plugin import PluginFailure, TestPlugin, ThreadedPlugin, mask
from tests.support.stack import Stack

from .conftest import Cri, unix_get_json

pytestmark = pytest.mark.integration

ALL = mask("RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "CreateContainer",
           "PostCreateContainer", "StartContainer", "PostStartContainer", "UpdateContainer",
           "PostUpdateContainer", "StopContainer", "RemoveContainer", "UpdatePodSandbox",
           "PostUpdatePodSandbox")
REQUEST_TIMEOUT = 1.5


# A CDI spec the stack reads (its own spec directory), for plugins injecting CDI devices.
CDI_SPEC = {
    "cdiVersion": "0.6.0", "kind": "crib.test/dev",
    "devices": [{"name": "null", "containerEdits": {
        "env": ["CDI_OK=yes"],
        "deviceNodes": [{"path": "/dev/crib-null", "hostPath": "/dev/null"}]}}],
}


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    stack = Stack.create(CRIB_RUNTIMED__NRI__REQUEST_TIMEOUT=str(REQUEST_TIMEOUT),
                         CRIB_RUNTIMED__NRI__REGISTRATION_TIMEOUT="2")
    try:
        (stack.root / "cdi").mkdir()
        (stack.root / "cdi" / "crib.json").write_text(json.dumps(CDI_SPEC))
        stack.extra_env["CRIB_RUNTIMED__NRI__CDI_SPEC_DIRS"] = json.dumps(
            [str(stack.root / "cdi")])
        stack.start()
        yield stack
    finally:
        stack.cleanup()


@pytest.fixture
def plugins(crib: Stack) -> Iterator[list[ThreadedPlugin]]:
    """Plugins a test starts; all stopped afterwards, and gone from runtimed's list."""
    started: list[ThreadedPlugin] = []
    yield started
    for p in started:
        p.stop()
    assert wait_until(lambda: not _listed(crib), timeout=10)


def _listed(stack: Stack) -> list[str]:
    return [p["id"] for p in unix_get_json(stack.socket("runtimed"), "/v1/nri/plugins")["plugins"]]


def _start(stack: Stack, started: list[ThreadedPlugin], name: str, index: str,
           events: int = ALL, log: list[Any] | None = None, **kw: Any) -> TestPlugin:
    plugin = TestPlugin(stack.root / "nri.sock", name, index, events, log, **kw)
    threaded = ThreadedPlugin(plugin)
    started.append(threaded)
    threaded.start()
    assert wait_until(lambda: f"{index}-{name}" in _listed(stack), timeout=10)
    return plugin


def _events(log: list[Any], plugin: str) -> list[str]:
    return [m for p, m, _ in log if p == plugin and m not in ("Configure", "Synchronize")]


def _exec(cri: Cri, cid: str, cmd: list[str]) -> str:
    resp = cri.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=10),
                           timeout=20)
    assert resp.exit_code == 0, resp.stderr
    return resp.stdout.decode()


def _metric(stack: Stack, name: str) -> str:
    import http.client
    import socket

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(str(stack.socket("runtimed")))

    conn = _Conn("crib")
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_every_event_in_index_order_with_adjustments(cri: Cri, image: str, crib: Stack,
                                                     plugins: list[ThreadedPlugin],
                                                     tmp_path: Path) -> None:
    host_dir = tmp_path / "nri-mount"
    host_dir.mkdir()
    (host_dir / "hello").write_text("from the plugin\n")

    def adjust(req: nri.CreateContainerRequest) -> nri.CreateContainerResponse:
        return nri.CreateContainerResponse(adjust=nri.ContainerAdjustment(
            env=[nri.KeyValue(key="NRI_FOO", value="bar")],
            mounts=[nri.Mount(destination="/nri-mnt", type="bind", source=str(host_dir),
                              options=["rbind", "ro"])]))

    log: list[Any] = []
    # Started in reverse index order: runtimed calls them in index order anyway.
    _start(crib, plugins, "second", "10", log=log,
           replies={"CreateContainer": lambda req: nri.CreateContainerResponse(
               adjust=nri.ContainerAdjustment(
                   annotations={"nri.test/second": "yes"},
                   cdi_devices=[nri.CdiDevice(name="crib.test/dev=null")]))})
    _start(crib, plugins, "first", "05", log=log, replies={"CreateContainer": adjust})
    assert _listed(crib) == ["05-first", "10-second"]
    # `crib status` reads them from CRI Status' verbose info (runtimed's /healthz).
    from crib_cli.commands.node import nri_lines

    info = cri.rt.Status(api_pb2.StatusRequest(verbose=True), timeout=10).info["runtimed"]
    lines = nri_lines(info)
    assert lines[0] == f"nri: {crib.root / 'nri.sock'}, 2 plugin(s)"
    assert [line.split()[0] for line in lines[1:]] == ["05-first", "10-second"]

    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
    cri.start(cid)
    assert _exec(cri, cid, ["sh", "-c", "echo $NRI_FOO; cat /nri-mnt/hello"]) == \
        "bar\nfrom the plugin\n"
    # The CDI device the second plugin injected: its env and its device node.
    assert _exec(cri, cid, ["sh", "-c", "echo $CDI_OK; test -c /dev/crib-null && "
                            "echo x > /dev/crib-null && echo node"]) == "yes\nnode\n"
    cri.rt.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(cpu_shares=256)), timeout=30)
    cri.rt.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sid, resources=api_pb2.LinuxContainerResources(cpu_shares=512)),
        timeout=30)
    cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    cri.remove_pod(sid)

    expected = ["RunPodSandbox", "CreateContainer", "PostCreateContainer", "StartContainer",
                "PostStartContainer", "UpdateContainer", "PostUpdateContainer",
                "UpdatePodSandbox", "PostUpdatePodSandbox",
                "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"]
    assert wait_until(lambda: len(_events(log, "second")) >= len(expected), timeout=10)
    assert _events(log, "first") == expected
    assert _events(log, "second") == expected
    # Each event reached 05-first before 10-second.
    ordered = [(p, m) for p, m, _ in log if m in expected]
    for method in expected:
        assert ordered.index(("first", method)) < ordered.index(("second", method))
    # The second plugin's PostCreateContainer shows every plugin's adjustments.
    post = next(r for p, m, r in log if p == "second" and m == "PostCreateContainer")
    assert "NRI_FOO=bar" in post.container.env
    assert post.container.annotations["nri.test/second"] == "yes"
    assert any(m.destination == "/nri-mnt" for m in post.container.mounts)
    update = next(r for p, m, r in log if p == "first" and m == "UpdateContainer")
    assert update.linux_resources.cpu.shares.value == 256
    pod_update = next(r for p, m, r in log if p == "first" and m == "UpdatePodSandbox")
    assert (pod_update.pod.id, pod_update.linux_resources.cpu.shares.value) == (sid, 512)
    assert 'crib_nri_events_total{event="CreateContainer"}' in _metric(crib, "crib_nri_events")


def test_exit_on_its_own_stops_before_remove_and_pod_stop_once(
        cri: Cri, image: str, crib: Stack, plugins: list[ThreadedPlugin]) -> None:
    log: list[Any] = []
    _start(crib, plugins, "watch", "20", log=log)
    sid, pod = cri.run_pod()
    quick = cri.create(sid, pod, image, "quick", command=["sh", "-c", "exit 3"])
    cri.start(quick)
    assert cri.wait_exit(quick).exit_code == 3
    assert wait_until(lambda: "StopContainer" in _events(log, "watch"), timeout=10)
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=quick), timeout=30)
    slow = cri.create(sid, pod, image, "slow", command=["sleep", "300"])
    cri.start(slow)
    for _ in range(2):  # StopPodSandbox twice: the hook fires once
        cri.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    cri.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)

    def of(cid: str) -> list[str]:
        return [m for p, m, r in log if getattr(getattr(r, "container", None), "id", "") == cid]

    assert wait_until(lambda: "RemovePodSandbox" in _events(log, "watch"), timeout=10)
    assert of(quick) == ["CreateContainer", "PostCreateContainer", "StartContainer",
                         "PostStartContainer", "StopContainer", "RemoveContainer"]
    stop = next(r for p, m, r in log if m == "StopContainer" and r.container.id == quick)
    assert stop.container.exit_code == 3
    assert of(slow)[-2:] == ["StopContainer", "RemoveContainer"]
    events = _events(log, "watch")
    assert events.count("StopPodSandbox") == 1
    # The pod's stop comes after its running container's stop.
    names = [(m, getattr(getattr(r, "container", None), "id", "")) for p, m, r in log]
    assert names.index(("StopContainer", slow)) < names.index(("StopPodSandbox", ""))


def test_plugin_error_fails_the_call_leaves_nothing_and_retry_works(
        cri: Cri, image: str, crib: Stack, plugins: list[ThreadedPlugin]) -> None:
    failures = {"RunPodSandbox": 1, "CreateContainer": 1}

    def fail_once(method: str) -> Any:
        def reply(_req: Any) -> None:
            if failures[method]:
                failures[method] -= 1
                raise PluginFailure(f"{method} refused by policy")
        return reply

    log: list[Any] = []
    _start(crib, plugins, "witness", "29", log=log)
    _start(crib, plugins, "strict", "30",
           replies={m: fail_once(m) for m in failures})
    config = cri.pod_config()
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert "30-strict failed RunPodSandbox: RunPodSandbox refused by policy" in \
        str(err.value.details())
    assert not [p for p in cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(),
                                                 timeout=10).items
                if p.metadata.name == config.metadata.name]
    assert not [r for r in unix_get_json(crib.socket("runtimed"), "/v1/sandboxes")
                if r["meta"]["name"] == config.metadata.name]
    sid, pod = cri.run_pod(config)  # the retry works

    with pytest.raises(grpc.RpcError) as err:
        cri.create(sid, pod, image, "app", command=["sleep", "300"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not unix_get_json(crib.socket("runtimed"), f"/v1/containers?pod={sid}")
    # The plugin that had accepted them is told to forget the failed pod and container.
    witnessed = [(m, getattr(r, "container", None) and r.container.id or r.pod.name)
                 for p, m, r in log if p == "witness" and m not in ("Configure", "Synchronize")]
    failed_ctr = next(cid for m, cid in witnessed[3:] if m == "CreateContainer")
    assert witnessed == [
        ("RunPodSandbox", config.metadata.name), ("StopPodSandbox", config.metadata.name),
        ("RemovePodSandbox", config.metadata.name), ("RunPodSandbox", config.metadata.name),
        ("CreateContainer", failed_ctr), ("StopContainer", failed_ctr),
        ("RemoveContainer", failed_ctr)]
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
    cri.start(cid)
    assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
    cri.remove_pod(sid)


def test_conflicting_adjustments_name_both_plugins(cri: Cri, image: str, crib: Stack,
                                                   plugins: list[ThreadedPlugin]) -> None:
    def setter(value: str) -> Any:
        return lambda _req: nri.CreateContainerResponse(adjust=nri.ContainerAdjustment(
            env=[nri.KeyValue(key="SHARED", value=value)]))

    _start(crib, plugins, "left", "40", events=mask("CreateContainer"),
           replies={"CreateContainer": setter("l")})
    _start(crib, plugins, "right", "41", events=mask("CreateContainer"),
           replies={"CreateContainer": setter("r")})
    sid, pod = cri.run_pod()
    with pytest.raises(grpc.RpcError) as err:
        cri.create(sid, pod, image, "app", command=["sleep", "300"])
    assert "plugins 40-left and 41-right both adjust env SHARED" in str(err.value.details())
    assert not unix_get_json(crib.socket("runtimed"), f"/v1/containers?pod={sid}")
    cri.remove_pod(sid)


def test_objects_in_their_hook_are_not_listed(cri: Cri, image: str, crib: Stack,
                                              plugins: list[ThreadedPlugin]) -> None:
    in_hook = threading.Event()
    release = threading.Event()

    async def hold(_req: Any) -> None:
        in_hook.set()
        while not release.is_set():
            await asyncio.sleep(0.02)

    _start(crib, plugins, "slow", "50", events=mask("RunPodSandbox", "CreateContainer"),
           replies={"RunPodSandbox": hold, "CreateContainer": hold})
    config = cri.pod_config()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(cri.run_pod, config)
        assert in_hook.wait(10)
        pods = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items
        assert config.metadata.name not in [p.metadata.name for p in pods]
        # Asked by id all the same (runtimed's REST knows it): not ready.
        pending_id = next(r["meta"]["id"] for r in unix_get_json(
            crib.socket("runtimed"), "/v1/sandboxes") if r["meta"]["name"] == config.metadata.name)
        assert cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pending_id), timeout=10).status.state == api_pb2.SANDBOX_NOTREADY
        release.set()
        sid, pod = running.result(30)
        in_hook.clear()
        release.clear()
        creating = pool.submit(cri.create, sid, pod, image, "app", ["sleep", "300"])
        assert in_hook.wait(10)
        listed = cri.rt.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=sid)), timeout=10).containers
        assert listed == []
        status = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=sid), timeout=10)
        assert status.status.state == api_pb2.SANDBOX_READY
        release.set()
        cid = creating.result(30)
    assert [c.id for c in cri.rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=sid)), timeout=10).containers] == [cid]
    cri.remove_pod(sid)


def test_hanging_plugin_is_dropped_after_the_request_timeout(
        cri: Cri, image: str, crib: Stack, plugins: list[ThreadedPlugin]) -> None:
    async def hang(_req: Any) -> None:
        await asyncio.sleep(60)

    log: list[Any] = []
    _start(crib, plugins, "hang", "60", log=log, events=mask("StartContainer"),
           replies={"StartContainer": hang})
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
    began = time.monotonic()
    cri.start(cid)  # the event counts as done: the start goes on
    took = time.monotonic() - began
    assert REQUEST_TIMEOUT - 0.1 < took < REQUEST_TIMEOUT + 3
    assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert "60-hang" not in _listed(crib)
    assert 'crib_nri_plugin_errors_total{event="StartContainer",kind="timeout",' \
        'plugin="60-hang"} 1.0' in _metric(crib, "crib_nri_plugin_errors_total")
    cri.remove_pod(sid)


def test_synchronise_with_existing_and_creates_in_flight(
        cri: Cri, image: str, crib: Stack, plugins: list[ThreadedPlugin]) -> None:
    sid, pod = cri.run_pod()
    before = cri.create(sid, pod, image, "before", command=["sleep", "300"])
    cri.start(before)
    log: list[Any] = []
    plugin = TestPlugin(crib.root / "nri.sock", "late", "70", ALL, log, sync_delay=1.0)
    threaded = ThreadedPlugin(plugin)
    plugins.append(threaded)
    threaded.start(synced=False)
    assert wait_until(lambda: any(m == "Synchronize" for _p, m, _r in log), timeout=10)
    # A create while the plugin synchronises: it waits, and the plugin gets its events.
    during = cri.create(sid, pod, image, "during", command=["sleep", "300"])
    sync = plugin.synchronize
    assert sync is not None
    assert sid in [p.id for p in sync.pods]
    assert {c.id: c.state for c in sync.containers}[before] == \
        nri.ContainerState.CONTAINER_RUNNING
    # Not in the snapshot (it did not exist yet), so delivered as an event.
    assert during not in [c.id for c in sync.containers]
    assert during in [r.container.id for _p, m, r in log if m == "CreateContainer"]
    cri.remove_pod(sid)


def test_update_containers_request_applied(cri: Cri, image: str, crib: Stack,
                                           plugins: list[ThreadedPlugin]) -> None:
    plugin = _start(crib, plugins, "updater", "80", events=mask("StartContainer"))
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
    cri.start(cid)
    update = nri.ContainerUpdate(container_id=cid, linux=nri.LinuxContainerUpdate(
        resources=nri.LinuxResources(cpu=nri.LinuxCpu(shares=nri.OptionalUInt64(value=512)))))
    missing = nri.ContainerUpdate(container_id="f" * 64, linux=update.linux)
    code, message, payload = plugins[-1].run(plugin.call_runtime(
        "UpdateContainers", nri.UpdateContainersRequest(update=[update, missing])))
    assert code == 0, message
    failed = nri.UpdateContainersResponse().parse(payload).failed
    assert [f.container_id for f in failed] == ["f" * 64]
    rec = unix_get_json(crib.socket("runtimed"), f"/v1/containers/{cid}")
    assert rec["status"]["resources"]["cpu_shares"] == 512
    cgroup = rec["meta"]["cgroup_path"].strip("/")
    shares = [p for p in (Path("/sys/fs/cgroup/cpu") / cgroup / "cpu.shares",
                          Path("/sys/fs/cgroup/cpu,cpuacct") / cgroup / "cpu.shares")
              if p.exists()]
    if shares:
        assert shares[0].read_text().strip() == "512"
    cri.remove_pod(sid)


def test_closed_connection_drops_the_plugin_and_unimplemented_gets_state_change(
        cri: Cri, image: str, crib: Stack, plugins: list[ThreadedPlugin]) -> None:
    log: list[Any] = []
    quitter = _start(crib, plugins, "quitter", "65", log=log, events=mask("StartContainer"))

    async def leave(_req: Any) -> None:
        await quitter.close()
        await asyncio.sleep(5)

    quitter.replies["StartContainer"] = leave

    def unimplemented(_req: Any) -> None:
        raise PluginFailure("not here", code=12)

    _start(crib, plugins, "old", "66", log=log, events=mask("PostCreateContainer"),
           replies={"PostCreateContainer": unimplemented})
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
    cri.start(cid)  # the plugin's connection closed mid-event: counted as done
    assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert wait_until(lambda: "65-quitter" not in _listed(crib), timeout=5)
    assert 'event="StartContainer",kind="closed",plugin="65-quitter"' in \
        _metric(crib, "crib_nri_plugin_errors_total")
    # The plugin that answered Unimplemented got the event again as StateChange.
    changes = [r for p, m, r in log if p == "old" and m == "StateChange"]
    assert [(c.event, c.container.id) for c in changes] == \
        [(nri.Event.POST_CREATE_CONTAINER, cid)]
    cri.remove_pod(sid)


def test_unregistered_connection_is_closed_after_the_registration_timeout(
        crib: Stack) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(crib.root / "nri.sock"))
    sock.settimeout(10)
    began = time.monotonic()
    assert sock.recv(1) == b""  # closed by runtimed, nothing sent
    assert 1.5 < time.monotonic() - began < 6
    sock.close()


LAUNCHED = """#!{python}
import asyncio, os, sys
sys.path.insert(0, {repo!r})
from tests.support.nri_plugin import TestPlugin, mask

async def main() -> None:
    log = []
    plugin = TestPlugin("fd:" + os.environ["NRI_PLUGIN_SOCKET"], os.environ["NRI_PLUGIN_NAME"],
                        os.environ["NRI_PLUGIN_IDX"], mask("RunPodSandbox"), log)
    await plugin.connect()
    while not plugin.closed.is_set():
        with open({out!r}, "w") as f:
            f.write("\\n".join(m + (" " + r.config.strip() if m == "Configure" else "")
                              for _p, m, r in log))
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


def test_pre_registered_plugin_started_from_the_plugin_directory(
        cri: Cri, crib: Stack, tmp_path: Path) -> None:
    import sys

    plugin_dir = crib.root / "nri-plugins"
    plugin_dir.mkdir(exist_ok=True)
    conf_dir = crib.root / "nri-conf"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "launched.conf").write_text("answer: 42\n")
    out = tmp_path / "launched.log"
    script = plugin_dir / "90-launched"
    script.write_text(LAUNCHED.format(python=sys.executable,
                                      repo=str(Path(__file__).resolve().parents[3]),
                                      out=str(out)))
    script.chmod(0o755)
    try:
        crib.kill("runtimed")
        crib.start_one("runtimed")
        assert wait_until(lambda: "90-launched" in _listed(crib), timeout=15)
        plugin = next(p for p in unix_get_json(crib.socket("runtimed"), "/v1/nri/plugins")
                      ["plugins"] if p["id"] == "90-launched")
        assert plugin["kind"] == "pre-launched" and plugin["events"] == ["RUN_POD_SANDBOX"]
        sid, _pod = cri.run_pod()
        assert wait_until(lambda: out.exists() and "RunPodSandbox" in out.read_text(),
                          timeout=10)
        assert out.read_text().split("\n")[:2] == ["Configure answer: 42", "Synchronize"]
        cri.remove_pod(sid)
    finally:
        script.unlink()
        crib.kill("runtimed")
        crib.start_one("runtimed")
    assert wait_until(lambda: not _listed(crib), timeout=10)


def test_messages_larger_than_a_frame_both_ways(cri: Cri, image: str, crib: Stack,
                                                 plugins: list[ThreadedPlugin]) -> None:
    """A request and a reply far over the 4096-byte first frame: split into frames on
    the way out, reassembled on the way in, on both sides."""
    big = {f"nri.test/big-{i}": "v" * 500 for i in range(200)}  # ~100 KiB reply
    log: list[Any] = []
    _start(crib, plugins, "big", "85", log=log, events=mask("CreateContainer"),
           replies={"CreateContainer": lambda _req: nri.CreateContainerResponse(
               adjust=nri.ContainerAdjustment(annotations=big))})
    sid, pod = cri.run_pod()
    env = [api_pb2.KeyValue(key=f"K{i}", value="x" * 200) for i in range(100)]  # ~20 KiB
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"], envs=env)
    request = next(r for p, m, r in log if m == "CreateContainer")
    assert sum(e.startswith("K") for e in request.container.env) == 100
    info = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True), timeout=10).info["info"])
    annotations = info.get("runtimeSpec", {}).get("annotations") or {}
    assert annotations.get("nri.test/big-199") == "v" * 500
    cri.remove_pod(sid)


def test_invalid_registration_is_refused(crib: Stack) -> None:
    plugin = TestPlugin(crib.root / "nri.sock", "bad", "7", ALL)  # the index is 2 digits
    threaded = ThreadedPlugin(plugin)
    try:
        with pytest.raises(RuntimeError, match="invalid plugin index"):
            threaded.run(plugin.connect())
        assert threaded.run(asyncio.wait_for(plugin.closed.wait(), 5)) is True
        assert "7-bad" not in _listed(crib)
    finally:
        threaded.stop()

"""The gateway's own HTTP/2 server against grpc-go, the client of the kubelet and critest.

A real stack (gateway, imaged, runtimed, netd) and one grpc-go connection
(tests/support/grpcgo, built offline from Debian's packages) that carries every call of
the module: answers with messages, answers of several DATA frames and windows, server
streaming, deadlines, cancellation mid-stream, 50 calls at once, error statuses, and a
second connection kept open with grpc-go's keepalive pings. Requests are built and
answers checked with the independent `cri_api` stubs; only the transport is grpc-go's.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from tests.support.grpcgo import GoClient, GoResult, build
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

RT = "/runtime.v1.RuntimeService/"
IMG = "/runtime.v1.ImageService/"
KIB = 1024
# grpc-go's Code values (google.golang.org/grpc/codes).
OK, CANCELLED, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED, UNIMPLEMENTED, UNAVAILABLE = \
    0, 1, 4, 5, 8, 12, 14
# grpc-go will not ping more often than every 10 s (internal.KeepaliveMinPingTime), so
# the keepalive connection must live past that to see one.
KEEPALIVE_HOLD = 12.0


@pytest.fixture(scope="module")
def go_binary() -> Any:
    binary = build()
    if isinstance(binary, str):
        print(f"skipping the grpc-go tests: {binary}")
        pytest.skip(binary)
    return binary


@pytest.fixture(scope="module")
def crib(go_binary: Any) -> Iterator[Stack]:
    with Stack.running() as stack:
        yield stack


@pytest.fixture(scope="module")
def keepalive(go_binary: Any, crib: Stack) -> Iterator[tuple[GoClient, float, GoResult]]:
    """A second connection with keepalive on, opened early so the wait overlaps the rest:
    the client, when its last call ended, and its frame counts then."""
    client = GoClient(go_binary, crib.cri_socket, keepalive_ms=1000)
    first = client.call(RT + "Version", api_pb2.VersionRequest().SerializeToString())
    assert first.code == OK, first
    try:
        yield client, time.monotonic(), client.stats()
    finally:
        client.close()


@pytest.fixture(scope="module")
def go(go_binary: Any, crib: Stack, keepalive: Any) -> Iterator[GoClient]:
    client = GoClient(go_binary, crib.cri_socket)
    try:
        yield client
    finally:
        try:
            remove_all_pods(client)
        finally:
            client.close()


class Cri:
    """Typed calls over the grpc-go client: request built, answer parsed by cri_api."""

    def __init__(self, go: GoClient, stack: Stack) -> None:
        self.go = go
        self.stack = stack

    def call(self, method: str, request: Any, answer_type: Any, timeout: float = 60) -> Any:
        result = self.go.call(method, request.SerializeToString(), timeout)
        assert result.code == OK, (method, result)
        return answer_type.FromString(result.response)

    def run_pod(self, **kw: Any) -> tuple[str, api_pb2.PodSandboxConfig]:
        uid = uuid.uuid4().hex[:10]
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=f"go-{uid}", uid=uid,
                                                namespace="crib-grpcgo"),
            hostname=f"go-{uid}", log_directory=str(self.stack.root / "podlogs" / uid), **kw)
        answer = self.call(RT + "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config),
                           api_pb2.RunPodSandboxResponse)
        assert answer.pod_sandbox_id
        return answer.pod_sandbox_id, config

    def create(self, sid: str, pod: api_pb2.PodSandboxConfig, image: str, name: str,
               args: list[str], **kw: Any) -> str:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image),
            command=["sh", "-c"], args=args, log_path=f"{name}.log", **kw)
        answer = self.call(RT + "CreateContainer", api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=config, sandbox_config=pod),
            api_pb2.CreateContainerResponse)
        assert answer.container_id
        return str(answer.container_id)

    def start(self, cid: str) -> None:
        self.call(RT + "StartContainer", api_pb2.StartContainerRequest(container_id=cid),
                  api_pb2.StartContainerResponse)

    def status(self, cid: str) -> api_pb2.ContainerStatus:
        status: api_pb2.ContainerStatus = self.call(
            RT + "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=cid),
            api_pb2.ContainerStatusResponse).status
        return status

    def wait_state(self, cid: str, state: int, timeout: float = 20) -> api_pb2.ContainerStatus:
        end = time.monotonic() + timeout
        while True:
            st = self.status(cid)
            if st.state == state or time.monotonic() > end:
                return st
            time.sleep(0.05)

    def remove_pod(self, sid: str) -> None:
        self.call(RT + "StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
                  api_pb2.StopPodSandboxResponse)
        self.call(RT + "RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                  api_pb2.RemovePodSandboxResponse)


def remove_all_pods(client: GoClient) -> None:
    listed = client.call(RT + "ListPodSandbox",
                         api_pb2.ListPodSandboxRequest().SerializeToString())
    for pod in api_pb2.ListPodSandboxResponse.FromString(listed.response).items:
        for method, request in (("StopPodSandbox", api_pb2.StopPodSandboxRequest),
                                ("RemovePodSandbox", api_pb2.RemovePodSandboxRequest)):
            client.call(RT + method, request(pod_sandbox_id=pod.id).SerializeToString(), 60)


@pytest.fixture(scope="module")
def cri(go: GoClient, crib: Stack) -> Cri:
    return Cri(go, crib)


@pytest.fixture(scope="module")
def sleeper(cri: Cri, pulled: str) -> Iterator[str]:
    """A running container (sleep) for the exec cases; its pod is removed afterwards."""
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, pulled, "sleeper", ["sleep 600"])
    cri.start(cid)
    try:
        yield cid
    finally:
        cri.remove_pod(sid)


@pytest.fixture(scope="module")
def pulled(cri: Cri, busybox_image: str) -> str:
    answer = cri.call(IMG + "PullImage", api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=busybox_image)), api_pb2.PullImageResponse, 120)
    assert answer.image_ref.startswith("sha256:")
    return busybox_image


def frames(go: GoClient) -> dict[str, int]:
    return go.stats().frames


# ------------------------------------------------------------------ answers with messages
def test_version(cri: Cri) -> None:
    answer = cri.call(RT + "Version", api_pb2.VersionRequest(version="v1"),
                      api_pb2.VersionResponse)
    assert answer.runtime_name == "crib"
    assert answer.runtime_api_version.startswith("v1")
    assert answer.version and answer.runtime_version


def test_pull_then_image_status_and_list(cri: Cri, busybox_image: str) -> None:
    pulled = cri.call(IMG + "PullImage", api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=busybox_image)), api_pb2.PullImageResponse, 120)
    status = cri.call(IMG + "ImageStatus", api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=busybox_image)), api_pb2.ImageStatusResponse)
    assert status.image.id == pulled.image_ref
    assert busybox_image in status.image.repo_tags
    assert status.image.size > 0
    listed = cri.call(IMG + "ListImages", api_pb2.ListImagesRequest(),
                      api_pb2.ListImagesResponse)
    assert pulled.image_ref in [i.id for i in listed.images]


def test_pod_container_lifecycle_and_exec(cri: Cri, pulled: str) -> None:
    sid, pod = cri.run_pod()
    try:
        cid = cri.create(sid, pod, pulled, "worker", ["sleep 600"])
        assert cri.status(cid).state == api_pb2.CONTAINER_CREATED
        cri.start(cid)
        st = cri.wait_state(cid, api_pb2.CONTAINER_RUNNING)
        assert st.state == api_pb2.CONTAINER_RUNNING
        assert st.metadata.name == "worker" and st.id == cid
        out = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo out; echo err >&2; exit 3"]),
            api_pb2.ExecSyncResponse)
        assert (out.stdout, out.stderr, out.exit_code) == (b"out\n", b"err\n", 3)
    finally:
        cri.remove_pod(sid)
    listed = cri.call(RT + "ListPodSandbox", api_pb2.ListPodSandboxRequest(),
                      api_pb2.ListPodSandboxResponse)
    assert sid not in [p.id for p in listed.items]


# ------------------------------------------------------------------ large answers
def test_exec_output_of_hundreds_of_kib(cri: Cri, sleeper: str) -> None:
    """An answer of 400 KiB: many DATA frames, past grpc-go's 64 KiB initial windows."""
    before = frames(cri.go)
    size = 400 * KIB
    out = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", f"yes 0123456789abcde | head -c {size}"]),
        api_pb2.ExecSyncResponse)
    assert out.exit_code == 0
    assert out.stdout == (b"0123456789abcde\n" * (size // 16))[:size]
    after = frames(cri.go)
    # 16 KiB frames at most (the client's SETTINGS_MAX_FRAME_SIZE), and credit given back.
    assert after["received_DATA"] - before.get("received_DATA", 0) >= size // (16 * KIB)
    assert after.get("sent_WINDOW_UPDATE", 0) > before.get("sent_WINDOW_UPDATE", 0)


def test_answer_of_4_mib(cri: Cri, sleeper: str) -> None:
    """Long enough for grpc-go's BDP estimator to grow its windows mid-answer (SETTINGS
    and WINDOW_UPDATE from the client while we send)."""
    size = 4 * 1024 * KIB
    out = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", f"yes 0123456789abcde | head -c {size}"]),
        api_pb2.ExecSyncResponse)
    assert out.stdout == b"0123456789abcde\n" * (size // 16)


def test_request_of_hundreds_of_kib(cri: Cri, sleeper: str) -> None:
    """A request over 64 KiB: grpc-go sends it in several DATA frames within our window."""
    before = frames(cri.go)
    parts = [c * (100 * KIB) for c in "abc"]
    out = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", 'echo $(( ${#1} + ${#2} + ${#3} ))',
                                   "sh", *parts]), api_pb2.ExecSyncResponse)
    assert out.stdout == b"%d\n" % (300 * KIB), out
    assert frames(cri.go)["sent_DATA"] - before.get("sent_DATA", 0) >= 300 // 16


def test_large_answers_at_once_share_the_window(cri: Cri, sleeper: str) -> None:
    """Six 1 MiB answers interleaved on one connection's flow-control window."""
    size = 1024 * KIB
    ids = [cri.go.start(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", f"yes {n}{n}{n} | head -c {size}"])
        .SerializeToString(), timeout=60) for n in range(6)]
    for n, call_id in enumerate(ids):
        result = cri.go.wait(call_id)
        assert result.code == OK, result
        out = api_pb2.ExecSyncResponse.FromString(result.response).stdout
        assert out == (b"%d%d%d\n" % (n, n, n)) * (size // 4), (n, len(out))


def test_deadline_while_the_answer_waits_for_window(cri: Cri, sleeper: str) -> None:
    """An 8 MiB answer to a client that reads nothing: we stop at its window; its deadline
    then resets the stream (RST_STREAM) while we wait. Nothing else is harmed."""
    size = 8 * 1024 * KIB
    before = frames(cri.go)
    stuck = cri.go.start(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", f"yes | head -c {size}"]).SerializeToString(),
        timeout=1.5, stream=True, hold=2.5)
    # Meanwhile the connection serves others (the stuck stream holds only its own window).
    meanwhile = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", "sleep 1; echo meanwhile"]),
        api_pb2.ExecSyncResponse)
    assert meanwhile.stdout == b"meanwhile\n"
    result = cri.go.wait(stuck)
    assert result.code == DEADLINE_EXCEEDED, result
    after = frames(cri.go)
    received = after["received_DATA_bytes"] - before.get("received_DATA_bytes", 0)
    assert received < size, "the whole answer came: the window never stopped it"
    quick = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["echo", "whole"]), api_pb2.ExecSyncResponse)
    assert quick.stdout == b"whole\n"
    assert cri.go.stats().dials == 1
    log = cri.stack.log("gateway")
    assert "Traceback" not in log and "crashed" not in log, log[-2000:]


def test_list_answers_over_64_kib(cri: Cri, pulled: str) -> None:
    """ListPodSandbox and ListContainers answers of ~100 KiB each (long annotations)."""
    pods: dict[str, str] = {}
    containers: dict[str, str] = {}
    try:
        for n in range(5):
            note = f"{n}-" + uuid.uuid4().hex * 640  # 20 KiB
            sid, pod = cri.run_pod(annotations={"crib.test/note": note},
                                   labels={"crib.test/grpcgo": "list"})
            pods[sid] = note
            cid = cri.create(sid, pod, pulled, "idle", ["sleep 600"],
                             annotations={"crib.test/note": note[::-1]})
            containers[cid] = note[::-1]
        selector = api_pb2.PodSandboxFilter(label_selector={"crib.test/grpcgo": "list"})
        result = cri.go.call(RT + "ListPodSandbox", api_pb2.ListPodSandboxRequest(
            filter=selector).SerializeToString())
        assert result.code == OK, result
        assert len(result.response) > 64 * KIB
        listed = api_pb2.ListPodSandboxResponse.FromString(result.response)
        assert {p.id: p.annotations["crib.test/note"] for p in listed.items} == pods
        result = cri.go.call(RT + "ListContainers", api_pb2.ListContainersRequest(
            ).SerializeToString())
        assert result.code == OK, result
        assert len(result.response) > 64 * KIB
        found = {c.id: c.annotations.get("crib.test/note")
                 for c in api_pb2.ListContainersResponse.FromString(result.response).containers}
        assert {cid: found.get(cid) for cid in containers} == containers
    finally:
        for sid in pods:
            cri.remove_pod(sid)


# ------------------------------------------------------------------ streaming
def test_container_events_while_a_container_starts_and_stops(cri: Cri, pulled: str) -> None:
    watch = cri.go.start(RT + "GetContainerEvents", api_pb2.GetEventsRequest()
                         .SerializeToString(), timeout=120, stream=True)
    time.sleep(0.3)  # the stream is open before the container comes
    sid, pod = cri.run_pod()
    try:
        cid = cri.create(sid, pod, pulled, "brief", ["sleep 0.3"])
        cri.start(cid)
        assert cri.wait_state(cid, api_pb2.CONTAINER_EXITED).state == api_pb2.CONTAINER_EXITED
        time.sleep(0.5)  # the stopped event may trail the status a moment
        cri.go.cancel(watch)
        result = cri.go.wait(watch)
        assert result.code == CANCELLED, result  # our cancel, mid-stream
        events = [api_pb2.ContainerEventResponse.FromString(m) for m in result.messages]
        seen = {e.container_event_type for e in events if e.container_id == cid}
        assert {api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
                api_pb2.CONTAINER_STOPPED_EVENT} <= seen, events
    finally:
        cri.remove_pod(sid)
    # The cancelled stream cost the connection nothing.
    after = cri.go.call(RT + "Version", api_pb2.VersionRequest().SerializeToString())
    assert after.code == OK and after.dials == 1, after


def test_stream_cancelled_after_its_first_message(cri: Cri, pulled: str) -> None:
    """grpc-go resets the stream (RST_STREAM CANCEL) as soon as one event has come."""
    before = frames(cri.go)
    watch = cri.go.start(RT + "GetContainerEvents", api_pb2.GetEventsRequest()
                         .SerializeToString(), timeout=60, stream=True, max_messages=1)
    time.sleep(0.3)
    sid, pod = cri.run_pod()
    try:
        cri.create(sid, pod, pulled, "one", ["true"])
        result = cri.go.wait(watch, 30)
        assert result.code == CANCELLED and len(result.messages) == 1, result
    finally:
        cri.remove_pod(sid)
    assert frames(cri.go).get("sent_RST_STREAM", 0) > before.get("sent_RST_STREAM", 0)
    after = cri.go.call(RT + "Version", api_pb2.VersionRequest().SerializeToString())
    assert after.code == OK and after.dials == 1, after


# ------------------------------------------------------------------ deadlines, concurrency
def test_deadline_shorter_than_a_slow_call(cri: Cri, sleeper: str) -> None:
    slow = api_pb2.ExecSyncRequest(container_id=sleeper, cmd=["sleep", "5"])
    result = cri.go.call(RT + "ExecSync", slow.SerializeToString(), timeout=0.5)
    assert result.code == DEADLINE_EXCEEDED, result
    assert result.elapsed_ms < 3000, result
    quick = cri.call(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["echo", "after"]), api_pb2.ExecSyncResponse)
    assert quick.stdout == b"after\n"


def test_fifty_concurrent_calls_on_one_connection(cri: Cri, sleeper: str,
                                                  busybox_image: str) -> None:
    requests: list[tuple[str, bytes, Any]] = []
    for n in range(50):
        kind = n % 5
        if kind == 0:
            requests.append((RT + "Version", api_pb2.VersionRequest().SerializeToString(),
                             api_pb2.VersionResponse))
        elif kind == 1:
            requests.append((RT + "ContainerStatus", api_pb2.ContainerStatusRequest(
                container_id=sleeper).SerializeToString(), api_pb2.ContainerStatusResponse))
        elif kind == 2:
            requests.append((RT + "ExecSync", api_pb2.ExecSyncRequest(
                container_id=sleeper, cmd=["echo", str(n)]).SerializeToString(),
                api_pb2.ExecSyncResponse))
        elif kind == 3:
            requests.append((IMG + "ImageStatus", api_pb2.ImageStatusRequest(
                image=api_pb2.ImageSpec(image=busybox_image)).SerializeToString(),
                api_pb2.ImageStatusResponse))
        else:
            requests.append((RT + "ListContainers", api_pb2.ListContainersRequest()
                             .SerializeToString(), api_pb2.ListContainersResponse))
    ids = [cri.go.start(method, body, timeout=60) for method, body, _ in requests]
    results = [cri.go.wait(i, 90) for i in ids]
    assert [r.code for r in results] == [OK] * 50, [r for r in results if r.code != OK]
    assert {r.dials for r in results} == {1}
    for n, ((_, _, answer_type), result) in enumerate(zip(requests, results)):
        answer = answer_type.FromString(result.response)
        if n % 5 == 1:
            assert answer.status.id == sleeper
        elif n % 5 == 2:
            assert answer.stdout == f"{n}\n".encode()
        elif n % 5 == 4:
            assert sleeper in [c.id for c in answer.containers]


# ------------------------------------------------------------------ statuses
def test_unknown_method_is_unimplemented(cri: Cri) -> None:
    for path in (RT + "NoSuchCall", "/runtime.v1.NoSuchService/Version"):
        result = cri.go.call(path, b"")
        assert result.code == UNIMPLEMENTED, (path, result)
        assert result.message, result


def test_request_over_the_limit_is_refused_while_still_sent(go_binary: Any,
                                                             crib: Stack) -> None:
    """A 24 MiB request (a client with a higher send limit than the kubelet's 16 MiB):
    RESOURCE_EXHAUSTED from its length prefix while grpc-go is still sending the rest,
    then RST_STREAM(NO_ERROR); grpc-go takes the status and the connection goes on."""
    client = GoClient(go_binary, crib.cri_socket, max_send_mib=64)
    try:
        huge = api_pb2.ExecSyncRequest(container_id="x" * 64, cmd=["x" * (24 * 1024 * KIB)])
        result = client.call(RT + "ExecSync", huge.SerializeToString())
        assert result.code == RESOURCE_EXHAUSTED, result
        assert "exceeds" in result.message or "limit" in result.message, result
        after = client.call(RT + "Version", api_pb2.VersionRequest().SerializeToString())
        assert after.code == OK and after.dials == 1, after
    finally:
        client.close()


def test_error_status_and_message(cri: Cri) -> None:
    missing = "f" * 64
    result = cri.go.call(RT + "ContainerStatus", api_pb2.ContainerStatusRequest(
        container_id=missing).SerializeToString())
    assert result.code == NOT_FOUND, result
    assert missing[:12] in result.message, result
    assert "Traceback" not in result.message


def test_error_message_percent_encoded(cri: Cri) -> None:
    """grpc-message carries non-ASCII text percent-encoded; grpc-go decodes it back."""
    odd = "caf\u00e9-%-\u2603"
    result = cri.go.call(RT + "ContainerStatus", api_pb2.ContainerStatusRequest(
        container_id=odd).SerializeToString())
    assert result.code not in (OK, 2), result  # a mapped error, not UNKNOWN
    assert odd in result.message, result


# ------------------------------------------------------------------ keepalive
def test_connection_kept_open_with_keepalive_pings(
        keepalive: tuple[GoClient, float, GoResult], cri: Cri) -> None:
    """grpc-go's keepalive pings (at its 10 s floor) on an idle connection are answered,
    and the connection stays: no GOAWAY, no redial, calls still work."""
    client, idle_since, baseline = keepalive
    time.sleep(max(0.0, idle_since + KEEPALIVE_HOLD - time.monotonic()))
    idle = client.stats()
    # No call ran since the baseline, so no BDP ping either: these are keepalive pings.
    pinged = idle.frames.get("sent_PING", 0)
    assert pinged > baseline.frames.get("sent_PING", 0), (baseline.frames, idle.frames)
    result = client.call(RT + "Version", api_pb2.VersionRequest().SerializeToString())
    assert result.code == OK, result
    assert api_pb2.VersionResponse.FromString(result.response).runtime_name == "crib"
    after = client.stats()
    assert after.dials == 1, after.frames  # never dropped, never redialled
    assert after.frames.get("received_PING_ACK", 0) >= pinged, after.frames
    assert after.frames.get("received_GOAWAY", 0) == 0, after.frames


# ------------------------------------------------------------------ restart (last: it redials)
def test_gateway_restart_drains_then_grpc_go_redials(cri: Cri, sleeper: str) -> None:
    """SIGTERM with a unary call in flight and an events stream open, as the kubelet's:
    the call is answered; GOAWAY sends grpc-go's next calls to a new connection (not into
    the draining gateway, which would refuse them); the stream does not hold the drain;
    the same ClientConn dials the next gateway, as the kubelet's does."""
    before = frames(cri.go).get("received_GOAWAY", 0)
    slow = cri.go.start(RT + "ExecSync", api_pb2.ExecSyncRequest(
        container_id=sleeper, cmd=["sh", "-c", "sleep 1; echo done"]).SerializeToString(),
        timeout=30)
    watch = cri.go.start(RT + "GetContainerEvents", api_pb2.GetEventsRequest()
                         .SerializeToString(), timeout=60, stream=True)
    time.sleep(0.3)
    began = time.monotonic()
    stopper = threading.Thread(target=cri.stack.kill, args=("gateway", signal.SIGTERM))
    stopper.start()
    time.sleep(0.2)
    # Made while the old gateway drains: it must wait for the next one (grpc-go's
    # wait-for-ready), not be refused "shutting down" on the old connection.
    during = cri.go.start(RT + "Version", api_pb2.VersionRequest().SerializeToString(),
                          timeout=30, wait_for_ready=True)
    stopper.join(30)
    stopped_in = time.monotonic() - began
    cri.stack.start_one("gateway")  # first: the module's cleanup needs a gateway
    result = cri.go.wait(slow)
    assert result.code == OK, result
    assert api_pb2.ExecSyncResponse.FromString(result.response).stdout == b"done\n"
    stream = cri.go.wait(watch)
    assert stream.code == UNAVAILABLE, stream  # cut at the close: the kubelet resubscribes
    # The slow call's second, not the 10 s SHUTDOWN_TIMEOUT the open stream once held.
    assert stopped_in < 5, stopped_in
    again = cri.go.wait(during)
    assert again.code == OK, again
    assert again.dials == 2, again
    assert frames(cri.go).get("received_GOAWAY", 0) - before == 2  # first, and last

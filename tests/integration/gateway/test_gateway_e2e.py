"""The gateway end to end: the real socket, the independent grpcio client, real daemons.

One node for the module: the real crib-gateway and crib-runtimed (subprocesses, private
sockets), and in imaged's place `fake_daemon` (the production daemon code with a slow
and a large-answer RPC) for the deadline and size cases. netd is deliberately not started,
so Status must report NetworkReady=false with a reason rather than fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import Stack, wait_for_socket

grpc = pytest.importorskip("grpc")
from cri_api.v1 import api_pb2, api_pb2_grpc  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
# What a gateway error may never contain: it would mean an exception escaped unmapped.
TRACEBACK = "Traceback"


class Node:
    """The module's node: a Stack plus the fake imaged process."""

    def __init__(self) -> None:
        self.stack = Stack.create("process")
        self.fake: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        self.start_fake()
        self.stack.start(("runtimed", "gateway"))
        return self

    def start_fake(self) -> None:
        sock = self.stack.socket("imaged")
        log = open(self.stack.root / "imaged.log", "ab")
        self.fake = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.gateway.fake_daemon", str(sock)],
            env=self.stack.env(), cwd=ROOT, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        wait_for_socket(sock, 30, self.fake, self.stack.root / "imaged.log")

    def ensure(self, service: str) -> None:
        proc = self.stack.procs.get(service)
        if proc is None or proc.poll() is not None:
            self.stack.procs.pop(service, None)
            self.stack.start_one(service)

    def stop(self) -> None:
        if self.fake is not None and self.fake.poll() is None:
            self.fake.send_signal(signal.SIGTERM)
            try:
                self.fake.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.fake.kill()
                self.fake.wait()
        self.stack.cleanup()

    def log_lines(self, service: str) -> list[dict[str, Any]]:
        lines = []
        for line in self.stack.log(service).splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = Node().start()
    try:
        yield n
    finally:
        n.stop()


def _channel(node: Node, send_limit: int = 16 * MIB) -> Any:
    return grpc.insecure_channel(
        f"unix://{node.stack.cri_socket}",
        options=[("grpc.max_receive_message_length", 16 * MIB),
                 ("grpc.max_send_message_length", send_limit)],
    )


@pytest.fixture()
def runtime(node: Node) -> Iterator[Any]:
    node.ensure("runtimed")
    with _channel(node) as ch:
        yield api_pb2_grpc.RuntimeServiceStub(ch)


@pytest.fixture()
def images(node: Node) -> Iterator[Any]:
    with _channel(node) as ch:
        yield api_pb2_grpc.ImageServiceStub(ch)


def _assert_serving(runtime: Any) -> None:
    reply = runtime.Version(api_pb2.VersionRequest(), timeout=5)
    assert reply.runtime_name == "crib"


# ------------------------------------------------------------------ the happy path


def test_version(runtime: Any) -> None:
    reply = runtime.Version(api_pb2.VersionRequest(version="v1"), timeout=5)
    assert reply.version == "0.1.0"
    assert reply.runtime_name == "crib"
    assert reply.runtime_api_version == "v1"
    assert reply.runtime_version


def test_status_reports_network_not_ready_with_reason(runtime: Any) -> None:
    reply = runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=5)
    conditions = {c.type: c for c in reply.status.conditions}
    assert conditions["RuntimeReady"].status is True
    network = conditions["NetworkReady"]
    assert network.status is False
    assert network.reason == "NetdUnavailable"
    assert "netd" in network.message
    assert set(reply.info) == {"runtimed", "netd", "imaged", "config"}
    assert json.loads(reply.info["config"])["stateDir"]  # runtimed is up: its state dir


# ------------------------------------------------------------------ unimplemented


@pytest.mark.parametrize("rpc", ["CheckpointPod", "CheckpointContainer"])
def test_unrouted_rpc_is_unimplemented_at_once_naming_it(node: Node, rpc: str) -> None:
    # Neither checkpoint RPC is routed: the gateway answers without asking runtimed.
    # (CheckpointPod is newer than the PyPI stubs, so both are called raw.)
    with _channel(node) as ch:
        call = ch.unary_unary(f"/runtime.v1.RuntimeService/{rpc}")
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=5)
        assert time.monotonic() - start < 1.0
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert rpc in info.value.details()


def test_unknown_method_is_unimplemented(node: Node) -> None:
    with _channel(node) as ch:
        call = ch.unary_unary("/runtime.v1.RuntimeService/NoSuchRpc")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------ a daemon goes away


def test_daemon_killed_is_unavailable_then_recovers(node: Node, runtime: Any) -> None:
    gateway_pid = node.stack.procs["gateway"].pid
    _assert_serving(runtime)  # a pooled keep-alive connection to the old runtimed exists
    node.stack.kill("runtimed", signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as info:
        runtime.Version(api_pb2.VersionRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "runtimed" in info.value.details()
    status = runtime.Status(api_pb2.StatusRequest(), timeout=5)
    ready = {c.type: c for c in status.status.conditions}["RuntimeReady"]
    assert ready.status is False
    assert ready.reason == "RuntimedUnavailable"

    node.stack.start_one("runtimed")
    _assert_serving(runtime)
    assert node.stack.procs["gateway"].pid == gateway_pid
    assert node.stack.procs["gateway"].poll() is None


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("container_id", ["", "../../etc/passwd", "x" * 5000, "é\n\x00"])
def test_bad_container_id_gets_clear_status(runtime: Any, container_id: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id), timeout=5
        )
    # Which of these depends on how far runtimed is; never UNKNOWN or INTERNAL.
    assert info.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    ), info.value.details()
    assert info.value.details()
    assert TRACEBACK not in info.value.details()
    _assert_serving(runtime)


def test_unknown_enum_value_is_invalid_argument(runtime: Any, images: Any) -> None:
    # NamespaceMode 99, four messages deep; the grpcio stubs accept it (proto3 enums are
    # open), so it reaches the daemon, which cannot act on a mode it does not know.
    options = api_pb2.NamespaceOption(network=99)
    config = api_pb2.PodSandboxConfig(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=options)))
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="busybox"),
                                       sandbox_config=config)
    with pytest.raises(grpc.RpcError) as info:
        images.PullImage(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert "namespace_options.network" in details and "99" in details, details
    # The same request with a known value goes through.
    options.network = api_pb2.POD
    request.sandbox_config.linux.security_context.namespace_options.CopyFrom(options)
    assert images.PullImage(request, timeout=5).image_ref.startswith("sha256:")
    _assert_serving(runtime)


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x10abc", b"\x0f", b"\x0a\x02\xc3\x28"])
def test_malformed_protobuf_is_invalid_argument(node: Node, runtime: Any, raw: bytes) -> None:
    # Identity serializers: the bytes go on the wire exactly as given.
    with _channel(node) as ch:
        call = ch.unary_unary("/runtime.v1.RuntimeService/Version")
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed VersionRequest" in info.value.details()
    _assert_serving(runtime)


def test_message_over_4mib_passes_both_ways(images: Any) -> None:
    name = "n" * (5 * MIB)
    reply = images.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)), timeout=30
    )
    assert reply.info["name_len"] == str(len(name))
    big = images.ListImages(api_pb2.ListImagesRequest(
        filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=f"big:{6 * MIB}"))
    ), timeout=30)
    assert len(big.images[0].id) == 6 * MIB


def test_message_over_16mib_is_resource_exhausted(node: Node, runtime: Any) -> None:
    name = "n" * (17 * MIB)
    with _channel(node, send_limit=-1) as ch:  # -1: the client itself does not refuse
        stub = api_pb2_grpc.ImageServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ImageStatus(
                api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)), timeout=30
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit" in info.value.details()
    _assert_serving(runtime)


# ------------------------------------------------------------------ deadline and request id


def test_deadline_is_passed_on_to_the_daemon(node: Node, images: Any) -> None:
    rid = f"crib-deadline-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        images.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="sleep:5")),
            timeout=0.5, metadata=(("x-request-id", rid),),
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 3
    # The daemon itself gave up at the kubelet's deadline (X-Crib-Timeout), not 5 s later.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        failed = [e for e in node.log_lines("imaged")
                  if e.get("request_id") == rid and e.get("kind") == "deadline_exceeded"]
        if failed:
            break
        time.sleep(0.1)
    assert failed, "the daemon did not enforce the deadline it was passed"


def test_request_id_from_metadata_reaches_the_daemon_log(node: Node, runtime: Any) -> None:
    rid = f"crib-rid-{uuid.uuid4().hex[:8]}"
    runtime.Version(api_pb2.VersionRequest(), timeout=5, metadata=(("x-request-id", rid),))
    assert any(e.get("request_id") == rid and e.get("service") == "runtimed"
               for e in node.log_lines("runtimed"))
    assert any(e.get("request_id") == rid and e.get("rpc") == "Version"
               for e in node.log_lines("gateway"))


def test_generated_request_id_is_shared_by_gateway_and_daemon(
    node: Node, runtime: Any
) -> None:
    before = {e.get("request_id") for e in node.log_lines("gateway")}
    runtime.Version(api_pb2.VersionRequest(), timeout=5)
    new = [e for e in node.log_lines("gateway")
           if e.get("event") == "rpc" and e.get("rpc") == "Version"
           and e.get("request_id") not in before]
    assert new, "the gateway logged no line for the call"
    rid = new[-1]["request_id"]
    assert rid and all(e.get("level") for e in new)  # structured JSON lines
    assert any(e.get("request_id") == rid for e in node.log_lines("runtimed"))


# ------------------------------------------------------------------ graceful shutdown


def test_sigterm_lets_the_call_in_flight_finish(node: Node, images: Any) -> None:
    """Last in the module on purpose: it stops the module's gateway (and restarts it)."""
    import threading

    gateway = node.stack.procs["gateway"]
    result: dict[str, Any] = {}

    def slow_call() -> None:
        try:
            result["reply"] = images.ImageStatus(
                api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="sleep:1.5")),
                timeout=10,
            )
        except grpc.RpcError as exc:
            result["error"] = exc

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)  # the call is now waiting on the daemon
    gateway.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    # Stopped accepting at once: the socket is gone while the call is still in flight.
    assert not node.stack.cri_socket.exists()
    caller.join(timeout=10)
    assert "error" not in result, result.get("error")
    assert result["reply"].info["name_len"] == str(len("sleep:1.5"))
    assert gateway.wait(timeout=15) == 0
    node.stack.procs.pop("gateway", None)
    node.ensure("gateway")



def test_sigterm_exits_zero_and_removes_sockets() -> None:
    stack = Stack.create("process").start(("runtimed", "gateway"))
    try:
        for service in ("gateway", "runtimed"):
            proc = stack.procs.pop(service)
            sockets = [stack.socket(service)]
            if service == "gateway":
                sockets.append(stack.cri_socket)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, stack.log(service)[-2000:]
            for path in sockets:
                assert not os.path.exists(path), f"{service} left {path}"
    finally:
        stack.cleanup()

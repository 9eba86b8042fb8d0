"""End to end: the independent grpcio CRI client -> crib-gateway -> crib-runtimed, whose
Exec/Attach/PortForward RPCs return URLs our streaming clients then use, against a real pod
(conmon, runc, CNI via netd, the busybox test image)."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from runtimed.streaming import ExecSpec
from tests.integration.streaming.apiserver import FakeApiServer
from tests.support.stack import Stack
from tests.support.streamclient import SpdyPortForward, UpgradeRefused, open_stdio

pytestmark = pytest.mark.integration

HTTPD = ("mkdir -p /tmp/www && echo crib-pf-ok > /tmp/www/index.html && "
         "exec httpd -f -p 127.0.0.1:8080 -h /tmp/www")
READER = 'while read l; do [ "$l" = quit ] && exit 4; echo "got $l"; done'


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    with Stack.running() as stack:
        yield stack


class Pod:
    """One pod with three containers: a sleeper (exec), a stdin reader (attach), httpd."""

    def __init__(self, runtime: Any, image: str) -> None:
        self.runtime = runtime
        uid = uuid.uuid4().hex[:8]
        self.config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=f"crib-stream-{uid}", uid=uid,
                                                namespace="default"),
            log_directory=f"/tmp/crib-stream-logs-{uid}")
        self.image = image
        self.id = ""
        self.containers: dict[str, str] = {}

    def start(self) -> Pod:
        try:
            reply = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=self.config),
                                               timeout=120)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                pytest.skip("runtimed does not run pods yet")
            raise
        self.id = reply.pod_sandbox_id
        for name, args, stdin in (("sleeper", ["sleep", "3600"], False),
                                  ("reader", ["sh", "-c", READER], True),
                                  ("web", ["sh", "-c", HTTPD], False)):
            config = api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name=name),
                image=api_pb2.ImageSpec(image=self.image), command=args, stdin=stdin,
                log_path=f"{name}.log")
            cid = self.runtime.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=self.id, config=config, sandbox_config=self.config),
                timeout=120).container_id
            self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid),
                                        timeout=60)
            self.containers[name] = cid
        return self

    def stop(self) -> None:
        try:
            self._remove()
        finally:
            shutil.rmtree(self.config.log_directory, ignore_errors=True)

    def _remove(self) -> None:
        if self.id:
            self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=self.id),
                                        timeout=60)
            self.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=self.id), timeout=60)


@pytest.fixture(scope="module")
def pod(crib: Stack, busybox_image: str) -> Iterator[Pod]:
    with grpc.insecure_channel(f"unix://{crib.cri_socket}") as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)
        images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)),
                         timeout=120)
        p = Pod(api_pb2_grpc.RuntimeServiceStub(channel), busybox_image)
        try:
            yield p.start()
        finally:
            p.stop()


@pytest.mark.parametrize("transport", ["spdy", "ws"])
async def test_exec_through_cri(pod: Pod, transport: str) -> None:
    reply = pod.runtime.Exec(api_pb2.ExecRequest(
        container_id=pod.containers["sleeper"][:12], cmd=["sh", "-c", "cat; exit 3"],
        stdin=True, stdout=True, stderr=True), timeout=10)
    assert reply.url.startswith("http://127.0.0.1:")
    client = await open_stdio(reply.url, transport, stdin=True)
    await client.write(b"through the gateway\n")
    await client.close_stdin()
    result = await client.wait()
    assert (result.stdout, result.exit_code) == (b"through the gateway\n", 3)
    with pytest.raises(UpgradeRefused):  # one use only
        await open_stdio(reply.url, transport)


async def test_exec_rejects_bad_requests(pod: Pod) -> None:
    for request, code in (
        (api_pb2.ExecRequest(container_id="nope", cmd=["ls"], stdout=True),
         grpc.StatusCode.NOT_FOUND),
        (api_pb2.ExecRequest(container_id=pod.containers["sleeper"], cmd=["ls"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (api_pb2.ExecRequest(container_id=pod.containers["sleeper"], cmd=["ls"], tty=True,
                             stdout=True, stderr=True), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            pod.runtime.Exec(request, timeout=10)
        assert err.value.code() == code


async def test_attach_through_cri(pod: Pod) -> None:
    def url() -> str:
        return str(pod.runtime.Attach(api_pb2.AttachRequest(
            container_id=pod.containers["reader"], stdin=True, stdout=True, stderr=True),
            timeout=10).url)

    client = await open_stdio(url(), "spdy", stdin=True)
    await client.write(b"hello\n")
    await client.wait_output(b"got hello\n")
    await client.close()  # detach
    await asyncio.sleep(0.2)
    client = await open_stdio(url(), "ws", stdin=True)
    await client.write(b"again\n")
    await client.wait_output(b"got again\n")
    await client.write(b"quit\n")
    assert (await client.wait()).exit_code == 4


async def test_port_forward_through_cri(pod: Pod) -> None:
    reply = pod.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod.id,
                                                               port=[8080]), timeout=10)
    pf = await SpdyPortForward().connect(reply.url)
    try:
        async def get() -> bytes:
            conn = await pf.open(8080)
            await conn.send(b"GET / HTTP/1.0\r\n\r\n")
            return await conn.read_all()

        for _ in range(50):  # httpd may still be starting
            first, second = await asyncio.gather(get(), get())
            if b"crib-pf-ok" in first:
                break
            await asyncio.sleep(0.1)
        assert b"crib-pf-ok" in first and b"crib-pf-ok" in second
    finally:
        await pf.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("websocket", [False, True], ids=["spdy", "websocket"])
async def test_kubectl_through_cri(pod: Pod, tmp_path: Path, websocket: bool) -> None:
    """kubectl -> (API server stand-in) -> URL from CRI Exec via the gateway, as a kubelet
    would obtain it -> runtimed's streaming server -> runc in the pod."""

    async def url_for(spec: Any) -> str:
        if isinstance(spec, ExecSpec):
            request = api_pb2.ExecRequest(container_id=spec.container_id, cmd=list(spec.cmd),
                                          stdin=spec.stdin, stdout=spec.stdout,
                                          stderr=spec.stderr, tty=spec.tty)
            return str((await asyncio.to_thread(pod.runtime.Exec, request, timeout=10)).url)
        request = api_pb2.PortForwardRequest(pod_sandbox_id=spec.sandbox_id)
        return str((await asyncio.to_thread(pod.runtime.PortForward, request,
                                            timeout=10)).url)

    fake = await FakeApiServer(url_for=url_for).start()
    try:
        fake.pods["web"] = (pod.containers["sleeper"], pod.id)
        env = {**os.environ, "HOME": str(tmp_path),
               "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": str(websocket).lower()}
        proc = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", str(fake.kubeconfig(tmp_path / "kubeconfig")), "exec",
            "-i", "web", "--", "sh", "-c", "cat; hostname >&2; exit 7",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(b"via kubectl\n"), 60)
        assert out == b"via kubectl\n", err
        assert proc.returncode == 7, err
        assert fake.upgrades == ["websocket" if websocket else "spdy/3.1"]
    finally:
        await fake.stop()

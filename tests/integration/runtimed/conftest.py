"""A crib stack with the busybox test image pulled, and a small CRI helper over grpcio."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from tests.support.stack import Stack


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    stack = Stack.create()
    stack.start()
    try:
        yield stack
    finally:
        stack.cleanup()


class Cri:
    """The independent grpcio client against the gateway's socket."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.channel = grpc.insecure_channel(f"unix://{stack.cri_socket}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)
        self.logs = Path(stack.root) / "podlogs"

    def close(self) -> None:
        self.channel.close()

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = grpc.insecure_channel(f"unix://{self.stack.cri_socket}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)

    def pod_config(self, name: str = "", **kw: Any) -> api_pb2.PodSandboxConfig:
        uid = uuid.uuid4().hex[:10]
        name = name or f"p-{uid}"
        logdir = self.logs / uid
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="crib-test"),
            hostname=name, log_directory=str(logdir), **kw)

    def run_pod(self, config: api_pb2.PodSandboxConfig | None = None,
                handler: str = "") -> tuple[str, api_pb2.PodSandboxConfig]:
        config = config or self.pod_config()
        sid = self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=config, runtime_handler=handler), timeout=60).pod_sandbox_id
        return sid, config

    def create(self, sid: str, pod: api_pb2.PodSandboxConfig, image: str, name: str,
               command: list[str] | None = None, args: list[str] | None = None,
               **kw: Any) -> str:
        cfg = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image), command=command or [], args=args or [],
            log_path=f"{name}.log", **kw)
        return self.rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=cfg, sandbox_config=pod), timeout=60).container_id

    def start(self, cid: str) -> None:
        self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)

    def status(self, cid: str) -> api_pb2.ContainerStatus:
        return self.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid),
                                       timeout=10).status

    def wait_exit(self, cid: str, timeout: float = 20) -> api_pb2.ContainerStatus:
        end = time.monotonic() + timeout
        while True:
            st = self.status(cid)
            if st.state == api_pb2.CONTAINER_EXITED or time.monotonic() > end:
                return st
            time.sleep(0.05)

    def remove_pod(self, sid: str) -> None:
        self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                                 timeout=60)


@pytest.fixture(scope="module")
def cri(crib: Stack) -> Iterator[Cri]:
    client = Cri(crib)
    try:
        yield client
    finally:
        client.close()
        shutil.rmtree(client.logs, ignore_errors=True)


@pytest.fixture(scope="module")
def image(cri: Cri, busybox_image: str) -> str:
    cri.img.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)),
                      timeout=120)
    return busybox_image


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code()  # type: ignore[no-any-return]

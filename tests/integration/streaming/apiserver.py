"""Just enough of a Kubernetes API server for `kubectl exec/attach/port-forward` to reach
our streaming server: an independent SPDY and WebSocket client (client-go) for our tests.

It serves discovery and one Pod per name, and for the `exec`, `attach` and `portforward`
subresources it does what the API server and kubelet do together: obtain a one-time URL
(here straight from the StreamServer, with the options from the query string), then forward
the client's upgrade request to it and relay bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from runtimed.streaming import AttachSpec, ExecSpec, PortForwardSpec, StreamServer

_POD = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)(?:/(exec|attach|portforward))?")

RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
    "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["get", "list"], "shortNames": ["po"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
        {"name": "pods/attach", "singularName": "", "namespaced": True,
         "kind": "PodAttachOptions", "verbs": ["create", "get"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True,
         "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
    ],
}


class FakeApiServer:
    """Maps pod names to (container id, sandbox id) and serves kubectl."""

    def __init__(self, stream: StreamServer | None = None,
                 url_for: Callable[[Any], Awaitable[str]] | None = None) -> None:
        """URLs come from `url_for(spec)` (e.g. a CRI Exec call through the gateway, as the
        kubelet gets them) or straight from `stream`."""
        self.stream = stream
        self.url_for = url_for
        self.pods: dict[str, tuple[str, str]] = {}
        self.requests: list[str] = []
        self.upgrades: list[str] = []  # the Upgrade header of each relayed request
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> FakeApiServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "crib",
            "clusters": [{"name": "crib", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "crib", "user": {}}],
            "contexts": [{"name": "crib", "context": {"cluster": "crib", "user": "crib",
                                                       "namespace": "default"}}],
        }))
        return path

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.requests.append(f"{method} {target}")
            parts = urlsplit(target)
            query = parse_qs(parts.query)
            match = _POD.fullmatch(parts.path)
            if parts.path == "/api":
                _json(writer, {"kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": []})
            elif parts.path == "/apis":
                _json(writer, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
            elif parts.path == "/api/v1":
                _json(writer, RESOURCES)
            elif match and match.group(2) in self.pods and not match.group(3):
                _json(writer, _pod(match.group(1), match.group(2)))
            elif match and match.group(2) in self.pods:
                await self._relay(match.group(2), match.group(3), query, head, reader, writer)
                return
            else:
                _json(writer, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404}, 404)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay(self, pod: str, sub: str, query: dict[str, list[str]], head: bytes,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        container_id, sandbox_id = self.pods[pod]
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("upgrade:"):
                self.upgrades.append(line.split(":", 1)[1].strip().lower())

        def flag(name: str) -> bool:
            return query.get(name, ["false"])[0] in ("true", "1")

        spec: Any
        if sub == "exec":
            spec = ExecSpec(container_id, tuple(query.get("command", [])), stdin=flag("stdin"),
                            stdout=flag("stdout"), stderr=flag("stderr"), tty=flag("tty"))
        elif sub == "attach":
            spec = AttachSpec(container_id, stdin=flag("stdin"), stdout=flag("stdout"),
                              stderr=flag("stderr"), tty=flag("tty"))
        else:
            spec = PortForwardSpec(sandbox_id, ())
        if self.url_for is not None:
            url = urlsplit(await self.url_for(spec))
        else:
            assert self.stream is not None
            url = urlsplit(self.stream.url(spec))
        first, rest = head.split(b"\r\n", 1)
        method, _, version = first.decode().split(" ")
        # Keep the client's query (the WebSocket port-forward reads its ports there).
        target = url.path + (f"?{urlsplit(first.decode().split(' ')[1]).query}")
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
        up_writer.write(f"{method} {target} {version}\r\n".encode() + rest)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()


def _pod(namespace: str, name: str) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "main", "image": "busybox", "stdin": True,
                                     "tty": False}]},
            "status": {"phase": "Running",
                       "containerStatuses": [{"name": "main", "ready": True,
                                              "state": {"running": {}}}]}}


def _json(writer: asyncio.StreamWriter, body: dict[str, Any], status: int = 200) -> None:
    data = json.dumps(body).encode()
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)

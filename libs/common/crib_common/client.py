"""One HTTP client for talking to a crib daemon over its UNIX socket.

`DaemonClient` holds one `aiohttp.ClientSession` on a `UnixConnector` for its target and
turns every transport failure into the shared error vocabulary in one place
(`_map_transport_errors`): a missing or refusing socket is Unavailable naming the daemon, a
timeout is DeadlineExceeded, an error answer is rebuilt from its JSON body. Per-daemon
typed clients (`crib_common.clients`) subclass it and expose methods that take and return
models; callers never touch aiohttp.

The request id bound in the logging context is sent as `X-Request-Id`; a timeout becomes
both the client's total timeout and the `X-Crib-Timeout` header the daemon enforces.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
from pydantic import BaseModel, TypeAdapter

from .errors import CribError, DeadlineExceeded, Internal, Unavailable, error_from_body
from .server import PROTO_CONTENT_TYPE, REQUEST_ID_HEADER, TIMEOUT_HEADER

__all__ = ["DaemonClient"]

M = TypeVar("M", bound=BaseModel)

# Connecting to a local socket either works at once or the daemon is not there.
DEFAULT_CONNECT_TIMEOUT = 1.0


def _request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


@contextlib.contextmanager
def _map_transport_errors(name: str, socket: Path, timeout: float | None) -> Iterator[None]:
    try:
        yield
    except CribError:
        raise
    except (TimeoutError, asyncio.TimeoutError):
        raise DeadlineExceeded(
            f"{name} did not answer within {timeout if timeout is not None else '?'}s"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise Unavailable(f"{name} is not available (socket {socket}): {exc.os_error}") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise Unavailable(f"{name} went away during the call (socket {socket}): {exc}") from None
    except aiohttp.ClientError as exc:
        raise Internal(f"talking to {name}: {type(exc).__name__}: {exc}") from None


class DaemonClient:
    """Calls one daemon; open with `async with` or call `close()` at the end."""

    def __init__(
        self,
        name: str,
        socket: Path,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        default_timeout: float | None = 60.0,
    ) -> None:
        self.name = name
        self.socket = Path(socket)
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=str(self.socket), limit=256)
            self._session = aiohttp.ClientSession(
                connector=connector, base_url="http://crib", auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        total = timeout if timeout is not None else self.default_timeout
        return aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout)

    def _headers(self, timeout: float | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = dict(extra or {})
        rid = _request_id()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        if timeout is not None:
            headers[TIMEOUT_HEADER] = f"{timeout:.6f}"
        return headers

    # -------------------------------------------------------------- raw calls

    async def request_bytes(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        """One request; an error status raises the daemon's error, else (status, body)."""
        headers = self._headers(timeout, {"Content-Type": content_type} if content_type else None)
        with _map_transport_errors(self.name, self.socket, timeout):
            async with self._get_session().request(
                method, path, data=data, json=json_body, params=params,
                headers=headers, timeout=self._timeout(timeout),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise error_from_body(resp.status, body)
                return resp.status, body

    async def call_cri(self, grpc_path: str, message: bytes, *, timeout: float | None) -> bytes:
        """Forward one unary CRI call (protobuf in, protobuf out)."""
        _, body = await self.request_bytes(
            "POST", "/v1/cri" + grpc_path, data=message, timeout=timeout,
            content_type=PROTO_CONTENT_TYPE,
        )
        return body

    async def stream_cri(
        self, grpc_path: str, message: bytes, *, timeout: float | None
    ) -> AsyncIterator[bytes]:
        """Forward one server-streaming CRI call; yields each protobuf message."""
        headers = self._headers(timeout, {"Content-Type": PROTO_CONTENT_TYPE})
        with _map_transport_errors(self.name, self.socket, timeout):
            async with self._get_session().post(
                "/v1/cri" + grpc_path, data=message, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout),
            ) as resp:
                if resp.status >= 400:
                    raise error_from_body(resp.status, await resp.read())
                while True:
                    try:
                        head = await resp.content.readexactly(4)
                    except asyncio.IncompleteReadError as exc:
                        if exc.partial:
                            raise Internal(f"{self.name} cut a stream mid-message") from None
                        return
                    (size,) = struct.unpack(">I", head)
                    yield await resp.content.readexactly(size)

    # -------------------------------------------------------------- typed JSON helpers

    async def get_model(
        self, path: str, model: type[M], *, params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> M:
        _, body = await self.request_bytes("GET", path, params=params, timeout=timeout)
        return model.model_validate_json(body)

    async def get_list(
        self, path: str, model: type[M], *, params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[M]:
        _, body = await self.request_bytes("GET", path, params=params, timeout=timeout)
        return TypeAdapter(list[model]).validate_json(body)  # type: ignore[valid-type]

    async def post_model(
        self, path: str, body: BaseModel | None, model: type[M] | None, *,
        timeout: float | None = None,
    ) -> M | None:
        payload = body.model_dump_json().encode() if body is not None else b"{}"
        _, raw = await self.request_bytes(
            "POST", path, data=payload, timeout=timeout, content_type="application/json",
        )
        return model.model_validate_json(raw) if model is not None else None

    async def delete(self, path: str, *, timeout: float | None = None) -> None:
        await self.request_bytes("DELETE", path, timeout=timeout)

    async def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """The daemon's /healthz body; a not-ready daemon answers 503 with the same body."""
        headers = self._headers(None)
        with _map_transport_errors(self.name, self.socket, timeout):
            async with self._get_session().get(
                "/healthz", headers=headers, timeout=self._timeout(timeout),
            ) as resp:
                result: dict[str, Any] = await resp.json(content_type=None)
                return result

"""Structured logging for every daemon: JSON lines in production, console on a terminal.

Context (request_id, rpc, pod, container, image) is bound once at the edge with
`structlog.contextvars` and merged into every event. stdlib loggers (aiohttp, grpclib)
go through the same processor chain.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from types import TracebackType
from typing import Any

import structlog

from .settings import LogSection

__all__ = ["RequestContext", "configure_logging", "current_request_id", "get_logger"]

# The request id of the call being served, kept in its own ContextVar as well as in
# structlog's context: the HTTP client reads it on every call, and structlog's
# `get_contextvars()` copies the whole context to answer one key.
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "crib_request_id", default=None
)


def current_request_id() -> str | None:
    """The request id bound by the innermost `RequestContext`, if any."""
    return _REQUEST_ID.get()


class RequestContext:
    """Bind a request id (and other fields) for logging for the length of one call.

    A plain class rather than `structlog.contextvars.bound_contextvars`: that one snapshots
    the whole context on entry, which shows up in the per-call cost of the gateway.
    """

    __slots__ = ("_fields", "_id_token", "_tokens")

    def __init__(self, request_id: str, **fields: Any) -> None:
        self._fields = {"request_id": request_id, **fields}
        self._id_token: contextvars.Token[str | None] | None = None
        self._tokens: Any = None

    def __enter__(self) -> RequestContext:
        self._id_token = _REQUEST_ID.set(self._fields["request_id"])
        self._tokens = structlog.contextvars.bind_contextvars(**self._fields)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)
        if self._id_token is not None:
            _REQUEST_ID.reset(self._id_token)


def configure_logging(section: LogSection, service: str) -> None:
    """Set up structlog and stdlib logging for one daemon process."""
    as_json = section.format == "json" or (section.format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # Drop below-level events before any other work: a structlog stdlib logger
            # otherwise stamps and renders a debug event that stdlib then discards.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(section.level.upper())
    # aiohttp's access log duplicates our canonical request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    """A structlog logger named `name` (stdlib logger name, so levels apply)."""
    return structlog.get_logger(name)

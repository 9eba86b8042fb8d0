"""One vocabulary of errors for every crib daemon, mapped at the edges.

    CribError                  (kind, HTTP status, gRPC status)
     ├── NotFound              not_found            404  NOT_FOUND
     ├── AlreadyExists         already_exists       409  ALREADY_EXISTS
     ├── InvalidArgument       invalid_argument     400  INVALID_ARGUMENT
     ├── FailedPrecondition    failed_precondition  412  FAILED_PRECONDITION
     ├── ResourceExhausted     resource_exhausted   413  RESOURCE_EXHAUSTED
     ├── Unimplemented         unimplemented        501  UNIMPLEMENTED
     ├── Unavailable           unavailable          503  UNAVAILABLE
     ├── DeadlineExceeded      deadline_exceeded    504  DEADLINE_EXCEEDED
     └── Internal              internal             500  INTERNAL

A daemon raises these; its error middleware turns them into an HTTP status and the small
JSON body `ErrorBody`; the HTTP client turns that body back into the same exception; the
gateway maps the exception to a `GRPCError` in one function. Anything that is not a
`CribError` is Internal and is logged once, with its traceback, where it is caught.
"""

from __future__ import annotations

from typing import ClassVar

from grpclib.const import Status
from pydantic import ConfigDict

from .models.base import JsonModel

__all__ = [
    "AlreadyExists",
    "CribError",
    "DeadlineExceeded",
    "ErrorBody",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unavailable",
    "Unimplemented",
    "error_from_body",
    "error_from_grpc",
    "error_from_kind",
]


class CribError(Exception):
    """Base of every expected failure; `kind` names it on the wire."""

    kind: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[Status] = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(kind=self.kind, message=self.message)


class NotFound(CribError):
    kind = "not_found"
    http_status = 404
    grpc_status = Status.NOT_FOUND


class AlreadyExists(CribError):
    kind = "already_exists"
    http_status = 409
    grpc_status = Status.ALREADY_EXISTS


class InvalidArgument(CribError):
    kind = "invalid_argument"
    http_status = 400
    grpc_status = Status.INVALID_ARGUMENT


class FailedPrecondition(CribError):
    kind = "failed_precondition"
    http_status = 412
    grpc_status = Status.FAILED_PRECONDITION


class ResourceExhausted(CribError):
    kind = "resource_exhausted"
    http_status = 413
    grpc_status = Status.RESOURCE_EXHAUSTED


class Unimplemented(CribError):
    kind = "unimplemented"
    http_status = 501
    grpc_status = Status.UNIMPLEMENTED


class Unavailable(CribError):
    kind = "unavailable"
    http_status = 503
    grpc_status = Status.UNAVAILABLE


class DeadlineExceeded(CribError):
    kind = "deadline_exceeded"
    http_status = 504
    grpc_status = Status.DEADLINE_EXCEEDED


class Internal(CribError):
    kind = "internal"
    http_status = 500
    grpc_status = Status.INTERNAL


class ErrorBody(JsonModel):
    """The JSON body of every non-2xx answer of a crib daemon."""

    model_config = ConfigDict(extra="ignore")

    kind: str
    message: str


_BY_KIND: dict[str, type[CribError]] = {
    cls.kind: cls
    for cls in (
        NotFound,
        AlreadyExists,
        InvalidArgument,
        FailedPrecondition,
        ResourceExhausted,
        Unimplemented,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}


def error_from_kind(kind: str, message: str) -> CribError:
    """The exception for a wire `kind`; an unknown kind is Internal, never dropped."""
    return _BY_KIND.get(kind, Internal)(message)


def error_from_body(status: int, raw: bytes) -> CribError:
    """Rebuild the daemon's exception from an HTTP error answer."""
    try:
        body = ErrorBody.model_validate_json(raw)
    except ValueError:
        text = raw[:512].decode("utf-8", "replace").strip()
        for cls in _BY_KIND.values():
            if cls.http_status == status:
                return cls(text or f"HTTP {status}")
        return Internal(f"HTTP {status}: {text}")
    return error_from_kind(body.kind, body.message)


_BY_GRPC: dict[Status, type[CribError]] = {cls.grpc_status: cls for cls in _BY_KIND.values()}


def error_from_grpc(status: Status, message: str) -> CribError:
    """The exception for a gRPC status (clients of the CRI, e.g. the `crib` CLI, use it).

    Statuses outside our vocabulary (UNKNOWN, ABORTED, ...) are Internal, never dropped.
    """
    return _BY_GRPC.get(status, Internal)(message)

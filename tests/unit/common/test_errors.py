"""The error vocabulary maps kind <-> HTTP <-> gRPC and back without losing anything."""

from __future__ import annotations

import pytest
from grpclib.const import Status

from crib_common import errors
from crib_common.errors import (
    CribError,
    Internal,
    error_from_body,
    error_from_grpc,
    error_from_kind,
)

KINDS = [errors.NotFound, errors.AlreadyExists, errors.InvalidArgument,
         errors.FailedPrecondition, errors.ResourceExhausted, errors.Unimplemented,
         errors.Unavailable, errors.DeadlineExceeded, errors.Internal]


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_round_trip_http_kind_grpc(cls: type[CribError]) -> None:
    original = cls(f"{cls.__name__} happened to pod-1")
    # daemon side: kind -> HTTP status and JSON body
    body = original.body().model_dump_json().encode()
    # client side: HTTP -> the same exception
    back = error_from_body(original.http_status, body)
    assert type(back) is cls and back.message == original.message
    # gateway side: kind -> gRPC status; a CRI client maps it back
    again = error_from_grpc(back.grpc_status, back.message)
    assert type(again) is cls and again.message == original.message
    assert error_from_kind(cls.kind, "m").__class__ is cls


def test_statuses_are_distinct() -> None:
    assert len({c.http_status for c in KINDS}) == len(KINDS)
    assert len({c.grpc_status for c in KINDS}) == len(KINDS)
    assert len({c.kind for c in KINDS}) == len(KINDS)


def test_unknown_kind_and_status_are_internal_never_dropped() -> None:
    assert isinstance(error_from_kind("exploded", "m"), Internal)
    assert isinstance(error_from_grpc(Status.UNKNOWN, "m"), Internal)
    assert isinstance(error_from_grpc(Status.ABORTED, "m"), Internal)


def test_non_json_error_body_maps_by_status() -> None:
    err = error_from_body(404, b"404: Not Found")
    assert isinstance(err, errors.NotFound)
    assert "Not Found" in err.message
    odd = error_from_body(418, b"teapot")
    assert isinstance(odd, Internal) and "418" in odd.message and "teapot" in odd.message

"""Map crib's error vocabulary to gRPC statuses, in one function."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from crib_common.errors import CribError


def to_grpc(error: CribError) -> GRPCError:
    """The GRPCError the kubelet sees for a daemon's error."""
    return GRPCError(error.grpc_status, error.message)


def unimplemented(rpc: str) -> GRPCError:
    return GRPCError(Status.UNIMPLEMENTED, f"{rpc} is not implemented by crib")

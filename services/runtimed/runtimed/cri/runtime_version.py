"""CRI `Version`: who we are and which CRI API we speak."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import VersionRequest, VersionResponse
from crib_common.server import CriTable
from crib_common.version import CRI_API_VERSION, RUNTIME_NAME, __version__
from crib_common.wire import encode_message

# The `version` field is the version of the kubelet's runtime API this answers, "0.1.0" in
# every runtime (containerd's and CRI-O's `kubeAPIVersion`).
KUBE_API_VERSION = "0.1.0"


def register(table: CriTable) -> None:
    # The answer never changes: built and encoded once, not per call (the kubelet asks
    # often; CriTable sends a handler's bytes as they are; issue #2).
    reply = encode_message(VersionResponse(
        version=KUBE_API_VERSION,
        runtime_name=RUNTIME_NAME,
        runtime_version=__version__,
        runtime_api_version=CRI_API_VERSION,
    ))

    @table.unary("/runtime.v1.RuntimeService/Version", VersionRequest)
    async def version(_request: VersionRequest) -> bytes:
        return reply

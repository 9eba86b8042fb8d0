"""The gateway's own knowledge of api.proto's services matches the generated bases."""

from __future__ import annotations

from grpclib.const import Cardinality

from crib_common.cri.runtime.v1 import ImageServiceBase, RuntimeServiceBase
from cri_gateway.routes import ROUTES, SERVER_STREAMING, UNROUTED


def test_every_rpc_known_with_its_cardinality() -> None:
    generated = {**RuntimeServiceBase().__mapping__(), **ImageServiceBase().__mapping__()}
    assert set(ROUTES) | set(UNROUTED) == set(generated)
    assert not set(ROUTES) & set(UNROUTED)
    streaming = {p for p, h in generated.items() if h.cardinality is Cardinality.UNARY_STREAM}
    assert SERVER_STREAMING == streaming
    assert all(h.cardinality in (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM)
               for h in generated.values())

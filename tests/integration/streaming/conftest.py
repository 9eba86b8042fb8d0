"""Fixtures for the streaming integration tests: a Node of real runc containers (see
nodes.py) and a started StreamServer pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from crib_common.settings import RuntimedSection
from runtimed.streaming import StreamServer
from tests.integration.streaming.nodes import FakeTargets, Node, make_node


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = make_node()
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
async def server(node: Node) -> AsyncIterator[tuple[StreamServer, FakeTargets]]:
    targets = FakeTargets(node)
    srv = StreamServer(RuntimedSection(stream_url_ttl=5.0), targets)
    await srv.start()
    try:
        yield srv, targets
    finally:
        await srv.stop()

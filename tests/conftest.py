"""Shared fixtures: a real crib stack on private sockets, and the independent CRI client."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.stack import Stack

# Registry and test-image fixtures (session-scoped) live in tests/support/fixtures.py.
pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (real namespaces, mounts, runtimes)")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """One crib node for the session; tests that kill daemons restart them."""
    with Stack.running() as s:
        yield s

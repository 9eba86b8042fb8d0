"""Session fixtures for a real local registry and the test images pushed to it.

Loaded by tests/conftest.py as a pytest plugin.

- `registry`: a started `tests.support.registry.Registry` (anonymous, plain HTTP on
  127.0.0.1, `.host` = "127.0.0.1:PORT"), stopped by PID at the end of the session.
- `busybox_image`: the reference "<registry.host>/crib-test/busybox:latest" of an OCI image
  built from `busybox_dynamic_rootfs` (real executables /bin/sh, /bin/ls, /bin/sleep,
  /bin/cat; user crib 1000:1000, group cribgrp 2000) with Cmd ["/bin/sh"], pushed once per
  session. Pull it through CRI PullImage before use.
- `busybox_pushed`: the same push as a `tests.support.images.Pushed` (digests, repo, tag).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.images import Pushed, busybox_image as build_busybox_image, push_image
from tests.support.registry import Registry


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A real docker-registry on loopback for the whole session."""
    reg = Registry().start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def busybox_pushed(registry: Registry) -> Pushed:
    """The dynamic busybox image pushed as crib-test/busybox:latest."""
    return push_image(registry, "crib-test/busybox", "latest", build_busybox_image())


@pytest.fixture(scope="session")
def busybox_image(busybox_pushed: Pushed) -> str:
    """Reference "<registry.host>/crib-test/busybox:latest" (Cmd ["/bin/sh"])."""
    return busybox_pushed.reference

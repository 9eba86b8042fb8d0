"""Fixtures for the lifecycle tests: settings under tmp_path, a fake world, and a real
`Runtimed` opened over it (`lifecycle_support.Daemon`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crib_common.settings import CribSettings

from .fakes import Fakes
from .lifecycle_support import Daemon, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> CribSettings:
    return make_settings(tmp_path)


@pytest.fixture
def fakes(settings: CribSettings) -> Fakes:
    return Fakes(exit_dir=settings.runtimed.run_dir / "exits")


@pytest.fixture
async def daemon(settings: CribSettings, fakes: Fakes) -> AsyncIterator[Daemon]:
    d = await Daemon.open(settings, fakes)
    await d.settle_sweep()
    try:
        yield d
    finally:
        await d.close()

"""The live table of image pulls: records, fan-out to watchers, metrics (see `table`)."""

from __future__ import annotations

from .fanout import Published, Watcher
from .metrics import PullMetrics
from .records import Pull, Transfer
from .table import PullTable

__all__ = ["Published", "Pull", "PullMetrics", "PullTable", "Transfer", "Watcher"]

"""One module per command group; each has `register(subparsers)`.

A command's handler is `async def run(args, settings) -> int`, set with
`parser.set_defaults(func=run)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Modules listed here are loaded; add a row for a new command group.
MODULES = ["node", "images", "pulls", "net", "pods", "restart"]


def load() -> list[ModuleType]:
    loaded: list[ModuleType] = []
    for name in MODULES:
        try:
            loaded.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return loaded

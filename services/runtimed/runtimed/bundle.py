"""OCI bundles on disk: every `config.json` is written here, one way (bundle.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_config", "write_config"]


def write_config(bundle: Path, spec: dict[str, Any]) -> Path:
    """Write `<bundle>/config.json` atomically: a temp file renamed over it, so a runtime
    (or a restarted runtimed) never reads a half-written one. Creates the bundle."""
    bundle.mkdir(parents=True, exist_ok=True)
    target = bundle / "config.json"
    tmp = bundle / ".config.json.tmp"
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, target)
    return target


def read_config(bundle: Path) -> dict[str, Any]:
    value = json.loads((bundle / "config.json").read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{bundle}/config.json is not an object")
    return value

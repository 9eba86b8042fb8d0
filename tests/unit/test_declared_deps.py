"""Every third-party module the daemons, the CLI and crib_common import is a declared
dependency of the project (not one that only the test extras happen to bring): the
image the compose stack builds installs the dependencies alone, and a daemon that
imports an undeclared module there does not start."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "services", ROOT / "libs"]


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def _own_packages() -> set[str]:
    """Top-level packages that are the project's own (each service's and libs')."""
    own = set()
    for top in SOURCES:
        for init in top.glob("*/*/__init__.py"):
            own.add(init.parent.name)
    return own


def _imports() -> dict[str, set[str]]:
    """top-level module -> the files importing it."""
    found: dict[str, set[str]] = {}
    for top in SOURCES:
        for path in top.rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(
                        str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared, own = _declared(), _own_packages()
    dists = packages_distributions()
    undeclared = {}
    for module, files in _imports().items():
        if module in own or module in sys.stdlib_module_names or module == "__future__":
            continue
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not owners & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"

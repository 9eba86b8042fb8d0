"""No import cycle between the packages of runtimed (issue 9).

Two checks: every module imports alone (a fresh interpreter, runtimed's modules dropped
from `sys.modules` before each one, so a cycle that only works in one import order fails
with the module's name), and the graph of imports between runtimed's packages and
top-level modules, read from the source, has no cycle (including imports inside
functions, which only hide a cycle; `if TYPE_CHECKING:` blocks are left out, they are
never run)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import runtimed

PACKAGE = Path(runtimed.__file__).parent

# Runs in a fresh interpreter: argv[1] is a JSON list of module names; prints a JSON
# list of [module, error] for those that fail to import alone.
_SCRIPT = """
import importlib, json, sys, traceback
failed = []
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "runtimed" or m.startswith("runtimed.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append([name, traceback.format_exc(limit=-3)])
print(json.dumps(failed))
"""


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_every_module_imports_alone() -> None:
    names = _modules()
    assert "runtimed.lifecycle.containers" in names and "runtimed.cri.sandbox_run" in names
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(names)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{name}:\n{error}" for name, error in failed)


def _unit(module: str) -> str:
    """runtimed.lifecycle.containers -> lifecycle; runtimed.node -> node."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "runtimed"


def _imported(module: str, path: Path) -> set[str]:
    """Names of the runtimed modules (or packages) `module` imports, from its source."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "runtimed":
                # `from .. import cgroups`: the names are the modules.
                found.update(f"runtimed.{alias.name}" for alias in node.names)
            elif target.startswith("runtimed."):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("runtimed."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        targets = {_unit(t) for t in _imported(module, path)} - {_unit(module)}
        graph.setdefault(_unit(module), set()).update(targets)
    assert graph["lifecycle"] and "lifecycle" in graph["daemon"]  # the reading works

    # Depth-first search; a back edge is a cycle, reported as its path.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    trail: list[str] = []

    def cycle_from(unit: str) -> list[str] | None:
        state[unit] = 1
        trail.append(unit)
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                found = cycle_from(nxt)
                if found:
                    return found
        trail.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state:
            found = cycle_from(unit)
            assert found is None, "import cycle between packages: " + " -> ".join(found)

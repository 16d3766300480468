"""The shape of the package: subpackages named for concepts, imports running one way only.

The rule (``layerfs/__init__.py``): data flows registry -> store -> layers -> mount, and a room
imports only from the rooms it may depend on (:data:`ALLOWED`), never back up.  Every import of a
``layerfs`` module, at module level or inside a function, counts: a lazy import back up is still a
circle.  The leaves (``_errors``, ``_units``, ``_proc``, ``_sys``) import no other room.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "layerfs"

LEAVES = {"_errors", "_units", "_proc", "_sys", "_native"}

#: room -> the rooms it may import (besides itself and the leaves).
ALLOWED: dict[str, set[str]] = {
    "_oci": set(),
    "_registry": {"_oci"},
    "_layer": {"_oci"},
    "_store": {"_oci"},
    "_transfer": {"_oci", "_registry", "_layer", "_store"},
    "_mount": {"_oci", "_layer", "_store"},
    "_run": {"_oci", "_store", "_mount"},
    "_maint": {"_oci", "_store", "_layer", "_mount"},
    "_cli": {"_oci", "_registry", "_layer", "_store", "_transfer", "_mount", "_run", "_maint"},
    "__init__": {"_oci", "_store"},
    "__main__": {"_cli"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module under layerfs) of every import of a layerfs module in ``path``."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    package = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if mod == "__init__":
        package = []
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:
                    out += [(node.lineno, ".".join([*base, a.name])) for a in node.names]
                else:
                    out.append((node.lineno, target))
            elif node.module and (node.module == "layerfs" or node.module.startswith("layerfs.")):
                rest = node.module.removeprefix("layerfs").lstrip(".")
                if rest:
                    out.append((node.lineno, rest))
                else:
                    out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("layerfs."):
                    out.append((node.lineno, a.name.removeprefix("layerfs.")))
    return out


def _room(module: str) -> str:
    return module.split(".")[0]


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_room() -> None:
    """Besides the leaves and the package's own files, every module lives in a known subpackage."""
    stray = [str(p.relative_to(PACKAGE)) for p in _sources()
             if _room(_module_name(p)) not in ALLOWED and _room(_module_name(p)) not in LEAVES]
    assert stray == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: Path) -> None:
    room = _room(_module_name(path))
    allowed = LEAVES | {room} | ALLOWED.get(room, set())
    if room in LEAVES:
        allowed = LEAVES
    bad = [f"line {line}: {target}" for line, target in _imports(path) if _room(target) not in allowed]
    assert bad == [], f"{path.relative_to(PACKAGE)} ({room}) imports against the flow"


def test_no_import_circle_between_modules() -> None:
    """No module reaches itself through imports (within a room too)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in _sources()}
    for path in _sources():
        deps = set()
        for _, target in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                deps.add(target)
        name = _module_name(path)
        graph[name] = deps - {name}
    # a package's __init__ re-exporting its own modules is not a circle of behaviour
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_circle(tmp_path: Path) -> None:
    """The import parser finds relative, absolute and lazy imports (so the rule can fail)."""
    src = tmp_path / "m.py"
    src.write_text("from .._store import Store\nimport layerfs._mount.daemon\n"
                   "def f():\n    from .._transfer.pull import pull\n")
    global PACKAGE
    saved = PACKAGE
    PACKAGE = tmp_path.parent
    try:
        (tmp_path / "__init__.py").write_text("")
        found = [t for _, t in _imports(src)]
    finally:
        PACKAGE = saved
    assert found == ["_store", "_mount.daemon", "_transfer.pull"]


def test_native_code_is_reached_through_sys_and_the_index_only() -> None:
    users = sorted(_module_name(p) for p in _sources() if any(t.endswith("_native") for _, t in _imports(p)))
    assert users == ["_mount.index", "_sys"]

"""The packages form layers: no runtime import cycle between ``sysupd``'s subpackages (imports
made only for type checking do not count), so each seam can be read, tested and replaced alone."""

from __future__ import annotations

import ast
from pathlib import Path

import sysupd

_ROOT = Path(sysupd.__file__).parent


def _runtime_imports(path: Path) -> set[str]:
    """The ``sysupd.*`` modules ``path`` imports when it runs (not under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            for child in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, child, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    visit(inner)
                elif isinstance(inner, list):
                    for handler in inner:
                        if isinstance(handler, ast.ExceptHandler):
                            visit(handler.body)

    visit(tree.body)
    return {name for name in found if name.startswith("sysupd.")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (_ROOT / parts[1]).is_dir() else "sysupd"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _ROOT.rglob("*.py"):
        relative = path.relative_to(_ROOT).parts
        if len(relative) < 2:
            continue  # top-level modules (errors, config, fsutil) are leaves everyone uses
        package = relative[0]
        for module in _runtime_imports(path):
            target = _package(module)
            if target not in ("sysupd", package):
                graph.setdefault(package, set()).add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph``, as the packages along it, or ``None``."""
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = walk(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = walk(start, [])
        if found:
            return found
    return None


def test_no_runtime_import_cycle_between_packages() -> None:
    graph = _graph()
    assert "sources" in graph.get("engine", set()), "the graph was read"
    cycle = _cycle(graph)
    assert cycle is None, "runtime import cycle: " + " -> ".join(cycle or [])


def test_the_core_imports_no_other_package() -> None:
    assert _graph().get("core", set()) == set()


def test_cycles_are_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None

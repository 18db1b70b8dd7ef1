"""Slot writers depend on their own interface, never on the engine that drives them.

Data flows one way (engine -> slots); a slot module importing the engine at run time would make
an import cycle and let a writer reach back into the engine. What a writer may ask of the
engine's payload stream is ``sysupd.slots.base.ReadAhead``.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import sysupd.slots
from sysupd.core.chunks import ChunkVerifier, chunk_digests
from sysupd.engine.stream import VerifiedReader
from sysupd.slots.base import ReadAhead

SLOTS = Path(sysupd.slots.__file__).parent


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module) -> list[str]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks (absolute names)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "slots/ uses absolute imports"
            found.append(node.module or "")
        for inner in ast.iter_child_nodes(node):
            visit(inner)

    visit(tree)
    return found


def test_no_slot_module_imports_the_engine_at_run_time() -> None:
    modules = sorted(SLOTS.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        imported = _runtime_imports(ast.parse(path.read_text(), str(path)))
        engine = [name for name in imported if name.split(".")[:2] == ["sysupd", "engine"]]
        assert engine == [], f"{path.name} imports {engine}"


def test_importing_every_slot_module_loads_no_engine_module() -> None:
    names = [f"sysupd.slots.{path.stem}" for path in sorted(SLOTS.glob("*.py"))]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('sysupd.engine')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_the_engines_payload_stream_is_a_read_ahead_stream() -> None:
    data = b"x" * 100
    verifier = ChunkVerifier(chunk_digests(data, 16), 16, len(data))
    with VerifiedReader(io.BytesIO(data), verifier) as reader:
        assert isinstance(reader, ReadAhead)
        reader.read_ahead(1)
        assert reader.read() == data
    assert not isinstance(io.BytesIO(data), ReadAhead)

"""Every module declares its public surface, and what it declares exists."""

from __future__ import annotations

import importlib
import pkgutil

import sysupd


def _modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(sysupd.__path__, "sysupd.")
        if info.name != "sysupd.__main__"
    ]


def test_every_module_has_a_docstring_and_a_true_all() -> None:
    modules = _modules()
    assert "sysupd.api.service" in modules
    for name in modules:
        module = importlib.import_module(name)
        assert module.__doc__, f"{name} has no module docstring"
        if hasattr(module, "__path__"):
            continue  # packages document themselves; their modules carry __all__
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{name} has no __all__"
        for symbol in exported:
            assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol!r}"


def test_core_does_no_io() -> None:
    """The core imports no networking, database, subprocess or file-system modules."""
    forbidden = {"aiohttp", "sqlite3", "subprocess", "socket", "asyncio", "os", "pathlib"}
    for name in _modules():
        if not name.startswith("sysupd.core."):
            continue
        module = importlib.import_module(name)
        imported = {
            value.__name__.split(".")[0]
            for value in vars(module).values()
            if type(value).__name__ == "module"
        }
        assert not imported & forbidden, f"{name} imports {imported & forbidden}"

"""A thread started under coverage on CPython 3.11 may die before its target runs.

Coverage installs its tracer in every new thread from threading's bootstrap (``sys.settrace``),
and 3.11's ``sys.settrace`` refuses a call while another thread is inside it ("Cannot install a
trace function while another trace function is being installed"; python/cpython#98257, made
reentrant in 3.12). A worker thread of the code under test that loses that race never runs, and
the test fails for a reason that is not the code's. Here the bootstrap's ``settrace`` retries
instead; nothing else of ``threading`` changes, and nothing on 3.12 or later.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_RACE = "another trace function is being installed"


class _RetryingSys:
    """``sys`` as threading's bootstrap sees it, with a ``settrace`` that retries the race."""

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)

    @staticmethod
    def settrace(function: Callable[..., Any] | None) -> None:
        for _ in range(1000):
            try:
                sys.settrace(function)
                return
            except RuntimeError as exc:
                if _RACE not in str(exc):
                    raise
            time.sleep(0.001)
        sys.settrace(function)


def install() -> None:
    """Make threading's bootstrap retry ``settrace`` (CPython before 3.12 only)."""
    if sys.version_info < (3, 12):
        threading._sys = _RetryingSys()  # type: ignore[attr-defined]

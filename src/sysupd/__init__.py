"""sysupd: a system update service for self-hosted appliances.

The package is laid out by architecture: ``core`` holds the I/O-free rules (envelope, sessions,
settings, schemas), ``store`` the SQLite state, ``api`` the WebSocket/HTTP edge, ``system`` the
machine-facing actions (reboot), and ``cli`` the operator's commands.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sysupd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]

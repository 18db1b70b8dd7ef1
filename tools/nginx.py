"""A real nginx serving a directory on a free loopback port, as a vendor or LAN mirror would.

Used by the tests (``tests/nginx.py``: the update server of the online tests) and by the
appliance's online scenario, whose guest reaches the host's loopback as 10.0.2.2 through QEMU's
user-mode networking.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["NginxError", "access_log", "nginx_serving"]

_START_S = 10.0

_CONFIG = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
{extra}
    }}
}}
"""


class NginxError(RuntimeError):
    """nginx is missing, or did not start."""


def nginx_binary() -> str:
    """Where nginx is (PATH, or /usr/sbin, which a user's PATH may lack).

    Raises:
        NginxError: it is not installed.
    """
    found = shutil.which("nginx") or next(
        (str(d / "nginx") for d in (Path("/usr/sbin"), Path("/sbin")) if (d / "nginx").exists()),
        None,
    )
    if found is None:
        raise NginxError("nginx is needed and is not installed: apt-get install nginx")
    return found


@contextmanager
def nginx_serving(root: Path, work: Path, extra: str = "") -> Iterator[str]:
    """nginx serving ``root`` on 127.0.0.1; yields its base URL.

    ``extra`` is added to the ``server`` block as is (directives such as
    ``location ~ \\.tar\\.zst$ { limit_rate 256; }``).

    Raises:
        NginxError: nginx is missing, exits at start, or does not start in time.
    """
    binary = nginx_binary()
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = work / "nginx.conf"
    config.write_text(_CONFIG.format(work=work, port=port, root=root, extra=extra))
    proc = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # nginx writes its pid file once it listens. A plain poll: this context manager is
        # synchronous, for tests and tools alike.
        deadline = time.monotonic() + _START_S
        while not (work / "nginx.pid").exists():
            if proc.poll() is not None:
                raise NginxError(
                    f"nginx failed: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise NginxError(f"nginx did not write its pid file within {_START_S:g} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def access_log(work: Path) -> list[str]:
    """The request lines nginx logged."""
    log = work / "access.log"
    return log.read_text().splitlines() if log.exists() else []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port

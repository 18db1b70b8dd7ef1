"""A real nginx serving a directory on a free loopback port, as a vendor or LAN mirror would."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.procs import free_port
from tests.programs import find, need

__all__ = ["nginx_serving"]

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


@contextmanager
def nginx_serving(root: Path, work: Path, extra: str = "") -> Iterator[str]:
    """nginx serving ``root``; yields its base URL. Fails the test, naming the package, where
    nginx is missing.

    ``extra`` is added to the ``server`` block as is (directives such as
    ``location ~ \\.tar\\.zst$ { limit_rate 256; }``).
    """
    need("nginx")
    binary = find("nginx")
    assert binary is not None
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "nginx.conf"
    config.write_text(_CONFIG.format(work=work, port=port, root=root, extra=extra))
    proc = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # nginx writes its pid file once it listens. A plain poll: this context manager is
        # synchronous (conftest.wait_until is for the event loop).
        deadline = time.monotonic() + _START_S
        while not (work / "nginx.pid").exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"nginx failed: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not write its pid file within {_START_S:g} s")
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


__all__ += ["access_log"]

"""Running ``sysupd`` as a real process in tests: free ports, a fast-KDF config, output reading."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.client import WsClient
from tests.conftest import FAST_KDF
from tests.fetching import closed_port as free_port

__all__ = ["PlainServe", "ServeProcess", "free_port", "run_cli", "write_config"]


def write_config(path: Path, **extra: object) -> Path:
    """A TOML configuration file with the test KDF cost and ``extra`` keys."""
    lines = [
        f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}"
        for k, v in {**FAST_KDF, **extra}.items()
    ]
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


async def run_cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run ``python -m sysupd ARGS`` (with ``env`` added to the environment); returns exit
    status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sysupd",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class ServeProcess:
    """``sysupd serve`` in a child process on free loopback ports."""

    def __init__(self, state_dir: Path, config: Path) -> None:
        self.state_dir = state_dir
        self.config = config
        self.ws_port = free_port()
        self.http_port = free_port()
        self.wss_port = free_port()
        self.https_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout_lines: list[str] = []

    async def start(self) -> None:
        """Start it and wait until it listens."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sysupd",
            "serve",
            "--config",
            str(self.config),
            "--state-dir",
            str(self.state_dir),
            "--host",
            "127.0.0.1",
            "--ws-port",
            str(self.ws_port),
            "--http-port",
            str(self.http_port),
            "--wss-port",
            str(self.wss_port),
            "--https-port",
            str(self.https_port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        await self.wait_for_line("sysupd listening")

    async def wait_for_line(self, text: str, timeout: float = 30) -> str:
        """Read stdout until a line containing ``text``; returns that line."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise EOFError(f"sysupd exited before printing {text!r}")
                line = raw.decode().rstrip("\n")
                self.stdout_lines.append(line)
                if text in line:
                    return line

    async def stop(self) -> int:
        """SIGTERM, then the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 30)

    def kill(self) -> None:
        """Kill it if it still runs (test clean-up)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


class PlainServe:
    """``sysupd serve`` without TLS on free loopback ports, configured by ``config`` keys, with
    its first administrator's password and its stderr in a file; ``descriptor_limit`` (when not
    0) lowers the child's RLIMIT_NOFILE (floods that must run it out)."""

    def __init__(self, tmp_path: Path, *, descriptor_limit: int = 0, **config: Any) -> None:
        self.state = tmp_path / "state"
        self.config = write_config(tmp_path / "sysupd.toml", **config)
        self.http_port = free_port()
        self.stderr_path = tmp_path / "stderr"
        self.proc: asyncio.subprocess.Process | None = None
        self.password = ""
        self._limit = descriptor_limit

    async def start(self) -> None:
        """Start it and wait until it listens."""
        limit = self._limit

        def lower_the_limit() -> None:
            if limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.stderr_path.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sysupd",
                "serve",
                "--config",
                str(self.config),
                "--state-dir",
                str(self.state),
                "--no-tls",
                "--ws-port",
                str(free_port()),
                "--http-port",
                str(self.http_port),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                preexec_fn=lower_the_limit,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "sysupd exited at start"
                if "with password" in line:
                    self.password = line.rsplit(" ", 1)[1].strip()
                if "sysupd listening" in line:
                    return

    async def answers(self) -> None:
        """An HTTP call and a WebSocket login from 127.0.0.1 succeed (the bound is for liveness:
        a starved service never answers)."""
        auth = {"Authorization": aiohttp.encode_basic_auth("admin", self.password)}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            url = f"http://127.0.0.1:{self.http_port}"
            async with http.post(f"{url}/api/sys/info", headers=auth) as reply:
                assert reply.status == 200
            client = WsClient(await http.ws_connect(f"{url}/websocket"))
            await client.login("admin", self.password)
            assert "system_id" in await client.call("sys", "info")
            await client.close()

    def log(self) -> str:
        """The service log file."""
        return (self.state / "log" / "sysupd.log").read_text()

    async def stop(self) -> None:
        """SIGTERM, and wait for it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)

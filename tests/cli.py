"""Running the ``sysupd`` client commands as a person would, against a service under test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysupd.api.service import Service
from tests.procs import run_cli

__all__ = ["Cli"]


@dataclass
class Cli:
    """``sysupd`` with its own configuration directory, talking to one service over https."""

    config_dir: Path
    server: str

    @classmethod
    def for_service(cls, service: Service, config_dir: Path, *, tls: bool = True) -> Cli:
        """A client of ``service``: its https listener (the default), or the plain one."""
        if tls:
            return cls(config_dir, f"https://127.0.0.1:{service.https_port}")
        return cls(config_dir, f"http://127.0.0.1:{service.http_port}")

    @property
    def env(self) -> dict[str, str]:
        """The environment the commands run with."""
        return {"SYSUPD_CONFIG_DIR": str(self.config_dir), "SYSUPD_SERVER": self.server}

    async def run(self, *args: str, stdin: str = "", timeout: float = 60) -> tuple[int, str, str]:
        """Run ``sysupd ARGS``; exit status, stdout, stderr."""
        return await run_cli(*args, stdin=stdin, env=self.env, timeout=timeout)

    async def ok(self, *args: str, stdin: str = "") -> str:
        """Run ``sysupd ARGS``, which must succeed; its stdout."""
        code, out, err = await self.run(*args, stdin=stdin)
        assert code == 0, f"sysupd {' '.join(args)} exited {code}: {err}"
        return out

    async def json(self, *args: str) -> Any:
        """Run ``sysupd ARGS --json``, which must succeed; its output parsed."""
        return json.loads(await self.ok(*args, "--json"))

    async def fails(self, *args: str, stdin: str = "") -> str:
        """Run ``sysupd ARGS``, which must fail with status 1; its stderr."""
        code, _, err = await self.run(*args, stdin=stdin)
        assert code == 1, f"sysupd {' '.join(args)} exited {code}, not 1: {err}"
        return err

    async def login(self, user: str, password: str) -> str:
        """``sysupd login --user USER --password-stdin``; its stderr (pinning notes)."""
        code, _, err = await self.run("login", "--user", user, "--password-stdin", stdin=password)
        assert code == 0, err
        return err

    def tokens(self) -> dict[str, Any]:
        """The kept logins."""
        data: dict[str, Any] = json.loads((self.config_dir / "tokens.json").read_text())
        return data

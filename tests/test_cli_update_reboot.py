"""``sysupd update --wait`` through a reboot whose old process still answers while it goes down.

A real service installs the update and asks for its reboot; a TCP relay in front of it plays the
network: it cuts the client's connections (the old process closing its sessions), keeps handing
new ones to the old process for a moment (it still listens while it shuts down), cuts those too,
refuses connections while nothing listens, then hands them to a new service on the same state
directory (the process after the reboot). The client must take none of that for the result.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from sysupd.api.service import Service
from sysupd.release.repository import ReleaseRepository
from tests.cli import Cli
from tests.conftest import ADMIN, ServiceFactory, wait_until
from tests.offline import device_overrides
from tests.releases import make_repo


class Relay:
    """A TCP relay on 127.0.0.1 to one backend port, which the test changes or takes away."""

    def __init__(self) -> None:
        self.backend: int | None = None
        """Where new connections go; ``None``: they are closed at once (nothing listens)."""
        self.accepted = 0
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The relay's port."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        """Stop listening and cut everything."""
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Close every relayed connection, both ways."""
        for writer in list(self._pipes):
            writer.close()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.backend is None:
            writer.close()
            return
        self.accepted += 1
        try:
            far_reader, far_writer = await asyncio.open_connection("127.0.0.1", self.backend)
        except OSError:
            writer.close()
            return
        self._pipes |= {writer, far_writer}
        for source, sink in ((reader, far_writer), (far_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


async def _reboot_slowly(
    old: Service, relay: Relay, start_service: ServiceFactory, state: Path, repo: ReleaseRepository
) -> Service:
    """The reboot as the client sees it across the relay: the old process's sessions close, it
    still takes (and answers) connections for a moment, then it is gone, then the new one."""
    await old.wait_exit_requested()
    accepted = relay.accepted
    relay.cut()
    await wait_until(
        lambda: relay.accepted > accepted, 5, "the client comes back, to the old process"
    )
    # The two phases of the reboot last as long as they last on a device; their length is the
    # scenario, not a wait for something.
    await asyncio.sleep(1.0)  # answering the whole time: sys/info, sys/update_status…
    relay.backend = None
    relay.cut()
    await old.stop()
    await asyncio.sleep(1.0)  # nothing listens
    new = await start_service(state_dir=state, **device_overrides(repo, auto_reboot=False))
    relay.backend = new.http_port
    return new


async def test_wait_takes_only_the_new_process_for_the_result(
    start_service: ServiceFactory, repo: ReleaseRepository, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    bundle = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", bundle)
    overrides = device_overrides(
        repo, auto_reboot=True, auto_reboot_delay_s=1, reboot_action="exit"
    )
    old = await start_service(state_dir=state, **overrides)
    relay = Relay()
    await relay.start()
    relay.backend = old.http_port
    try:
        cli = Cli(tmp_path / "cfg", f"http://127.0.0.1:{relay.port}")
        await cli.login(*ADMIN)
        reboot = asyncio.create_task(_reboot_slowly(old, relay, start_service, state, repo))
        code, _, err = await cli.run("update", "--file", str(bundle), "--wait", timeout=90)
        new = await reboot
    finally:
        await relay.close()
    assert code == 0, err
    assert "the service is rebooting; waiting for it to come back" in err
    assert "closed the connection" not in err
    assert err.splitlines()[-1] == "now running 1.1.0 in slot B (boot status: good)"
    info = new.system_info()
    assert (info["system_version"], info["slot"]) == ("1.1.0", "B")


async def test_wait_gives_up_at_its_deadline_naming_it(
    start_service: ServiceFactory, repo: ReleaseRepository, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    bundle = tmp_path / "1.1.0.bundle"
    repo.write_bundle("1.1.0", bundle)
    overrides = device_overrides(
        repo, auto_reboot=True, auto_reboot_delay_s=1, reboot_action="exit"
    )
    old = await start_service(state_dir=state, **overrides)
    relay = Relay()
    await relay.start()
    relay.backend = old.http_port

    async def never_back() -> None:
        await old.wait_exit_requested()
        relay.backend = None
        relay.cut()
        await old.stop()

    try:
        cli = Cli(tmp_path / "cfg", f"http://127.0.0.1:{relay.port}")
        await cli.login(*ADMIN)
        gone = asyncio.create_task(never_back())
        code, _, err = await cli.run(
            "update", "--file", str(bundle), "--wait", "--wait-timeout", "3", timeout=60
        )
        await gone
    finally:
        await relay.close()
    assert code == 1
    assert "did not come back within 3 s of going down for the reboot" in err
    assert "see --wait-timeout" in err

"""The engine's one install entry point, ``install(source)``, through the twins of its seams: a
source that fails mid-stream is an acquire error and installs nothing; an ``OSError`` from the
source's stream is the source's fault, not the slot's; a slot writer that fails its write or
fsync is an install error with the booted slot intact; the service composes its engine once."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sysupd.engine
from sysupd.api.service import Service
from sysupd.engine.engine import ENGINE_SETTINGS, Engine
from sysupd.engine.slotset import SlotConfig
from sysupd.errors import AcquireError, InstallError
from sysupd.release.repository import ReleaseRepository
from sysupd.slots.base import SlotWriter
from sysupd.slots.memory import MemorySlot
from sysupd.sources.base import Acquired, DeviceView, Log
from sysupd.sources.memory import MemorySource
from tests.engines import bundle_file, make_engine, running_device, snapshot_tree
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.fixture
def device(tmp_path: Path, repo: ReleaseRepository) -> Engine:
    return running_device(tmp_path, repo)


def _assert_nothing_installed(engine: Engine, running: dict[str, bytes], match: str) -> None:
    assert snapshot_tree(engine.state_dir / "slots" / "A") == running
    status = engine.status()
    assert (status.booted, status.next_boot, status.trial, status.job) == ("A", "A", None, None)
    assert status.slots["B"].version is None
    assert status.last_result is not None
    assert status.last_result.result == "failed"
    assert match in status.last_result.detail


def test_a_source_that_breaks_off_mid_payload_installs_nothing(
    device: Engine, repo: ReleaseRepository, tmp_path: Path
) -> None:
    data = bundle_file(repo, tmp_path, "1.1.0").read_bytes()
    source = MemorySource(data, fail_at=len(data) - 1000, label="the twin")
    running = snapshot_tree(device.state_dir / "slots" / "A")
    lines: list[str] = []
    with pytest.raises(AcquireError, match="the twin broke off at byte"):
        device.install(source, log=lines.append)
    _assert_nothing_installed(device, running, "broke off")
    assert source.closed == len(source.opened) == 1, "opened once and closed again"
    assert str(source.opened[0].installed) == device.settings.factory_version
    assert any("installing into slot B" in line for line in lines), "it got as far as the slot"
    # The next update from a whole source succeeds.
    assert str(device.install(MemorySource(data)).version) == "1.1.0"


def test_a_source_that_breaks_off_in_the_header_leaves_the_slot_untouched(
    device: Engine, repo: ReleaseRepository, tmp_path: Path
) -> None:
    data = bundle_file(repo, tmp_path, "1.1.0").read_bytes()
    running = snapshot_tree(device.state_dir / "slots" / "A")
    boot = device.bootloader.load()
    with pytest.raises(AcquireError, match="broke off at byte 40"):
        device.install(MemorySource(data, fail_at=40))
    _assert_nothing_installed(device, running, "broke off")
    assert device.bootloader.load() == boot, "the boot record was not touched"


class _FailingDisk:
    """A source on a disk that fails (EIO) after its first bytes: the source's fault."""

    label = "a failing disk"
    local = True

    def __init__(self, data: bytes) -> None:
        self._data = data

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        yield Acquired(self, "/dev/failing")

    def read(self, size: int, /) -> bytes:
        if not self._data:
            raise OSError(errno.EIO, "Input/output error")
        data, self._data = self._data[:size], self._data[size:]
        return data


def test_an_os_error_reading_the_source_is_an_acquire_error(
    device: Engine, repo: ReleaseRepository, tmp_path: Path
) -> None:
    data = bundle_file(repo, tmp_path, "1.1.0").read_bytes()
    running = snapshot_tree(device.state_dir / "slots" / "A")
    with pytest.raises(AcquireError, match="Input/output error"):
        device.install(_FailingDisk(data[: len(data) // 2]))  # in the payload
    _assert_nothing_installed(device, running, "Input/output error")
    with pytest.raises(AcquireError, match="the bundle could not be read: Input/output error"):
        device.install(_FailingDisk(data[:40]))  # in the header
    _assert_nothing_installed(device, running, "Input/output error")


class _Unopenable(_FailingDisk):
    """A source whose opening fails with an ``OSError`` (a vanished mount, say)."""

    @contextlib.contextmanager
    def open(self, device: DeviceView, log: Log) -> Iterator[Acquired]:
        raise OSError(errno.ENOENT, "No such file or directory")
        yield Acquired(self, "/dev/failing")  # never reached: a generator all the same


def test_an_os_error_opening_the_source_is_an_acquire_error(device: Engine) -> None:
    running = snapshot_tree(device.state_dir / "slots" / "A")
    with pytest.raises(AcquireError, match=r"a failing disk could not be opened: .*No such file"):
        device.install(_Unopenable(b""))
    _assert_nothing_installed(device, running, "No such file")


async def test_the_service_composes_its_engine_once(service: Service) -> None:
    engine = service.engine()
    assert service.engine() is engine
    service.change_settings({"event_interval_s": 2}, by="test")
    assert service.engine() is engine, "a setting the engine does not read keeps it"
    service.change_settings({"allow_downgrade": True}, by="test")
    rebuilt = service.engine()
    assert rebuilt is not engine
    assert rebuilt.settings.allow_downgrade


def _twins(fail: MemorySlot) -> tuple[dict[str, MemorySlot], Callable[[SlotConfig], SlotWriter]]:
    slots = {"A": MemorySlot("A"), "B": fail}
    return slots, lambda config: slots[config.name]


@pytest.mark.parametrize(
    ("failing", "match"),
    [
        (MemorySlot("B", fail_write_at=5000), "no space left in the slot"),
        (MemorySlot("B", fail_write_at=5000, fail_errno=errno.EIO), "I/O error in the slot"),
        (MemorySlot("B", fail_fsync=True), "I/O error in the slot"),
    ],
    ids=["write-full", "write-broken", "fsync"],
)
def test_a_slot_that_fails_its_write_or_fsync_is_an_install_error(
    tmp_path: Path, repo: ReleaseRepository, failing: MemorySlot, match: str
) -> None:
    slots, writer = _twins(failing)
    state = tmp_path / "state"
    engine = make_engine(state, repo, slot_writer=writer)
    engine.start()
    engine.confirm(True, "")
    boot = engine.bootloader.load()
    data = bundle_file(repo, tmp_path, "1.1.0").read_bytes()
    with pytest.raises(InstallError, match=match):
        engine.install(MemorySource(data))
    assert slots["A"].installs == [], "the booted slot was never asked to write"
    assert [call.error is not None for call in failing.installs] == [True]
    assert failing.data == b""
    assert failing.wiped == 1
    status = engine.status()
    assert (status.booted, status.next_boot, status.trial, status.job) == ("A", "A", None, None)
    assert status.slots["B"].version is None
    assert status.last_result is not None
    assert status.last_result.result == "failed"
    assert engine.bootloader.load().order == boot.order
    assert not engine.bootloader.load().slots["B"].ok, "the failed slot stays unbootable"


def test_the_slot_writer_twin_receives_the_verified_payload(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    slots, writer = _twins(MemorySlot("B"))
    engine = make_engine(tmp_path / "state", repo, slot_writer=writer)
    engine.start()
    engine.confirm(True, "")
    bundle = bundle_file(repo, tmp_path, "1.1.0")
    manifest = engine.install(MemorySource(bundle.read_bytes()))
    (call,) = slots["B"].installs
    assert call.error is None
    assert call.spec.sha256 == manifest.sha256
    assert hashlib.sha256(slots["B"].data).hexdigest() == manifest.sha256
    assert engine.status().trial == "B"


def test_every_setting_the_engine_reads_renews_it() -> None:
    """A setting read anywhere in engine/ must be one whose change makes the service compose a
    new engine, or the cached one would go on with the old value."""
    root = Path(sysupd.engine.__file__).parent
    read = {
        name
        for path in root.glob("*.py")
        for name in re.findall(r"\bsettings\.([a-z_]+)\b", path.read_text())
    }
    assert "boot_attempts" in read, "the engine's reads were found"
    assert read <= set(ENGINE_SETTINGS), f"not in ENGINE_SETTINGS: {read - set(ENGINE_SETTINGS)}"

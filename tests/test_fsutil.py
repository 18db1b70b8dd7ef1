"""Atomic writes and capped reads on real files: the old content survives every failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sysupd.fsutil import FileTooLargeError, atomic_write, fsync_dir, read_capped


def _leftovers(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f".{name}.*.tmp"))


def test_atomic_write_creates_and_replaces_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"first", mode=0o600)
    assert target.read_bytes() == b"first"
    assert target.stat().st_mode & 0o777 == 0o600
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o644  # set exactly, whatever the umask
    assert _leftovers(tmp_path, "state.json") == []


def test_atomic_write_of_nothing_gives_an_empty_file(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    atomic_write(target, b"")
    assert target.read_bytes() == b""


def test_failure_mid_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    """A real short write: the file-size limit stops the write after 4 KiB (EFBIG)."""
    target = tmp_path / "state.json"
    target.write_bytes(b"old content")
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from sysupd.fsutil import atomic_write\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    atomic_write(Path(sys.argv[1]), b'x' * 1_000_000)\n"
        "except OSError as exc:\n"
        "    print('failed', exc.errno)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("failed"), done.stdout + done.stderr
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path, "state.json") == []


def test_failure_to_replace_keeps_the_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(OSError, match=r"Is a directory|Directory not empty"):
        atomic_write(target, b"new")
    assert (target / "inside").read_bytes() == b"keep"
    assert _leftovers(tmp_path, "state.json") == []


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nowhere" / "state.json", b"new")


def test_fsync_dir_on_a_real_directory_and_a_missing_one(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_read_capped_reads_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100)
    assert read_capped(path, 100) == b"a" * 100
    with pytest.raises(FileTooLargeError) as caught:
        read_capped(path, 99)
    assert caught.value.filename == str(path)
    assert isinstance(caught.value, OSError)


def test_read_capped_does_not_trust_a_zero_size(tmp_path: Path) -> None:
    """Files in /proc report size 0; the cap still holds on what is actually read."""
    cmdline = Path("/proc/self/cmdline")
    if not cmdline.exists():
        pytest.skip("no /proc on this system")
    assert cmdline.stat().st_size == 0
    assert read_capped(cmdline, 1 << 16)
    with pytest.raises(FileTooLargeError):
        read_capped(cmdline, 1)


def test_read_capped_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_capped(fifo, 100)


def test_read_capped_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_capped(tmp_path / "missing", 100)

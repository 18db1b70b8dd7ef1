"""The systemd unit in docs/ is valid (``systemd-analyze verify``) and runs what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sysupd.core.settings import Settings
from tests.programs import requires

UNIT = Path(__file__).parent.parent / "docs" / "systemd" / "sysupd.service"


def test_the_unit_settles_the_boot_before_serving() -> None:
    lines = UNIT.read_text().splitlines()
    pre = next(line for line in lines if line.startswith("ExecStartPre="))
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert pre.split()[1:4] == ["boot", "--reboot", "--keep-going"]
    assert start.split()[1] == "serve"


def test_the_unit_gives_the_health_check_time_to_end() -> None:
    """ExecStartPre runs the health check: systemd's start timeout (90 s by default) must not
    end it before its own limit does, or the unit restarts for ever instead of rolling back."""
    limit = next(
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("TimeoutStartSec=")
    )
    assert limit.endswith("min")
    assert int(limit[:-3]) * 60 > Settings().health_check_timeout_s


@requires("systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    sysupd = Path(sys.executable).with_name("sysupd")
    assert sysupd.exists(), "the sysupd entry point is installed beside the interpreter"
    unit = tmp_path / "sysupd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/sysupd", str(sysupd)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(unit) in line or "sysupd.service" in line
    ]
    assert done.returncode == 0, done.stderr
    assert problems == [], problems

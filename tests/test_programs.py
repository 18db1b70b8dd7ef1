"""A missing program fails its tests and names the package; it never skips them in silence."""

from __future__ import annotations

import pytest

from tests.programs import need, requires


def test_a_missing_program_fails_and_names_what_to_install() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"sysupd-missing-xyz.*scripts/test"):
        need("python3", "sysupd-missing-xyz")


def test_a_program_that_is_here_passes() -> None:
    need("python3")


@requires("python3")
async def test_the_decorator_keeps_the_test_and_its_fixtures(tmp_path: object) -> None:
    assert tmp_path is not None

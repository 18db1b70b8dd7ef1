"""``sysupd user add|list|passwd|remove`` against a real state directory."""

from __future__ import annotations

from pathlib import Path

from tests.procs import run_cli, write_config


async def test_user_lifecycle(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "c.toml"))
    state = ["--config", config, "--state-dir", str(tmp_path / "s")]
    status, out, _ = await run_cli(
        "user", "add", "bob", "--admin", "--password-stdin", *state, stdin="first-pass\n"
    )
    assert status == 0
    assert "added administrator bob" in out
    status, out, _ = await run_cli("user", "add", "eve", "--password-stdin", *state, stdin="p2\n")
    assert status == 0
    status, out, _ = await run_cli("user", "list", *state)
    rows = [line.split("\t") for line in out.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("bob", "admin"), ("eve", "user")]

    status, _, err = await run_cli("user", "add", "bob", "--password-stdin", *state, stdin="x\n")
    assert status == 1
    assert "already exists" in err

    status, out, _ = await run_cli(
        "user", "passwd", "eve", "--password-stdin", *state, stdin="new-pass\n"
    )
    assert status == 0
    status, out, _ = await run_cli("user", "remove", "eve", *state)
    assert status == 0
    status, out, _ = await run_cli("user", "list", *state)
    assert "eve" not in out


async def test_user_refusals_name_the_problem(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "c.toml"))
    state = ["--config", config, "--state-dir", str(tmp_path / "s")]
    status, _, err = await run_cli("user", "add", "../x", "--password-stdin", *state, stdin="p\n")
    assert status == 1
    assert "user name" in err
    status, _, err = await run_cli("user", "add", "empty", "--password-stdin", *state, stdin="\n")
    assert status == 1
    assert "password must not be empty" in err
    status, _, err = await run_cli("user", "remove", "ghost", *state)
    assert status == 1
    assert "no user 'ghost'" in err
    status, _, err = await run_cli(
        "user", "passwd", "ghost", "--password-stdin", *state, stdin="p\n"
    )
    assert status == 1
    assert "no user 'ghost'" in err


async def test_no_password_is_asked_for_a_user_that_cannot_take_it(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "c.toml"))
    state = ["--config", config, "--state-dir", str(tmp_path / "s")]
    status, _, _ = await run_cli("user", "add", "bob", "--password-stdin", *state, stdin="p1\n")
    assert status == 0
    # No --password-stdin: it would prompt (and, with stdin at its end, abort) if it asked.
    status, out, err = await run_cli("user", "passwd", "ghost", *state)
    assert status == 1
    assert err.strip() == "Error: there is no user 'ghost'"
    assert "Password" not in out + err
    status, out, err = await run_cli("user", "add", "bob", *state)
    assert status == 1
    assert err.strip() == "Error: user 'bob' already exists"
    assert "Password" not in out + err

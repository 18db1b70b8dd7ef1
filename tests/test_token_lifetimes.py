"""Tokens outlive a clean restart (a reboot into a new slot logs nobody out), never a crash or a
logout; ``rpc/token`` (ext) gives a client a second token while its session goes on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sysupd.api.service import Service
from sysupd.core.sessions import SavedToken, TokenTable, token_digest
from sysupd.system.clock import ManualClock
from tests.client import ApiError
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory


def _saved_rows(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "sysupd.db") as conn:
        return int(conn.execute("SELECT count(*) FROM tokens").fetchone()[0])


async def test_a_token_survives_a_clean_restart(
    start_service: ServiceFactory, connect: ClientFactory, tmp_path: Path
) -> None:
    first = await start_service()
    client = await connect(first)
    token = await client.login(*ADMIN)
    await first.stop()
    again = await start_service()
    assert _saved_rows(tmp_path / "state") == 0, "a start takes the saved tokens out"
    reconnected = await connect(again)
    reply = await reconnected.call("rpc", "auth_token", {"token": token})
    assert reply["args"][0] != token
    assert (await reconnected.call("sys", "info"))["system_id"] == again.system_id


async def test_the_database_keeps_digests_never_tokens(
    start_service: ServiceFactory, connect: ClientFactory, tmp_path: Path
) -> None:
    service = await start_service()
    token = await (await connect(service)).login(*ADMIN)
    await service.stop()
    raw = (tmp_path / "state" / "sysupd.db").read_bytes()
    assert token.encode() not in raw
    with sqlite3.connect(tmp_path / "state" / "sysupd.db") as conn:
        digests = {row[0] for row in conn.execute("SELECT digest FROM tokens")}
    assert token_digest(token) in digests


async def test_a_logged_out_token_does_not_come_back(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    first = await start_service()
    client = await connect(first)
    token = await client.login(*ADMIN)
    await client.send_raw('{"namespace": "rpc", "name": "auth_clear", "id": "x"}')
    await client.closed.wait()
    await first.stop()
    again = await start_service()
    other = await connect(again)
    with pytest.raises(ApiError) as refused:
        await other.call("rpc", "auth_token", {"token": token})
    assert refused.value.code == "401"


async def test_a_crash_keeps_no_tokens(
    start_service: ServiceFactory, connect: ClientFactory, tmp_path: Path
) -> None:
    """Saved tokens are taken out at start, so a service that dies without a clean stop leaves
    nothing for the next start: a revoked token can never be resurrected."""
    first = await start_service()
    await (await connect(first)).login(*ADMIN)
    await first.stop()
    assert _saved_rows(tmp_path / "state") == 1
    await start_service()  # this one will "crash": nothing is saved until it stops cleanly
    assert _saved_rows(tmp_path / "state") == 0


async def test_idle_time_counts_across_the_restart(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    clock = ManualClock()
    first = await start_service(clock=clock)
    token = await (await connect(first)).login(*ADMIN)
    clock.advance(600)
    await first.stop()
    clock.advance(301)  # 901 s unused in all: dead, restart or not
    again = await start_service(clock=clock)
    with pytest.raises(ApiError) as refused:
        await (await connect(again)).call("rpc", "auth_token", {"token": token})
    assert refused.value.code == "401"


async def test_rpc_token_gives_a_second_token_and_keeps_the_session(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service()
    session = await connect(service)
    own = await session.login(*USER)
    reply = await session.call("rpc", "token")
    spare, ttl, user_uuid = reply["args"]
    assert spare != own
    assert ttl == 900
    assert user_uuid == next(u.uuid for u in service.users.list() if u.name == USER[0])
    later = await connect(service)
    await later.call("rpc", "auth_token", {"token": spare})
    assert (await session.call("sys", "info"))["system_id"], "the first session goes on"
    assert "token" in (await session.call("rpc", "query"))["rpc"]


async def test_rpc_token_needs_a_login(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    client = await connect(await start_service())
    with pytest.raises(ApiError) as refused:
        await client.call("rpc", "token")
    assert refused.value.code == "401"


def test_each_user_has_a_bounded_number_of_tokens() -> None:
    table = TokenTable(ttl_s=900, max_per_user=3)
    tokens = [table.issue("u1", "s", now=float(i)) for i in range(3)]
    other = table.issue("u2", "s", now=0.0)
    table.touch(tokens[0], now=10.0)  # now tokens[1] is the least recently used
    newest = table.issue("u1", "s", now=11.0)
    assert not table.is_live(tokens[1], 11.0)
    assert all(table.is_live(t, 11.0) for t in (tokens[0], tokens[2], newest, other))
    assert len(table) == 4


def test_export_and_restore_keep_idle_time() -> None:
    table = TokenTable(ttl_s=900)
    token = table.issue("u1", "s", now=100.0)
    saved = table.export(now=400.0)
    assert saved == [SavedToken(token_digest(token), "u1", "s", 300.0)]
    restored = TokenTable(ttl_s=900)
    restored.restore([SavedToken(saved[0].digest, "u1", "s", 350.0)], now=5.0)
    assert restored.is_live(token, 5.0 + 550.0)
    assert not restored.is_live(token, 5.0 + 551.0)
    restored.restore([SavedToken("x", "u1", "s", 901.0)], now=5.0)
    assert len(restored) == 1


async def test_auth_clear_ends_the_spare_tokens_the_session_made(
    service: Service, connect: ClientFactory
) -> None:
    """API.md §4: auth_clear invalidates the tokens of the session — a spare from rpc/token too,
    or it would outlive the logout."""
    client = await connect(service, login=ADMIN)
    spare = (await client.call("rpc", "token"))["args"][0]
    kept = await connect(service, login=ADMIN)
    other_spare = (await kept.call("rpc", "token"))["args"][0]
    await client.send_raw('{"namespace": "rpc", "name": "auth_clear", "id": "x", "args": {}}')
    await client.close()
    late = await connect(service)
    with pytest.raises(ApiError) as caught:
        await late.call("rpc", "auth_token", {"token": spare})
    assert caught.value.code == "401"
    # Another session's spare is its own business.
    assert (await late.call("rpc", "auth_token", {"token": other_spare}))["args"][0]

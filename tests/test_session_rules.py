"""Sessions over the WebSocket: login replies, tokens, expiry, logout, query, deadline, lockout."""

from __future__ import annotations

import asyncio

import pytest

from sysupd.api.service import Service
from sysupd.system.clock import ManualClock
from tests.client import ApiError
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory

ADMIN_CALLS = [
    ("sys", "middleware_log", {}),
    ("sys", "list_config", {}),
    ("sys", "set_config", {"auto_reboot": False}),
    ("sys", "reboot", {"delay_seconds": 3600}),
    ("sys", "reboot_stop", {}),
]


async def test_auth_reply_shape(service: Service, connect: ClientFactory) -> None:
    client = await connect(service)
    reply = await client.call("rpc", "auth", {"username": ADMIN[0], "password": ADMIN[1]})
    token, ttl, user_uuid = reply["args"]
    assert isinstance(token, str)
    assert len(token) >= 32
    assert ttl == 900
    assert user_uuid == next(u.uuid for u in service.users.list() if u.name == ADMIN[0])


async def test_wrong_password_is_401_and_socket_stays(
    service: Service, connect: ClientFactory
) -> None:
    client = await connect(service)
    with pytest.raises(ApiError) as refused:
        await client.login(ADMIN[0], "wrong")
    assert refused.value.code == "401"
    assert refused.value.message == "Unauthorized"
    await client.login(*ADMIN)
    assert (await client.call("sys", "info"))["system_id"] == service.system_id


async def test_unknown_user_is_401(service: Service, connect: ClientFactory) -> None:
    client = await connect(service)
    with pytest.raises(ApiError) as refused:
        await client.login("nobody", "whatever")
    assert refused.value.code == "401"


async def test_auth_token_replaces_the_used_token(service: Service, connect: ClientFactory) -> None:
    first = await connect(service)
    token = await first.login(*ADMIN)
    await first.close()
    second = await connect(service)
    reply = await second.call("rpc", "auth_token", {"token": token})
    new_token, ttl, _ = reply["args"]
    assert new_token != token
    assert ttl == 900
    assert (await second.call("sys", "info"))["system_id"] == service.system_id
    third = await connect(service)
    with pytest.raises(ApiError) as refused:
        await third.call("rpc", "auth_token", {"token": token})
    assert refused.value.code == "401"
    assert "token" in refused.value.details


async def test_token_expires_after_idle_ttl(
    start_service: ServiceFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    service = await start_service(clock=clock)
    client = await connect(service, login=ADMIN)
    clock.advance(800)
    await client.call("sys", "info")  # a request extends the token
    clock.advance(800)
    await client.call("sys", "info")
    clock.advance(901)
    with pytest.raises(ApiError) as refused:
        await client.call("sys", "info")
    assert refused.value.code == "401"
    # An expired session is no longer logged in: it gets no events, may log in again.
    watcher = await connect(service, login=ADMIN)
    await watcher.call("sys", "reboot", {"delay_seconds": 3600})
    await watcher.next_event("sys/reboot")
    await client.login(*ADMIN)
    await watcher.call("sys", "reboot_stop")
    event = await client.next_event("sys/reboot")
    assert event["args"] == {"reboot_scheduled": False}


async def test_auth_clear_closes_socket_and_kills_token(
    service: Service, connect: ClientFactory
) -> None:
    client = await connect(service)
    token = await client.login(*ADMIN)
    await client.send_raw('{"namespace":"rpc","name":"auth_clear","id":"bye","args":{}}')
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.unmatched.empty()  # no reply to auth_clear
    other = await connect(service)
    with pytest.raises(ApiError) as refused:
        await other.call("rpc", "auth_token", {"token": token})
    assert refused.value.code == "401"


async def test_query_lists_what_each_role_may_call(
    service: Service, connect: ClientFactory
) -> None:
    admin = await connect(service, login=ADMIN)
    user = await connect(service, login=USER)
    admin_calls = await admin.call("rpc", "query")
    user_calls = await user.call("rpc", "query")
    for namespace, name, _ in ADMIN_CALLS:
        assert name in admin_calls[namespace]
        assert name not in user_calls[namespace]
    for name in ("info", "update_status", "updates_available", "reboot_time"):
        assert name in user_calls["sys"]
    assert set(user_calls["rpc"]) == {"auth", "auth_token", "auth_clear", "query", "token"}


@pytest.mark.parametrize(("namespace", "name", "args"), ADMIN_CALLS)
async def test_admin_calls_are_403_for_users(
    service: Service, connect: ClientFactory, namespace: str, name: str, args: dict[str, object]
) -> None:
    user = await connect(service, login=USER)
    with pytest.raises(ApiError) as refused:
        await user.call(namespace, name, args)
    assert refused.value.code == "403"
    assert refused.value.message == "Forbidden"
    assert name in refused.value.details
    assert service.reboots.plan is None
    assert service.settings.auto_reboot is True


async def test_socket_that_never_logs_in_is_closed(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service(login_timeout_s=0.3)
    idle = await connect(service)
    logged_in = await connect(service, login=ADMIN)
    await asyncio.wait_for(idle.closed.wait(), 5)
    assert idle.ws.close_code == 1008
    # That nothing happens takes time to show: past the logged-in socket's own login deadline.
    await asyncio.sleep(0.4)
    assert not logged_in.closed.is_set()
    assert any("no login in time" in line for line in service.log.lines())


async def test_unauthenticated_socket_gets_no_events(
    service: Service, connect: ClientFactory
) -> None:
    anonymous = await connect(service)
    admin = await connect(service, login=ADMIN)
    await admin.call("sys", "reboot", {"delay_seconds": 3600})
    await admin.next_event("sys/reboot")
    await admin.call("sys", "reboot_stop")
    await admin.next_event("sys/reboot")
    assert anonymous.events.empty()


async def test_lockout_after_five_failures(
    start_service: ServiceFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    service = await start_service(clock=clock, lockout_loopback=True)
    client = await connect(service)
    for _ in range(5):
        with pytest.raises(ApiError) as refused:
            await client.login(ADMIN[0], "wrong")
        assert refused.value.code == "401"
    with pytest.raises(ApiError) as locked:
        await client.login(*ADMIN)
    assert locked.value.code == "429"
    assert locked.value.message == "Too Many Requests"
    assert "127.0.0.1" in locked.value.details
    with pytest.raises(ApiError) as locked_token:
        await client.call("rpc", "auth_token", {"token": "x"})
    assert locked_token.value.code == "429"
    clock.advance(3601)
    await client.login(*ADMIN)
    assert any("lockout" in line for line in service.log.lines())


async def test_failures_spread_over_more_than_ten_minutes_do_not_lock(
    start_service: ServiceFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    service = await start_service(clock=clock, lockout_loopback=True)
    client = await connect(service)
    for _ in range(8):
        with pytest.raises(ApiError):
            await client.login(ADMIN[0], "wrong")
        clock.advance(200)
    await client.login(*ADMIN)


async def test_loopback_is_exempt_unless_configured(
    service: Service, connect: ClientFactory
) -> None:
    client = await connect(service)
    for _ in range(7):
        with pytest.raises(ApiError) as refused:
            await client.login(ADMIN[0], "wrong")
        assert refused.value.code == "401"
    await client.login(*ADMIN)


async def test_logins_are_logged_without_passwords(
    service: Service, connect: ClientFactory
) -> None:
    client = await connect(service)
    with pytest.raises(ApiError):
        await client.login(USER[0], "not-the-password")
    token = await client.login(*ADMIN)
    text = "\n".join(service.log.lines())
    assert f"login failed: user {USER[0]!r} from 127.0.0.1" in text
    assert f"login: user {ADMIN[0]!r} from 127.0.0.1" in text
    for secret in (ADMIN[1], USER[1], "not-the-password", token):
        assert secret not in text
    assert secret not in (service.config.log_path).read_text()


async def test_removed_user_loses_its_session(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=USER)
    service.users.remove(USER[0])
    with pytest.raises(ApiError) as refused:
        await client.call("sys", "info")
    assert refused.value.code == "401"

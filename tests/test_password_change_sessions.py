"""Changing a password or removing a user ends the sessions and tokens issued before."""

from __future__ import annotations

import aiohttp
import pytest

from sysupd.api.service import Service
from tests.client import ApiError
from tests.conftest import USER, ClientFactory, api_url


async def test_password_change_ends_sessions_and_tokens(
    service: Service, connect: ClientFactory
) -> None:
    client = await connect(service)
    token = await client.login(*USER)
    assert (await client.call("sys", "info"))["system_id"]
    service.users.set_password(USER[0], "a-new-password")
    with pytest.raises(ApiError) as refused:
        await client.call("sys", "info")
    assert refused.value.code == "401"
    other = await connect(service)
    with pytest.raises(ApiError) as stale:
        await other.call("rpc", "auth_token", {"token": token})
    assert stale.value.code == "401"
    await other.login(USER[0], "a-new-password")


async def test_password_change_ends_cached_http_credentials(
    service: Service, http: aiohttp.ClientSession
) -> None:
    old = {"Authorization": aiohttp.encode_basic_auth(*USER)}
    async with http.post(api_url(service, "sys/info"), headers=old) as reply:
        assert reply.status == 200
    service.users.set_password(USER[0], "a-new-password")
    async with http.post(api_url(service, "sys/info"), headers=old) as reply:
        assert reply.status == 401
    new = {"Authorization": aiohttp.encode_basic_auth(USER[0], "a-new-password")}
    async with http.post(api_url(service, "sys/info"), headers=new) as reply:
        assert reply.status == 200

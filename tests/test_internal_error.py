"""A bug in a handler is a 500 with details; the socket and the service go on, and the log says
where it happened without quoting what an ``rpc`` call was given."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sysupd.api.calls import Call, CallContext, CallTable
from sysupd.api.rpc_calls import RPC_CALLS
from sysupd.api.service import Service
from sysupd.api.sys_calls import SYS_CALLS
from tests.client import ApiError
from tests.conftest import ADMIN, ClientFactory, api_url


async def _broken(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("secret-looking detail")


@pytest.fixture
def broken_service(service: Service) -> Service:
    service.calls = CallTable(
        [*RPC_CALLS, *SYS_CALLS, Call("test", "boom", _broken), Call("rpc", "boom", _broken)]
    )
    return service


async def test_bug_is_500_and_socket_stays_open(
    broken_service: Service, connect: ClientFactory
) -> None:
    client = await connect(broken_service, login=ADMIN)
    with pytest.raises(ApiError) as failed:
        await client.call("test", "boom")
    assert failed.value.code == "500"
    assert failed.value.message == "Internal Server Error"
    assert "test/boom" in failed.value.details
    assert (await client.call("sys", "info"))["system_id"] == broken_service.system_id
    line = next(x for x in broken_service.log.lines() if "bug in test/boom" in x)
    assert "secret-looking detail" in line
    assert "test_internal_error.py" in line


async def test_rpc_bug_does_not_log_the_message(
    broken_service: Service, connect: ClientFactory
) -> None:
    client = await connect(broken_service, login=ADMIN)
    with pytest.raises(ApiError) as failed:
        await client.call("rpc", "boom")
    assert failed.value.code == "500"
    line = next(x for x in broken_service.log.lines() if "bug in rpc/boom" in x)
    assert "ValueError" in line
    assert "secret-looking detail" not in line


async def test_bug_over_http_is_status_500(
    broken_service: Service, http: aiohttp.ClientSession
) -> None:
    reply = await http.post(
        api_url(broken_service, "test/boom"),
        headers={"Authorization": aiohttp.encode_basic_auth(*ADMIN)},
    )
    assert reply.status == 500
    body = await reply.json()
    assert body["namespace"] == "error"
    assert body["args"]["code"] == "500"

"""A burst of concurrent wrong passwords cannot outrun the lockout, and addresses are counted as a
host controls them (IPv4 address, IPv6 /64)."""

from __future__ import annotations

import asyncio

import aiohttp

from sysupd.api.auth import throttle_key
from tests.conftest import ADMIN, ServiceFactory, api_url


async def test_concurrent_wrong_passwords_still_lock_out(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    service = await start_service(lockout_loopback=True)
    bad = {"Authorization": aiohttp.encode_basic_auth(ADMIN[0], "wrong")}

    async def attempt() -> int:
        async with http.post(api_url(service, "sys/info"), headers=bad) as reply:
            return reply.status

    statuses = await asyncio.gather(*(attempt() for _ in range(30)))
    assert statuses.count(401) == 5
    assert statuses.count(429) == 25


async def test_many_good_parallel_http_calls_are_not_locked_out(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    service = await start_service(lockout_loopback=True)
    good = {"Authorization": aiohttp.encode_basic_auth(*ADMIN)}

    async def call() -> int:
        async with http.post(api_url(service, "sys/info"), headers=good) as reply:
            return reply.status

    assert await asyncio.gather(*(call() for _ in range(20))) == [200] * 20


def test_throttle_key_groups_an_ipv6_host_and_unmaps_ipv4() -> None:
    assert throttle_key("192.0.2.7") == "192.0.2.7"
    assert throttle_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert throttle_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert throttle_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert throttle_key("unknown") == "unknown"

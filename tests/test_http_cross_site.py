"""A web page on another site cannot use a browser's cached credentials against the API."""

from __future__ import annotations

import aiohttp
import pytest

from sysupd.api.service import Service
from tests.conftest import ADMIN, api_url

AUTH = {"Authorization": aiohttp.encode_basic_auth(*ADMIN)}


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
)
async def test_cross_site_request_is_403_and_does_nothing(
    service: Service, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with http.get(api_url(service, "sys/reboot"), headers={**AUTH, **headers}) as reply:
        assert reply.status == 403
        body = await reply.json()
    assert "refused" in body["args"]["details"]
    assert service.reboots.plan is None


async def test_same_origin_and_non_browser_requests_pass(
    service: Service, http: aiohttp.ClientSession
) -> None:
    origin = {"Origin": f"http://127.0.0.1:{service.http_port}", "Sec-Fetch-Site": "same-origin"}
    async with http.post(api_url(service, "sys/info"), headers={**AUTH, **origin}) as reply:
        assert reply.status == 200
    async with http.post(api_url(service, "sys/info"), headers=AUTH) as reply:
        assert reply.status == 200

"""Contract §3: the HTTP listener's ``/api/<namespace>/<name>`` against the real server.

Every request here is a real aiohttp request to a service on 127.0.0.1; every refusal checks the
HTTP status, the error envelope's code, that ``details`` says what was wrong, and that nothing
changed.
"""

from __future__ import annotations

import asyncio
import io
import json
from base64 import b64encode
from typing import Any

import aiohttp
import pytest

from sysupd.api.http import connection_closed
from sysupd.api.service import Service
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, api_url

JSON_HEADERS = {"Content-Type": "application/json"}


def basic(credentials: tuple[str, str]) -> dict[str, str]:
    """The ``Authorization`` header for HTTP Basic ``credentials``."""
    raw = f"{credentials[0]}:{credentials[1]}".encode()
    return {"Authorization": "Basic " + b64encode(raw).decode("ascii")}


async def send(
    http: aiohttp.ClientSession,
    service: Service,
    call: str,
    *,
    method: str = "POST",
    body: bytes | str | None = None,
    args: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    login: tuple[str, str] | None = ADMIN,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One HTTP request; returns the status, the headers and the decoded JSON envelope."""
    all_headers = dict(basic(login)) if login is not None else {}
    all_headers.update(headers or {})
    data = json.dumps(args).encode() if args is not None else body
    async with http.request(method, api_url(service, call), data=data, headers=all_headers) as resp:
        assert resp.content_type == "application/json"
        envelope: dict[str, Any] = await resp.json()
        return resp.status, dict(resp.headers), envelope


def assert_success(status: int, envelope: dict[str, Any]) -> dict[str, Any]:
    """The reply's ``args`` after checking that it is a 200 success envelope."""
    assert status == 200, envelope
    assert envelope["namespace"] == "response"
    assert envelope["name"] == "response"
    assert isinstance(envelope["args"], dict)
    result: dict[str, Any] = envelope["args"]
    return result


def assert_error(status: int, envelope: dict[str, Any], code: str, *words: str) -> str:
    """The error's ``details`` after checking the status, the envelope and the code."""
    assert status == int(code), envelope
    assert envelope["namespace"] == "error"
    assert envelope["name"] == "error"
    args = envelope["args"]
    assert args["code"] == code
    assert isinstance(args["message"], str)
    assert args["message"]
    details = args.get("details")
    assert isinstance(details, str)
    assert details, "details must say what was wrong"
    for word in words:
        assert word.lower() in details.lower(), (word, details)
    return details


# -- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "GET"])
@pytest.mark.parametrize("body", [None, b"", b"  \n", b"{}"])
async def test_info_with_basic_auth(
    service: Service, http: aiohttp.ClientSession, method: str, body: bytes | None
) -> None:
    status, _, envelope = await send(http, service, "sys/info", method=method, body=body)
    info = assert_success(status, envelope)
    assert info["system_id"] == service.system_id
    assert isinstance(info["system_version"], str)
    assert info["system_version"]


async def test_non_admin_may_call_non_admin_calls(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, _, envelope = await send(http, service, "sys/info", login=USER)
    assert assert_success(status, envelope)["system_id"] == service.system_id
    status, _, envelope = await send(http, service, "sys/reboot_time", login=USER)
    assert assert_success(status, envelope) == {"reboot_scheduled": False}


async def test_call_with_args_in_body(service: Service, http: aiohttp.ClientSession) -> None:
    status, _, envelope = await send(
        http, service, "sys/reboot", method="PUT", args={"delay_seconds": 3600, "poweroff": True}
    )
    plan = assert_success(status, envelope)
    assert plan["reboot_delay_seconds"] == 3600
    assert plan["reboot_type"] == "poweroff"
    status, _, envelope = await send(http, service, "sys/reboot_time", method="GET")
    scheduled = assert_success(status, envelope)
    assert scheduled["reboot_scheduled"] is True
    assert scheduled["reboot_type"] == "poweroff"
    status, _, envelope = await send(http, service, "sys/reboot_stop")
    assert assert_success(status, envelope) == {"result": "success"}
    assert service.reboots.plan is None


# -- 401 -------------------------------------------------------------------------------------


async def test_no_authorization_header_is_401_with_challenge(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, headers, envelope = await send(http, service, "sys/info", login=None)
    assert_error(status, envelope, "401", "authorization")
    assert headers["WWW-Authenticate"].lower().startswith("basic")


async def test_no_authorization_on_unknown_call_is_401(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, headers, envelope = await send(http, service, "sys/no_such_call", login=None)
    assert_error(status, envelope, "401")
    assert "WWW-Authenticate" in headers


@pytest.mark.parametrize(
    ("header", "word"),
    [
        pytest.param("Bearer abcdef", "basic", id="not-basic"),
        pytest.param("Digest username=root", "basic", id="digest"),
        pytest.param("Basic", "basic", id="basic-without-credentials"),
        pytest.param("Basic !!!not*base64!!!", "base64", id="bad-base64"),
        pytest.param("Basic " + b64encode(b"root").decode(), "password", id="no-colon"),
        pytest.param(
            "Basic " + b64encode(b"r\xffo\xfet:admin-secret-1").decode(), "utf-8", id="not-utf8"
        ),
    ],
)
async def test_malformed_authorization_is_401_with_details(
    service: Service, http: aiohttp.ClientSession, header: str, word: str
) -> None:
    status, headers, envelope = await send(
        http, service, "sys/info", login=None, headers={"Authorization": header}
    )
    assert_error(status, envelope, "401", word)
    assert "WWW-Authenticate" in headers


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param((ADMIN[0], "wrong-password"), id="wrong-password"),
        pytest.param((ADMIN[0], ""), id="empty-password"),
        pytest.param(("nobody", ADMIN[1]), id="unknown-user"),
        pytest.param((USER[0], ADMIN[1]), id="other-users-password"),
        pytest.param(("j\u00fcrgen", "gr\u00fc\u00dfe"), id="non-ascii-user"),
    ],
)
async def test_bad_credentials_are_401(
    service: Service, http: aiohttp.ClientSession, credentials: tuple[str, str]
) -> None:
    status, headers, envelope = await send(http, service, "sys/info", login=credentials)
    assert_error(status, envelope, "401", "password")
    assert "WWW-Authenticate" in headers


async def test_wrong_password_on_admin_call_changes_nothing(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, _, envelope = await send(
        http,
        service,
        "sys/reboot",
        args={"delay_seconds": 3600},
        login=(ADMIN[0], "wrong-password"),
    )
    assert_error(status, envelope, "401")
    assert service.reboots.plan is None


# -- 403 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("sys/list_config", None),
        ("sys/set_config", {"auto_reboot": False}),
        ("sys/middleware_log", None),
        ("sys/reboot", {"delay_seconds": 3600}),
        ("sys/reboot_stop", None),
    ],
)
async def test_non_admin_calling_admin_call_is_403(
    service: Service, http: aiohttp.ClientSession, call: str, args: dict[str, Any] | None
) -> None:
    # A reboot is scheduled first, so that a wrongly allowed reboot_stop would show.
    status, _, envelope = await send(http, service, "sys/reboot", args={"delay_seconds": 7200})
    before_plan = assert_success(status, envelope)
    before_settings = service.settings

    status, headers, envelope = await send(http, service, call, args=args, login=USER)
    details = assert_error(status, envelope, "403")
    assert call in details or "admin" in details.lower(), details
    assert "WWW-Authenticate" not in headers

    assert service.settings == before_settings
    assert service.reboots.plan is not None
    assert service.reboots.plan.to_wire() == before_plan


# -- 404 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["sys/no_such_call", "nope/info", "rpc/nothing"])
async def test_unknown_call_is_404(
    service: Service, http: aiohttp.ClientSession, call: str
) -> None:
    status, _, envelope = await send(http, service, call)
    assert_error(status, envelope, "404", call)


# -- 400 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "word"),
    [
        pytest.param(b"not json", "json", id="not-json"),
        pytest.param(b'{"delay_seconds": ', "json", id="truncated"),
        pytest.param(b"\xff\xfe{}", "json", id="not-utf8"),
        pytest.param(b"[]", "object", id="array"),
        pytest.param(b'"text"', "object", id="string"),
        pytest.param(b"42", "object", id="number"),
        pytest.param(b"true", "object", id="boolean"),
    ],
)
async def test_body_not_a_json_object_is_400(
    service: Service, http: aiohttp.ClientSession, body: bytes, word: str
) -> None:
    status, _, envelope = await send(http, service, "sys/reboot", body=body, headers=JSON_HEADERS)
    assert_error(status, envelope, "400", word)
    assert service.reboots.plan is None


@pytest.mark.parametrize(
    ("call", "args", "word"),
    [
        ("sys/info", {"bogus": 1}, "bogus"),
        ("sys/reboot", {"delay_seconds": 3600, "bogus": True}, "bogus"),
        ("sys/reboot", {"delay_seconds": "soon"}, "delay_seconds"),
        ("sys/reboot", {"delay_seconds": -1}, "delay_seconds"),
        ("sys/reboot", {"delay_seconds": 60, "poweroff": "yes"}, "poweroff"),
    ],
)
async def test_body_breaking_the_schema_is_400(
    service: Service,
    http: aiohttp.ClientSession,
    call: str,
    args: dict[str, Any],
    word: str,
) -> None:
    status, _, envelope = await send(http, service, call, args=args)
    assert_error(status, envelope, "400", word)
    assert service.reboots.plan is None


async def test_body_over_the_size_limit_is_refused_not_a_bug(
    service: Service, http: aiohttp.ClientSession
) -> None:
    body = b'{"delay_seconds": 3600, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    async with http.post(
        api_url(service, "sys/reboot"),
        data=io.BytesIO(body),
        headers={**basic(ADMIN), **JSON_HEADERS},
    ) as resp:
        assert resp.status == 413
    assert service.reboots.plan is None
    assert "bug in" not in service.log.text()
    status, _, envelope = await send(http, service, "sys/info")
    assert_success(status, envelope)


# -- methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["DELETE", "PATCH"])
async def test_other_methods_are_405(
    service: Service, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(
        method, api_url(service, "sys/reboot_stop"), headers=basic(ADMIN)
    ) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers.get("Allow", "")


STATE_CHANGING = [
    ("sys/set_config", {"auto_reboot": False}),
    ("sys/update_check", {}),
    ("sys/update_now", {"file_upload": "x.bundle"}),
    ("sys/upload_file", {}),
    ("sys/reboot", {"delay_seconds": 1}),
    ("sys/reboot_stop", {}),
    ("rpc/token", {}),
]


@pytest.mark.parametrize(("call", "args"), STATE_CHANGING)
async def test_get_of_a_call_that_changes_state_is_405_and_changes_nothing(
    service: Service, http: aiohttp.ClientSession, call: str, args: dict[str, Any]
) -> None:
    """A cross-site GET (an <img> tag in an old browser, with cached Basic credentials) must not
    reboot or reconfigure the device."""
    before = service.settings
    status, headers, envelope = await send(http, service, call, method="GET", args=args)
    details = assert_error(status, envelope, "405", "POST", "PUT", "GET", call)
    assert "changes" in details
    assert "POST" in headers["Allow"]
    assert "GET" not in headers["Allow"]
    assert service.reboots.plan is None
    assert service.settings == before
    assert not service.updates.status()["update_running"]


async def test_get_of_a_reboot_with_credentials_schedules_nothing_then_post_does(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await send(http, service, "sys/reboot", method="GET")
    assert status == 405
    assert service.reboots.plan is None
    status, _, envelope = await send(http, service, "sys/reboot", method="POST")
    assert assert_success(status, envelope)["reboot_delay_seconds"] == 300
    assert service.reboots.plan is not None


@pytest.mark.parametrize(
    "call", ["sys/info", "sys/list_config", "sys/update_status", "sys/reboot_time", "rpc/query"]
)
async def test_reads_stay_available_by_get(
    service: Service, http: aiohttp.ClientSession, call: str
) -> None:
    status, _, envelope = await send(http, service, call, method="GET")
    assert_success(status, envelope)


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
async def test_head_and_options_are_200_without_body(
    service: Service, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(method, api_url(service, "sys/info"), headers=basic(ADMIN)) as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_options_does_not_run_the_call(service: Service, http: aiohttp.ClientSession) -> None:
    async with http.request(
        "OPTIONS",
        api_url(service, "sys/reboot"),
        headers={**basic(ADMIN), **JSON_HEADERS},
        data=b'{"delay_seconds": 3600}',
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    assert service.reboots.plan is None


# -- rpc/auth over HTTP ----------------------------------------------------------------------


async def test_rpc_auth_over_http_gives_a_token_for_the_websocket(
    service: Service, http: aiohttp.ClientSession, connect: ClientFactory
) -> None:
    status, _, envelope = await send(
        http,
        service,
        "rpc/auth",
        args={"username": ADMIN[0], "password": ADMIN[1]},
        login=None,
    )
    reply = assert_success(status, envelope)
    token, ttl, uuid = reply["args"]
    assert isinstance(token, str)
    assert token
    assert ttl == 900
    assert isinstance(uuid, str)
    assert uuid

    client = await connect(service)
    exchanged = await client.call("rpc", "auth_token", {"token": token})
    new_token, new_ttl, same_uuid = exchanged["args"]
    assert new_token != token
    assert new_ttl == 900
    assert same_uuid == uuid
    info = await client.call("sys", "info")
    assert info["system_id"] == service.system_id


async def test_rpc_auth_over_http_with_wrong_password_is_401(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, _, envelope = await send(
        http,
        service,
        "rpc/auth",
        args={"username": ADMIN[0], "password": "wrong-password"},
        login=None,
    )
    assert_error(status, envelope, "401", "password")


async def test_rpc_auth_over_http_without_body_is_400(
    service: Service, http: aiohttp.ClientSession
) -> None:
    status, _, envelope = await send(http, service, "rpc/auth", login=None)
    assert_error(status, envelope, "400", "username")


# -- events ----------------------------------------------------------------------------------


async def test_http_call_emits_events_to_websocket_sessions(
    service: Service, http: aiohttp.ClientSession, connect: ClientFactory
) -> None:
    watcher = await connect(service, login=USER)
    stranger = await connect(service)  # not logged in: gets no events

    status, _, envelope = await send(http, service, "sys/reboot", args={"delay_seconds": 3600})
    plan = assert_success(status, envelope)
    event = await watcher.next_event("sys/reboot")
    assert event["namespace"] == "event"
    assert event["id"] == "event"
    assert event["args"] == plan
    assert event["args"]["reboot_delay_seconds"] == 3600
    assert event["args"]["reboot_type"] == "restart"

    status, _, envelope = await send(http, service, "sys/reboot_stop")
    assert assert_success(status, envelope) == {"result": "success"}
    event = await watcher.next_event("sys/reboot")
    assert event["args"] == {"reboot_scheduled": False}
    assert service.reboots.plan is None

    # A round trip on the stranger's socket: anything sent to it before would have arrived.
    reply = await stranger.request("sys", "info")
    assert reply["namespace"] == "error"
    assert reply["args"]["code"] == "401"
    assert stranger.events.empty()


# -- lockout ---------------------------------------------------------------------------------


async def test_http_failed_logins_lock_the_address_out(
    start_service: ServiceFactory, http: aiohttp.ClientSession, connect: ClientFactory
) -> None:
    service = await start_service(lockout_loopback=True)
    for _ in range(5):
        status, _, envelope = await send(
            http, service, "sys/info", login=(ADMIN[0], "wrong-password")
        )
        assert_error(status, envelope, "401")

    status, _, envelope = await send(http, service, "sys/info", login=ADMIN)
    assert_error(status, envelope, "429")
    status, _, envelope = await send(
        http,
        service,
        "rpc/auth",
        args={"username": ADMIN[0], "password": ADMIN[1]},
        login=None,
    )
    assert_error(status, envelope, "429")

    # The lockout is per address, whichever listener: the WebSocket login is refused as well.
    client = await connect(service)
    reply = await client.request("rpc", "auth", {"username": ADMIN[0], "password": ADMIN[1]})
    assert reply["namespace"] == "error"
    assert reply["args"]["code"] == "429"


async def test_failed_rpc_auth_over_http_counts_for_the_lockout(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    service = await start_service(lockout_loopback=True)
    for _ in range(5):
        status, _, envelope = await send(
            http,
            service,
            "rpc/auth",
            args={"username": ADMIN[0], "password": "wrong-password"},
            login=None,
        )
        assert_error(status, envelope, "401")
    status, _, envelope = await send(http, service, "sys/info", login=ADMIN)
    assert_error(status, envelope, "429")


async def test_loopback_is_not_locked_out_by_default(
    service: Service, http: aiohttp.ClientSession
) -> None:
    for _ in range(6):
        status, _, envelope = await send(
            http, service, "sys/info", login=(ADMIN[0], "wrong-password")
        )
        assert_error(status, envelope, "401")
    status, _, envelope = await send(http, service, "sys/info", login=ADMIN)
    assert_success(status, envelope)


async def test_concurrent_requests_are_all_answered(
    service: Service, http: aiohttp.ClientSession
) -> None:
    results = await asyncio.gather(*(send(http, service, "sys/info") for _ in range(10)))
    for status, _, envelope in results:
        assert assert_success(status, envelope)["system_id"] == service.system_id


def test_a_body_read_on_a_closed_connection_is_the_clients_doing() -> None:
    """aiohttp's reader says "Connection closed." with a plain RuntimeError when the guard or
    the client dropped a slow body: that is the client going away, never logged as a bug (a
    flood test caught it as one); any other RuntimeError stays a bug."""
    assert connection_closed(RuntimeError("Connection closed."))
    assert not connection_closed(RuntimeError("something else"))
    assert not connection_closed(ConnectionError("Connection closed."))

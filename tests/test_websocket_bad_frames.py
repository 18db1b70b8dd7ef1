"""Bad WebSocket input: every malformed frame gets the contract's error reply, and nobody stops.

Each test sends one kind of bad input to a real service over a real socket and checks the exact
error reply (``namespace``/``name`` ``"error"``, the code as a string with its message, a
``details`` that names what was wrong, the ``id`` echoed when it could be read, else ``""``).
It then checks that the server keeps serving: the same socket (wherever the contract keeps it
open) and a second, separate logged-in client both get a good ``sys/info`` reply. After every test
the service log must hold no 500 ("bug in …") and none of the passwords used.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import WSCloseCode, WSMsgType

from sysupd.api.service import Service
from tests.client import WsClient
from tests.conftest import ADMIN, USER, ClientFactory, wait_until

MiB = 1024 * 1024
FRAME_LIMIT = MiB  # the contract's default size limit
REPLY_TIMEOUT = 10.0

MESSAGES = {
    "400": "Bad Request",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "Not Found",
    "429": "Too Many Requests",
    "500": "Internal Server Error",
}

Words = tuple[str | tuple[str, ...], ...]
"""What ``details`` must name: every entry must appear as a word; a tuple entry means any of."""


def frame(namespace: object, name: object, request_id: object, args: object = None) -> str:
    """A request frame with any field values (``args`` left out when ``None``)."""
    data: dict[str, object] = {"namespace": namespace, "name": name, "id": request_id}
    if args is not None:
        data["args"] = args
    return json.dumps(data)


def names(details: str, word: str) -> bool:
    """Whether ``details`` contains ``word`` as a whole word (case-insensitive)."""
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", details, re.IGNORECASE) is not None


def check_error(reply: dict[str, Any], code: str, request_id: str, words: Words = ()) -> str:
    """Assert ``reply`` is the contract's error reply; return its ``details``."""
    assert reply["namespace"] == "error", reply
    assert reply["name"] == "error", reply
    assert reply["id"] == request_id, reply
    args = reply["args"]
    assert isinstance(args["code"], str), reply
    assert args["code"] == code, reply
    assert args["message"] == MESSAGES[code], reply
    details = args.get("details")
    assert isinstance(details, str), reply
    assert details.strip(), reply
    for word in words:
        alternatives = (word,) if isinstance(word, str) else word
        assert any(names(details, w) for w in alternatives), (
            f"details {details!r} should name {' or '.join(alternatives)}"
        )
    return details


async def next_reply(client: WsClient) -> dict[str, Any]:
    """The next reply that no ``request``/``call`` of the client is waiting for."""
    return await asyncio.wait_for(client.unmatched.get(), REPLY_TIMEOUT)


async def wait_until_closed(client: WsClient) -> None:
    """Until the server has closed ``client``'s socket."""
    await asyncio.wait_for(client.closed.wait(), REPLY_TIMEOUT)


@dataclass
class Harness:
    """A running service, a way to open clients, and a second, separate logged-in client."""

    service: Service
    connect: ClientFactory
    other: WsClient

    async def client(self, login: tuple[str, str] | None = ADMIN) -> WsClient:
        """A new socket, logged in as ``login`` (or not at all)."""
        return await self.connect(self.service, login=login)

    async def send_bad(
        self, client: WsClient, data: str | bytes, code: str, request_id: str, words: Words = ()
    ) -> str:
        """Send a raw frame and check its error reply; returns the ``details``."""
        await client.send_raw(data)
        return check_error(await next_reply(client), code, request_id, words)

    async def assert_serving(self, *clients: WsClient) -> None:
        """``clients`` and the second client each get a good ``sys/info`` reply."""
        for client in (*clients, self.other):
            info = await client.call("sys", "info")
            assert info["system_id"] == self.service.system_id
            assert isinstance(info["system_version"], str)
            assert info["system_version"]

    def log_lines_containing(self, text: str) -> list[str]:
        return [line for line in self.service.log.lines() if text in line]

    async def wait_for_log(self, text: str, count: int) -> None:
        """Until at least ``count`` service log lines contain ``text``."""
        await wait_until(
            lambda: len(self.log_lines_containing(text)) >= count,
            REPLY_TIMEOUT,
            f"the service log shows {count} lines with {text!r}",
        )


@pytest.fixture
async def h(service: Service, connect: ClientFactory) -> AsyncIterator[Harness]:
    """The harness; afterwards, the service log holds no 500s and no passwords."""
    other = await connect(service, login=USER)
    yield Harness(service, connect, other)
    lines = service.log.lines()
    assert not [line for line in lines if "bug in" in line], "a 500 was logged"
    for password in (ADMIN[1], USER[1]):
        assert not [line for line in lines if password in line], "a password was logged"


# -- frames that are not a request at all: 400 with id "" -------------------------------------

DEEP = 100_000


@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param("this is not json", ("JSON",), id="not-json"),
        pytest.param('{"namespace": "sys", "name": "info", "id": "c1"', ("JSON",), id="truncated"),
        pytest.param("", ("JSON",), id="empty"),
        pytest.param('[{"namespace": "sys", "name": "info", "id": "c1"}]', ("object",), id="array"),
        pytest.param('"sys/info"', ("object",), id="string"),
        pytest.param("42", ("object",), id="number"),
        pytest.param("null", ("object",), id="null"),
        pytest.param("true", ("object",), id="boolean"),
        pytest.param("[" * DEEP, ("JSON",), id="deep-open-arrays"),
        pytest.param("[" * DEEP + "]" * DEEP, (("JSON", "deep", "nested", "nesting"),), id="deep"),
        pytest.param('{"a":' * DEEP + "1" + "}" * DEEP, (), id="deep-objects"),
    ],
)
async def test_unreadable_text_frame_is_400_with_empty_id(
    h: Harness, data: str, words: Words
) -> None:
    client = await h.client()
    await h.send_bad(client, data, "400", "", words)
    await h.assert_serving(client)


async def test_binary_frame_not_utf8_is_400_with_empty_id(h: Harness) -> None:
    client = await h.client()
    await h.send_bad(client, b"\xff\xfe\x80{\xc3(", "400", "", ("UTF-8",))
    await h.assert_serving(client)


async def test_binary_frame_surrogate_bytes_is_400_with_empty_id(h: Harness) -> None:
    # A surrogate encoded as UTF-8 bytes (CESU-style) is not valid UTF-8.
    data = b'{"namespace": "sys", "name": "info", "id": "\xed\xa0\x80"}'
    await h.send_bad(client := await h.client(), data, "400", "", ("UTF-8",))
    await h.assert_serving(client)


async def test_text_frame_not_utf8_is_400_with_empty_id(h: Harness) -> None:
    # The contract: no malformed frame closes the connection (only oversized ones do).
    client = await h.client()
    await client.ws.send_frame(b'{"id": "\xff\xfe"}', WSMsgType.TEXT)
    check_error(await next_reply(client), "400", "", ("UTF-8",))
    await h.assert_serving(client)


# -- envelope fields of the wrong type ---------------------------------------------------------

WRONG_VALUES = [
    pytest.param(7, id="number"),
    pytest.param(None, id="null"),
    pytest.param({"a": "b"}, id="object"),
    pytest.param(["sys"], id="array"),
    pytest.param(True, id="boolean"),
]


@pytest.mark.parametrize("value", WRONG_VALUES)
@pytest.mark.parametrize("field", ["namespace", "name", "id"])
async def test_envelope_field_of_wrong_type_is_400(h: Harness, field: str, value: object) -> None:
    client = await h.client()
    fields: dict[str, object] = {"namespace": "sys", "name": "info", "id": "w1"}
    fields[field] = value
    expected_id = "" if field == "id" else "w1"
    await h.send_bad(client, json.dumps(fields), "400", expected_id, (field,))
    await h.assert_serving(client)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="empty-list"),
        pytest.param([1, 2], id="list"),
        pytest.param("x=1", id="string"),
        pytest.param(5, id="number"),
        pytest.param(True, id="boolean"),
    ],
)
async def test_args_not_an_object_is_400_with_id_echoed(h: Harness, args: object) -> None:
    client = await h.client()
    await h.send_bad(client, frame("sys", "info", "a1", args), "400", "a1", ("args",))
    await h.assert_serving(client)


# -- unknown calls, and calls before login -----------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "name"),
    [
        pytest.param("sys", "no_such_call", id="unknown-name"),
        pytest.param("nope", "info", id="unknown-namespace"),
        pytest.param("rpc", "no_such_call", id="unknown-rpc"),
        pytest.param("", "", id="empty"),
    ],
)
async def test_unknown_call_when_logged_in_is_404(h: Harness, namespace: str, name: str) -> None:
    client = await h.client()
    words: Words = tuple(w for w in (namespace, name) if w)
    await h.send_bad(client, frame(namespace, name, "u1"), "404", "u1", words)
    await h.assert_serving(client)


@pytest.mark.parametrize(
    ("namespace", "name", "args"),
    [
        pytest.param("sys", "info", None, id="sys-info"),
        pytest.param("sys", "reboot", {"delay_seconds": 5}, id="sys-reboot"),
        pytest.param("sys", "reboot", {"delay_seconds": "5", "bogus": 1}, id="sys-reboot-bad"),
        pytest.param("rpc", "query", None, id="rpc-query"),
        pytest.param("sys", "no_such_call", None, id="unknown-sys"),
        pytest.param("nope", "nope", {"x": 1}, id="unknown-namespace"),
    ],
)
async def test_call_before_login_is_401(
    h: Harness, namespace: str, name: str, args: dict[str, Any] | None
) -> None:
    client = await h.client(login=None)
    login_words: Words = (("log", "login", "logged", "auth", "authenticate", "authenticated"),)
    await h.send_bad(client, frame(namespace, name, "p1", args), "401", "p1", login_words)
    # The socket stays open: it can still log in and call.
    await client.login(*ADMIN)
    await h.assert_serving(client)
    assert (await client.call("sys", "reboot_time")) == {"reboot_scheduled": False}


# -- args that break the call's schema ---------------------------------------------------------


@pytest.mark.parametrize(
    ("login", "namespace", "name", "args", "words"),
    [
        pytest.param(None, "rpc", "auth", {"username": ADMIN[0]}, ("password",), id="no-pw"),
        pytest.param(None, "rpc", "auth", {"password": ADMIN[1]}, ("username",), id="no-user"),
        pytest.param(None, "rpc", "auth", {}, (("username", "password"),), id="no-fields"),
        pytest.param(
            None, "rpc", "auth", {"username": 7, "password": ADMIN[1]}, ("username",), id="user-int"
        ),
        pytest.param(
            None,
            "rpc",
            "auth",
            {"username": ADMIN[0], "password": None},
            ("password",),
            id="pw-null",
        ),
        pytest.param(
            None,
            "rpc",
            "auth",
            {"username": ADMIN[0], "password": ADMIN[1], "otp": "1"},
            ("otp",),
            id="auth-extra",
        ),
        pytest.param(ADMIN, "sys", "info", {"x": 1}, ("x",), id="info-extra"),
        pytest.param(
            ADMIN,
            "sys",
            "reboot",
            {"delay_seconds": 5, "bogus": True},
            ("bogus",),
            id="reboot-extra",
        ),
        pytest.param(
            ADMIN, "sys", "reboot", {"delay_seconds": "5"}, ("delay_seconds",), id="delay-str"
        ),
        pytest.param(
            ADMIN, "sys", "reboot", {"delay_seconds": True}, ("delay_seconds",), id="delay-bool"
        ),
        pytest.param(
            ADMIN, "sys", "reboot", {"delay_seconds": -1}, ("delay_seconds",), id="delay-neg"
        ),
        pytest.param(
            ADMIN, "sys", "reboot", {"delay_seconds": 1.5}, ("delay_seconds",), id="delay-float"
        ),
        pytest.param(
            ADMIN, "sys", "reboot", {"delay_seconds": None}, ("delay_seconds",), id="delay-null"
        ),
        pytest.param(
            ADMIN,
            "sys",
            "reboot",
            {"delay_seconds": 5, "poweroff": "yes"},
            ("poweroff",),
            id="poweroff-str",
        ),
    ],
)
async def test_args_breaking_the_schema_are_400(
    h: Harness,
    login: tuple[str, str] | None,
    namespace: str,
    name: str,
    args: dict[str, Any],
    words: Words,
) -> None:
    client = await h.client(login=login)
    await h.send_bad(client, frame(namespace, name, "s1", args), "400", "s1", words)
    if login is None:
        await client.login(*ADMIN)
    await h.assert_serving(client)
    # A refused call changes nothing: no reboot was scheduled.
    assert (await client.call("sys", "reboot_time")) == {"reboot_scheduled": False}


# -- rpc/auth with odd credentials -------------------------------------------------------------


async def test_auth_with_1mb_username_is_refused_clearly(h: Harness) -> None:
    client = await h.client(login=None)
    data = frame("rpc", "auth", "big", {"username": "a" * 1_000_000, "password": ADMIN[1]})
    assert len(data.encode()) < FRAME_LIMIT
    await client.send_raw(data)
    reply = await next_reply(client)
    code = reply["args"]["code"]
    assert code in {"400", "401"}, reply
    details = check_error(reply, code, "big", ("username",) if code == "400" else ())
    assert len(details) < 1000, "details should not echo the whole user name"
    await client.login(*ADMIN)
    await h.assert_serving(client)


@pytest.mark.parametrize(
    ("username", "password", "field"),
    [
        pytest.param("\\ud800root", ADMIN[1], "username", id="username"),
        pytest.param(ADMIN[0], "\\udfff" + ADMIN[1], "password", id="password"),
        pytest.param("\\ud800", "\\udc00\\ud800", "username", id="both"),
    ],
)
async def test_auth_with_lone_surrogate_is_refused_clearly(
    h: Harness, username: str, password: str, field: str
) -> None:
    # Valid JSON syntax, but the strings are not Unicode text; written by hand so the JSON escape
    # reaches the server as it is.
    data = (
        '{"namespace": "rpc", "name": "auth", "id": "ls1", '
        f'"args": {{"username": "{username}", "password": "{password}"}}}}'
    )
    client = await h.client(login=None)
    await client.send_raw(data)
    reply = await next_reply(client)
    code = reply["args"]["code"]
    assert code in {"400", "401"}, reply
    check_error(reply, code, "ls1", (field,) if code == "400" else ())
    await client.login(*ADMIN)
    await h.assert_serving(client)


async def test_lone_surrogate_in_id_is_echoed(h: Harness) -> None:
    client = await h.client()
    await client.send_raw('{"namespace": "sys", "name": "nope", "id": "x\\ud800"}')
    check_error(await next_reply(client), "404", "x\ud800", ("nope",))
    await h.assert_serving(client)


# -- frame size ----------------------------------------------------------------------------------


def padded_frame(size: int) -> str:
    """A ``sys/info`` frame of exactly ``size`` bytes, padded in an unknown argument."""
    head = '{"namespace": "sys", "name": "info", "id": "pad", "args": {"pad": "'
    tail = '"}}'
    data = head + "x" * (size - len(head) - len(tail)) + tail
    assert len(data.encode()) == size
    return data


async def test_frame_just_under_the_limit_is_answered(h: Harness) -> None:
    client = await h.client()
    await h.send_bad(client, padded_frame(FRAME_LIMIT - 100), "400", "pad", ("pad",))
    await h.assert_serving(client)


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_frame_over_the_limit_closes_with_1009(h: Harness, kind: str) -> None:
    closed_before = len(h.log_lines_containing("websocket closed"))
    client = await h.client()
    data = padded_frame(FRAME_LIMIT + 100)
    await client.send_raw(data if kind == "text" else data.encode())
    await wait_until_closed(client)
    assert client.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
    assert client.unmatched.empty(), "no reply is owed to an oversized frame"
    await h.wait_for_log("websocket closed", closed_before + 1)
    # Everyone else carries on, and new sockets are welcome.
    await h.assert_serving(await h.client())


# -- a burst of frames from one client -----------------------------------------------------------

BURST = 10_000


async def test_burst_of_frames_is_answered_exactly_once_each(h: Harness) -> None:
    client = await h.client()
    ids = [f"b{i}" for i in range(BURST)]

    async def send_all() -> None:
        for request_id in ids:
            await client.send_raw(frame("sys", "info", request_id))

    sender = asyncio.get_running_loop().create_task(send_all())
    replies: list[dict[str, Any]] = [await next_reply(client)]  # the burst is being served
    # A second client is served while the burst is in flight.
    info = await h.other.call("sys", "info")
    assert info["system_id"] == h.service.system_id
    assert client.unmatched.qsize() + len(replies) < BURST, "the burst was over already"
    await sender
    while len(replies) < BURST:
        replies.append(await next_reply(client))

    for reply in replies:
        assert reply["namespace"] == "response", reply
        assert reply["name"] == "response", reply
        assert reply["args"]["system_id"] == h.service.system_id
    counts = Counter(reply["id"] for reply in replies)
    assert set(counts) == set(ids)
    assert [i for i, n in counts.items() if n != 1] == []
    # The same socket still works, and nothing more came for the burst.
    await h.assert_serving(client)
    assert client.unmatched.empty()


# -- a client that goes away in the middle of a call ---------------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_gone_mid_call(h: Harness, how: str) -> None:
    closed_before = len(h.log_lines_containing("websocket closed"))
    client = await h.client(login=None)
    await client.send_raw(
        frame("rpc", "auth", "gone", {"username": ADMIN[0], "password": ADMIN[1]})
    )
    if how == "close":
        await client.ws.close()
    else:
        conn = client.ws._conn
        assert conn is not None
        assert conn.transport is not None
        conn.transport.abort()
    await wait_until_closed(client)
    await h.wait_for_log("websocket closed", closed_before + 1)
    await h.assert_serving(await h.client())
    assert not h.log_lines_containing("bug in")


async def test_missing_id_and_null_args_are_400(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    await client.send_raw('{"namespace": "sys", "name": "info"}')
    reply = await asyncio.wait_for(client.unmatched.get(), 5)
    assert reply["id"] == ""
    assert reply["args"]["code"] == "400"
    assert "'id' is missing" in reply["args"]["details"]
    await client.send_raw('{"namespace": "sys", "name": "info", "id": "n1", "args": null}')
    reply = await asyncio.wait_for(client.unmatched.get(), 5)
    assert reply["id"] == "n1"
    assert reply["args"]["code"] == "400"
    assert "'args' must be a JSON object, not null" in reply["args"]["details"]

"""Contract §5 ``sys/upload_file`` and ``POST /upload``: credentials, their life, and good uploads.

Real service on 127.0.0.1, real aiohttp client (and a raw socket where a test must control the
bytes on the wire), real files; ten minutes pass on a ``ManualClock``. The helpers here are used
by ``test_upload_bad_inputs.py`` too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tracemalloc
from base64 import b64encode
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.system.clock import ManualClock
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, api_url, wait_until

MiB = 1024 * 1024
Credentials = dict[str, Any]


# -- helpers -------------------------------------------------------------------------------


def auth_header(credentials: Credentials, password: str | None = None) -> dict[str, str]:
    """``Authorization: Basic`` for upload credentials (with another password if given)."""
    secret = credentials["upload_pass"] if password is None else password
    raw = f"{credentials['upload_user']}:{secret}".encode()
    return {"Authorization": "Basic " + b64encode(raw).decode("ascii")}


def upload_url(service: Service) -> str:
    """Where files go."""
    return f"http://127.0.0.1:{service.http_port}/upload"


async def issue(http: aiohttp.ClientSession, service: Service) -> Credentials:
    """``sys/upload_file`` over HTTP as the administrator."""
    raw = f"{ADMIN[0]}:{ADMIN[1]}".encode()
    headers = {"Authorization": "Basic " + b64encode(raw).decode("ascii")}
    async with http.post(api_url(service, "sys/upload_file"), headers=headers) as resp:
        envelope = await resp.json()
        assert resp.status == 200, envelope
    credentials: Credentials = envelope["args"]
    return credentials


async def upload_raw(
    http: aiohttp.ClientSession,
    service: Service,
    credentials: Credentials | None,
    data: Any,
    name: str | None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """A raw ``application/octet-stream`` upload; the status and the decoded JSON reply."""
    all_headers = {"Content-Type": "application/octet-stream"}
    if credentials is not None:
        all_headers.update(auth_header(credentials))
    all_headers.update(headers or {})
    params = {"filename": name} if name is not None else None
    if isinstance(data, bytes):
        data = io.BytesIO(data)  # aiohttp warns about large bytes bodies
    async with http.post(upload_url(service), data=data, params=params, headers=all_headers) as r:
        assert r.content_type == "application/json"
        reply: dict[str, Any] = await r.json()
        return r.status, reply


def form_body(parts: list[tuple[str, bytes]], boundary: str = "sysupd-test-boundary") -> bytes:
    """A ``multipart/form-data`` body, byte for byte: each part is (its headers, its content)."""
    out = bytearray()
    for headers, content in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n".encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


FORM_TYPE = "multipart/form-data; boundary=sysupd-test-boundary"


def file_part(filename: str, name: str = "file") -> str:
    """The headers of a form part carrying a file."""
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream"
    )


async def upload_form(
    http: aiohttp.ClientSession,
    service: Service,
    credentials: Credentials,
    body: bytes,
    content_type: str = FORM_TYPE,
) -> tuple[int, dict[str, Any]]:
    """A multipart upload of a hand-made body."""
    headers = {**auth_header(credentials), "Content-Type": content_type}
    data = io.BytesIO(body)
    async with http.post(upload_url(service), data=data, headers=headers) as resp:
        assert resp.content_type == "application/json"
        reply: dict[str, Any] = await resp.json()
        return resp.status, reply


@dataclass
class RawReply:
    """A reply read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]


async def read_reply(reader: asyncio.StreamReader) -> RawReply:
    """One HTTP/1.1 reply with a Content-Length and a JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return RawReply(status, headers, json.loads(body))


def request_head(
    service: Service,
    credentials: Credentials,
    *,
    target: str = "/upload?filename=big.bin",
    content_length: int | None = None,
    content_type: str = "application/octet-stream",
) -> bytes:
    """The head of a ``POST /upload`` for a raw socket."""
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: 127.0.0.1:{service.http_port}",
        f"Authorization: {auth_header(credentials)['Authorization']}",
        f"Content-Type: {content_type}",
    ]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def entries(service: Service) -> list[str]:
    """Everything in the uploads directory, temp files included."""
    return sorted(os.listdir(service.uploads.directory))


async def wait_for_entries(service: Service, check: Any, timeout: float = 10) -> list[str]:
    """Poll the uploads directory until ``check(entries)`` holds; returns the entries then."""
    found: list[str] = []

    def holds() -> bool:
        found[:] = entries(service)
        return bool(check(found))

    try:
        await wait_until(holds, timeout, "the uploads directory holds what is expected")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it holds {found}") from None
    return found


def assert_error(status: int, reply: dict[str, Any], code: str, *words: str) -> str:
    """The ``details`` of a refusal, after checking its status and error envelope."""
    assert status == int(code), reply
    assert reply["namespace"] == "error"
    assert reply["args"]["code"] == code
    details: str = reply["args"]["details"]
    for word in words:
        assert word.lower() in details.lower(), (word, details)
    return details


def assert_stored(service: Service, reply: dict[str, Any], name: str, data: bytes) -> None:
    """The success reply is the contract's, and the file arrived byte for byte."""
    assert reply == {
        "result": "success",
        "file_upload": name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert service.uploads.path_of(name).read_bytes() == data


@dataclass
class Kept:
    """An earlier upload that a refusal must leave untouched."""

    name: str
    data: bytes

    def check(self, service: Service) -> None:
        """It is still there, whole, and nothing else is (no temp files either)."""
        assert entries(service) == [self.name]
        assert service.uploads.names() == [self.name]
        assert service.uploads.path_of(self.name).read_bytes() == self.data


async def keep_one(http: aiohttp.ClientSession, service: Service) -> Kept:
    """Upload ``keep.bin`` with credentials of its own."""
    kept = Kept("keep.bin", os.urandom(100_000))
    status, reply = await upload_raw(
        http, service, await issue(http, service), kept.data, kept.name
    )
    assert status == 200, reply
    kept.check(service)
    return kept


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` as a chunked request body."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)  # a yield, not a wait: each chunk goes out on its own


# -- sys/upload_file -------------------------------------------------------------------------


async def test_upload_file_reply_shape_and_expiry(
    start_service: ServiceFactory,
    connect: ClientFactory,
    http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    service = await start_service(clock=clock)
    client = await connect(service, login=ADMIN)
    first = await client.call("sys", "upload_file")
    assert set(first) == {"upload_user", "upload_pass", "upload_expires"}
    assert all(isinstance(value, str) and value for value in first.values())
    assert ":" not in first["upload_user"]
    assert len(first["upload_pass"]) >= 32
    # ManualClock starts at 2026-01-01 00:00:00 UTC: ten minutes on, in yyyyMMddHHmmss.
    assert first["upload_expires"] == "20260101001000"

    clock.advance(13 * 3600 + 5)  # afternoon: the hours are 24-hour (HTTP: the token died)
    second = await issue(http, service)
    assert second["upload_expires"] == "20260101131005"
    assert second["upload_user"] != first["upload_user"]
    assert second["upload_pass"] != first["upload_pass"]


async def test_upload_file_over_http_too(service: Service, http: aiohttp.ClientSession) -> None:
    credentials = await issue(http, service)
    assert len(credentials["upload_expires"]) == 14
    assert credentials["upload_expires"].isdigit()


async def test_upload_file_is_for_administrators(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=USER)
    reply = await client.request("sys", "upload_file")
    assert reply["namespace"] == "error"
    assert reply["args"]["code"] == "403"
    assert "upload_file" in reply["args"]["details"]
    listed = await client.call("rpc", "query")
    assert "upload_file" not in listed["sys"]
    admin = await connect(service, login=ADMIN)
    assert "upload_file" in (await admin.call("rpc", "query"))["sys"]


async def test_upload_file_needs_a_login(service: Service, connect: ClientFactory) -> None:
    client = await connect(service)
    reply = await client.request("sys", "upload_file")
    assert reply["namespace"] == "error"
    assert reply["args"]["code"] == "401"


async def test_upload_file_takes_no_args(service: Service, connect: ClientFactory) -> None:
    client = await connect(service, login=ADMIN)
    reply = await client.request("sys", "upload_file", {"name": "x"})
    assert reply["args"]["code"] == "400"
    assert "name" in reply["args"]["details"]


# -- good uploads ----------------------------------------------------------------------------


async def test_raw_upload_arrives_byte_identical(
    service: Service, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5 * MiB + 123)
    status, reply = await upload_raw(http, service, await issue(http, service), data, "u.raucb")
    assert status == 200, reply
    assert_stored(service, reply, "u.raucb", data)
    assert entries(service) == ["u.raucb"]
    assert service.uploads.names() == ["u.raucb"]


async def test_chunked_raw_upload_arrives_byte_identical(
    service: Service, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5 * MiB + 7)
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, chunks_of(data), "chunked.bin")
    assert status == 200, reply
    assert_stored(service, reply, "chunked.bin", data)


async def test_multipart_upload_arrives_byte_identical(
    service: Service, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5 * MiB + 1)
    form = aiohttp.FormData()
    form.add_field("comment", "before the file")
    form.add_field(
        "file", io.BytesIO(data), filename="form.raucb", content_type="application/octet-stream"
    )
    form.add_field("after", "ignored")
    headers = auth_header(await issue(http, service))
    async with http.post(upload_url(service), data=form, headers=headers) as resp:
        reply = await resp.json()
        assert resp.status == 200, reply
    assert_stored(service, reply, "form.raucb", data)
    assert entries(service) == ["form.raucb"]


async def test_hand_made_multipart_upload(service: Service, http: aiohttp.ClientSession) -> None:
    data = b"--not-the-boundary\r\n" + os.urandom(300_000) + b"\r\n--"
    body = form_body([(file_part("hand.bin"), data)])
    status, reply = await upload_form(http, service, await issue(http, service), body)
    assert status == 200, reply
    assert_stored(service, reply, "hand.bin", data)


@pytest.mark.parametrize(
    "name",
    ["update-1.2.3.raucb", "x" * 255, "\u00fcnic\u00f6de.bin", "a b.bin", "v1.0-rc.1", "a.b.c"],
)
async def test_safe_names_are_kept_as_they_are(
    service: Service, http: aiohttp.ClientSession, name: str
) -> None:
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"payload", name)
    assert status == 200, reply
    assert_stored(service, reply, name, b"payload")


async def test_upload_replaces_a_file_of_the_same_name(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    status, reply = await upload_raw(http, service, await issue(http, service), b"new", kept.name)
    assert status == 200, reply
    assert_stored(service, reply, kept.name, b"new")
    assert entries(service) == [kept.name]


async def test_upload_is_logged_without_the_password(
    service: Service, http: aiohttp.ClientSession
) -> None:
    credentials = await issue(http, service)
    data = b"logged"
    status, reply = await upload_raw(http, service, credentials, data, "logged.bin")
    assert status == 200, reply
    log = service.log.text()
    line = next(line for line in log.split("<br>") if "'logged.bin' stored" in line)
    assert "6 bytes" in line
    assert hashlib.sha256(data).hexdigest() in line
    assert "127.0.0.1" in line
    assert credentials["upload_user"] in log  # issued to root, and used
    assert credentials["upload_pass"] not in log


async def test_memory_does_not_grow_with_the_file(
    service: Service, http: aiohttp.ClientSession
) -> None:
    size = 48 * MiB
    block = os.urandom(MiB)
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            for start in range(0, MiB, 64 * 1024):
                yield block[start : start + 64 * 1024]
            digest.update(block)

    credentials = await issue(http, service)
    tracemalloc.start()
    try:
        status, reply = await upload_raw(http, service, credentials, body(), "big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200, reply
    assert reply["size"] == size
    assert reply["sha256"] == digest.hexdigest()
    assert peak < 8 * MiB, f"peak {peak} bytes for a {size}-byte upload"


# -- the credentials' life -------------------------------------------------------------------


async def test_used_credentials_are_refused(service: Service, http: aiohttp.ClientSession) -> None:
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"first", "first.bin")
    assert status == 200, reply
    status, reply = await upload_raw(http, service, credentials, b"second", "second.bin")
    assert_error(status, reply, "401", "used")
    status, reply = await upload_raw(http, service, credentials, b"again", "first.bin")
    assert_error(status, reply, "401", "used")
    Kept("first.bin", b"first").check(service)


async def test_expired_credentials_are_refused(
    start_service: ServiceFactory, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    service = await start_service(clock=clock)
    kept = await keep_one(http, service)
    just_in_time = await issue(http, service)
    too_late = await issue(http, service)
    clock.advance(599)
    status, reply = await upload_raw(http, service, just_in_time, b"in time", "in-time.bin")
    assert status == 200, reply
    clock.advance(2)  # 601 s after issue
    status, reply = await upload_raw(http, service, too_late, b"late", "late.bin")
    assert_error(status, reply, "401", "expired", "20260101001000")
    assert service.uploads.names() == ["in-time.bin", kept.name]
    assert service.uploads.path_of(kept.name).read_bytes() == kept.data


async def test_wrong_password_is_refused(service: Service, http: aiohttp.ClientSession) -> None:
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    for password in ["wrong", "", credentials["upload_pass"][:-1], ADMIN[1]]:
        headers = auth_header(credentials, password)
        status, reply = await upload_raw(http, service, None, b"x", "x.bin", headers=headers)
        assert_error(status, reply, "401", "password")
    kept.check(service)
    # Wrong guesses do not spend the credentials.
    status, reply = await upload_raw(http, service, credentials, b"right", "right.bin")
    assert status == 200, reply


async def test_admin_password_is_no_upload_credential(
    service: Service, http: aiohttp.ClientSession
) -> None:
    raw = f"{ADMIN[0]}:{ADMIN[1]}".encode()
    headers = {"Authorization": "Basic " + b64encode(raw).decode("ascii")}
    status, reply = await upload_raw(http, service, None, b"x", "x.bin", headers=headers)
    assert_error(status, reply, "401")
    assert entries(service) == []


async def test_no_authorization_is_refused_with_a_challenge(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    params = {"filename": "x.bin"}
    headers = {"Content-Type": "application/octet-stream"}
    async with http.post(upload_url(service), data=b"x", params=params, headers=headers) as resp:
        reply = await resp.json()
        assert_error(resp.status, reply, "401", "authorization")
        assert resp.headers["WWW-Authenticate"].lower().startswith("basic")
    kept.check(service)


@pytest.mark.parametrize(
    "header", ["Bearer abc", "Basic !!!", "Basic " + b64encode(b"no-colon").decode()]
)
async def test_malformed_authorization_is_refused(
    service: Service, http: aiohttp.ClientSession, header: str
) -> None:
    headers = {"Authorization": header}
    status, reply = await upload_raw(http, service, None, b"x", "x.bin", headers=headers)
    assert_error(status, reply, "401")
    assert entries(service) == []


async def test_each_grant_is_its_own(service: Service, http: aiohttp.ClientSession) -> None:
    one, two = await issue(http, service), await issue(http, service)
    status, reply = await upload_raw(http, service, two, b"two", "two.bin")
    assert status == 200, reply
    mixed = {**one, "upload_pass": two["upload_pass"]}
    status, reply = await upload_raw(http, service, mixed, b"mixed", "mixed.bin")
    assert_error(status, reply, "401", "password")
    status, reply = await upload_raw(http, service, one, b"one", "one.bin")
    assert status == 200, reply
    assert service.uploads.names() == ["one.bin", "two.bin"]


async def test_a_failed_upload_leaves_the_credentials_usable(
    service: Service, http: aiohttp.ClientSession
) -> None:
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"x", "../x")
    assert_error(status, reply, "400")
    status, reply = await upload_raw(http, service, credentials, b"", "empty.bin")
    assert_error(status, reply, "400")
    status, reply = await upload_raw(http, service, credentials, b"retry", "retry.bin")
    assert status == 200, reply
    assert_stored(service, reply, "retry.bin", b"retry")


async def test_credentials_serve_one_upload_at_a_time(
    service: Service, http: aiohttp.ClientSession
) -> None:
    credentials = await issue(http, service)
    data = os.urandom(2 * MiB)
    reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
    try:
        target = "/upload?filename=slow.bin"
        writer.write(request_head(service, credentials, target=target, content_length=len(data)))
        writer.write(data[:MiB])
        await writer.drain()
        await wait_for_entries(service, lambda found: any(n.endswith(".part") for n in found))

        status, reply = await upload_raw(http, service, credentials, b"racer", "racer.bin")
        assert_error(status, reply, "401", "in progress")

        writer.write(data[MiB:])
        await writer.drain()
        done = await read_reply(reader)
    finally:
        writer.close()
    assert done.status == 200, done.body
    assert_stored(service, done.body, "slow.bin", data)
    assert entries(service) == ["slow.bin"]
    status, reply = await upload_raw(http, service, credentials, b"after", "after.bin")
    assert_error(status, reply, "401", "used")


async def test_uploads_are_deleted_at_the_next_start(
    start_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "restart-state"
    first = await start_service(state_dir=state)
    credentials = await issue(http, first)
    status, reply = await upload_raw(http, first, credentials, b"old", "old.bin")
    assert status == 200, reply
    (first.uploads.directory / ".stale.part").write_bytes(b"left by a crash")
    await first.stop()

    second = await start_service(state_dir=state)
    assert second.uploads.names() == []
    assert entries(second) == []
    with pytest.raises(ValueError, match=r"old\.bin"):
        second.uploads.path_of("old.bin")
    assert "deleted 1 uploaded file" in second.log.text()
    # Credentials do not outlive the service either.
    status, reply = await upload_raw(http, second, credentials, b"x", "x.bin")
    assert_error(status, reply, "401")

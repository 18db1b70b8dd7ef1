"""Every bad input to ``POST /upload`` from the issue: the refusal says why, and nothing is lost.

Each refusal checks its status and error envelope, that no file (not even a ``.part`` temp file)
was left, and that the upload made before it is still there, byte for byte. Where a refusal must
come before the body is read, the test sends only the request head on a raw socket: the reply
can then only have come without reading a body.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sysupd.api.service import Service
from sysupd.core.uploadnames import check_upload_name
from tests.conftest import ADMIN, ServiceFactory, api_url
from tests.test_upload_credentials import (
    FORM_TYPE,
    MiB,
    RawReply,
    assert_error,
    assert_stored,
    auth_header,
    chunks_of,
    entries,
    file_part,
    form_body,
    issue,
    keep_one,
    read_reply,
    request_head,
    upload_form,
    upload_raw,
    upload_url,
    wait_for_entries,
)

BAD_NAMES = [
    pytest.param("", "empty", id="empty"),
    pytest.param("a/b", "separator", id="slash"),
    pytest.param("/etc/passwd", "separator", id="absolute"),
    pytest.param("../escape", "separator", id="dotdot-slash"),
    pytest.param("..", "..", id="dotdot"),
    pytest.param("a..b", "..", id="inner-dotdot"),
    pytest.param("a\\b", "separator", id="backslash"),
    pytest.param("..\\escape", "separator", id="dotdot-backslash"),
    pytest.param("C:\\fakepath\\u.raucb", "separator", id="windows-path"),
    pytest.param(".hidden", "dot", id="leading-dot"),
    pytest.param(".", "dot", id="dot"),
    pytest.param("a\x00b", "U+0000", id="nul"),
    pytest.param("a\nb", "U+000A", id="newline"),
    pytest.param("a\rb", "U+000D", id="carriage-return"),
    pytest.param("a\tb", "U+0009", id="tab"),
    pytest.param("a\x1bb", "U+001B", id="escape"),
    pytest.param("a\x7fb", "U+007F", id="delete"),
    pytest.param("a\x85b", "U+0085", id="c1-control"),
    pytest.param("evil\u202egpj.bin", "U+202E", id="bidi-override"),
    pytest.param("a\u2028b", "U+2028", id="line-separator"),
    pytest.param(" lead.bin", "white space", id="leading-space"),
    pytest.param("trail.bin ", "white space", id="trailing-space"),
    pytest.param("x" * 256, "255 bytes", id="256-bytes"),
    pytest.param("\u00e9" * 128, "255 bytes", id="256-utf8-bytes"),
]


async def head_only(service: Service, head: bytes) -> RawReply:
    """Send only a request head on a raw socket and read the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
    try:
        writer.write(head)
        await writer.drain()
        return await read_reply(reader)
    finally:
        writer.close()


async def set_limit(http: aiohttp.ClientSession, service: Service, max_upload_bytes: int) -> None:
    """``sys/set_config`` the upload limit, as an administrator would."""
    raw = f"{ADMIN[0]}:{ADMIN[1]}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
    body = {"max_upload_bytes": max_upload_bytes}
    url = api_url(service, "sys/set_config")
    async with http.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    assert service.settings.max_upload_bytes == max_upload_bytes


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "word"), BAD_NAMES)
async def test_bad_name_in_the_url_is_refused(
    service: Service, http: aiohttp.ClientSession, name: str, word: str
) -> None:
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"data", name)
    assert_error(status, reply, "400", "file name", word)
    kept.check(service)


@pytest.mark.parametrize(
    ("name", "word"),
    [
        pytest.param("a/b", "separator", id="slash"),
        pytest.param("../../escape", "separator", id="dotdot-slash"),
        pytest.param("..", "..", id="dotdot"),
        pytest.param("..\\escape", "separator", id="dotdot-backslash"),
        pytest.param("C:\\fakepath\\u.raucb", "separator", id="windows-path"),
        pytest.param(".hidden", "dot", id="leading-dot"),
        pytest.param("x" * 256, "255 bytes", id="256-bytes"),
    ],
)
async def test_bad_name_in_the_form_is_refused(
    service: Service, http: aiohttp.ClientSession, name: str, word: str
) -> None:
    kept = await keep_one(http, service)
    body = form_body([(file_part(name), b"data")])
    status, reply = await upload_form(http, service, await issue(http, service), body)
    assert_error(status, reply, "400", "file name", word)
    kept.check(service)


@pytest.mark.parametrize(("name", "word"), BAD_NAMES)
def test_the_store_refuses_bad_names_too(service: Service, name: str, word: str) -> None:
    problem = check_upload_name(name)
    assert problem is not None
    assert word.lower() in problem.lower()
    with pytest.raises(ValueError, match="file name"):
        service.uploads.path_of(name)
    with pytest.raises(ValueError, match="file name"):
        service.uploads.remove(name)


async def test_path_of_names_only_uploaded_files(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    assert service.uploads.path_of(kept.name) == service.uploads.directory / kept.name
    with pytest.raises(ValueError, match=r"no file named 'never\.bin' was uploaded"):
        service.uploads.path_of("never.bin")
    (service.uploads.directory / "subdir").mkdir()
    with pytest.raises(ValueError, match="was uploaded"):
        service.uploads.path_of("subdir")
    (service.uploads.directory / "link").symlink_to(service.uploads.directory / kept.name)
    with pytest.raises(ValueError, match="was uploaded"):
        service.uploads.path_of("link")
    assert service.uploads.names() == [kept.name]
    service.uploads.remove("never.bin")  # nothing there: nothing to do
    service.uploads.remove(kept.name)
    assert service.uploads.names() == []
    assert f"upload {kept.name!r} deleted" in service.log.text()


async def test_no_filename_in_the_url_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"data", None)
    assert_error(status, reply, "400", "filename")
    headers = {**auth_header(credentials), "Content-Type": "application/octet-stream"}
    url = upload_url(service) + "?filename=a.bin&filename=b.bin"
    async with http.post(url, data=b"data", headers=headers) as resp:
        assert_error(resp.status, await resp.json(), "400", "one ?filename")
    kept.check(service)


# -- no file ---------------------------------------------------------------------------------


async def test_empty_raw_body_is_refused(service: Service, http: aiohttp.ClientSession) -> None:
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"", "empty.bin")
    assert_error(status, reply, "400", "no body")
    kept.check(service)


async def test_request_without_a_body_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    reply = await head_only(service, request_head(service, await issue(http, service)))
    assert_error(reply.status, reply.body, "400", "no body")
    kept.check(service)


async def test_empty_chunked_body_is_refused(service: Service, http: aiohttp.ClientSession) -> None:
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, chunks_of(b""), "empty.bin")
    assert_error(status, reply, "400", "empty")
    kept.check(service)


@pytest.mark.parametrize(
    ("body", "word"),
    [
        pytest.param(b"", "no body", id="empty-body"),
        pytest.param(form_body([]), "no part named 'file'", id="no-parts"),
        pytest.param(
            form_body([('Content-Disposition: form-data; name="comment"', b"hello")]),
            "no part named 'file'",
            id="no-file-part",
        ),
        pytest.param(
            form_body([(file_part("u.bin", name="upload"), b"data")]),
            "no part named 'file'",
            id="file-under-another-name",
        ),
        pytest.param(
            form_body([('Content-Disposition: form-data; name="file"', b"data")]),
            "no filename",
            id="no-filename",
        ),
        pytest.param(
            form_body([('Content-Disposition: form-data; name="file"; filename=""', b"")]),
            "no filename",
            id="browser-without-a-chosen-file",
        ),
        pytest.param(
            form_body([(file_part("empty.bin"), b"")]),
            "empty",
            id="empty-file",
        ),
        pytest.param(
            form_body(
                [
                    (
                        file_part("b64.bin") + "\r\nContent-Transfer-Encoding: base64",
                        base64.b64encode(b"data"),
                    )
                ]
            ),
            "binary",
            id="base64-part",
        ),
        pytest.param(b"this is not multipart at all", "malformed", id="not-multipart"),
    ],
)
async def test_form_without_a_file_is_refused(
    service: Service, http: aiohttp.ClientSession, body: bytes, word: str
) -> None:
    kept = await keep_one(http, service)
    status, reply = await upload_form(http, service, await issue(http, service), body)
    assert_error(status, reply, "400", word)
    kept.check(service)


async def test_form_without_a_boundary_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    body = form_body([(file_part("u.bin"), b"data")])
    credentials = await issue(http, service)
    status, reply = await upload_form(http, service, credentials, body, "multipart/form-data")
    assert_error(status, reply, "400", "malformed")
    kept.check(service)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json", "multipart/mixed"],
)
async def test_other_content_types_are_refused(
    service: Service, http: aiohttp.ClientSession, content_type: str
) -> None:
    kept = await keep_one(http, service)
    headers = {"Content-Type": content_type}
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"data", "u.bin", headers)
    details = assert_error(status, reply, "400", "application/octet-stream", "multipart/form-data")
    assert content_type in details
    kept.check(service)


async def test_other_methods_are_refused(service: Service, http: aiohttp.ClientSession) -> None:
    kept = await keep_one(http, service)
    for method in ("GET", "PUT", "DELETE"):
        headers = auth_header(await issue(http, service))
        async with http.request(method, upload_url(service), headers=headers) as resp:
            assert resp.status == 405
    kept.check(service)


# -- too large -------------------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_refused_unread(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    await set_limit(http, service, 1000)  # read live: no restart
    credentials = await issue(http, service)
    reply = await head_only(service, request_head(service, credentials, content_length=1001))
    assert_error(reply.status, reply.body, "413", "1001", "limit is 1000")
    kept.check(service)
    # A refused upload hands the credentials back: one within the limit still works.
    status, ok = await upload_raw(http, service, credentials, b"x" * 1000, "fits.bin")
    assert status == 200, ok
    assert_stored(service, ok, "fits.bin", b"x" * 1000)


async def test_limit_from_the_configuration(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    service = await start_service(max_upload_bytes=10)
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"x" * 11, "big.bin")
    assert_error(status, reply, "413", "limit is 10")
    assert entries(service) == []


async def test_declared_form_over_the_limit_is_refused_unread(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    await set_limit(http, service, 1000)
    credentials = await issue(http, service)
    head = request_head(
        service, credentials, target="/upload", content_type=FORM_TYPE, content_length=2 * MiB
    )
    reply = await head_only(service, head)
    assert_error(reply.status, reply.body, "413", str(2 * MiB), "limit is 1000")
    kept.check(service)


async def test_file_in_a_form_over_the_limit_is_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    await set_limit(http, service, 1000)
    credentials = await issue(http, service)
    # The body is within the limit plus the form's overhead allowance, the file is not.
    body = form_body([(file_part("big.bin"), b"x" * 1001)])
    status, reply = await upload_form(http, service, credentials, body)
    assert_error(status, reply, "413", "larger than 1000 bytes")
    kept.check(service)
    body = form_body([(file_part("fits.bin"), b"x" * 1000)])
    status, reply = await upload_form(http, service, credentials, body)
    assert status == 200, reply


async def test_large_form_fields_besides_the_file_are_refused(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    body = form_body(
        [
            ('Content-Disposition: form-data; name="padding"', b"p" * (MiB)),
            (file_part("u.bin"), b"data"),
        ]
    )
    status, reply = await upload_form(http, service, await issue(http, service), body)
    assert_error(status, reply, "413", "besides 'file'")
    kept.check(service)


async def test_chunked_body_over_the_limit_is_cut_off(
    service: Service, http: aiohttp.ClientSession
) -> None:
    kept = await keep_one(http, service)
    await set_limit(http, service, MiB)
    credentials = await issue(http, service)
    data = b"y" * (3 * MiB)
    status, reply = await upload_raw(http, service, credentials, chunks_of(data), kept.name)
    assert_error(status, reply, "413", f"larger than {MiB} bytes")
    kept.check(service)


async def test_body_over_the_free_space_is_refused(
    tiny_disk: Path, start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    # tiny_disk comes first, so that it is unmounted after the service has stopped.
    service = await start_service(state_dir=tiny_disk / "state")
    kept = await keep_one(http, service)  # small files still fit
    credentials = await issue(http, service)

    reply = await head_only(service, request_head(service, credentials, content_length=2 * MiB))
    assert_error(reply.status, reply.body, "413", "free")
    kept.check(service)

    data = b"z" * (2 * MiB)
    status, body = await upload_raw(http, service, credentials, chunks_of(data), "big.bin")
    assert_error(status, body, "413", "free")
    kept.check(service)

    status, body = await upload_raw(http, service, credentials, b"fits", "fits.bin")
    assert status == 200, body


# -- broken connections ----------------------------------------------------------------------


@pytest.mark.parametrize("form", [False, True], ids=["raw", "multipart"])
async def test_client_gone_mid_upload_leaves_nothing(
    service: Service, http: aiohttp.ClientSession, form: bool
) -> None:
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    data = b"q" * (4 * MiB)
    body = form_body([(file_part(kept.name), data)]) if form else data
    head = request_head(
        service,
        credentials,
        target="/upload" if form else f"/upload?filename={kept.name}",
        content_type=FORM_TYPE if form else "application/octet-stream",
        content_length=len(body),
    )
    _, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
    writer.write(head + body[:MiB])
    await writer.drain()
    await wait_for_entries(service, lambda found: any(n.endswith(".part") for n in found))
    writer.transport.abort()

    await wait_for_entries(service, lambda found: found == [kept.name])
    kept.check(service)
    assert "broke off" in service.log.text()
    # The service goes on, and the credentials serve a retry.
    status, reply = await upload_raw(http, service, credentials, b"retry", "retry.bin")
    assert status == 200, reply
    assert "bug in" not in service.log.text()


@pytest.mark.parametrize(
    ("tail", "reply_status"),
    [
        pytest.param(b"zz-not-hex\r\n", 400, id="bad-chunk-size"),
        pytest.param(b"20000\r\n" + b"c" * 100, 400, id="stalled"),
        pytest.param(b"20000\r\n" + b"c" * 100, None, id="cut-off"),
    ],
)
async def test_broken_chunked_body_leaves_nothing(
    start_service: ServiceFactory,
    http: aiohttp.ClientSession,
    tail: bytes,
    reply_status: int | None,
) -> None:
    service = await start_service(upload_idle_s=0.5)
    kept = await keep_one(http, service)
    credentials = await issue(http, service)
    head = request_head(service, credentials, target=f"/upload?filename={kept.name}").replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
    try:
        writer.write(head + b"10000\r\n" + b"c" * 0x10000 + b"\r\n")
        await writer.drain()
        await wait_for_entries(service, lambda found: any(n.endswith(".part") for n in found))
        writer.write(tail)
        await writer.drain()
        if reply_status is None:
            writer.transport.abort()
        else:
            status_line = await asyncio.wait_for(reader.readline(), 10)
            assert f" {reply_status} ".encode() in status_line
    finally:
        writer.close()
    await wait_for_entries(service, lambda found: found == [kept.name])
    kept.check(service)
    assert "not stored (400): the body" in service.log.text()
    status, reply = await upload_raw(http, service, credentials, b"retry", "retry.bin")
    assert status == 200, reply


async def test_unusable_uploads_directory_is_a_500_not_a_bug(
    service: Service, http: aiohttp.ClientSession
) -> None:
    credentials = await issue(http, service)
    service.uploads.directory.rmdir()
    service.uploads.directory.write_bytes(b"in the way")
    status, reply = await upload_raw(http, service, credentials, b"data", "u.bin")
    assert_error(status, reply, "500", "could not be stored")
    assert service.uploads.directory.read_bytes() == b"in the way"
    assert "bug in" not in service.log.text()
    # Once the directory is back, the same credentials still serve their one upload.
    service.uploads.clear()
    status, reply = await upload_raw(http, service, credentials, b"data", "u.bin")
    assert_stored(service, reply, "u.bin", b"data")


async def test_refusals_are_logged_without_secrets(
    service: Service, http: aiohttp.ClientSession
) -> None:
    credentials = await issue(http, service)
    status, reply = await upload_raw(http, service, credentials, b"data", "../x")
    assert_error(status, reply, "400")
    wrong: dict[str, Any] = {**credentials, "upload_pass": "not-the-password"}
    status, reply = await upload_raw(http, service, wrong, b"data", "x.bin")
    assert_error(status, reply, "401")
    log = service.log.text()
    assert "upload from 127.0.0.1 not stored (400)" in log
    assert "upload from 127.0.0.1 not stored (401)" in log
    assert credentials["upload_pass"] not in log
    assert "not-the-password" not in log

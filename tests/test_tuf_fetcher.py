"""The update server fetcher's own rules: the origin lock, python-tuf's error types, payload
streams and ngclient itself.

Each test starts real aiohttp servers on 127.0.0.1 on the test's loop and runs the (blocking)
fetcher in a worker thread with ``asyncio.to_thread``, the way the online channel runs it. How
the bytes move (limits, stalls, resumes, TLS) is test_fetch_transfer.py's, for both policies.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from pathlib import Path

import pytest
from aiohttp import web
from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError
from tuf.ngclient import Updater

from sysupd.errors import AcquireError
from sysupd.sources.tuf_fetcher import FetcherLimits, OriginFetcher
from tests.fetching import BLOCK, DATA, MIB, FileServer, Serve, drain
from tests.releases import make_repo

FAST = FetcherLimits(connect_timeout_s=5, deadline_s=15, min_rate_window_s=5)


async def start_file(serve: Serve, server: FileServer) -> str:
    """Start ``server``; its origin."""
    return f"http://127.0.0.1:{await serve(server.app)}"


async def fetch(origin: str, url: str) -> bytes:
    """Fetch ``url`` in a worker thread with a fetcher for ``origin``, as ngclient does."""
    with OriginFetcher(origin, limits=FAST) as fetcher:
        return await asyncio.to_thread(lambda: b"".join(fetcher.fetch(url)))


def test_the_update_servers_defaults() -> None:
    assert (FetcherLimits().connect_timeout_s, FetcherLimits().max_redirects) == (30, 3)
    assert FetcherLimits().max_bytes is None


# -- the origin lock ------------------------------------------------------------------------------


async def test_a_url_on_another_origin_is_refused_without_connecting(serve: Serve) -> None:
    server = FileServer()
    origin = await start_file(serve, server)
    port = int(origin.rsplit(":", 1)[1])
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        other.setblocking(False)
        other_port = other.getsockname()[1]
        refused = [
            (f"http://127.0.0.1:{other_port}/file", f"127.0.0.1:{other_port} is not the update"),
            (f"https://127.0.0.1:{port}/file", f"https://127.0.0.1:{port} is not the update"),
            (f"http://localhost:{port}/file", f"localhost:{port} is not the update"),
            (f"http://user:pw@127.0.0.1:{port}/file", "user name or password"),
            (f"ftp://127.0.0.1:{port}/file", "only http and https"),
        ]
        with OriginFetcher(origin, limits=FAST) as fetcher:
            for url, named in refused:
                with pytest.raises(DownloadError, match=re.escape(named)):
                    fetcher.fetch(url)  # at once, before the first chunk is asked for
                with pytest.raises(AcquireError, match=re.escape(named)):
                    fetcher.open_stream(url, MIB)
        with pytest.raises(BlockingIOError):
            other.accept()  # nobody connected to the other server
    assert server.requests == []


async def test_the_origin_may_carry_a_path_and_only_its_origin_counts(serve: Serve) -> None:
    origin = await start_file(serve, FileServer())
    with OriginFetcher(f"{origin}/repo/", limits=FAST) as fetcher:
        assert fetcher.origin == origin
    with pytest.raises(ValueError, match="http and https"):
        OriginFetcher("file:///srv/repo", limits=FAST)


async def test_a_redirect_off_the_origin_is_refused(serve: Serve) -> None:
    other = FileServer()
    other_origin = await start_file(serve, other)
    server = FileServer(away=f"{other_origin}/file")
    origin = await start_file(serve, server)
    with pytest.raises(
        DownloadError,
        match=re.escape(
            f"a redirect was refused for /away: {other_origin} is not the update server {origin}"
        ),
    ):
        await fetch(origin, f"{origin}/away")
    assert other.requests == []


# -- python-tuf's errors --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404, 500, 503])
async def test_an_http_error_is_a_download_http_error_with_its_status(
    serve: Serve, status: int
) -> None:
    origin = await start_file(serve, FileServer(status=status))
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(DownloadHTTPError, match=f"answered {status} .* for /file") as caught,
    ):
        await asyncio.to_thread(fetcher.download_bytes, f"{origin}/file", MIB)
    assert caught.value.status_code == status


async def test_ngclient_sees_a_length_cap_as_a_download_length_mismatch(serve: Serve) -> None:
    origin = await start_file(serve, FileServer())
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(DownloadLengthMismatchError),
    ):
        await asyncio.to_thread(fetcher.download_bytes, f"{origin}/file", MIB)


# -- payload streams ------------------------------------------------------------------------------


async def test_a_stream_refuses_a_file_announced_longer_than_its_signed_length(
    serve: Serve,
) -> None:
    origin = await start_file(serve, FileServer())
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(AcquireError, match="more than its signed length of 1000 bytes"),
    ):
        await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", 1000)


async def test_a_stream_stops_a_body_running_past_its_signed_length(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(chunked=True))
    with OriginFetcher(origin, limits=FAST) as fetcher:
        reader = await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", MIB)
        with reader:
            assert reader.size is None
            with pytest.raises(AcquireError, match=f"longer than its signed length of {MIB}"):
                await asyncio.to_thread(drain, reader)
            with pytest.raises(AcquireError, match="longer than its signed length"):
                reader.read(BLOCK)  # failed stays failed


async def test_a_stream_names_an_http_error_plainly(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(status=404))
    with (
        OriginFetcher(origin, limits=FAST) as fetcher,
        pytest.raises(AcquireError, match=r"^the server answered 404 Not Found for /file$"),
    ):
        await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", MIB)


async def test_a_stream_failure_mid_body_is_an_acquire_error(serve: Serve) -> None:
    origin = await start_file(serve, FileServer(stall_after=MIB))
    limits = FetcherLimits(min_rate_window_s=0.3)
    with OriginFetcher(origin, limits=limits) as fetcher:
        reader = await asyncio.to_thread(fetcher.open_stream, f"{origin}/file", len(DATA))
        with reader, pytest.raises(AcquireError, match=r"nothing arrived for 0\.3 s"):
            await asyncio.to_thread(drain, reader)


# -- with ngclient --------------------------------------------------------------------------------


async def test_ngclient_refreshes_and_finds_a_release_through_the_fetcher(
    serve: Serve, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "1.0.0")
    release = repo.release("1.0.0")
    app = web.Application()
    app.router.add_static("/repo/metadata/", repo.path / "metadata")
    app.router.add_static("/repo/targets/", repo.path / "targets")
    origin = f"http://127.0.0.1:{await serve(app)}"
    base = f"{origin}/repo"
    cache, downloads = tmp_path / "cache", tmp_path / "downloads"
    cache.mkdir()
    downloads.mkdir()
    root = (repo.path / "metadata" / "1.root.json").read_bytes()

    def update(fetcher: OriginFetcher) -> tuple[bool, bytes, bytes]:
        updater = Updater(
            metadata_dir=str(cache),
            metadata_base_url=f"{base}/metadata/",
            target_dir=str(downloads),
            target_base_url=f"{base}/targets/",
            fetcher=fetcher,
            bootstrap=root,
        )
        updater.refresh()  # probes 2.root.json: the 404 ends the probe
        info = updater.get_targetinfo(release.target)
        assert info is not None
        path = updater.download_target(info)
        directory, _, name = release.target.rpartition("/")
        url = f"{base}/targets/{directory}/{release.sha256}.{name}"
        with fetcher.open_stream(url, release.length) as reader:
            streamed = drain(reader)
        return info.length == release.length, Path(path).read_bytes(), streamed

    with OriginFetcher(f"{base}/", limits=FAST) as fetcher:
        same_length, downloaded, streamed = await asyncio.to_thread(update, fetcher)
    assert same_length
    assert hashlib.sha256(downloaded).hexdigest() == release.sha256
    assert streamed == downloaded

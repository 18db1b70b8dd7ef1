"""The online trust path as the TUF conformance suite drives it: python-tuf's ngclient, through
the origin-locked fetcher the update server's channel uses, with the same updater settings.

Responsibility: map the suite's three commands onto one ``Updater`` per command; translate every
python-tuf failure into a ``VerificationError`` (untrusted metadata) or ``AcquireError`` (the
transfer), so the command exits 1 saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from tuf.api.exceptions import DownloadError, RepositoryError

from sysupd.errors import AcquireError, StateError, VerificationError
from sysupd.sources.online import open_updater
from sysupd.sources.tuf_fetcher import FetcherLimits, OriginFetcher

__all__ = ["download", "refresh"]


def refresh(metadata_dir: Path, metadata_url: str) -> None:
    """The TUF client workflow for the top-level roles.

    Raises:
        AcquireError: the repository could not be read.
        VerificationError: its metadata is not trusted.
    """
    with OriginFetcher(metadata_url, limits=FetcherLimits()) as fetcher:
        _run(lambda: open_updater(metadata_dir, metadata_url, None, fetcher, None).refresh())


def download(
    metadata_dir: Path,
    metadata_url: str,
    target_base_url: str,
    target_dir: Path,
    target_names: Sequence[str],
) -> None:
    """Each of ``target_names`` in order, verified, into ``target_dir`` (one file per target
    path, kept across calls: one whose hashes match is not downloaded again).

    Raises:
        AcquireError: a download failed, or a target is not in the trusted metadata.
        VerificationError: metadata or a target is not the signed one.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    with OriginFetcher(metadata_url, limits=FetcherLimits()) as fetcher:
        updater = open_updater(metadata_dir, metadata_url, target_base_url, fetcher, None)

        def fetch_all() -> None:
            updater.refresh()
            for name in target_names:
                info = updater.get_targetinfo(name)
                if info is None:
                    raise AcquireError(f"{name} is not a target in the trusted metadata")
                path = str(target_dir / quote(name, safe=""))
                if updater.find_cached_target(info, path) is None:
                    updater.download_target(info, path)

        _run(fetch_all)


def _run(step: Callable[[], object]) -> None:
    try:
        step()
    except DownloadError as exc:
        raise AcquireError(str(exc) or type(exc).__name__) from exc
    except RepositoryError as exc:
        raise VerificationError(str(exc) or type(exc).__name__) from exc
    except OSError as exc:
        raise StateError(str(exc)) from exc

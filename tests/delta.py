"""Delta updates for the tests: releases that share most bytes, slots that hold the older one,
and what nginx was asked for."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from sysupd.core.chunkindex import ChunkIndex, parse_index, store_path
from sysupd.release.repository import ReleaseInfo, ReleaseRepository
from tests.nginx import access_log
from tests.releases import PRODUCT

__all__ = [
    "RawReleases",
    "chunk_file",
    "chunk_requests",
    "make_raw_releases",
    "release_index",
    "requests",
]

MiB = 1 << 20


def image_bytes(seed: int, size: int) -> bytes:
    """An image-like blob: random stretches and zero stretches, the same for the same seed."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    held = 0
    while held < size:
        parts.append(rng.randbytes(rng.randrange(20_000, 300_000)))
        parts.append(bytes(rng.randrange(0, 100_000)))
        held += len(parts[-1]) + len(parts[-2])
    return b"".join(parts)[:size]


def changed(data: bytes, seed: int, spans: int, span_bytes: int) -> bytes:
    """``data`` with ``spans`` stretches of ``span_bytes`` rewritten (seeded)."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(spans):
        at = rng.randrange(0, len(out) - span_bytes)
        out[at : at + span_bytes] = rng.randbytes(span_bytes)
    return bytes(out)


@dataclass(frozen=True)
class RawReleases:
    """A repository with raw releases 1.0.0 and 1.1.0, and slot files: A holds 1.0.0."""

    repo: ReleaseRepository
    old: bytes
    new: bytes
    slot_a: Path
    slot_b: Path
    info: ReleaseInfo

    @property
    def slots(self) -> list[str]:
        return [f"A:raw:{self.slot_a}", f"B:raw:{self.slot_b}"]


def make_raw_releases(tmp_path: Path, size: int = 4 * MiB, spans: int = 2) -> RawReleases:
    """Releases 1.0.0 and 1.1.0 (``spans`` 50 KB stretches changed) of a ``size``-byte image."""
    old = image_bytes(1, size)
    new = changed(old, 2, spans, 50_000)
    repo = ReleaseRepository.init(tmp_path / "repo", PRODUCT)
    for version, data in (("1.0.0", old), ("1.1.0", new)):
        image = tmp_path / f"image-{version}.img"
        image.write_bytes(data)
        info = repo.add_release(version, image=image, chunk_size=256 * 1024)
    repo.publish()
    slot_a, slot_b = tmp_path / "slot-a.img", tmp_path / "slot-b.img"
    slot_a.write_bytes(old)
    slot_b.touch()
    return RawReleases(repo, old, new, slot_a, slot_b, info)


def release_index(repo: ReleaseRepository, version: str) -> ChunkIndex:
    """The parsed chunk index of release ``version``."""
    info = repo.release(version)
    assert info.index is not None
    directory, _, name = info.index.rpartition("/")
    (path,) = (repo.path / "targets" / directory).glob(f"*.{name}")
    return parse_index(path.read_bytes())


def chunk_file(repo: ReleaseRepository, digest: bytes) -> Path:
    """Where the repository stores the chunk ``digest``."""
    return repo.path / "targets" / store_path(digest)


def requests(work: Path) -> list[str]:
    """The paths nginx (run by ``serve_repo(…, work)``) was asked for, in order."""
    paths = []
    for line in access_log(work / "nginx"):
        request = line.split('"')[1] if '"' in line else ""
        parts = request.split()
        if len(parts) >= 2:
            paths.append(parts[1])
    return paths


def chunk_requests(work: Path) -> list[str]:
    """The chunk files nginx was asked for."""
    return [path for path in requests(work) if "/targets/chunks/" in path]


def copy_tree(source: Path, dest: Path) -> None:
    """``source``'s files into the (new) directory ``dest``, as a slot would hold them."""
    shutil.copytree(source, dest)
    for path in dest.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)

"""Releases for the benchmarks, built with ``sysupd release``, and the physical pipeline.

Every bench measures sysupd against the *physical pipeline* on the same bytes: ``openssl dgst
-sha256 FILE`` followed by ``dd if=FILE of=TARGET bs=1M conv=fsync`` into a preallocated file,
each timed from fork to reaping, the two together being the baseline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    MIB,
    BenchError,
    Sample,
    preallocate,
    remove,
    run_quiet,
    run_timed,
    sha256_file,
    sysupd_command,
    write_random,
)

__all__ = [
    "PRODUCT",
    "Release",
    "add_raw_release",
    "add_release",
    "bundle_release",
    "device_config",
    "init_repo",
    "physical_pipeline",
    "random_tree",
]

PRODUCT = "bench"


@dataclass
class Release:
    """A release in the bench repository: its payload's signed length and SHA-256."""

    version: str
    payload_bytes: int
    payload_sha256: str


def init_repo(repo: Path, log: Path) -> None:
    """``sysupd release init`` for the product ``bench``."""
    run_quiet(
        [*sysupd_command(), "release", "init", "--repo", str(repo), "--product", PRODUCT], log
    )


def add_release(repo: Path, version: str, content: Sequence[str], log: Path) -> Release:
    """``sysupd release add`` with ``content`` (``--image FILE``, or ``--tree DIR`` and more).

    Raises:
        BenchError: it failed, or did not say the payload's length and hash.
    """
    text = run_quiet(
        [*sysupd_command(), "release", "add", "--repo", str(repo), "--version", version, *content],
        log,
    )
    found = re.search(r"\((\d+) bytes, .*sha256 ([0-9a-f]{64})\)", text)
    if found is None:
        raise BenchError(f"cannot read the release's length and hash from: {text.strip()}")
    return Release(version, int(found.group(1)), found.group(2))


def add_raw_release(repo: Path, version: str, mib: int, scratch: Path, log: Path) -> Release:
    """``sysupd release add --image`` of a fresh random image of ``mib`` MiB."""
    image = scratch / f"image-{version}.img"
    write_random(image, mib * MIB)
    try:
        return add_release(repo, version, ["--image", str(image)], log)
    finally:
        remove(image)


def random_tree(tree: Path, mib: int) -> tuple[str, str]:
    """A fresh directory of ``mib`` random 1 MiB files; one file's name and SHA-256, to check."""
    remove(tree)
    tree.mkdir(parents=True)
    for index in range(mib):
        write_random(tree / f"file-{index:05d}.bin", MIB)
    name = f"file-{mib // 2:05d}.bin"
    return name, sha256_file(tree / name)


def bundle_release(repo: Path, version: str, bundle: Path, log: Path) -> None:
    """``sysupd release bundle`` of ``version`` into ``bundle``."""
    run_quiet(
        [
            *sysupd_command(),
            "release",
            "bundle",
            "--repo",
            str(repo),
            "--version",
            version,
            "--output",
            str(bundle),
        ],
        log,
    )


def device_config(path: Path, repo: Path, slots: Sequence[Path] | None, **extra: object) -> Path:
    """A device's TOML: the product, the trusted root, raw file slots A and B (None: the default
    directory slots), and ``extra`` settings."""
    values: dict[str, object] = {
        "product": PRODUCT,
        "trust_root": str((repo / "metadata" / "1.root.json").resolve()),
    }
    if slots is not None:
        values["slots"] = [f"{name}:raw:{slot}" for name, slot in zip("AB", slots, strict=True)]
    values.update(extra)
    # JSON's scalars and arrays are valid TOML values (strings with JSON escapes included).
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


def physical_pipeline(
    source: Path, sha256: str, target: Path, logs: Path, stem: str, *, timeout: float
) -> tuple[Sample, Sample]:
    """``openssl dgst -sha256 SOURCE``, then ``dd`` of it into ``target`` (preallocated here):
    the two samples, each checked (the digest printed, the bytes copied). Logs go to
    ``logs/STEM-openssl.log`` and ``logs/STEM-dd.log``.

    Raises:
        BenchError: a step failed or did not do its work.
    """
    size = source.stat().st_size
    preallocate(target, size)
    log = logs / f"{stem}-openssl.log"
    openssl = run_timed(["openssl", "dgst", "-sha256", str(source)], log, timeout=timeout)
    if sha256 not in log.read_text():
        raise BenchError(f"openssl printed another digest than {source.name}'s; see {log}")
    dd = run_timed(
        ["dd", f"if={source}", f"of={target}", "bs=1M", "conv=fsync", "status=none"],
        logs / f"{stem}-dd.log",
        timeout=timeout,
        sync_first=False,  # timed together with openssl, which dirtied nothing
    )
    if target.stat().st_size != size:
        raise BenchError(f"dd wrote {target.stat().st_size} bytes, not {source.name}'s {size}")
    return openssl, dd

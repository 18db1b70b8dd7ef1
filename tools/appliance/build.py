"""The image builder: the appliance disk, built once per input and reused from its cache.

``build`` makes, under the cache directory (``.cache/appliance`` of the checkout by default)::

    base-KEY/        debootstrap of Debian (slow: made once per package list)
    wheelhouse/      the checkout's wheel and its dependencies, from pip on the host
    repo/            the release repository (keys) whose root the image trusts
    admin-password   the demo administrator's password (made once)
    root/            the root tree; slot-VERSION.img, its ext4 images
    disk.img         the GPT disk: ESP, slot A (VERSION), slot B (empty), data
    appliance.json   what disk.img was built from (the input key) and how to use it

Invariant: ``disk.img`` is reused only when ``appliance.json`` names the same input key: a hash
of the package's sources, the builder, the GRUB page and the unit, so a changed checkout gets a
new image and an unchanged one costs nothing. Users of the disk (the tests) boot a copy of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.appliance import disk, rootfs
from tools.appliance.commands import run
from tools.appliance.grubcfg import grub_cfg, selection_snippet
from tools.appliance.layout import DISK

__all__ = [
    "PRODUCT",
    "Appliance",
    "build",
    "default_cache",
    "input_key",
    "release_bundle",
    "release_image",
    "release_repository",
]

PRODUCT = "sysupd-appliance"
CHECKOUT = Path(__file__).resolve().parents[2]
_INPUTS = (
    "src/sysupd",
    "pyproject.toml",
    "docs/grub.md",
    "docs/systemd/sysupd.service",
    "tools/appliance",
)
_SKIPPED = ("__pycache__", ".egg-info", ".mypy_cache")
# The harness, the scenarios and the docs are no input of the disk: editing them keeps the cache.
_NOT_INPUTS = (
    *("vm.py", "scenarios.py", "powercuts.py", "online.py", "badinput.py", "suite.py"),
    *("__main__.py", "README.md"),
)


@dataclass(frozen=True, slots=True)
class Appliance:
    """A built disk and what is needed to use it."""

    disk: Path
    version: str
    """The version in slot A (the device's factory version)."""
    product: str
    admin_password: str
    repo: Path
    """The release repository whose root the device trusts: it signs the updates."""
    root_tree: Path
    key: str
    timings_s: dict[str, float]

    def to_json(self) -> str:
        """The record kept in ``appliance.json``."""
        record = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Appliance:
        """The record read back from ``appliance.json``."""
        record = json.loads(text)
        for name in ("disk", "repo", "root_tree"):
            record[name] = Path(record[name])
        return cls(**record)


def default_cache() -> Path:
    """The checkout's cache directory (gitignored)."""
    return CHECKOUT / ".cache" / "appliance"


def input_key(checkout: Path, version: str) -> str:
    """A hash of everything the disk is built from."""
    digest = hashlib.sha256()
    digest.update(f"{version}\n{rootfs.base_key()}\n".encode())
    for path in sorted(_input_files(checkout)):
        digest.update(str(path.relative_to(checkout)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build(
    cache: Path | None = None,
    version: str = "1.0.0",
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Appliance:
    """The appliance disk for the checkout, from the cache when its inputs are unchanged.

    Raises:
        BuildError: a step fails (the message names the command, or the package to install).
    """
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    key = input_key(CHECKOUT, version)
    record = cache / "appliance.json"
    if not force and record.exists():
        built = Appliance.from_json(record.read_text())
        if built.key == key and built.disk.exists():
            log(f"appliance: reusing {built.disk} (inputs unchanged, key {key})")
            return built
    timings: dict[str, float] = {}

    def clock(step: str) -> contextlib.AbstractContextManager[None]:
        return _timed(timings, step, log)

    with clock("base tree (debootstrap, unless cached)"):
        base = rootfs.base_tree(cache)
    with clock("wheelhouse (pip wheel)"):
        wheelhouse = _wheelhouse(cache / "wheelhouse")
    with clock("release repository"):
        repo = _repository(cache / "repo")
    password = _admin_password(cache / "admin-password")
    with clock("root tree (venv, initramfs)"):
        tree = rootfs.root_tree(
            base,
            cache / "root",
            wheelhouse,
            repo / "metadata" / "1.root.json",
            CHECKOUT / "docs" / "systemd" / "sysupd.service",
            factory_version=version,
        )
    with clock("state directory (admin user)"):
        state = rootfs.state_tree(tree, cache / "state", password)
    with clock("slot image (mke2fs)"):
        slot = rootfs.slot_image(tree, version, cache / f"slot-{version}.img")
    with clock("ESP and data images"):
        snippet = selection_snippet((CHECKOUT / "docs" / "grub.md").read_text())
        esp = disk.esp_image(DISK, grub_cfg(snippet, DISK), cache / "esp", cache / "esp.img")
        data = disk.data_image(DISK, state, cache / "data.img")
    with clock("disk (sfdisk, copy)"):
        image = disk.assemble(DISK, {"esp": esp, "slot-a": slot, "data": data}, cache / "disk.img")
    built = Appliance(image, version, PRODUCT, password, repo, tree, key, timings)
    record.write_text(built.to_json())
    log(f"appliance: built {image} in {sum(timings.values()):.0f} s")
    return built


def release_image(
    appliance: Appliance,
    version: str,
    *,
    unhealthy: str | None = None,
    check_hangs: bool = False,
    init_panics: bool = False,
) -> Path:
    """A slot image of the appliance's root tree naming ``version`` (a raw release payload).

    ``unhealthy`` puts ``/etc/appliance/unhealthy`` with that reason into it, which the
    appliance's health check reports as a failure; ``check_hangs`` puts
    ``/etc/appliance/hangs``, which makes that check sleep for ever. ``init_panics`` makes its
    ``/sbin/init`` a script that exits at once: the kernel panics ("Attempted to kill init!")
    and, with ``panic=10``, reboots, so the release never comes up and GRUB counts its attempts. The
    shared root tree is put back as it was afterwards.
    """
    marker = appliance.root_tree / "etc" / "appliance" / "unhealthy"
    hangs = marker.with_name("hangs")
    init = appliance.root_tree / "usr" / "sbin" / "init"  # /sbin is /usr/sbin (merged /usr)
    systemd_init = os.readlink(init)
    if unhealthy is not None:
        marker.write_text(unhealthy + "\n")
    if check_hangs:
        hangs.write_text("the health check of this release never ends\n")
    if init_panics:
        init.unlink()
        init.write_text(_PANICKING_INIT)
        init.chmod(0o755)
    try:
        out = appliance.disk.with_name(f"slot-{version}.img")
        return rootfs.slot_image(appliance.root_tree, version, out)
    finally:
        marker.unlink(missing_ok=True)
        hangs.unlink(missing_ok=True)
        if init_panics:
            init.unlink()
            init.symlink_to(systemd_init)


_PANICKING_INIT = """#!/bin/sh
# A release that never comes up (tools/appliance, scenario 3): init exits, the kernel panics.
echo "appliance: this release's init exits at once: the kernel panics"
exit 1
"""


def release_repository(
    appliance: Appliance, version: str, work: Path, image: Path, *, repo: Path | None = None
) -> Path:
    """``image`` added as release ``version`` by ``sysupd release add`` to ``repo``, or to a
    copy of the appliance's repository made in ``work``: what an update server publishes.

    Signed with the keys the device trusts; in a copy, so that the cached repository never
    accumulates a run's releases. A run that makes several releases in turn passes the same
    ``repo`` for each, as a vendor's one repository would have them: releases cut from separate
    copies are forks of each other, whose metadata a device that saw one refuses for the other.

    Raises:
        BuildError: ``sysupd release`` fails.
    """
    if repo is None:
        repo = work / "repo"
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(appliance.repo, repo)
    sysupd = Path(sys.executable).with_name("sysupd")
    run([sysupd, "release", "add", "--repo", repo, "--version", version, "--image", image])
    return repo


def release_bundle(
    appliance: Appliance, version: str, work: Path, image: Path, *, repo: Path | None = None
) -> Path:
    """A signed offline bundle of ``image`` as release ``version``, made with ``sysupd release``
    in ``work`` from a ``release_repository`` (``repo`` as there).

    Raises:
        BuildError: ``sysupd release`` fails.
    """
    repo = release_repository(appliance, version, work, image, repo=repo)
    bundle = work / f"{appliance.product}-{version}.bundle"
    sysupd = Path(sys.executable).with_name("sysupd")
    run([sysupd, "release", "bundle", "--repo", repo, "--version", version, "--output", bundle])
    return bundle


def _input_files(checkout: Path) -> Iterator[Path]:
    for name in _INPUTS:
        path = checkout / name
        if path.is_file():
            yield path
            continue
        for found in path.rglob("*"):
            skipped = any(part.endswith(_SKIPPED) for part in found.parts)
            if found.is_file() and not skipped and found.name not in _NOT_INPUTS:
                yield found


def _wheelhouse(out: Path) -> Path:
    """The checkout's wheel and its dependencies' wheels (pip's own cache makes a rebuild quick)."""
    if out.exists():
        shutil.rmtree(out)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", out, CHECKOUT])
    return out


def _repository(repo: Path) -> Path:
    """The release repository, created once: its keys must outlive rebuilds of the disk."""
    if not (repo / "metadata" / "1.root.json").exists():
        sysupd = Path(sys.executable).with_name("sysupd")
        run([sysupd, "release", "init", "--repo", repo, "--product", PRODUCT])
    return repo


def _admin_password(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str, log: Callable[[str], None]) -> Iterator[None]:
    """Time one step of the build into ``timings`` and say it when it ends."""
    start = time.monotonic()
    yield
    timings[step] = round(time.monotonic() - start, 1)
    log(f"appliance: {step}: {timings[step]:.1f} s")

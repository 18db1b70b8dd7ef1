"""The appliance's root file system: a Debian tree with sysupd, and the slot images made of it.

Three steps, each cached by the builder:

1. ``base_tree``: ``debootstrap --variant=minbase`` of Debian bookworm with systemd, Python, the
   cloud kernel and ``grub-editenv`` (about 3 minutes; kept under a key of its package list);
2. ``root_tree``: a copy of the base with the appliance's files (``guest/``), the unit of
   ``docs/systemd``, the release repository's root, and sysupd installed into ``/opt/sysupd``
   from a wheelhouse built on the host — offline, by the guest's own Python, so the venv's
   interpreter and compiled wheels are the guest's;
3. ``slot_image``: an ext4 image of the tree (``mke2fs -d``), with the release's version in
   ``/etc/appliance/version``. It is a raw release image: the same bytes fit slot A or slot B.

Invariant: the image holds no state. Users, the database and the TLS key live on the data
partition (``state_tree``), so the root can be mounted read-only and replaced whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tools.appliance.commands import BuildError, run

__all__ = [
    "BASE_PACKAGES",
    "FILESYSTEM_SEED",
    "GUEST_FILES",
    "base_tree",
    "chroot",
    "root_tree",
    "slot_image",
    "state_tree",
]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "python3",
    "python3-venv",
    "grub-common",  # grub-editenv, which the grub adapter runs
    "dosfstools",  # fsck.vfat: the ESP is checked at boot (etc/fstab)
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",  # initramfs-tools' compressor
)

GUEST_FILES = Path(__file__).resolve().parent / "guest"
"""The files the appliance adds to Debian, at the paths they take in the guest."""

VENV = "/opt/sysupd"
STATE_DIR = "/var/lib/sysupd"
CONFIG = "/etc/sysupd/sysupd.toml"

# Nothing the appliance needs at run time; a smaller slot image is a smaller release to upload.
_TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)
# A clean environment for the chroot: the host's PIP_* and locale settings name host paths.
_CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}


def base_key() -> str:
    """What the base tree is made of: suite, mirror and packages."""
    text = "\n".join([SUITE, MIRROR, *BASE_PACKAGES])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_tree(cache: Path) -> Path:
    """The debootstrapped base, made once per ``base_key`` (``cache/base-KEY``).

    Raises:
        BuildError: debootstrap is missing or fails.
    """
    tree = cache / f"base-{base_key()}"
    if (tree / ".complete").exists():
        return tree
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            partial,
            MIRROR,
        ],
        timeout_s=3600,
    )
    (partial / ".complete").touch()
    partial.rename(tree)
    return tree


@contextlib.contextmanager
def chroot(tree: Path) -> Iterator[None]:
    """The host's /dev, /proc and /sys bound into ``tree`` while the block runs (pip and
    update-initramfs need them); unmounted after, even on failure."""
    mounted: list[Path] = []
    try:
        for name in ("dev", "proc", "sys"):
            point = tree / name
            point.mkdir(exist_ok=True)
            run(["mount", "--rbind", f"/{name}", point])
            run(["mount", "--make-rslave", point])
            mounted.append(point)
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-R", str(point)], check=False, capture_output=True)


def in_chroot(tree: Path, *argv: str, stdin: bytes | None = None) -> bytes:
    """Run ``argv`` inside ``tree`` (which must be inside ``chroot(tree)``)."""
    return run(["chroot", tree, *argv], stdin=stdin, env=_CHROOT_ENV)


def root_tree(
    base: Path, work: Path, wheelhouse: Path, trust_root: Path, unit: Path, factory_version: str
) -> Path:
    """A fresh copy of ``base`` at ``work``, made into the appliance's root (see the module).

    Raises:
        BuildError: a step in the chroot fails.
    """
    if work.exists():
        shutil.rmtree(work)
    run(["cp", "-a", base, work])
    (work / ".complete").unlink()
    _copy_guest_files(work, factory_version)
    shutil.copy(unit, work / "etc/systemd/system/sysupd.service")
    shutil.copy(trust_root, work / "etc/sysupd/root.json")
    # systemd makes a machine id at each boot on a read-only root when the file is empty.
    (work / "etc/machine-id").write_text("")
    for point in ("boot/efi", "var/lib/sysupd"):
        (work / point).mkdir(parents=True, exist_ok=True)
    shutil.copytree(wheelhouse, work / "root/wheelhouse")
    with chroot(work):
        in_chroot(work, "python3", "-m", "venv", VENV)
        in_chroot(
            work,
            f"{VENV}/bin/pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-cache-dir",
            "--find-links",
            "/root/wheelhouse",
            "sysupd",
        )
        # Installing is done: pip and setuptools are no part of what runs (24 MiB less to ship).
        in_chroot(work, f"{VENV}/bin/pip", "uninstall", "--yes", "--quiet", "pip", "setuptools")
        in_chroot(work, "ln", "-sf", f"{VENV}/bin/sysupd", "/usr/local/bin/sysupd")
        in_chroot(work, "update-initramfs", "-u", "-k", "all")
        in_chroot(work, "systemctl", "enable", "sysupd.service", "systemd-networkd.service")
    shutil.rmtree(work / "root/wheelhouse")
    _fixed_kernel_names(work)
    for path in _TRIM:
        shutil.rmtree(work / path, ignore_errors=True)
        (work / path).mkdir(parents=True, exist_ok=True)
    return work


def state_tree(root: Path, out: Path, admin_password: str) -> Path:
    """The data partition's first content: a state directory with the administrator ``admin``.

    Made by the guest's own ``sysupd user add`` in the chroot (the database is the guest's), then
    moved out of the root tree, whose ``/var/lib/sysupd`` stays an empty mount point.

    Raises:
        BuildError: ``sysupd user add`` fails.
    """
    if out.exists():
        shutil.rmtree(out)
    with chroot(root):
        in_chroot(
            root,
            "sysupd",
            "user",
            "add",
            "admin",
            "--admin",
            "--password-stdin",
            "--config",
            CONFIG,
            "--state-dir",
            STATE_DIR,
            stdin=admin_password.encode() + b"\n",
        )
    shutil.move(root / STATE_DIR.lstrip("/"), out)
    (root / STATE_DIR.lstrip("/")).mkdir(mode=0o700)
    return out


FILESYSTEM_SEED = "sysupd-appliance rootfs"
"""Where every release's filesystem UUID and hash seed come from."""


def slot_image(tree: Path, version: str, out: Path, extra_mib: int = 32) -> Path:
    """An ext4 image of ``tree`` naming ``version``: its content, a tenth more for the
    filesystem's own blocks, and ``extra_mib``.

    Kept small because the image is the release: every MiB of it is uploaded, written and read
    back at each update, and the root is mounted read-only, so it needs little free space.
    (``resize2fs -M`` does not do better: its minimum estimate was larger than this.)

    Raises:
        BuildError: mke2fs fails (also when the content does not fit).
    """
    (tree / "etc/appliance").mkdir(parents=True, exist_ok=True)
    (tree / "etc/appliance/version").write_text(version + "\n")
    used = int(run(["du", "-sb", "--exclude=./.complete", tree]).split()[0])
    out.unlink(missing_ok=True)
    # A fixed UUID, hash seed and clock: the same tree gives the same image bytes. The same UUID
    # and seed for every release of the product, too: ext4's metadata checksums are seeded with
    # the UUID, so a new one per release would change every metadata block and spoil delta
    # updates (docs/design/release-format.md, "Choosing the chunk size"). Slots are told apart
    # by their GPT partition names, never by the filesystem's UUID.
    seed = hashlib.sha256(FILESYSTEM_SEED.encode()).hexdigest()
    uuid = f"{seed[:8]}-{seed[8:12]}-{seed[12:16]}-{seed[16:20]}-{seed[20:32]}"
    run(
        [
            *("mke2fs", "-q", "-t", "ext4", "-m", "0", "-L", "appliance", "-U", uuid),
            *("-E", f"root_owner=0:0,hash_seed={uuid}", "-d", tree, out),
            f"{used * 11 // 10 // (1 << 20) + extra_mib}M",
        ],
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    return out


def _copy_guest_files(work: Path, factory_version: str) -> None:
    for source in GUEST_FILES.rglob("*"):
        if source.is_dir():
            continue
        target = work / source.relative_to(GUEST_FILES)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    config = work / CONFIG.lstrip("/")
    config.write_text(config.read_text().replace("@VERSION@", factory_version))


def _fixed_kernel_names(work: Path) -> None:
    """Give the tree's one kernel and initramfs the names grub.cfg loads (hard links).

    Raises:
        BuildError: the tree holds no kernel or more than one.
    """
    boot = work / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in {boot}, found {[k.name for k in kernels]}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    for name, source in (("vmlinuz", kernels[0]), ("initrd.img", boot / f"initrd.img-{release}")):
        (boot / name).unlink(missing_ok=True)
        os.link(source, boot / name)

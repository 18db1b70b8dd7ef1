"""The appliance's disk: the ESP image, the data image, and the GPT disk that holds them.

No loop device and no mount: ``sfdisk`` writes the GPT into a plain file, ``mkfs.vfat -C`` and
``mtools`` make the ESP, ``mke2fs -d`` the ext4 images, and the images are copied into their
partitions' byte ranges. The disk file stays sparse: runs of zeros are skipped, not written.
"""

from __future__ import annotations

from pathlib import Path

from tools.appliance.commands import BuildError, run
from tools.appliance.grubcfg import EARLY_MODULES, ESP_GRUB_DIR, early_cfg
from tools.appliance.layout import ESP_VOLUME_ID, DiskLayout

__all__ = ["assemble", "data_image", "esp_image"]

_COPY_BYTES = 1 << 20


def esp_image(layout: DiskLayout, grub_cfg: str, work: Path, out: Path) -> Path:
    """A FAT ESP with a standalone GRUB as the removable-media loader, grub.cfg and a grubenv.

    ``EFI/BOOT/BOOTX64.EFI`` is what UEFI firmware boots from a disk with no boot entries (OVMF
    with fresh variables); it finds the ESP by volume id and reads ``EFI/sysupd/grub.cfg``.

    Raises:
        BuildError: a tool fails.
    """
    work.mkdir(parents=True, exist_ok=True)
    early = work / "early.cfg"
    early.write_text(early_cfg())
    loader = work / "BOOTX64.EFI"
    run(
        [
            "grub-mkstandalone",
            "--format=x86_64-efi",
            f"--output={loader}",
            f"--modules={EARLY_MODULES}",
            "--locales=",
            "--themes=",
            "--fonts=",
            f"boot/grub/grub.cfg={early}",
        ]
    )
    cfg = work / "grub.cfg"
    cfg.write_text(grub_cfg)
    grubenv = work / "grubenv"
    grubenv.unlink(missing_ok=True)
    # Holds none of sysupd's variables: GRUB's snippet and the service both read it as fresh.
    run(["grub-editenv", grubenv, "create"])
    out.unlink(missing_ok=True)
    size_kib = layout.partition("esp").size_bytes // 1024
    run(["mkfs.vfat", "-C", "-i", ESP_VOLUME_ID, "-n", "ESP", out, str(size_kib)])
    image = f"-i{out}"
    run(["mmd", image, "::EFI", "::EFI/BOOT", f"::{ESP_GRUB_DIR}"])
    run(["mcopy", image, loader, "::EFI/BOOT/BOOTX64.EFI"])
    run(["mcopy", image, cfg, grubenv, f"::{ESP_GRUB_DIR}/"])
    return out


def data_image(layout: DiskLayout, state: Path, out: Path) -> Path:
    """The data partition's ext4 image: the state directory's content at its root.

    Raises:
        BuildError: mke2fs fails.
    """
    out.unlink(missing_ok=True)
    size = layout.partition("data").size_bytes
    run(["mke2fs", "-q", "-t", "ext4", "-L", "data", "-d", state, out, f"{size // 1024}k"])
    return out


def assemble(layout: DiskLayout, images: dict[str, Path], out: Path) -> Path:
    """The GPT disk with each image (partition label -> image file) at its partition.

    Partitions without an image stay zeros (an empty slot).

    Raises:
        BuildError: an image is larger than its partition, or sfdisk fails.
    """
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    with partial.open("wb") as disk:
        disk.truncate(layout.size_bytes)
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", partial],
        stdin=layout.sfdisk_script().encode(),
    )
    for label, image in images.items():
        part = layout.partition(label)
        size = image.stat().st_size
        if size > part.size_bytes:
            raise BuildError(
                f"{image} ({size} bytes) is larger than partition {label} ({part.size_bytes})"
            )
        _copy_sparse(image, partial, part.offset_bytes)
    partial.rename(out)
    return out


def _copy_sparse(image: Path, disk: Path, offset: int) -> None:
    zeros = bytes(_COPY_BYTES)
    with image.open("rb") as source, disk.open("r+b") as target:
        position = offset
        while chunk := source.read(_COPY_BYTES):
            if chunk != zeros[: len(chunk)]:
                target.seek(position)
                target.write(chunk)
            position += len(chunk)

"""The ESP's GRUB configuration, made from the slot selection snippet of ``docs/grub.md``.

Invariant: the selection logic is never retyped here. It is cut out of ``docs/grub.md`` between
its markers — the text ``tests/test_boot_grub.py`` runs in ``grub-emu`` against
``BootEnv.choose_boot`` — so the VM boots by exactly the rules the tests check. Only the menu
entries are the appliance's own: the kernel and initramfs are read from the chosen slot's
``/boot``, so a release image carries its own kernel.
"""

from __future__ import annotations

import re

from tools.appliance.layout import ESP_VOLUME_ID, DiskLayout

__all__ = ["ESP_GRUB_DIR", "KERNEL_ARGS", "early_cfg", "grub_cfg", "selection_snippet"]

SNIPPET_START = "# >>> sysupd slot selection"
SNIPPET_END = "# <<< sysupd slot selection"

ESP_GRUB_DIR = "/EFI/sysupd"
"""Where grub.cfg and the grubenv live on the ESP (GRUB's ``$prefix`` after the early config)."""

KERNEL_ARGS = "ro console=ttyS0,115200 panic=10"
"""Besides root= and sysupd.slot=: a read-only root (the slot stays the signed image), the
serial console the harness logs, and a panic that reboots, so GRUB's attempt counting can fall
back to the other slot instead of the machine hanging."""

# The modules the configuration needs, loaded before $prefix moves from the EFI binary's memdisk
# to the ESP (GRUB looks for modules under $prefix, and the ESP holds none).
EARLY_MODULES = "part_gpt fat ext2 search search_fs_uuid configfile loadenv test echo linux normal"


def selection_snippet(doc_text: str) -> str:
    """The snippet of ``docs/grub.md``, from its start marker to its end marker, inclusive.

    Raises:
        ValueError: the page has no ``grub`` block or the block lacks a marker.
    """
    match = re.search(r"```grub\n(.*?)```", doc_text, re.DOTALL)
    if match is None:
        raise ValueError("docs/grub.md has no ```grub block")
    block = match.group(1)
    try:
        start = block.index(SNIPPET_START)
        end = block.index(SNIPPET_END) + len(SNIPPET_END)
    except ValueError as exc:
        raise ValueError(f"the grub block of docs/grub.md lacks a marker: {exc}") from exc
    return block[start:end] + "\n"


def grub_cfg(snippet: str, layout: DiskLayout) -> str:
    """The ESP's grub.cfg: the selection snippet, then one menu entry per slot."""
    entries = []
    for slot, label in layout.slot_labels:
        disk = f"(hd0,gpt{layout.number(label)})"
        entries.append(
            f'menuentry "Slot {slot}" --id sysupd-{slot} {{\n'
            f"    linux {disk}/boot/vmlinuz root=PARTLABEL={label} {KERNEL_ARGS}"
            f" sysupd.slot={slot}\n"
            f"    initrd {disk}/boot/initrd.img\n"
            "}\n"
        )
    # No GRUB serial terminal: OVMF already mirrors the EFI console onto the serial port.
    header = "# The sysupd appliance's grub.cfg, made by tools/appliance from docs/grub.md.\n"
    return header + snippet + "\n" + "\n".join(entries)


def early_cfg() -> str:
    """The configuration inside the EFI binary: find the ESP, make it $prefix, read grub.cfg."""
    volume = f"{ESP_VOLUME_ID[:4]}-{ESP_VOLUME_ID[4:]}"
    return (
        f"search --no-floppy --fs-uuid --set=root {volume}\n"
        f"set prefix=($root){ESP_GRUB_DIR}\n"
        "configfile $prefix/grub.cfg\n"
    )

"""The appliance disk's layout: one GPT, four partitions found by their PARTLABEL.

Pure data and the text derived from it (the ``sfdisk`` script); nothing here touches a disk.

Invariants:

- every partition starts and ends on a MiB boundary, the first at 1 MiB (where ``sfdisk`` and
  every partitioner put it), and one MiB stays free at the end for the backup GPT;
- the slots are identified by partition (label and number), never by what is inside them: a raw
  release image is the same bytes in slot A and in slot B, so a filesystem label or UUID cannot
  tell the two apart;
- slot ``A`` is partition 2 and slot ``B`` partition 3: the grub.cfg names them so
  (``(hd0,gpt2)``), the kernel by label (``root=PARTLABEL=slot-a``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DISK", "ESP_VOLUME_ID", "DiskLayout", "Partition"]

MiB = 1024 * 1024

# GPT partition types: the EFI system partition, and "Linux filesystem" for the rest. Not the
# discoverable "Linux root (x86-64)" type for the slots: systemd-gpt-auto-generator would then
# try to mount a slot by itself.
_ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
_LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

ESP_VOLUME_ID = "5A5D0E5F"
"""The ESP's FAT volume id (``mkfs.vfat -i``), which GRUB searches for: ``5A5D-0E5F``."""


@dataclass(frozen=True, slots=True)
class Partition:
    """One GPT partition."""

    label: str
    size_mib: int
    type_uuid: str
    start_mib: int = 0

    @property
    def offset_bytes(self) -> int:
        """Where the partition starts on the disk."""
        return self.start_mib * MiB

    @property
    def size_bytes(self) -> int:
        """The partition's size."""
        return self.size_mib * MiB


@dataclass(frozen=True, slots=True)
class DiskLayout:
    """The partitions in disk order, each placed after the previous one."""

    partitions: tuple[Partition, ...]
    slot_labels: tuple[tuple[str, str], ...]
    """(slot name, partition label), in the order the partitions come."""

    @classmethod
    def of(cls, sizes_mib: dict[str, int], slots: dict[str, str]) -> DiskLayout:
        """Place partitions of the given sizes (label -> MiB, in order) one after the other."""
        placed: list[Partition] = []
        start = 1
        for label, size in sizes_mib.items():
            kind = _ESP_TYPE if label == "esp" else _LINUX_TYPE
            placed.append(Partition(label, size, kind, start))
            start += size
        return cls(tuple(placed), tuple(slots.items()))

    def partition(self, label: str) -> Partition:
        """The partition labelled ``label``.

        Raises:
            KeyError: no partition has that label.
        """
        for part in self.partitions:
            if part.label == label:
                return part
        raise KeyError(label)

    def number(self, label: str) -> int:
        """The partition's number in the GPT (1 for the first)."""
        return self.partitions.index(self.partition(label)) + 1

    @property
    def size_bytes(self) -> int:
        """The whole disk: the partitions, the MiB before them and the MiB after them."""
        last = self.partitions[-1]
        return (last.start_mib + last.size_mib + 1) * MiB

    def sfdisk_script(self) -> str:
        """The input ``sfdisk`` reads to write this GPT."""
        lines = ["label: gpt", "unit: sectors", "first-lba: 2048", ""]
        for part in self.partitions:
            sectors = part.size_bytes // 512
            lines.append(
                f"start={part.offset_bytes // 512}, size={sectors}, "
                f'type={part.type_uuid}, name="{part.label}"'
            )
        return "\n".join(lines) + "\n"


DISK = DiskLayout.of(
    {"esp": 32, "slot-a": 1024, "slot-b": 1024, "data": 1024},
    {"A": "slot-a", "B": "slot-b"},
)
"""The reference appliance: slots of 1 GiB (the root image is smaller; a raw image may be), and
a data partition that holds an uploaded bundle of a whole slot image besides the state."""

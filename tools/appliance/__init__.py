"""The reference appliance of issue 12: its disk image builder and the QEMU harness (README.md)."""

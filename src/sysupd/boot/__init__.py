"""Bootloader adapters: where the boot environment (``core.bootenv``) is stored between boots.

``adapter`` holds the ``Bootloader`` seam, its in-memory twin and ``make_bootloader``;
``filestate`` keeps the environment in a JSON state file (sysupd itself chooses the slot);
``grub`` keeps it in a grubenv that GRUB reads and updates at power-on.
"""

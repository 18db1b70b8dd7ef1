"""The machine-facing edges: the clock and the reboot action."""

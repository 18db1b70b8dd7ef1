"""Slot writers: installing a verified payload into the inactive slot (directory or raw)."""

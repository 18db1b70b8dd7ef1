"""How many connections the service holds: derived from its descriptor limit unless configured.

Every connection costs a file descriptor; when they run out, nothing works — not the database,
not the log, not the next accept. So the service caps connections below its limit, leaving room
for its own files, and caps each address at a share of that, so one host cannot take them all.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RESERVED_DESCRIPTORS", "ConnectionLimits", "connection_limits"]

RESERVED_DESCRIPTORS = 96
"""Kept for the service's own files (database, logs, slots, uploads, certificates, children) and
for the connections accepted in one go before the guard has dropped those over the caps."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The caps in force."""

    total: int
    per_address: int
    idle_timeout_s: float
    """From a connection's start, or the end of its last request, to the end of the next
    request's headers: an idle or slowly talking connection is closed after this long."""


def connection_limits(
    descriptor_limit: int, total: int, per_address: int, idle_timeout_s: float
) -> ConnectionLimits:
    """The caps for a process allowed ``descriptor_limit`` descriptors; ``total`` and
    ``per_address`` as configured, 0 for derived."""
    room = max(16, descriptor_limit - RESERVED_DESCRIPTORS)
    chosen_total = min(total, room) if total > 0 else room
    chosen_per_address = per_address if per_address > 0 else max(8, chosen_total // 4)
    return ConnectionLimits(chosen_total, min(chosen_per_address, chosen_total), idle_timeout_s)

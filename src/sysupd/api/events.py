"""The event hub: pushes one encoded event to every logged-in WebSocket session.

A publish never waits: each session takes the frame into its own bounded queue or, if that queue
is full (a slow or stuck client), closes itself. So one bad client can never delay the others.
"""

from __future__ import annotations

from typing import Any, Protocol

from sysupd.core.envelope import encode_event

__all__ = ["EventHub", "Subscriber"]


class Subscriber(Protocol):
    """A session as the hub sees it."""

    def wants_events(self) -> bool:
        """Whether the session is logged in with a live token."""
        ...

    def offer(self, frame: str) -> None:
        """Queue ``frame`` without waiting; close the session if it cannot keep up."""
        ...


class EventHub:
    """The set of sessions that events go to."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a session (on open)."""
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove a session (on close)."""
        self._subscribers.discard(subscriber)

    def publish(self, name: str, args: dict[str, Any]) -> int:
        """Send an *Everyone* event; returns how many sessions it was queued for."""
        frame = encode_event(name, args)
        sent = 0
        for subscriber in list(self._subscribers):
            if subscriber.wants_events():
                subscriber.offer(frame)
                sent += 1
        return sent

    def __len__(self) -> int:
        return len(self._subscribers)

"""The API edge: WebSocket and HTTP listeners, sessions, calls and events."""

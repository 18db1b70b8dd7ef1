"""The client library: log in, make calls, follow events (reconnecting) and upload bundles over
the public API. The ``sysupd`` command-line client, the tests and scripts all use it."""

from sysupd.client.address import Server, parse_server
from sysupd.client.connection import Client, Disconnected, Event, Login, Reconnected, StreamItem
from sysupd.client.errors import (
    ApiError,
    CertificateChanged,
    ClientFailure,
    ConnectionFailed,
    NotLoggedIn,
    NotTls,
)

__all__ = [
    "ApiError",
    "CertificateChanged",
    "Client",
    "ClientFailure",
    "ConnectionFailed",
    "Disconnected",
    "Event",
    "Login",
    "NotLoggedIn",
    "NotTls",
    "Reconnected",
    "Server",
    "StreamItem",
    "parse_server",
]

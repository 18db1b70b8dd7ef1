"""A logged-in client from what a person keeps between commands: the pinned certificate and the
stored token of a service (see ``client.pinning`` and ``client.tokens``).

``log_in`` checks the password once and keeps a token; ``open_session`` logs in with the kept
token and, before anything else, keeps a fresh spare one for the next command, all under the
token file's lock — so a token is never spent twice, and two commands never log each other out.

Only ``log_in`` pins a certificate on first use, and it says so (``on_pinned``) before the
password is sent, so the person sees the fingerprint even when the login then fails.
``open_session`` and ``log_out`` use the pin a login made, or none: with no login kept they send
nothing (``open_session`` only opens a TCP connection, to say whether anything answers there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sysupd.client.address import Server
from sysupd.client.connection import Client, probe
from sysupd.client.errors import NotLoggedIn
from sysupd.client.pinning import KnownServers, TlsTrust, establish
from sysupd.client.tokens import StoredLogin, TokenFile

__all__ = ["ClientConfig", "LoggedIn", "log_in", "log_out", "open_session"]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The client's configuration directory (``~/.config/sysupd``)."""

    directory: Path

    @property
    def tokens(self) -> TokenFile:
        """The kept logins."""
        return TokenFile(self.directory)

    @property
    def known_servers(self) -> KnownServers:
        """The pinned certificates."""
        return KnownServers(self.directory / "known_servers")


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """A connected, logged-in client and how its service's certificate is trusted."""

    client: Client
    user: str
    trust: TlsTrust


async def log_in(
    server: Server,
    config: ClientConfig,
    user: str,
    password: str,
    *,
    accept_certificate: str | None = None,
    on_pinned: Callable[[TlsTrust], None] | None = None,
) -> LoggedIn:
    """Log in with a password and keep a token for later commands; the client stays connected.
    A certificate pinned now (first use, or ``accept_certificate``) is handed to ``on_pinned``
    before the password is sent.

    Raises:
        ApiError: wrong credentials (401) or locked out (429).
        CertificateChanged: the certificate is not the pinned (or the accepted) one.
        ConnectionFailed: the service cannot be reached.
        ConfigError: the configuration directory cannot be used.
    """
    trust = await establish(server, config.known_servers, accept=accept_certificate)
    if trust.newly_pinned and on_pinned is not None:
        on_pinned(trust)
    client = Client(server, ssl=trust.ssl)
    try:
        await client.connect()
        await client.login(user, password)
        spare = await client.spare_token()
        with config.tokens.locked() as logins:
            logins.put(server, StoredLogin(user, spare))
    except BaseException:
        await client.close()
        raise
    return LoggedIn(client, user, trust)


async def open_session(server: Server, config: ClientConfig) -> LoggedIn:
    """A client logged in with the token kept for ``server``, which hands on a fresh one.

    Raises:
        NotLoggedIn: no token is kept (saying too when nothing answers there), or it expired or
            was revoked (it is then forgotten), or no certificate is pinned for it.
        CertificateChanged: the certificate is not the pinned one.
        ConnectionFailed: the service cannot be reached.
        ConfigError: the configuration directory cannot be used.
    """
    with config.tokens.locked() as logins:
        stored = logins.get(server)
        if stored is not None:
            trust = await establish(server, config.known_servers, pin_first_use=False)
            client = Client(server, ssl=trust.ssl)
            try:
                await client.connect()
                try:
                    await client.resume(stored.token)
                except NotLoggedIn:
                    logins.remove(server)
                    raise
                logins.put(server, StoredLogin(stored.user, await client.spare_token()))
            except BaseException:
                await client.close()
                raise
            return LoggedIn(client, stored.user, trust)
    # Knocking (outside the lock: it may wait) tells a typo in --server from a missing login.
    why = await probe(server)
    silent = f", and nothing answers there ({why})" if why is not None else ""
    raise NotLoggedIn(f"you are not logged in to {server.base_url}{silent}")


async def log_out(server: Server, config: ClientConfig) -> StoredLogin | None:
    """Forget the kept login of ``server`` (and end it on the service when it can be reached).

    Raises:
        ConfigError: the configuration directory cannot be used.
    """
    with config.tokens.locked() as logins:
        stored = logins.remove(server)
    if stored is None:
        return None
    try:
        trust = await establish(server, config.known_servers, pin_first_use=False)
        async with Client(server, ssl=trust.ssl) as client:
            await client.resume(stored.token)
            await client.request("rpc", "auth_clear")
    except Exception:  # noqa: BLE001, S110 - forgetting it here is what matters; it expires anyway
        pass
    return stored

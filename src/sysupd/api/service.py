"""The service: state, stores, sessions, the two listeners, and their lifecycle.

One ``Service`` per process (tests run several side by side). ``open`` work happens in the
constructor (state directory, database, settings); ``start`` binds the listeners; ``stop`` closes
every session and listener. A reboot or a signal resolves ``exit_requested``; the process entry
point then stops the service and exits or re-executes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import secrets
import socket
import sqlite3
import ssl
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from sysupd import __version__
from sysupd.api.auth import Authenticator
from sysupd.api.booting import BootWatch
from sysupd.api.calls import SERVICE_KEY, CallTable
from sysupd.api.checks import CHECK_CALLS, UpdateChecker
from sysupd.api.connections import ConnectionGuard, GuardedSite
from sysupd.api.events import EventHub
from sysupd.api.http import ALLOWED_METHODS, handle_api
from sysupd.api.reboots import Reboots
from sysupd.api.rpc_calls import RPC_CALLS
from sysupd.api.sys_calls import SYS_CALLS
from sysupd.api.updates import UPDATE_CALLS, UpdateManager
from sysupd.api.upload_store import UploadStore
from sysupd.api.uploads import UPLOAD_CALLS, handle_upload
from sysupd.api.websocket import WsSession, handle_websocket
from sysupd.config import ServiceConfig
from sysupd.core.envelope import Request
from sysupd.core.limits import connection_limits
from sysupd.core.noise import LineBudget
from sysupd.core.origins import normalize_name
from sysupd.core.sessions import LoginThrottle, TokenTable
from sysupd.core.settings import Settings, apply_changes, refuse_device_settings, settings_to_wire
from sysupd.engine.engine import BootReport, Engine, engine_settings
from sysupd.engine.state import BootStatus
from sysupd.engine.trust import TrustStore
from sysupd.errors import (
    ApiError,
    DiskFull,
    InsufficientStorage,
    InternalError,
    ServerError,
    StateError,
)
from sysupd.servicelog import ServiceLog
from sysupd.store.audit import AuditLog
from sysupd.store.db import Database
from sysupd.store.identity import Identity, check_database_present, identity_path
from sysupd.store.meta import record_system_id, stored_system_id
from sysupd.store.settings import SettingsStore
from sysupd.store.tokens import TokenStore
from sysupd.store.users import UserStore, make_hasher
from sysupd.system.clock import Clock, SystemClock
from sysupd.system.reboot import ProcessExit
from sysupd.system.statelock import StateLock
from sysupd.system.tls import Certificate, certificate_names, load_certificate, server_context
from sysupd.web.assets import PAGE_KEY, PageAssets, handle_asset, handle_page

__all__ = ["FIRST_ADMIN", "Service"]

FIRST_ADMIN = "admin"
_SWEEP_INTERVAL_S = 60.0
_SOCKET_LINES_PER_MINUTE = 20
_ANONYMOUS_SOCKETS = (
    "websocket lines (opened, closed, refused, no login in time) of clients never logged in"
)


class Service:
    """sysupd's API service."""

    def __init__(self, config: ServiceConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = StateLock(config.state_dir)
        try:
            self._open_state(config)
        except BaseException:
            self._state_lock.release()
            raise

    def _open_state(self, config: ServiceConfig) -> None:
        # First, so that a certificate problem leaves nothing open behind it.
        self.certificate: Certificate | None = None
        if config.tls:
            self.certificate = load_certificate(
                config.tls_dir, config.tls_cert_file, config.tls_key_file, host=config.host
            )
        self.known_names = _known_names(config, self.certificate)
        """The names a browser may reach the device by (see ``core.origins``)."""
        check_database_present(config.state_dir, config.db_path)
        self.log = ServiceLog(config.log_path, self.clock, config.log_max_bytes)
        self.audit = AuditLog(config.state_dir / "audit", self.clock)
        self._audit_dropped_said = 0
        self.socket_lines = LineBudget(_SOCKET_LINES_PER_MINUTE)
        """Lines for sockets that never log in: a few a minute, the rest counted."""
        self.db = Database(config.db_path)
        self.users = UserStore(
            self.db,
            make_hasher(config.kdf_time_cost, config.kdf_memory_kib, config.kdf_parallelism),
        )
        self._settings_store = SettingsStore(self.db)
        self._adopt_stored_trust_root(config)
        self.settings: Settings
        self.settings, warnings = self._settings_store.load(config.settings)
        for warning in warnings:
            self.log.warning(warning)
        self.system_id = self._identity()
        self.auth = Authenticator(
            self.users,
            TokenTable(config.token_ttl_s),
            LoginThrottle(config.login_max_failures, config.login_window_s, config.lockout_s),
            self.clock,
            self.log,
            self.audit,
            lambda: self.settings.lockout_loopback,
        )
        self._tokens = TokenStore(self.db)
        self.auth.restore_tokens(self._tokens.take_all(self.clock.utcnow()))
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.guard = ConnectionGuard(
            connection_limits(
                soft_limit if soft_limit != resource.RLIM_INFINITY else 1 << 20,
                config.max_connections,
                config.max_connections_per_address,
                config.idle_timeout_s,
            ),
            self.log,
        )
        self._loop_handler: Any = None
        self.calls = CallTable([*RPC_CALLS, *SYS_CALLS, *UPDATE_CALLS, *CHECK_CALLS, *UPLOAD_CALLS])
        self.events = EventHub()
        self.sessions: set[WsSession] = set()
        self.reboots = Reboots(self)
        self.uploads = UploadStore(config.state_dir / "uploads", self.clock, self.log)
        self.uploads.clear()
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit: asyncio.Future[ProcessExit] | None = None
        self._stopped = False
        self._serving = False
        self._engine: tuple[tuple[object, ...], Engine] | None = None
        self._engine_lock = threading.Lock()
        self.booting = BootWatch(self)
        self.updates = UpdateManager(self)
        self.checks = UpdateChecker(self)
        self.ws_port = 0
        self.http_port = 0
        self.wss_port = 0
        self.https_port = 0

    def _identity(self) -> str:
        """The device's system_id: from the identity file, which outlives the database."""
        state_dir = self.config.state_dir
        stored = stored_system_id(self.db)
        identity = Identity.load(state_dir)
        if identity is None:  # a first start, or a state directory from before the file
            identity = Identity.create(state_dir, stored)
        if stored != identity.system_id:
            if stored is not None:
                self.log.warning(
                    f"the database was made for system {stored}; this device is "
                    f"{identity.system_id} (from {identity_path(state_dir)})"
                )
            record_system_id(self.db, identity.system_id)
        return identity.system_id

    # -- lifecycle -------------------------------------------------------------------------

    def ensure_first_admin(self) -> str | None:
        """With no users at all, create ``admin`` and return its new random password."""
        if self.users.count() > 0:
            return None
        password = secrets.token_urlsafe(12)
        self.users.add(FIRST_ADMIN, password, is_admin=True)
        self.log.info(f"created the first administrator {FIRST_ADMIN!r}", console=False)
        self.audit.change(
            "user added", by="the first start", details=f"{FIRST_ADMIN} (administrator)"
        )
        return password

    async def start(self) -> None:
        """Bind the listeners; ``ws_port``, ``http_port``, ``wss_port`` and ``https_port`` then
        hold the real ports (0 for a listener that is off)."""
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        self._loop_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.guard.exception_handler)
        ws_app = web.Application(middlewares=[self.guard.middleware])
        ws_app[SERVICE_KEY] = self
        ws_app.router.add_get("/websocket", handle_websocket)
        ws_app.router.add_get("/", handle_websocket)
        http_app = web.Application(
            client_max_size=self.config.max_frame_bytes, middlewares=[self.guard.middleware]
        )
        http_app[SERVICE_KEY] = self
        http_app[PAGE_KEY] = PageAssets()
        for method in ALLOWED_METHODS:
            http_app.router.add_route(method, "/api/{namespace}/{name}", handle_api)
        http_app.router.add_post("/upload", handle_upload)
        http_app.router.add_get("/websocket", handle_websocket)
        http_app.router.add_get("/", handle_page)
        http_app.router.add_get("/static/{name}", handle_asset)
        learned = await self.booting.learn()
        ws_runner, http_runner = await self._runner(ws_app), await self._runner(http_app)
        plain = self.config.plain_host
        self.ws_port = await self._listen(ws_runner, plain, self.config.ws_port, None)
        self.http_port = await self._listen(http_runner, plain, self.config.http_port, None)
        if self.certificate is not None:
            context = server_context(self.certificate)
            host = self.config.host
            self.wss_port = await self._listen(ws_runner, host, self.config.wss_port, context)
            self.https_port = await self._listen(http_runner, host, self.config.https_port, context)
        self.spawn(self._sweep_loop())
        self.spawn(self.booting.trial(learned))
        self.spawn(self.checks.run_periodically())
        tls = (
            f", wss on {self.config.host}:{self.wss_port}, https on "
            f"{self.config.host}:{self.https_port} (certificate {self.certificate.fingerprint})"
            if self.certificate is not None
            else ""
        )
        serving = (
            f"sysupd {__version__} serving: ws on {plain}:{self.ws_port}, http on "
            f"{plain}:{self.http_port}{tls}, system {self.system_id}"
        )
        self.log.info(serving, console=False)  # the command prints where it listens
        self._serving = True

    def listening_ports(self) -> frozenset[int]:
        """The ports the service listens on: a page served on one may use the others."""
        ports = (self.ws_port, self.http_port, self.wss_port, self.https_port)
        return frozenset(p for p in ports if p)

    async def stop(self) -> None:
        """Close every session and listener; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.reboots.stop()
        for task in list(self._tasks):
            task.cancel()
        # Accept no one new (a client that reconnects at once must reach the next process, not
        # this one on its way out), then close the sockets so clients see "going away" instead
        # of a reset.
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        await asyncio.gather(*(s.close(WSCloseCode.GOING_AWAY) for s in list(self.sessions)))
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        # Kept only by a clean stop (a reboot into a new slot): clients stay logged in.
        try:
            self._tokens.put_all(self.auth.export_tokens(), self.clock.utcnow())
        except sqlite3.Error as exc:
            self.log.warning(f"cannot keep the login tokens for the next start: {exc}")
        self.auth.close()
        self.guard.close()
        self._flush_noise(everything=True)
        with contextlib.suppress(RuntimeError):  # no loop: nothing to restore
            asyncio.get_running_loop().set_exception_handler(self._loop_handler)
        self.log.info("sysupd stopped" if self._serving else "sysupd did not start")
        self.log.close()
        self.db.close()
        self._state_lock.release()

    def request_exit(self, how: ProcessExit) -> None:
        """Ask the process entry point to stop the service and exit or re-execute."""
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(how)

    async def wait_exit_requested(self) -> ProcessExit:
        """Until a reboot or signal asks the process to end; returns how it should."""
        assert self._exit is not None, "start() first"
        return await self._exit

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task owned by the service (cancelled by ``stop``)."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the calls use ----------------------------------------------------------------

    def engine(self) -> Engine:
        """The update engine, composed once and again only when a setting it reads changes."""
        settings = self.settings
        key = engine_settings(settings)
        with self._engine_lock:  # called from the event loop and from worker threads
            if self._engine is None or self._engine[0] != key:
                engine = Engine.from_settings(
                    self.config.state_dir,
                    settings,
                    self.clock,
                    cmdline=Path(self.config.kernel_cmdline),
                )
                self._engine = (key, engine)
            return self._engine[1]

    @property
    def boot(self) -> BootReport | None:
        """What this start learned of the booted slot; ``None`` if it could not."""
        return self.booting.report

    @property
    def boot_status(self) -> BootStatus:
        """Where this start's boot trial stands."""
        return self.booting.status

    @property
    def boot_settled(self) -> asyncio.Event:
        """Set once the boot trial has run (or could not): updates wait for it."""
        return self.booting.settled

    def system_info(self) -> dict[str, Any]:
        """``sys/info``'s reply: the booted slot's version, and (ext) which slot and how it is."""
        return {
            "system_id": self.system_id,
            "system_version": self.boot.version if self.boot else self.settings.factory_version,
            "middleware_version": __version__,
            "slot": self.boot.slot if self.boot else None,
            "boot_status": self.booting.wire_status(),
        }

    def _adopt_stored_trust_root(self, config: ServiceConfig) -> None:
        """A database from a version that kept trust_root there (the demo's first start, or
        set over the API): the device goes on trusting it — adopted into the trust store, as a
        provisioned one is — before the stored setting is dropped."""
        stored = self._settings_store.stored("trust_root")
        if isinstance(stored, str) and stored and not config.settings.trust_root:
            trust = config.state_dir / "trust"
            if not (trust / "root.json").exists():
                TrustStore(trust, stored).adopt()
                if (trust / "root.json").exists():
                    self.log.info(f"the device trusts the root in {stored}, kept from before")

    @property
    def trusts_a_root(self) -> bool:
        """Whether the device has a trust root: adopted already, or provisioned."""
        adopted = (self.config.state_dir / "trust" / "root.json").exists()
        return adopted or bool(self.settings.trust_root)

    def adopt_trust_root(self, root: Path) -> None:
        """Trust ``root`` from now on, as the first start does with a provisioned trust_root;
        only a device that trusts nothing yet can adopt one.

        Raises:
            StateError: the device has a trust already, or it cannot be written.
        """
        if (self.config.state_dir / "trust" / "root.json").exists():
            raise StateError("this device trusts a root already; it changes by root rotation")
        TrustStore(self.config.state_dir / "trust", str(root)).adopt()
        self.log.info(f"the device trusts the root in {root} from now on")
        self.audit.change("trust root adopted", by="the first start", details=str(root))

    def change_settings(self, changes: Mapping[str, Any], *, by: str) -> Settings:
        """Validate every change, then store and apply them together.

        Raises:
            ConfigError: naming the first invalid or read-only setting; nothing changed.
        """
        refuse_device_settings(changes)
        new = apply_changes(self.settings, changes)
        self._settings_store.save(new, changes)
        self.settings = new
        self.log.info(f"settings changed by {by}: {', '.join(sorted(changes))}")
        wire = settings_to_wire(new)
        self.audit.change(
            "settings changed",
            by=by,
            details=", ".join(f"{name}={json.dumps(wire[name])}" for name in sorted(changes)),
        )
        return new

    def wire_error(
        self, request: Request, exc: Exception, *, failed: str | None = None
    ) -> ApiError:
        """The error that answers ``exc``, raised while serving ``request``: the one mapping
        every handler (HTTP, WebSocket, upload) uses. An ``ApiError`` answers as itself; a full
        disk is a 507; any other ``OSError`` is the device's fault, said as it is; anything else
        is a bug, logged, and a 500 that leaves its message out. ``failed`` says what could not
        be done, for people (default: the call failed)."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            return InsufficientStorage(
                f"{request.call} changed nothing: the device's disk is full ({exc}); "
                "free some space and try again"
            )
        if isinstance(exc, OSError):
            what = failed or f"{request.call} failed"
            self.log.error(f"{what}: {exc}")
            return ServerError(f"{what}: {exc.strerror or exc}")
        return self.internal_error(request, exc)

    def internal_error(self, request: Request, exc: Exception) -> ApiError:
        """Log a bug and make the 500 that answers it.

        For ``rpc/*`` calls the exception's message is left out: it may quote credentials.
        """
        self.log_bug(request.call, exc, with_message=request.namespace != "rpc")
        return InternalError(f"{request.call} failed unexpectedly; see sys/middleware_log")

    def log_bug(self, where: str, exc: Exception, *, with_message: bool = True) -> None:
        """Log a bug with the place in the code it happened."""
        frames = traceback.extract_tb(exc.__traceback__)[-4:]
        at = " <- ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames[::-1])
        what = repr(exc) if with_message else type(exc).__name__
        self.log.error(f"bug in {where}: {what} at {at}")

    # -- internals ---------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            try:
                self.auth.sweep()
                self._flush_noise()
            except Exception as exc:  # noqa: BLE001 - the sweep must go on whatever one round did
                self.log_bug("the periodic sweep", exc)

    def anonymous_line(
        self, source: str, line: str, *, warning: bool = False, count: bool = True
    ) -> bool:
        """Log ``line`` about a client that has not logged in, on the minute's budget (past it,
        only counted by ``source``, unless ``count`` is false: said later); whether it was
        written."""
        if not self.socket_lines.allow(self.clock.monotonic()):
            if count:
                self.socket_lines.count(source)
            return False
        (self.log.warning if warning else self.log.info)(line)
        return True

    def _flush_noise(self, *, everything: bool = False) -> None:
        """Write what was only counted: repeated logins, sockets that never logged in."""
        self.audit.flush(everything=everything)
        now = self.clock.monotonic()
        said = self.socket_lines.summary(now, _ANONYMOUS_SOCKETS, force=everything)
        if said is not None:
            self.log.info(said)
        if self.audit.dropped > self._audit_dropped_said:
            self.log.error(
                f"{self.audit.dropped - self._audit_dropped_said} audit records could not be "
                f"written to {self.config.state_dir / 'audit'}: {self.audit.last_error}"
            )
            self._audit_dropped_said = self.audit.dropped

    async def _runner(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=self.guard.limits.idle_timeout_s,
        )
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def _listen(
        self, runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> int:
        before = set(map(tuple, runner.addresses))
        site = GuardedSite(runner, host, port, self.guard, ssl_context)
        await site.start()
        added = [a for a in runner.addresses if tuple(a) not in before]
        return int(added[0][1])


def _known_names(config: ServiceConfig, certificate: Certificate | None) -> frozenset[str]:
    host = socket.gethostname()
    names = {"localhost", host, f"{host}.local", socket.getfqdn(), *config.server_names}
    if certificate is not None:
        names.update(certificate_names(certificate))
    if config.host not in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
        names.add(config.host)
    return frozenset(normalize_name(name) for name in names if name)

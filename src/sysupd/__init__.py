"""sysupd: a system update service for self-hosted appliances.

The package is laid out by architecture, a small core free of I/O with thin edges around it:

- ``core``: the I/O-free rules — envelope, argument schemas, sessions and lockout, the settings
  registry, versions, bundle framing, the release manifest, the trust chain, chunk
  verification, job states, boot-environment rules, origins, connection limits.
- ``engine``: the update engine, composed once of its collaborators — ``install(source)``, the
  switch, the boot trial, the status record, trust store, state file, lock.
- ``slots``: slot writers (directory trees through an allow-list extractor, raw images).
- ``boot``: bootloader adapters (file, grub) and their in-memory twin.
- ``sources``: where updates come from, behind one ``Source`` protocol — a bundle file, a LAN
  URL, the update server's TUF channel — and their in-memory twin.
- ``release``: the release tool (a TUF repository, payloads, bundles, key rotation).
- ``store``: the SQLite state, the identity file and the audit record.
- ``api``: the WebSocket/HTTP edge — service, connection guard, sessions, calls, uploads.
- ``web``: the operator's web page, served by ``api``.
- ``client``: the client library on the public API (the CLI's and scripts').
- ``system``: machine-facing seams — clock, reboot, health check, TLS, the state lock.
- ``cli``: the ``sysupd`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sysupd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]

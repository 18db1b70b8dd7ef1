"""The repository's signing keys: ed25519 private keys as PKCS#8 PEM files in ``DIR/keys``.

One file per role, ``DIR/keys/<role>.pem``. A key being rotated in waits as
``<role>.pem.next`` until the metadata naming it is written; the key it replaces is then moved to
``DIR/keys/retired/<role>-<keyid>.pem`` (to be destroyed by the operator, see
``docs/release-keys.md``), never deleted by the tool.

Invariants: private key files are created with mode 0600 (never world-readable, not even while
being written) and replaced atomically (temp file in the same directory, fsync, ``os.replace``);
a signer is built only from an ed25519 key, with the key id python-tuf computes for its public
key; keys are generated and used only through securesystemslib's ``CryptoSigner``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from sysupd.errors import ConfigError, StateError

__all__ = [
    "ROLE_NAMES",
    "generate_signer",
    "key_file",
    "load_signer",
    "pending_key_file",
    "promote_pending_key",
    "save_signer",
    "write_file_atomically",
]

ROLE_NAMES = ("root", "targets", "releases", "snapshot", "timestamp")


def generate_signer() -> CryptoSigner:
    """A new ed25519 key pair."""
    return CryptoSigner.generate_ed25519()


def key_file(keys_dir: Path, role: str) -> Path:
    """Where ``role``'s current private key lives."""
    _check_role(role)
    return keys_dir / f"{role}.pem"


def pending_key_file(keys_dir: Path, role: str) -> Path:
    """Where a key being rotated in for ``role`` waits until its metadata is written."""
    _check_role(role)
    return keys_dir / f"{role}.pem.next"


def save_signer(path: Path, signer: CryptoSigner) -> None:
    """Write ``signer``'s private key to ``path`` (PKCS#8 PEM, unencrypted, mode 0600).

    Raises:
        StateError: the file could not be written.
    """
    write_file_atomically(path, signer.private_bytes, mode=0o600)


def load_signer(path: Path) -> CryptoSigner:
    """The ed25519 signer whose private key is in ``path``.

    Raises:
        ConfigError: the file is missing, unreadable, encrypted, or not an ed25519 PEM key.
    """
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"signing key {path} is missing") from exc
    except OSError as exc:
        raise ConfigError(f"signing key {path} cannot be read: {exc.strerror}") from exc
    try:
        private_key = load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise ConfigError(
            f"signing key {path} is encrypted; the release tool reads unencrypted PKCS#8 keys"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"signing key {path} is not a PEM private key") from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an ed25519 key")
    return CryptoSigner(private_key, SSlibKey.from_crypto(private_key.public_key()))


def promote_pending_key(keys_dir: Path, role: str) -> None:
    """Make ``<role>.pem.next`` the role's key; move the old key to ``retired/``.

    Raises:
        StateError: the files could not be moved.
    """
    current = key_file(keys_dir, role)
    pending = pending_key_file(keys_dir, role)
    try:
        if current.exists():
            try:
                old_id = load_signer(current).public_key.keyid
            except ConfigError:  # unreadable: still keep it, named by its content
                old_id = "file-" + hashlib.sha256(current.read_bytes()).hexdigest()
            retired = keys_dir / "retired"
            retired.mkdir(mode=0o700, exist_ok=True)
            os.replace(current, retired / f"{role}-{old_id}.pem")
        os.replace(pending, current)
        _fsync_dir(keys_dir)
    except OSError as exc:
        raise StateError(f"cannot install the new {role} key in {keys_dir}: {exc}") from exc


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one step: temp file alongside, fsync, ``os.replace``.

    The temp file is created 0600 and given ``mode`` only once written. The release tool writes
    every file it publishes through here, so a crash leaves the old file or the new one.

    Raises:
        StateError: the file could not be written.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise StateError(f"cannot write {path}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_role(role: str) -> None:
    if role not in ROLE_NAMES:
        raise ConfigError(f"unknown role {role!r}; the roles are {', '.join(ROLE_NAMES)}")

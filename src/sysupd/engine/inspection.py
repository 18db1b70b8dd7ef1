"""Inspecting an offline bundle without installing it (``sysupd inspect``): what it is, who signed
it, and whether this device would accept it.

Responsibility: read a bundle's bounded header, describe what it claims (release, payload, keys
and the roles they sign, metadata versions and expiry), verify it along the engine's own path
(``verify_bundle`` against the engine's trust store or a given root, ``check_policy`` with the
engine's release policy), compare the payload's length with the signed one and, when asked, check
every chunk against the signed chunk list through the engine's ``VerifiedReader``.

Invariants:

- nothing is written: the trust store and the engine state are only read, and newer roots a
  bundle brings are not kept (only an install keeps them);
- what the header claims is marked unverified until ``verify_bundle`` accepted it; the payload is
  never parsed, only hashed, and only against a chunk list that verified;
- a bad bundle is a report, not an exception: each problem (missing file, not a bundle,
  truncated, untrusted, refused by the policy, a bad chunk) is a reason in the report, and
  everything read before it is still reported;
- memory stays flat: the header is capped (``MAX_HEADER_BYTES``), the payload is read one chunk
  at a time into one reused buffer.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization import DeserializationError

from sysupd.core.bundle_format import (
    BUNDLE_PREFIX_BYTES,
    BundleHeader,
    decode_bundle_header,
    decode_bundle_prefix,
)
from sysupd.core.bundletrust import ReleasePolicy, VerifiedBundle, check_policy, verify_bundle
from sysupd.core.chunks import ChunkVerifier
from sysupd.core.manifest import Manifest, parse_manifest
from sysupd.core.trustchain import TrustState
from sysupd.engine.engine import Engine
from sysupd.engine.stream import VerifiedReader, drain
from sysupd.engine.trust import MAX_METADATA_BYTES
from sysupd.errors import SysupdError, VerificationError
from sysupd.fsutil import read_capped

__all__ = ["Check", "HeaderInfo", "Inspection", "KeyInfo", "RoleInfo", "inspect_bundle"]

_RELEASES = "releases"
_ROLE_ORDER = ("root", "targets", _RELEASES, "snapshot", "timestamp")


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """A role as the bundle's newest root (or, for ``releases``, its targets) delegates it."""

    name: str
    threshold: int
    keyids: tuple[str, ...]
    version: int | None = None
    """The version of the role's metadata in the bundle; ``None`` for roles it does not carry."""
    expires: datetime | None = None
    expired: bool | None = None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A signing key named in the bundle's metadata, and the roles it signs."""

    keyid: str
    keytype: str
    scheme: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome: ``ok``, or the reason it failed or could not be made."""

    ok: bool
    detail: str


_NOT_CHECKED = Check(False, "not checked")


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """What a bundle's header claims, none of it verified."""

    target: str
    manifest: Manifest | None
    root_versions: tuple[int, ...]
    roles: tuple[RoleInfo, ...]
    keys: tuple[KeyInfo, ...]
    problems: tuple[str, ...]
    """Parts of the metadata that could not be read."""


@dataclass(frozen=True, slots=True)
class Inspection:
    """What ``inspect_bundle`` found; what could not be read is ``None``."""

    path: str
    read_error: str | None = None
    """Why the file could not be read as a bundle (missing, not a bundle, truncated header)."""
    file_size: int | None = None
    header: HeaderInfo | None = None
    payload_in_file: int | None = None
    """Bytes after the header: the payload, which must be exactly its signed length."""
    manifest: Manifest | None = None
    """The release as signed once ``trust.ok``; until then what the header claims."""
    trusted_by: str = ""
    """What the bundle was verified against, in words."""
    new_roots: tuple[int, ...] = ()
    """Root versions the bundle would add to the device's trust (an install keeps them)."""
    trust: Check = _NOT_CHECKED
    policy: Check = _NOT_CHECKED
    payload: Check = _NOT_CHECKED
    chunks_checked: bool = False
    downgrade: bool = False
    device_product: str = ""
    floor: str | None = None
    allow_downgrade: bool = False

    @property
    def verified(self) -> bool:
        """The signatures and trust chain hold and the payload is the signed one (as checked)."""
        return self.read_error is None and self.trust.ok and self.payload.ok

    @property
    def accepted(self) -> bool:
        """This device would install it: verified, and its release policy accepts it."""
        return self.verified and self.policy.ok

    @property
    def reason(self) -> str | None:
        """The first reason it would be refused, in one line; ``None`` when it is accepted."""
        if self.read_error is not None:
            return self.read_error
        if not self.trust.ok:
            return f"the bundle is not trusted: {self.trust.detail}"
        if not self.policy.ok:
            return f"this device would refuse it: {self.policy.detail}"
        if not self.payload.ok:
            return self.payload.detail
        return None


def inspect_bundle(
    engine: Engine,
    path: Path,
    *,
    trust_root: Path | None = None,
    check_payload: bool = False,
) -> Inspection:
    """Inspect the bundle at ``path`` as ``engine``'s device would see it; changes nothing.

    Verifies against ``trust_root`` (a ``root.json``) when given, otherwise against the engine's
    trust store; ``check_payload`` also checks every payload chunk's hash.

    Raises:
        Nothing for a bad bundle, trust or state: each problem is a reason in the report.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except FileNotFoundError:
        return Inspection(where, read_error=f"{path} does not exist")
    except OSError as exc:
        return Inspection(where, read_error=f"cannot open {path}: {exc.strerror}")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return Inspection(where, read_error=f"{path} is {kind}, not a bundle")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", buffering=0) as file:
        try:
            return _inspect(engine, where, file, info.st_size, trust_root, check_payload)
        except OSError as exc:
            return Inspection(where, read_error=f"cannot read {path}: {exc.strerror or exc}")


def _inspect(
    engine: Engine,
    where: str,
    file: BinaryIO,
    size: int,
    trust_root: Path | None,
    check_payload: bool,
) -> Inspection:
    try:
        header_size = decode_bundle_prefix(_read(file, BUNDLE_PREFIX_BYTES, "prefix"))
        header = decode_bundle_header(_read(file, header_size, "header"))
    except VerificationError as exc:
        return Inspection(where, read_error=str(exc), file_size=size)
    now = engine.clock.utcnow()
    info = _describe(header, now)
    in_file = size - BUNDLE_PREFIX_BYTES - header_size
    trusted_by = ""
    verified: VerifiedBundle | None = None
    try:
        trust, trusted_by = _trust(engine, trust_root)
        # The device's policy is checked on its own below, so that a refusal by the policy is
        # told apart from an untrusted bundle: this one lets any version of the claimed product
        # through the trust checks.
        claimed = info.manifest.product if info.manifest else ""
        verified = verify_bundle(header, trust, ReleasePolicy(claimed, None, True), now)
        trust_check = Check(True, "signatures, root chain and expiry check out")
    except SysupdError as exc:
        trust_check = Check(False, str(exc))
    manifest = verified.manifest if verified else info.manifest
    policy, downgrade, floor = _policy(engine, manifest, verified is not None)
    payload, chunks_checked = _payload(file, manifest, verified, in_file, check_payload)
    return Inspection(
        where,
        file_size=size,
        header=info,
        payload_in_file=in_file,
        manifest=manifest,
        trusted_by=trusted_by,
        new_roots=tuple(_root_version(r) for r in verified.new_roots) if verified else (),
        trust=trust_check,
        policy=policy,
        payload=payload,
        chunks_checked=chunks_checked,
        downgrade=downgrade,
        device_product=engine.settings.product,
        floor=floor,
        allow_downgrade=engine.settings.allow_downgrade,
    )


def _trust(engine: Engine, trust_root: Path | None) -> tuple[TrustState, str]:
    """The trust to verify against, and what it is in words."""
    if trust_root is not None:
        try:
            root = read_capped(trust_root, MAX_METADATA_BYTES)
        except OSError as exc:
            raise VerificationError(f"cannot read the trust root {trust_root}: {exc}") from exc
        return TrustState(root), f"{trust_root} (root v{_root_version(root)})"
    trust = engine.trust.load()
    version = _root_version(trust.root)
    if (engine.state_dir / "trust" / "root.json").exists():
        return trust, f"this device's trust store (root v{version}, as last accepted)"
    return trust, f"this device's configured trust_root {engine.settings.trust_root} (v{version})"


def _policy(
    engine: Engine, manifest: Manifest | None, verified: bool
) -> tuple[Check, bool, str | None]:
    """The policy's verdict, whether it is a downgrade, and the device's floor."""
    try:
        policy = engine.policy()
    except SysupdError as exc:
        return Check(False, f"the device's policy cannot be read: {exc}"), False, None
    floor = str(policy.floor) if policy.floor else None
    if manifest is None:
        return Check(False, "not checked: the release's manifest could not be read"), False, floor
    claims = "" if verified else " (as the unverified header claims)"
    try:
        downgrade = check_policy(manifest, policy)
    except VerificationError as exc:
        return Check(False, f"{exc}{claims}"), False, floor
    if downgrade:
        detail = (
            f"version {manifest.version} is below the floor {floor}, allowed by allow_downgrade"
        )
    elif floor is None:
        detail = f"for this product ({policy.product}); no version floor yet"
    else:
        detail = f"for this product ({policy.product}), not below the floor {floor}"
    return Check(True, detail + claims), downgrade, floor


def _payload(
    file: BinaryIO,
    manifest: Manifest | None,
    verified: VerifiedBundle | None,
    in_file: int,
    check_payload: bool,
) -> tuple[Check, bool]:
    """The payload's length in the file against the signed one, then (if asked) every chunk;
    and whether the chunks were checked."""
    if manifest is None:
        return Check(False, "not checked: the signed length could not be read"), False
    signed = manifest.length
    if in_file < signed:
        problem = f"the bundle is truncated: its payload has {in_file} of {signed} bytes"
        return Check(False, problem), False
    if in_file > signed:
        problem = f"the bundle's payload is longer than its signed length ({in_file} > {signed})"
        return Check(False, problem), False
    if verified is None:
        skipped = "; chunk hashes not checked: the metadata did not verify" if check_payload else ""
        return Check(True, f"{signed} bytes, as the unverified header claims{skipped}"), False
    if not check_payload:
        return Check(True, f"all {signed} signed bytes are there; chunk hashes not checked"), False
    reader = VerifiedReader(file, ChunkVerifier(verified.chunk_list, manifest.chunk_size, signed))
    try:
        drain(reader)  # one chunk buffer, reused; nothing is written or parsed
    except SysupdError as exc:
        return Check(False, f"the payload is not the signed one: {exc}"), False
    finally:
        reader.close()
    count = -(-signed // manifest.chunk_size)
    return Check(True, f"all {signed} bytes match their {count} signed chunk hashes"), True


def _describe(header: BundleHeader, now: datetime) -> HeaderInfo:
    """What the header's metadata says, none of it verified yet."""
    problems: list[str] = []
    roots: dict[int, Metadata[Root]] = {}
    for index, text in enumerate(header.roots):
        if (root := _parse(text, Root, f"root metadata #{index + 1}", problems)) is not None:
            roots.setdefault(root.signed.version, root)
    newest = roots[max(roots)] if roots else None
    targets = _parse(header.targets, Targets, "targets metadata", problems)
    releases = _parse(header.releases, Targets, "releases metadata", problems)
    carried: dict[str, Metadata[Any] | None] = {"root": newest, "targets": targets}
    carried[_RELEASES] = releases
    delegated: dict[str, tuple[Any, dict[str, Any]]] = {}  # role: its Role, the delegator's keys
    if newest is not None:
        delegated = {name: (role, newest.signed.keys) for name, role in newest.signed.roles.items()}
    into = targets.signed.delegations if targets is not None else None
    if into is not None and _RELEASES in (into.roles or {}):
        delegated[_RELEASES] = (into.roles[_RELEASES], into.keys)
    roles: list[RoleInfo] = []
    keys: dict[str, tuple[Any, list[str]]] = {}
    for name in sorted(delegated, key=lambda n: _ROLE_ORDER.index(n) if n in _ROLE_ORDER else 9):
        role, known = delegated[name]
        md = carried.get(name)
        fresh = (md.signed.version, md.signed.expires, md.signed.is_expired(now)) if md else ()
        roles.append(RoleInfo(name, role.threshold, tuple(role.keyids), *fresh))
        for keyid in role.keyids:
            if keyid in known:
                keys.setdefault(keyid, (known[keyid], []))[1].append(name)
    manifest = None
    entry = releases.signed.targets.get(header.target) if releases is not None else None
    if releases is not None and entry is None:
        problems.append(f"the releases metadata does not list {header.target}")
    elif entry is not None:
        try:
            manifest = parse_manifest(entry.path, entry.length, entry.hashes, entry.custom)
        except VerificationError as exc:
            problems.append(str(exc))
    found = tuple(KeyInfo(k, key.keytype, key.scheme, tuple(n)) for k, (key, n) in keys.items())
    return HeaderInfo(
        header.target, manifest, tuple(sorted(roots)), tuple(roles), found, tuple(problems)
    )


def _parse(
    text: str, kind: type[Root] | type[Targets], what: str, problems: list[str]
) -> Metadata[Any] | None:
    try:
        md: Metadata[Any] = Metadata.from_bytes(text.encode("utf-8"))
    except (DeserializationError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{what} cannot be parsed: {exc}")
        return None
    if md.signed.type != kind.type:
        problems.append(f"{what} is {md.signed.type!r} metadata")
        return None
    return md


def _root_version(data: bytes) -> int:
    try:
        return int(Metadata.from_bytes(data).signed.version)
    except (DeserializationError, ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"the trusted root cannot be parsed: {exc}") from exc


def _read(file: BinaryIO, size: int, what: str) -> bytes:
    data = file.read(size)  # a regular file reads short only at its end
    if what == "prefix" and not data:
        raise VerificationError("the file is empty, not a sysupd bundle")
    if what == "header" and len(data) != size:
        raise VerificationError("the bundle is truncated in its header")
    return data  # a short prefix is named by decode_bundle_prefix

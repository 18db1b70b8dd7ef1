"""The TUF client workflow over metadata the caller hands in: bytes in, a decision out.

This is the offline path's trust check (an offline bundle carries its metadata; the conformance
client reads a repository), with python-tuf's Metadata API, in the specification's order:

1. the trusted root must be signed by a threshold of its own keys; walk the root chain from it,
   one version at a time, each new root signed by the previous one's threshold and by its own
   (only roots newer than the trusted one are asked for, at most 256); the newest root must not
   be expired;
2. ``timestamp`` signed by the root's timestamp keys, not older than the device has seen, and not
   naming an older snapshot;
3. ``snapshot`` the one the timestamp names (version, and length and hashes where it gives
   them), signed by the root's snapshot keys, listing every role the device's kept snapshot
   lists at no lower version;
4. ``targets`` the version the snapshot names, signed by the root's targets keys, not expired;
5. ``releases`` (sysupd's one delegated role) likewise, signed by the keys ``targets`` delegates
   to it, not expired.

The offline expiry rule (``docs/design/trust.md``): the freshness roles' expiry (timestamp: a day,
snapshot: a week) is not enforced here — an offline bundle must outlive them; root, ``targets``
and ``releases`` expiry is. Version floors follow python-tuf's ngclient: timestamp and snapshot
bind while the device's kept copy still verifies under the current root, ``targets`` and
``releases`` at the versions that kept snapshot names; a rotation of the keys that signed them
lifts them (the specification's recovery from a fast-forward attack). A store that kept no
snapshot binds ``targets`` and ``releases`` by its own copies of them; a floor known only as a
number always binds. A kept copy of the version its parent names is used without asking again.

Nothing here reads files or the clock; the ``MetadataSource`` may (it is the caller's port). The
caller persists what ``VerifiedMetadata`` says is trusted once it accepts it, and the roots a
``TrustRefused`` carries in any case.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from sysupd.errors import TrustRefused, VerificationError

__all__ = [
    "MAX_ROOT_ROTATIONS",
    "RELEASES_ROLE",
    "ROLES",
    "MetadataSource",
    "TrustState",
    "VerifiedMetadata",
    "metadata_version",
    "releases_delegation",
    "seen_floors",
    "verify_metadata",
]

RELEASES_ROLE = "releases"
ROLES = ("timestamp", "snapshot", "targets", RELEASES_ROLE)
"""The roles below the root that the device keeps, in the order they are verified."""
MAX_ROOT_ROTATIONS = 256
"""As python-tuf's ngclient: at most this many newer roots in one walk (the next walk goes on)."""

_KINDS: dict[str, type[Root] | type[Timestamp] | type[Snapshot] | type[Targets]] = {
    "root": Root,
    "timestamp": Timestamp,
    "snapshot": Snapshot,
    "targets": Targets,
    RELEASES_ROLE: Targets,
}


@dataclass(frozen=True, slots=True)
class TrustState:
    """What the device trusts before looking at new metadata."""

    root: bytes
    """The newest verified root metadata (initially the configured ``trust_root``)."""
    seen: Mapping[str, int] = field(default_factory=dict)
    """The newest version of each role in ``ROLES`` the device has seen (absent: 0)."""
    kept: Mapping[str, bytes] = field(default_factory=dict)
    """The newest verified metadata of each role in ``ROLES`` the device kept, if it did."""

    def version(self, role: str) -> int:
        """The newest version of ``role`` the device has seen."""
        return self.seen.get(role, 0)


class MetadataSource(Protocol):
    """Where ``verify_metadata`` reads metadata, asked in the workflow's order and only for what
    it needs (a bundle's header answers from memory; the conformance client from a server)."""

    def root(self, version: int) -> bytes | None:
        """Root metadata of exactly ``version``, or ``None`` if there is none."""
        ...

    def timestamp(self) -> bytes | None:
        """The newest timestamp metadata, or ``None`` if there is none."""
        ...

    def role(self, role: str, version: int) -> bytes | None:
        """``snapshot``, ``targets`` or ``releases`` metadata at the ``version`` its verified
        parent names, or ``None`` if there is none."""
        ...


@dataclass(frozen=True, slots=True)
class VerifiedMetadata:
    """Metadata that checked out: the newest root and every role in force, with their exact
    bytes (what the device keeps)."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    releases: Metadata[Targets] | None
    """``None`` when the walk stopped at the top-level roles."""
    new_roots: tuple[bytes, ...]
    """Verified roots newer than the trusted one, oldest first."""
    data: Mapping[str, bytes]
    """The exact bytes of each role in force (``root`` included)."""

    def trust(self) -> TrustState:
        """The trust to persist once what this verified is accepted."""
        kept = {role: self.data[role] for role in ROLES if role in self.data}
        return TrustState(
            root=self.data["root"],
            seen={role: _version(data) for role, data in kept.items()},
            kept=kept,
        )


def verify_metadata(
    trust: TrustState,
    source: MetadataSource,
    now: datetime,
    *,
    delegated: bool = True,
    keep: Callable[[str, bytes], None] | None = None,
) -> VerifiedMetadata:
    """Verify what ``source`` offers against ``trust`` at time ``now``: the TUF checks alone,
    without any release policy; ``delegated=False`` stops after the top-level roles.
    ``keep(role, data)`` is told each role as it comes into force, before the next is read
    (as ngclient persists each file; a refusal later leaves what was kept trusted).

    Raises:
        TrustRefused: naming the first check that failed, with the verified newer roots
            (trusted all the same, as the workflow keeps each verified root) and whether it
            was a rollback.
        Whatever ``source`` raises, unchanged.
    """
    walk = _Walk(trust, now, keep)
    try:
        walk.trusted_root()
        walk.roots(source)
        walk.timestamp(source)
        walk.snapshot(source)
        walk.role(source, "targets")
        if delegated:
            walk.role(source, RELEASES_ROLE)
    except _Rollback as exc:
        raise walk.refused(str(exc), rollback=True) from exc
    except VerificationError as exc:
        raise walk.refused(str(exc), rollback=False) from exc
    return walk.result(delegated)


def releases_delegation(targets: Metadata[Targets]) -> DelegatedRole:
    """The ``releases`` role ``targets`` delegates to.

    Raises:
        VerificationError: it delegates none.
    """
    delegations = targets.signed.delegations
    role = delegations.roles.get(RELEASES_ROLE) if delegations and delegations.roles else None
    if role is None:
        raise VerificationError("targets metadata delegates no releases role")
    return role


def seen_floors(trust: TrustState, root: bytes, targets: bytes) -> dict[str, int]:
    """For each role in ``ROLES``, the version below which metadata is a rollback, for a channel
    whose verified root and targets are ``root`` and ``targets`` (the online path), by the rules
    ``verify_metadata`` follows (``_role_floor``), the kept snapshot's versions included.

    Raises:
        VerificationError: ``root`` or ``targets`` cannot be parsed.
    """
    current_root = _load(root, "root").signed
    current_targets = _load(targets, "targets").signed
    kept = _parse_kept(trust)
    floors = {}
    for role in ROLES:
        pinned = _pinned_by_snapshot(trust, kept, role, current_root)
        if pinned is not None:
            floors[role] = pinned.version
        else:
            floors[role] = _role_floor(trust, kept, role, current_root, current_targets)
    return floors


_Kept = dict[str, tuple[Metadata[Any], bytes]]
"""The device's kept copies that parse, by role, with their exact bytes."""


def _parse_kept(trust: TrustState) -> _Kept:
    return {role: copy for role in ROLES if (copy := _kept(trust, role)) is not None}


def _role_floor(
    trust: TrustState, kept: _Kept, role: str, root: Root, targets: Targets | None
) -> int:
    """The version below which ``role`` is a rollback by itself, under the current ``root``
    (and ``targets``, for ``releases``): what the device has seen, unless the keys that signed
    its kept copy were rotated out (0: the fast-forward recovery). For ``targets`` and
    ``releases`` this is 0 where the device's kept snapshot pins them instead (it is checked
    against the new snapshot).

    A kept copy whose signatures fail while the keys that made them are still trusted is
    damage, not a rotation: the number binds, as it does where nothing was kept.
    """
    if role in ("targets", RELEASES_ROLE):
        snapshot = kept.get("snapshot")
        if _pinned_by_snapshot(trust, kept, role, root) is not None:
            return 0
        if snapshot is not None and _rotated_out(root, "snapshot", snapshot[0]):
            return 0  # lifted with the snapshot it was pinned by
    delegator: Root | Targets | None = targets if role == RELEASES_ROLE else root
    copy = kept.get(role)
    if copy is not None and delegator is not None and _rotated_out(delegator, role, copy[0]):
        return 0
    return trust.version(role)


def _pinned_by_snapshot(trust: TrustState, kept: _Kept, role: str, root: Root) -> MetaFile | None:
    """The entry by which the device's kept snapshot binds ``role`` (``targets``, ``releases``),
    if it does: it verifies under ``root`` and names at least the version the device has seen (a
    snapshot left behind by an older sysupd, which kept no snapshot, names less and does not)."""
    snapshot = kept.get("snapshot")
    if role not in ("targets", RELEASES_ROLE) or snapshot is None:
        return None
    if not _verifies(root, "snapshot", snapshot[0]):
        return None
    info: MetaFile | None = snapshot[0].signed.meta.get(f"{role}.json")
    return info if info is not None and info.version >= trust.version(role) else None


def _rotated_out(delegator: Root | Targets, role: str, md: Metadata[Any]) -> bool:
    """Whether the keys that signed ``md`` no longer meet ``role``'s threshold under
    ``delegator``: a rotation (or the role no longer delegated)."""
    try:
        delegated = delegator.get_delegated_role(role)
    except ValueError:
        return True
    signers = {sig.keyid for sig in md.signatures.values()} & set(delegated.keyids)
    return len(signers) < delegated.threshold


def metadata_version(data: str | bytes) -> int | None:
    """The version metadata claims, read without parsing the rest (``None`` if it has none)."""
    try:
        version = json.loads(data)["signed"]["version"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class _Rollback(VerificationError):
    """Metadata older than what the device has seen."""


class _Walk:
    """One run of the workflow: what is trusted so far, updated step by step."""

    def __init__(
        self, trust: TrustState, now: datetime, keep: Callable[[str, bytes], None] | None
    ) -> None:
        self._trust = trust
        self._now = now
        self._keep = keep
        self._new_roots: list[bytes] = []
        self._in_force: _Kept = {}
        self._kept = _parse_kept(trust)
        self._root: Metadata[Root]

    def trusted_root(self) -> None:
        root = _load(self._trust.root, "root")
        if not _verifies(root.signed, "root", root):
            raise VerificationError(
                f"the trusted root v{root.signed.version} is not signed by a threshold of its "
                "own keys"
            )
        self._root = root
        self._in_force["root"] = (root, self._trust.root)

    def _enter(self, role: str, md: Metadata[Any], data: bytes) -> None:
        self._in_force[role] = (md, data)
        if self._keep is not None:
            self._keep(role, data)

    def roots(self, source: MetadataSource) -> None:
        for _ in range(MAX_ROOT_ROTATIONS):  # then stop, as ngclient does
            version = self._root.signed.version + 1
            data = source.root(version)
            if data is None:
                break
            new_root = _load(data, "root")
            if new_root.signed.version != version:
                raise VerificationError(f"root v{version} is version {new_root.signed.version}")
            if not (
                _verifies(self._root.signed, "root", new_root)
                and _verifies(new_root.signed, "root", new_root)
            ):
                raise VerificationError(
                    f"root v{version} is not signed by the keys of v{version - 1} and its own"
                )
            self._root = new_root
            self._new_roots.append(data)
            self._enter("root", new_root, data)
        if self._root.signed.is_expired(self._now):
            raise VerificationError(f"root metadata v{self._root.signed.version} has expired")

    def timestamp(self, source: MetadataSource) -> None:
        kept = self._kept_under("timestamp", self._root.signed)
        floor = _role_floor(self._trust, self._kept, "timestamp", self._root.signed, None)
        data = source.timestamp()
        if data is None:
            raise VerificationError("there is no timestamp metadata")
        new = _load(data, "timestamp")
        _check_signed(self._root.signed, "timestamp", new)
        if new.signed.version < floor:
            raise _Rollback(_older("timestamp", new.signed.version, floor))
        if kept is not None:
            old_meta = kept[0].signed.snapshot_meta.version
            if new.signed.snapshot_meta.version < old_meta:
                raise _Rollback(
                    f"timestamp metadata v{new.signed.version} names snapshot "
                    f"v{new.signed.snapshot_meta.version}, older than v{old_meta}, which this "
                    "device has already seen (a rollback)"
                )
            if new.signed.version == kept[0].signed.version:
                new, data = kept  # the one the device has: as ngclient, it stays in force
        self._enter("timestamp", new, data)

    def snapshot(self, source: MetadataSource) -> None:
        meta: MetaFile = self._in_force["timestamp"][0].signed.snapshot_meta
        kept = self._kept_under("snapshot", self._root.signed)
        floor = _role_floor(self._trust, self._kept, "snapshot", self._root.signed, None)
        new, data = self._fetch(source, "snapshot", meta, kept, self._root.signed, floor)
        if kept is not None:
            for name, old in kept[0].signed.meta.items():
                info = new.signed.meta.get(name)
                if info is None:
                    raise VerificationError(
                        f"snapshot metadata v{new.signed.version} no longer lists {name}"
                    )
                if info.version < old.version:
                    raise _Rollback(
                        f"snapshot metadata v{new.signed.version} names {name} v{info.version}, "
                        f"older than v{old.version}, which this device has already seen "
                        "(a rollback)"
                    )
        self._enter("snapshot", new, data)

    def role(self, source: MetadataSource, role: str) -> None:
        """``targets`` (under the root) or ``releases`` (under ``targets``)."""
        targets: Targets | None = None
        delegator: Root | Targets = self._root.signed
        if role == RELEASES_ROLE:
            releases_delegation(self._in_force["targets"][0])  # refused if there is none
            targets = delegator = self._in_force["targets"][0].signed
        meta = self._in_force["snapshot"][0].signed.meta.get(f"{role}.json")
        if meta is None:
            raise VerificationError(f"the snapshot metadata does not list {role}")
        kept = self._kept_under(role, delegator)
        floor = _role_floor(self._trust, self._kept, role, self._root.signed, targets)
        expired = kept is not None and kept[0].signed.is_expired(self._now)
        # an expired copy is not reused (ngclient asks again)
        new, data = self._fetch(source, role, meta, None if expired else kept, delegator, floor)
        if new.signed.is_expired(self._now):
            raise VerificationError(
                f"{role} metadata v{new.signed.version} expired on {new.signed.expires:%Y-%m-%d}"
            )
        self._enter(role, new, data)

    def refused(self, message: str, *, rollback: bool) -> TrustRefused:
        return TrustRefused(message, tuple(self._new_roots), rollback=rollback)

    def result(self, delegated: bool) -> VerifiedMetadata:
        md = self._in_force
        return VerifiedMetadata(
            root=self._root,
            timestamp=md["timestamp"][0],
            snapshot=md["snapshot"][0],
            targets=md["targets"][0],
            releases=md[RELEASES_ROLE][0] if delegated else None,
            new_roots=tuple(self._new_roots),
            data={role: data for role, (_, data) in md.items()},
        )

    def _fetch(
        self,
        source: MetadataSource,
        role: str,
        meta: MetaFile,
        kept: tuple[Metadata[Any], bytes] | None,
        delegator: Root | Targets,
        floor: int,
    ) -> tuple[Metadata[Any], bytes]:
        """``role`` at the version ``meta`` names: the kept copy when it is that one, else
        asked for, matched against ``meta``, signed by ``delegator``'s keys for it, not below
        ``floor``."""
        if kept is not None and kept[0].signed.version == meta.version and _matches(meta, kept):
            return kept
        if meta.version < floor:
            raise _Rollback(_older(role, meta.version, floor))
        data = source.role(role, meta.version)
        if data is None:
            raise VerificationError(f"there is no {role} metadata v{meta.version}")
        try:
            meta.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as exc:
            raise VerificationError(
                f"{role} metadata does not match the length and hashes its parent signed: {exc}"
            ) from exc
        new = _load(data, role)
        _check_signed(delegator, role, new)
        if new.signed.version != meta.version:
            raise VerificationError(
                f"{role} metadata is version {new.signed.version}, not the v{meta.version} "
                "its parent names"
            )
        return new, data

    def _kept_under(
        self, role: str, delegator: Root | Targets
    ) -> tuple[Metadata[Any], bytes] | None:
        """The device's kept copy of ``role``, if it still verifies under ``delegator``."""
        kept = self._kept.get(role)
        if kept is None or not _verifies(delegator, role, kept[0]):
            return None
        return kept


def _kept(trust: TrustState, role: str) -> tuple[Metadata[Any], bytes] | None:
    """The device's kept copy of ``role``, parsed; a damaged copy is as none (its version number
    still binds: it never weakens the floor)."""
    data = trust.kept.get(role)
    if data is None:
        return None
    try:
        return _load(data, role), data
    except VerificationError:
        return None


def _matches(meta: MetaFile, kept: tuple[Metadata[Any], bytes]) -> bool:
    try:
        meta.verify_length_and_hashes(kept[1])
    except LengthOrHashMismatchError:
        return False
    return True


def _verifies(delegator: Root | Targets, role: str, md: Metadata[Any]) -> bool:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except (UnsignedMetadataError, ValueError):
        return False
    return True


def _check_signed(delegator: Root | Targets, role: str, md: Metadata[Any]) -> None:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise VerificationError(
            f"{role} metadata is not signed by the keys this device trusts for it"
        ) from exc
    except ValueError as exc:
        raise VerificationError(f"{role} metadata cannot be checked: {exc}") from exc


def _older(role: str, version: int, floor: int) -> str:
    return (
        f"{role} metadata v{version} is older than v{floor}, which this device has already "
        "seen (a rollback)"
    )


def _version(data: bytes) -> int:
    return metadata_version(data) or 0  # verified metadata: it has one


def _load(data: str | bytes, role: str) -> Metadata[Any]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError) as exc:
        raise VerificationError(f"{role} metadata cannot be parsed: {exc}") from exc
    try:
        md: Metadata[Any] = Metadata.from_bytes(raw)
    except (DeserializationError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise VerificationError(f"{role} metadata cannot be parsed: {exc}") from exc
    if md.signed.type != _KINDS[role].type:
        raise VerificationError(f"expected {role} metadata, found {md.signed.type!r}")
    return md


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if it names a key twice: parsers disagree on which one counts,
    and the signature covers only the one python-tuf keeps."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen

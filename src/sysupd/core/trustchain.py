"""Verifying an offline bundle's metadata against the device's trust: bytes in, a decision out.

Following the TUF client workflow with python-tuf's Metadata API, minus the online-only
freshness roles (snapshot, timestamp):

1. the trusted root must be signed by a threshold of its own keys; walk the root chain from it,
   one version at a time, each new root signed by the previous one's threshold and by its own
   (only roots newer than the trusted one are parsed: an old root that cannot be read is
   ignored; two different roots of one version are refused); the newest root must not be
   expired;
2. ``targets`` signed by the root's targets keys, not expired, not older than the device has seen
   — a floor that binds while the metadata that set it (which the device kept) still verifies
   under the current root; once a key rotation removed the keys that signed it, it no longer
   binds (the TUF specification's recovery from a fast-forward attack); likewise ``releases``
   under the current ``targets`` delegation. A bundle whose metadata is older than what the
   device has seen is not refused for that when the device kept that newer metadata: it is
   checked against the device's copy instead (signed by today's keys, not expired), which must
   still list the bundle's target — a release withdrawn since is refused, saying so;
3. ``releases`` signed by the keys ``targets`` delegates to it, not expired, not older than seen,
   and delegated the bundle's target path;
4. the target entry and its chunk list (checked against its signed length and hash);
5. the release policy: the configured product, and no version below the device's floor unless an
   administrator allowed downgrades.

Nothing here reads files or the clock; the caller persists what ``VerifiedBundle`` says is newly
trusted (newer roots, metadata versions) only after this returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import DelegatedRole, Metadata, Root, Targets
from tuf.api.serialization import DeserializationError

from sysupd.core.bundle_format import BundleHeader
from sysupd.core.manifest import Manifest, parse_manifest
from sysupd.core.versions import Version
from sysupd.errors import RefusedAfterRoots, VerificationError

__all__ = [
    "ReleasePolicy",
    "TrustState",
    "VerifiedBundle",
    "VerifiedMetadata",
    "check_policy",
    "metadata_version",
    "seen_floors",
    "verify_bundle",
    "verify_metadata",
]

RELEASES_ROLE = "releases"


@dataclass(frozen=True, slots=True)
class TrustState:
    """What the device trusts before looking at the bundle."""

    root: bytes
    """The newest verified root metadata (initially the configured ``trust_root``)."""
    targets_version: int = 0
    releases_version: int = 0
    targets: bytes | None = None
    """The newest verified ``targets`` metadata the device has seen, if it kept it."""
    releases: bytes | None = None
    """The newest verified ``releases`` metadata the device has seen, if it kept it."""


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    """The device's rules for accepting a release."""

    product: str
    floor: Version | None
    """The lowest version the device accepts (its last good version), ``None`` for any."""
    allow_downgrade: bool = False


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose metadata checked out: the release and what the device should now trust."""

    manifest: Manifest
    chunk_list: bytes
    new_roots: tuple[bytes, ...]
    """Verified roots newer than the trusted one, oldest first, to persist."""
    trust: TrustState
    """The trust state to persist once the bundle is accepted."""
    downgrade: bool
    """Whether the release is below the floor (allowed by the policy)."""


@dataclass(frozen=True, slots=True)
class VerifiedMetadata:
    """Metadata that checked out against the device's trust: the newest root, and the
    ``targets`` and ``releases`` in force — the offered ones, or the device's kept newer copies
    where the offered ones are older than what it has seen."""

    root: Metadata[Root]
    targets: Metadata[Targets]
    releases: Metadata[Targets]
    new_roots: tuple[bytes, ...]
    """Verified roots newer than the trusted one, oldest first."""
    kept_releases: bool
    """``releases`` is the device's kept copy, not the offered one."""

    def trust(self, previous: TrustState) -> TrustState:
        """The trust to persist once what this verified is accepted."""
        return TrustState(
            root=self.new_roots[-1] if self.new_roots else previous.root,
            targets_version=self.targets.signed.version,
            releases_version=self.releases.signed.version,
            targets=self.targets.to_bytes(),
            releases=self.releases.to_bytes(),
        )


def verify_metadata(
    trust: TrustState, roots: tuple[str, ...], targets: str, releases: str, now: datetime
) -> VerifiedMetadata:
    """Verify offered ``roots`` (any order), ``targets`` and ``releases`` metadata against
    ``trust`` at time ``now``: the offline path's TUF checks, without any release policy.

    Raises:
        VerificationError: naming the first check that failed; ``RefusedAfterRoots`` (with the
            verified newer roots, to keep all the same) when it failed after the root chain.
    """
    trusted = _load(trust.root, Root, "root")
    root, new_roots = _walk_roots(trusted, roots)
    try:
        return _verify_roles(trust, targets, releases, now, root, new_roots)
    except VerificationError as exc:
        if not new_roots:
            raise
        raise RefusedAfterRoots(str(exc), new_roots) from exc


def verify_bundle(
    header: BundleHeader, trust: TrustState, policy: ReleasePolicy, now: datetime
) -> VerifiedBundle:
    """Verify ``header`` against ``trust`` and ``policy`` at time ``now``: ``verify_metadata``,
    then the bundle's target in the ``releases`` in force, its chunk list, and the policy.

    Raises:
        VerificationError: naming the first check that failed; ``RefusedAfterRoots`` (with the
            verified newer roots, to keep all the same) when it failed after the root chain.
    """
    verified = verify_metadata(trust, header.roots, header.targets, header.releases, now)
    try:
        return _verify_release(header, trust, policy, verified)
    except VerificationError as exc:
        if not verified.new_roots:
            raise
        raise RefusedAfterRoots(str(exc), verified.new_roots) from exc


def _verify_roles(
    trust: TrustState,
    offered_targets: str,
    offered_releases: str,
    now: datetime,
    root: Metadata[Root],
    new_roots: tuple[bytes, ...],
) -> VerifiedMetadata:
    """``verify_metadata`` from the newest verified root on."""
    if root.signed.is_expired(now):
        raise VerificationError(f"root metadata v{root.signed.version} has expired")
    floor = _floor(trust.targets, trust.targets_version, root.signed, "targets")
    targets, _ = _newest(offered_targets, trust.targets, floor, Targets, "targets")
    _check_signed(root.signed, "targets", targets)
    _check_fresh(targets, "targets", floor, now)

    _releases_role(targets)
    floor = _floor(trust.releases, trust.releases_version, targets.signed, RELEASES_ROLE)
    releases, kept = _newest(offered_releases, trust.releases, floor, Targets, RELEASES_ROLE)
    _check_signed(targets.signed, RELEASES_ROLE, releases)
    _check_fresh(releases, RELEASES_ROLE, floor, now)
    return VerifiedMetadata(root, targets, releases, new_roots, kept)


def _releases_role(targets: Metadata[Targets]) -> DelegatedRole:
    """The ``releases`` role ``targets`` delegates to.

    Raises:
        VerificationError: it delegates none.
    """
    delegations = targets.signed.delegations
    role = delegations.roles.get(RELEASES_ROLE) if delegations and delegations.roles else None
    if role is None:
        raise VerificationError("targets metadata delegates no releases role")
    return role


def _verify_release(
    header: BundleHeader, trust: TrustState, policy: ReleasePolicy, verified: VerifiedMetadata
) -> VerifiedBundle:
    """The bundle's target, chunk list and policy, in the ``releases`` ``verified`` holds."""
    if not _releases_role(verified.targets).is_delegated_path(header.target):
        raise VerificationError(f"{header.target} is not a path the releases role may sign")
    releases = verified.releases
    if verified.kept_releases and header.target not in releases.signed.targets:
        raise VerificationError(
            f"{header.target} was withdrawn: the releases metadata v{releases.signed.version} "
            "this device has seen no longer lists it"
        )
    entry = releases.signed.targets.get(header.target)
    if entry is None:
        raise VerificationError(f"the releases metadata does not list {header.target}")
    manifest = parse_manifest(entry.path, entry.length, entry.hashes, entry.custom)
    chunks_entry = releases.signed.targets.get(manifest.chunks_target)
    if chunks_entry is None:
        raise VerificationError(f"the releases metadata does not list {manifest.chunks_target}")
    try:
        chunks_entry.verify_length_and_hashes(header.chunks)
    except LengthOrHashMismatchError as exc:
        raise VerificationError(f"the chunk list does not match its signed hash: {exc}") from exc
    downgrade = check_policy(manifest, policy)
    return VerifiedBundle(
        manifest=manifest,
        chunk_list=header.chunks,
        new_roots=verified.new_roots,
        trust=verified.trust(trust),
        downgrade=downgrade,
    )


def seen_floors(trust: TrustState, root: bytes, targets: bytes) -> tuple[int, int]:
    """The versions of ``targets`` and ``releases`` below which metadata is a rollback, for a
    channel whose verified root and targets are ``root`` and ``targets`` (the online path).

    A floor binds while the metadata that set it still verifies under the current trust: after
    a key rotation removed the keys that signed it, it no longer does, and the floor is lifted
    (the TUF specification's recovery from a fast-forward attack). Where the device kept only a
    version number, the floor always binds.

    Raises:
        VerificationError: ``root`` or ``targets`` cannot be parsed.
    """
    current_root = _load(root, Root, "root")
    current_targets = _load(targets, Targets, "targets")
    return (
        _floor(trust.targets, trust.targets_version, current_root.signed, "targets"),
        _floor(trust.releases, trust.releases_version, current_targets.signed, RELEASES_ROLE),
    )


def check_policy(manifest: Manifest, policy: ReleasePolicy) -> bool:
    """Whether the device accepts ``manifest``'s release; returns whether it is a downgrade.

    Raises:
        VerificationError: another product, or below the floor without ``allow_downgrade``.
    """
    if manifest.product != policy.product:
        raise VerificationError(
            f"the release is for product {manifest.product!r}, this device is {policy.product!r}"
        )
    downgrade = policy.floor is not None and manifest.version < policy.floor
    if downgrade and not policy.allow_downgrade:
        raise VerificationError(
            f"version {manifest.version} is older than the installed floor {policy.floor}; "
            "set allow_downgrade to install it"
        )
    return downgrade


def _walk_roots(
    trusted: Metadata[Root], offered: tuple[str, ...]
) -> tuple[Metadata[Root], tuple[bytes, ...]]:
    root = trusted
    try:
        root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    except UnsignedMetadataError as exc:
        raise VerificationError(
            f"the trusted root v{root.signed.version} is not signed by a threshold of its own keys"
        ) from exc
    by_version: dict[int, bytes] = {}
    for text in offered:
        version = metadata_version(text)
        if version is None or version <= root.signed.version:
            continue  # not needed: the chain starts above the trusted root
        data = text.encode("utf-8")
        if by_version.setdefault(version, data) != data:
            raise VerificationError(f"the bundle holds two different roots of version {version}")
    newest = max(by_version, default=0)
    accepted: list[bytes] = []
    while root.signed.version < newest:
        try:
            root = _next_root(root, by_version)
        except VerificationError as exc:
            if not accepted:
                raise
            raise RefusedAfterRoots(str(exc), tuple(accepted)) from exc  # each kept as verified
        accepted.append(by_version[root.signed.version])
    return root, tuple(accepted)


def _next_root(root: Metadata[Root], by_version: dict[int, bytes]) -> Metadata[Root]:
    """The root after ``root``, verified: signed by ``root``'s threshold and by its own."""
    version = root.signed.version + 1
    found = by_version.get(version)
    if found is None:
        raise VerificationError(f"the bundle's root chain is missing version {version}")
    new_root = _load(found, Root, "root")
    if new_root.signed.version != version:
        raise VerificationError(f"root v{version} cannot be parsed as that version")
    try:
        root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
        new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    except UnsignedMetadataError as exc:
        raise VerificationError(
            f"root v{version} is not signed by the keys of v{version - 1} and its own"
        ) from exc
    return new_root


def metadata_version(data: str | bytes) -> int | None:
    """The version metadata claims, read without parsing the rest (``None`` if it has none)."""
    try:
        version = json.loads(data)["signed"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _floor(kept: bytes | None, seen: int, delegator: Root | Targets, role: str) -> int:
    """``seen``, while the kept metadata that set it still verifies under ``delegator`` (keys
    added or a threshold lowered keep it binding; the signing keys rotated out lift it: 0)."""
    if kept is None:
        return seen
    try:
        md = _load(kept, Targets, role)
    except VerificationError:
        return seen  # a damaged copy never weakens the floor
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except (UnsignedMetadataError, ValueError):
        return 0
    return seen


def _newest(
    offered: str, kept: bytes | None, seen: int, kind: type[Targets], role: str
) -> tuple[Metadata[Any], bool]:
    """The bundle's ``role`` metadata, or (``True``) the device's kept copy where the bundle's is
    older than what the device has seen and the copy is that version or newer (still checked by
    the caller like the bundle's own)."""
    md = _load(offered, kind, role)
    if md.signed.version >= seen or kept is None:
        return md, False
    copy = _load(kept, kind, role)
    return (copy, True) if copy.signed.version >= seen else (md, False)


def _check_signed(delegator: Root | Targets, role: str, md: Metadata[Any]) -> None:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise VerificationError(
            f"{role} metadata is not signed by the keys this device trusts for it"
        ) from exc
    except ValueError as exc:
        raise VerificationError(f"{role} metadata cannot be checked: {exc}") from exc


def _check_fresh(md: Metadata[Targets], role: str, seen_version: int, now: datetime) -> None:
    if md.signed.version < seen_version:
        raise VerificationError(
            f"{role} metadata v{md.signed.version} is older than v{seen_version}, which this "
            "device has already seen (a rollback): the bundle was made before the release "
            "repository's latest change, or it is replayed. Make it again from the current "
            "repository ('sysupd release bundle') and install that one"
        )
    if md.signed.is_expired(now):
        raise VerificationError(
            f"{role} metadata v{md.signed.version} expired on {md.signed.expires:%Y-%m-%d}"
        )


def _load(data: str | bytes, kind: type[Root] | type[Targets], role: str) -> Metadata[Any]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except ValueError as exc:
        raise VerificationError(f"{role} metadata cannot be parsed: {exc}") from exc
    try:
        md: Metadata[Any] = Metadata.from_bytes(raw)
    except (DeserializationError, ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"{role} metadata cannot be parsed: {exc}") from exc
    if md.signed.type != kind.type:
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

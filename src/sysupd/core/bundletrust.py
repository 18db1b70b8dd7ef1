"""Whether an offline bundle may be installed: its metadata through the TUF workflow
(``trustchain.verify_metadata``), then its release and the device's policy. Pure.

- The bundle's header is the ``MetadataSource``: roots by version (two different roots of one
  version are refused; roots that cannot be read are ignored unless asked for), its timestamp,
  snapshot, ``targets`` and ``releases``.
- **Bundles that keep.** A bundle whose metadata is older than what the device has seen (a
  rollback for the workflow) is checked against the device's kept newer copies instead — the
  same workflow, the device's timestamp, snapshot, ``targets`` and ``releases`` under today's
  root — which must still list the bundle's target; its entry there (length, hashes, chunk list)
  is the one the payload must match. A release withdrawn since is refused, saying so.
- The bundle's own snapshot must name ``targets`` and ``releases`` by hash (``_check_pinned``).
- The release: the target delegated to ``releases``, listed with its chunk list, whose bytes
  match their signed entry; then the product and the version floor (``check_policy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tuf.api.exceptions import LengthOrHashMismatchError

from sysupd.core.bundle_format import BundleHeader
from sysupd.core.manifest import Manifest, parse_manifest
from sysupd.core.trustchain import (
    ROLES,
    TrustState,
    VerifiedMetadata,
    metadata_version,
    releases_delegation,
    verify_metadata,
)
from sysupd.core.versions import Version
from sysupd.errors import TrustRefused, VerificationError

__all__ = [
    "BundleMetadata",
    "ReleasePolicy",
    "VerifiedBundle",
    "check_policy",
    "verify_bundle",
]


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


class BundleMetadata:
    """A bundle header's metadata, as ``verify_metadata`` asks for it."""

    def __init__(self, header: BundleHeader) -> None:
        self._header = header
        self._roots: dict[int, set[str]] = {}
        for text in header.roots:
            version = metadata_version(text)
            if version is not None:
                self._roots.setdefault(version, set()).add(text)

    def root(self, version: int) -> bytes | None:
        texts = self._roots.get(version)
        if not texts:
            if any(newer > version for newer in self._roots):
                raise VerificationError(f"the bundle's root chain is missing version {version}")
            return None
        if len(texts) > 1:
            raise VerificationError(f"the bundle holds two different roots of version {version}")
        return next(iter(texts)).encode("utf-8")

    def timestamp(self) -> bytes | None:
        return self._header.timestamp.encode("utf-8")

    def role(self, role: str, version: int) -> bytes | None:
        del version  # the bundle carries one of each; the walker checks it is the named one
        header = self._header
        text = {"snapshot": header.snapshot, "targets": header.targets}.get(role, header.releases)
        return text.encode("utf-8")


class _KeptMetadata:
    """The bundle's roots with the device's kept copies of the other roles."""

    def __init__(self, bundle: BundleMetadata, trust: TrustState) -> None:
        self._bundle = bundle
        self._kept = trust.kept

    def root(self, version: int) -> bytes | None:
        return self._bundle.root(version)

    def timestamp(self) -> bytes | None:
        return self._kept.get("timestamp")

    def role(self, role: str, version: int) -> bytes | None:
        del version
        return self._kept.get(role)


def verify_bundle(
    header: BundleHeader, trust: TrustState, policy: ReleasePolicy, now: datetime
) -> VerifiedBundle:
    """Verify ``header`` against ``trust`` and ``policy`` at time ``now``.

    Raises:
        TrustRefused: naming the first check that failed, with the verified newer roots (to keep
            all the same).
    """
    offered = BundleMetadata(header)
    try:
        verified, kept = verify_metadata(trust, offered, now), False
    except TrustRefused as exc:
        if not exc.rollback:
            raise
        if not all(role in trust.kept for role in ROLES):
            raise TrustRefused(
                f"{exc}: the bundle was made before the release repository's latest change, or "
                "it is replayed. Make it again from the current repository ('sysupd release "
                "bundle') and install that one",
                exc.roots,
                rollback=True,
            ) from exc
        try:
            verified, kept = verify_metadata(trust, _KeptMetadata(offered, trust), now), True
        except TrustRefused as again:
            raise TrustRefused(
                f"{exc}; the newer metadata this device kept cannot stand in for it: {again}",
                again.roots,
            ) from again
    try:
        if not kept:
            _check_pinned(verified)
        return _verify_release(header, policy, verified, kept)
    except VerificationError as exc:
        raise TrustRefused(str(exc), verified.new_roots) from exc


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


def _check_pinned(verified: VerifiedMetadata) -> None:
    """A bundle's snapshot must name ``targets`` and ``releases`` by hash, not only by version:
    offline its expiry is not enforced, so without the hashes a thief of the ``releases`` key
    could pair any old snapshot with a forged ``releases`` of the version it names (sysupd's
    release tool always writes them)."""
    for role in ("targets", "releases"):
        meta = verified.snapshot.signed.meta.get(f"{role}.json")
        if meta is None or not meta.hashes:
            raise VerificationError(
                f"the bundle's snapshot does not name {role} by hash; make the bundle again "
                "with this release tool ('sysupd release publish', then 'sysupd release bundle')"
            )


def _verify_release(
    header: BundleHeader, policy: ReleasePolicy, verified: VerifiedMetadata, kept: bool
) -> VerifiedBundle:
    """The bundle's target, chunk list and policy, in the ``releases`` ``verified`` holds."""
    releases = verified.releases
    if releases is None:  # verify_metadata walked the delegation: never
        raise VerificationError("the releases metadata was not verified")
    if not releases_delegation(verified.targets).is_delegated_path(header.target):
        raise VerificationError(f"{header.target} is not a path the releases role may sign")
    entry = releases.signed.targets.get(header.target)
    if entry is None and kept:
        raise VerificationError(
            f"{header.target} was withdrawn: the releases metadata v{releases.signed.version} "
            "this device has seen no longer lists it"
        )
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
    return VerifiedBundle(
        manifest=manifest,
        chunk_list=header.chunks,
        new_roots=verified.new_roots,
        trust=verified.trust(),
        downgrade=check_policy(manifest, policy),
    )

"""Key rotation in the release repository: a role gets a new key; its old key leaves the metadata.

Key files and their life (``<role>.pem.next``, ``retired/``) are ``sysupd.release.keys``; the
procedure for operators is ``docs/release-keys.md``.

Invariants:

- A root rotation is signed by the old and the new root key; a new key for another top-level
  role is named by a new root signed by the root key; a new ``releases`` key by a new
  ``targets`` version signed by the targets key. Replaced keys are removed from the metadata.
- Every key the rotation needs is found before anything changes. The new key waits as
  ``<role>.pem.next`` until the metadata naming it is written, so a rotation cut short leaves a
  key that ``RepositoryMetadata.signer`` recognises and installs.
- The rotated role is re-signed with its new key, then snapshot and timestamp, all under the
  repository's lock and on the state re-read under it.
"""

from __future__ import annotations

from sysupd.release import keys
from sysupd.release._metadata import RELEASES, RepositoryMetadata

__all__ = ["rotate_key"]


def rotate_key(md: RepositoryMetadata, product: str, role: str) -> str:
    """Give ``role`` a new key, note it in ``repo.json`` (of ``product``), and return its key id.

    Raises:
        ConfigError: unknown role, or a signing key that is needed is missing.
        StateError: the repository could not be read or written.
    """
    pending = keys.pending_key_file(md.keys_dir, role)
    delegator = "targets" if role == RELEASES else "root"
    with md.locked():
        md.load()
        # The role's own old key is not needed (a lost key can be replaced), except root's: the
        # old root signs the new.
        for needed in sorted(({"snapshot", "timestamp"} - {role}) | {delegator}):
            md.signer(needed)
        new = keys.generate_signer()
        keys.save_signer(pending, new)
        if role == RELEASES:
            for keyid in md.keyids(RELEASES):
                md.targets.signed.revoke_key(keyid, RELEASES)
            md.targets.signed.add_key(new.public_key, RELEASES)
            md.commit("targets", md.targets)
        else:
            root_signer = md.signer("root")
            root = md.root.signed
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(new.public_key, role)
            signers = [root_signer, new] if role == "root" else [root_signer]
            md.commit("root", md.root, signers=signers)
        keys.promote_pending_key(md.keys_dir, role)
        md.signers[role] = new
        if role in ("targets", RELEASES):
            md.commit(role, md.targets if role == "targets" else md.releases)
        md.commit_snapshot_and_timestamp()
        md.write_notes(product)
    return new.public_key.keyid

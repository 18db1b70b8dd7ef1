"""The release tool: a TUF repository of signed releases and the offline bundles cut from it.

``repository`` is its entry point (``ReleaseRepository``): it creates and edits the repository
(python-tuf's Metadata API) and writes bundles in the format of ``docs/design/release-format.md``,
through its private parts — ``_metadata`` (layout, lock, signing), ``_targets`` (target files),
``_releases`` (adding a release), ``_bundles`` (offline bundles) and ``_rotation`` (new keys).
``keys`` keeps the ed25519 signing keys as PEM files; ``payloads`` packs trees and images.
The command line is ``sysupd.cli.release``.
"""

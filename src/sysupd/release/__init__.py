"""The release tool: a TUF repository of signed releases and the offline bundles cut from it.

``keys`` keeps the ed25519 signing keys as PEM files; ``repository`` creates and edits the
repository (python-tuf's Metadata API) and writes bundles in the format of
``docs/design/release-format.md``. The command line is ``sysupd.cli.release``.
"""

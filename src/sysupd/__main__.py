"""``python -m sysupd``: the same entry point as the ``sysupd`` console script."""

from sysupd.cli.main import main

main()

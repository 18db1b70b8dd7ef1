"""``python -m tools.appliance build|boot``: build the appliance disk, or boot a copy and ask it."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from pathlib import Path

from tools.appliance.build import build
from tools.appliance.commands import BuildError
from tools.appliance.vm import demo


def main() -> int:
    """The command line; its exit status."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", type=Path, help="cache directory (default .cache/appliance)")
    common.add_argument("--version", default="1.0.0", help="version of the image in slot A")
    common.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    parser = argparse.ArgumentParser(prog="python -m tools.appliance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", parents=[common], help="build the disk (or reuse the cached one)")
    commands.add_parser("boot", parents=[common], help="boot a copy, print sys/info, power off")
    args = parser.parse_args()
    try:
        appliance = build(
            args.cache, args.version, force=args.force, log=functools.partial(print, flush=True)
        )
        if args.command == "boot":
            asyncio.run(demo(appliance))
    except BuildError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

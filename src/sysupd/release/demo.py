"""The demo release repository made on the embedded default's first start.

So that a new user sees a real update without preparing anything: a repository with two signed
releases (``1.1.0`` and ``1.2.0``, small file trees) and their offline bundles, next to the
service's state; the service then trusts its first root. It is an ordinary repository made with
the release tool: nothing about it is special to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sysupd.release.repository import ReleaseRepository

__all__ = ["DEMO_VERSIONS", "Demo", "create_demo"]

DEMO_VERSIONS = ("1.1.0", "1.2.0")


@dataclass(frozen=True, slots=True)
class Demo:
    """Where the demo's pieces are."""

    repo: Path
    trust_root: Path
    bundles: tuple[Path, ...]


def create_demo(directory: Path, product: str) -> Demo:
    """Create the demo repository and bundles in the new directory ``directory``.

    Raises:
        ConfigError: ``directory`` is not empty.
        StateError: the files could not be written.
    """
    repo = ReleaseRepository.init(directory / "repo", product)
    bundles = []
    for version in DEMO_VERSIONS:
        tree = directory / "trees" / version
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "version").write_text(f"{version}\n")
        (tree / "etc" / "motd").write_text(f"Welcome to {product} {version}, updated by sysupd.\n")
        repo.add_release(version, tree=tree, compress="zstd", notes=f"Demo release {version}")
        bundle = directory / f"{product}-{version}.bundle"
        repo.write_bundle(version, bundle)
        bundles.append(bundle)
    return Demo(directory / "repo", repo.path / "metadata" / "1.root.json", tuple(bundles))

"""``sysupd release init|add|bundle|publish|rotate-key|list``: the release tool's commands.

Thin wrappers over ``sysupd.release.repository.ReleaseRepository``: every failure the tool
raises on purpose (``SysupdError``) becomes one ``Error: …`` line and exit status 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from sysupd.cli.options import fail
from sysupd.errors import SysupdError
from sysupd.release.repository import DEFAULT_CHUNK_SIZE, ReleaseRepository

__all__ = ["release"]

_REPO = click.option(
    "--repo",
    "repo_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The release repository directory.",
)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn the tool's own errors into a one-line message and exit status 1."""
    try:
        yield
    except SysupdError as exc:
        fail(str(exc))


@click.group()
def release() -> None:
    """Make signed releases and offline bundles (a TUF repository)."""


@release.command("init")
@_REPO
@click.option("--product", required=True, help="The product name devices are configured with.")
def init(repo_dir: Path, product: str) -> None:
    """Create a repository with new keys.

    Development layout: threshold 1, unencrypted keys in DIR/keys (see docs/release-keys.md).
    """
    with _reported():
        repo = ReleaseRepository.init(repo_dir, product)
    click.echo(f"created the release repository {repo.path} for {repo.product}")
    click.echo(f"trust root for devices: {repo.path / 'metadata' / '1.root.json'}")


@release.command("add")
@_REPO
@click.option("--version", "version", required=True, help="Release version, e.g. 1.2.0.")
@click.option(
    "--tree", type=click.Path(path_type=Path), help="Directory whose files make a tree payload."
)
@click.option("--image", type=click.Path(path_type=Path), help="Image file for a raw payload.")
@click.option(
    "--compress",
    default="none",
    show_default=True,
    metavar="none|zstd",
    help="Compression of a tree payload.",
)
@click.option("--notes", help="Release notes carried in the signed metadata.")
@click.option(
    "--chunk-size",
    type=int,
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Bytes per verified chunk.",
)
@click.option(
    "--delta/--no-delta",
    default=True,
    show_default=True,
    help="Also cut the payload into the chunk store, so devices download only what changed.",
)
def add(
    repo_dir: Path,
    version: str,
    tree: Path | None,
    image: Path | None,
    compress: str,
    notes: str | None,
    chunk_size: int,
    delta: bool,
) -> None:
    """Add a release from a file tree or an image.

    Also re-signs snapshot and timestamp, so the release is published at once.
    """
    with _reported():
        info = ReleaseRepository.open(repo_dir).add_release(
            version,
            tree=tree,
            image=image,
            compress=compress,
            notes=notes,
            chunk_size=chunk_size,
            delta=delta,
        )
    click.echo(
        f"added {info.version}: {info.target} ({info.length} bytes, {info.payload}, "
        f"compression {info.compression}, sha256 {info.sha256})"
    )


@release.command("bundle")
@_REPO
@click.option("--version", "version", required=True, help="The release to bundle.")
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The bundle file to write.",
)
def bundle(repo_dir: Path, version: str, output: Path) -> None:
    """Write the offline bundle of a release."""
    with _reported():
        size = ReleaseRepository.open(repo_dir).write_bundle(version, output)
    click.echo(f"wrote {output} ({size} bytes) for release {version}")


@release.command("publish")
@_REPO
def publish(repo_dir: Path) -> None:
    """Re-sign snapshot and timestamp.

    Run it at least daily (from cron): the timestamp expires after one day.
    """
    with _reported():
        versions = ReleaseRepository.open(repo_dir).publish()
    summary = ", ".join(f"{role} v{number}" for role, number in versions.items())
    click.echo(f"published {repo_dir}: {summary}")


@release.command("rotate-key")
@_REPO
@click.option(
    "--role",
    required=True,
    metavar="root|targets|releases|snapshot|timestamp",
    help="The role that gets a new key.",
)
def rotate_key(repo_dir: Path, role: str) -> None:
    """Give a role a new signing key.

    The old key leaves the metadata and its file moves to DIR/keys/retired.
    """
    with _reported():
        repo = ReleaseRepository.open(repo_dir)
        keyid = repo.rotate_key(role)
    versions = repo.metadata_versions()
    click.echo(f"new {role} key {keyid}; root is now version {versions['root']}")


@release.command("list")
@_REPO
def list_(repo_dir: Path) -> None:
    """List releases with their size.

    One line per release, oldest first: version, size in bytes, payload, compression, target.
    """
    with _reported():
        releases = ReleaseRepository.open(repo_dir).releases()
    for info in releases:
        click.echo(
            f"{info.version}\t{info.length}\t{info.payload}\t{info.compression}\t{info.target}"
        )

"""``sysupd tuf-client --path online|offline``, the TUF conformance suite's client protocol,
against a release repository of the project's own tool served by nginx on loopback: init stores
the root and asks nothing of the network; refresh writes the trusted metadata under plain role
names; download fetches each target once and refuses what is not signed. Both paths: ngclient
(online) and sysupd's own walker fed like a bundle (offline). (The suite itself runs outside the
test suite: README, "Trust".)"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from sysupd.cli.main import cli
from sysupd.release.repository import ReleaseRepository
from tests.nginx import access_log, nginx_serving
from tests.online import copy_published, serve_repo
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


@pytest.fixture(params=["online", "offline"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _Client:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["tuf-client", "--path", self.mode, *args])
        return result.exit_code, result.output + (result.stderr or "")


@pytest.fixture
def client(mode: str) -> _Client:
    return _Client(mode)


def _payload(repo: ReleaseRepository) -> str:
    releases = json.loads((repo.path / "metadata" / "2.releases.json").read_text())
    names: list[str] = list(releases["signed"]["targets"])
    return next(name for name in names if not name.endswith(".chunks"))


def _download_args(url: str, metadata: Path, name: str, targets: Path) -> list[str]:
    return [
        "--metadata-url",
        f"{url}/metadata/",
        "--metadata-dir",
        str(metadata),
        "--target-name",
        name,
        "--target-base-url",
        f"{url}/targets/",
        "--target-dir",
        str(targets),
        "download",
    ]


def _target_requests(work: Path) -> int:
    return len([line for line in access_log(work / "nginx") if "/targets/" in line])


def test_init_refresh_download_and_no_second_download(
    tmp_path: Path, repo: ReleaseRepository, client: _Client
) -> None:
    metadata, targets = tmp_path / "client" / "metadata", tmp_path / "client" / "targets"
    root = repo.path / "metadata" / "1.root.json"
    assert client("--metadata-dir", str(metadata), "init", str(root)) == (0, "")
    assert (metadata / "root.json").read_bytes() == root.read_bytes()
    with serve_repo(repo, tmp_path / "server") as url:
        code, out = client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(metadata), "refresh"
        )
        assert code == 0, out
        assert {p.name for p in metadata.iterdir()} >= {
            "root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json",
        }
        name = _payload(repo)
        download = _download_args(url, metadata, name, targets)
        assert client(*download)[0] == 0
        (fetched,) = targets.iterdir()
        assert fetched.name == quote(name, safe="")
        requests = _target_requests(tmp_path / "server")
        assert client(*download)[0] == 0
        again = _target_requests(tmp_path / "server")
        assert again == requests, "a target whose hashes match is not downloaded again"
        missing = [*download[:4], "--target-name", "releases/nothing.img", *download[6:]]
        code, out = client(*missing)
        assert code == 1
        assert "releases/nothing.img is not a target in the trusted metadata" in out


def test_a_root_of_another_repository_fails_the_refresh(
    tmp_path: Path, repo: ReleaseRepository, client: _Client
) -> None:
    other = make_repo(tmp_path / "other", "1.1.0")
    metadata = tmp_path / "client"
    assert (
        client(
            "--metadata-dir", str(metadata), "init", str(other.path / "metadata" / "1.root.json")
        )[0]
        == 0
    )
    with serve_repo(repo, tmp_path / "server") as url:
        code, out = client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(metadata), "refresh"
        )
    assert code == 1
    assert f"tuf-client {client.mode} refresh:" in out


def test_refresh_needs_a_metadata_url(tmp_path: Path, client: _Client) -> None:
    code, out = client("--metadata-dir", str(tmp_path), "refresh")
    assert code == 2
    assert "refresh needs --metadata-url" in out


def test_offline_a_rolled_back_server_is_refused_and_the_trusted_files_stay(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    """The walker's rollback check, through the protocol: after a refresh saw the newest
    metadata, a mirror that still serves an older copy fails the refresh and changes no file."""
    client = _Client("offline")
    metadata = tmp_path / "client"
    mirror = copy_published(repo, tmp_path / "mirror")  # stops following here
    repo.add_release("1.2.0", tree=tmp_path / "tree-1.1.0", compress="none", chunk_size=65536)
    root = str(repo.path / "metadata" / "1.root.json")
    assert client("--metadata-dir", str(metadata), "init", root)[0] == 0
    with serve_repo(repo, tmp_path / "server") as url:
        code, out = client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(metadata), "refresh"
        )
        assert code == 0, out
    trusted = {p.name: p.read_bytes() for p in metadata.iterdir()}
    with nginx_serving(mirror, tmp_path / "mirror-nginx") as url:
        code, out = client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(metadata), "refresh"
        )
    assert code == 1
    assert "timestamp metadata v" in out, out
    assert "a rollback" in out, out
    assert {p.name: p.read_bytes() for p in metadata.iterdir()} == trusted


def test_offline_a_target_that_does_not_match_its_hashes_is_refused(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    client = _Client("offline")
    metadata, targets = tmp_path / "client", tmp_path / "targets"
    assert (
        client(
            "--metadata-dir", str(metadata), "init", str(repo.path / "metadata" / "1.root.json")
        )[0]
        == 0
    )
    name = _payload(repo)
    (stored,) = (repo.path / "targets" / "releases").glob(f"*.{name.rpartition('/')[2]}")
    stored.write_bytes(b"not the signed payload")
    with serve_repo(repo, tmp_path / "server") as url:
        code, out = client(*_download_args(url, metadata, name, targets))
    assert code == 1
    assert (
        "does not match its signed length and hashes" in out or "could not be downloaded" in out
    ), out
    assert not targets.exists() or not any(targets.iterdir()), "nothing unverified is stored"

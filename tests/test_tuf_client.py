"""``sysupd tuf-client --path online``, the TUF conformance suite's client protocol, against a
release repository of the project's own tool served by nginx on loopback: init stores the root
and asks nothing of the network; refresh writes the trusted metadata under plain role names;
download fetches each target once and refuses what is not signed. (The suite itself runs
outside the test suite: README, "Trust".)"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from sysupd.cli.main import cli
from sysupd.release.repository import ReleaseRepository
from tests.nginx import access_log
from tests.online import serve_repo
from tests.releases import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return make_repo(tmp_path, "1.1.0")


def _client(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["tuf-client", "--path", "online", *args])
    return result.exit_code, result.output + (result.stderr or "")


def _payload(repo: ReleaseRepository) -> str:
    releases = json.loads((repo.path / "metadata" / "2.releases.json").read_text())
    names: list[str] = list(releases["signed"]["targets"])
    return next(name for name in names if not name.endswith(".chunks"))


def _target_requests(work: Path) -> int:
    return len([line for line in access_log(work / "nginx") if "/targets/" in line])


def test_init_refresh_download_and_no_second_download(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    metadata, targets = tmp_path / "client" / "metadata", tmp_path / "client" / "targets"
    root = repo.path / "metadata" / "1.root.json"
    assert _client("--metadata-dir", str(metadata), "init", str(root)) == (0, "")
    assert (metadata / "root.json").read_bytes() == root.read_bytes()
    with serve_repo(repo, tmp_path / "server") as url:
        code, out = _client(
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
        download = [
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
        assert _client(*download)[0] == 0
        (fetched,) = targets.iterdir()
        assert fetched.name == quote(name, safe="")
        requests = _target_requests(tmp_path / "server")
        assert _client(*download)[0] == 0
        again = _target_requests(tmp_path / "server")
        assert again == requests, "a target whose hashes match is not downloaded again"
        missing = [*download[:4], "--target-name", "releases/nothing.img", *download[6:]]
        code, out = _client(*missing)
        assert code == 1
        assert "releases/nothing.img is not a target in the trusted metadata" in out


def test_a_root_of_another_repository_fails_the_refresh(
    tmp_path: Path, repo: ReleaseRepository
) -> None:
    other = make_repo(tmp_path / "other", "1.1.0")
    metadata = tmp_path / "client"
    assert (
        _client(
            "--metadata-dir", str(metadata), "init", str(other.path / "metadata" / "1.root.json")
        )[0]
        == 0
    )
    with serve_repo(repo, tmp_path / "server") as url:
        code, out = _client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(metadata), "refresh"
        )
    assert code == 1
    assert "tuf-client online refresh:" in out


def test_refresh_needs_a_metadata_url(tmp_path: Path) -> None:
    code, out = _client("--metadata-dir", str(tmp_path), "refresh")
    assert code == 2
    assert "refresh needs --metadata-url" in out

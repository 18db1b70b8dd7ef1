"""sysupd's rows of the delta benchmark: each version installed with ``sysupd install --server``
from loopback nginx onto a device whose booted slot holds the base, with delta updates on and off.

Per form (``raw``: the ext4 images; ``tree``: the file trees), one release repository holds the
base as 1.0.0 and every case's version (``_delta_workload``), made once with ``sysupd release
add`` and kept in the work directory. Each run is a fresh device: its booted slot A holds the
base (a hard link of the base image, or a hard-linked copy of the base tree: the booted slot is
only ever read), its slot B is empty, and it installs
the case's version (``--version``) into B; the trees written are deleted after the form's rows
(``_harness.Trash``). Its state either holds the index of the base, as a
device that installed the base with sysupd keeps it (``sysupd``), or nothing, so the device
fetches the base's index from the server, as on a device's first delta update after a factory
install (``sysupd 1st``); or it believes its booted slot holds a release the server never had
(factory version 0.9.0), so the booted slot is cut and hashed in the run (``sysupd cut``). Bytes
are what nginx sent for the run (index and
metadata included), time and peak RSS are the ``sysupd install`` process's (``run_timed``
through GNU time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from _delta_peers import Row, median_row, warm_all
from _delta_workload import Version, Workload, tree_digest
from _harness import (
    BenchError,
    Trash,
    remove,
    run_quiet,
    run_timed,
    sha256_file,
    sysupd_command,
)
from tools.nginx import access_log, nginx_serving

__all__ = ["OURS", "ReleaseTimes", "measure_ours", "prepare_repositories"]

OURS = ("sysupd", "sysupd 1st", "sysupd cut", "sysupd full")
"""Delta updates on — on a device that keeps the index of the release it runs, as every device
does after a delta update (``sysupd``), on one that has none and gets it from the server
(``sysupd 1st``), and on one whose booted release the server does not have, so it cuts its
booted slot (``sysupd cut``) — and off (the whole payload: the baseline the delta is timed
against)."""
PRODUCT = "bench-delta"
_LOG_LINE_BYTES = 2  # the field after the status in nginx's combined log format
_RECORD = "made.json"


@dataclass(frozen=True, slots=True)
class ReleaseTimes:
    """What ``sysupd release add`` took per version of one form (the release side's cost)."""

    form: str
    seconds: dict[str, float]
    store_bytes: int
    """The chunk store's size on disk after every version."""


def prepare_repositories(
    workload: Workload, work: Path, forms: Sequence[str], log: Path
) -> dict[str, ReleaseTimes]:
    """A release repository per form holding the base and every version, made unless kept.

    Raises:
        BenchError: the release tool failed.
    """
    made: dict[str, ReleaseTimes] = {}
    for form in forms:
        repo = _repo_dir(work, workload, form)
        record = repo.parent / f"{repo.name}.{_RECORD}"
        if record.exists():
            data = json.loads(record.read_text())
            made[form] = ReleaseTimes(form, data["seconds"], data["store_bytes"])
            continue
        remove(repo)
        sysupd = sysupd_command()
        run_quiet([*sysupd, "release", "init", "--repo", str(repo), "--product", PRODUCT], log)
        seconds: dict[str, float] = {}
        for version in [workload.base, *workload.versions.values()]:
            source = (
                ["--image", str(version.image)]
                if form == "raw"
                else ["--tree", str(version.tree), "--compress", "zstd"]
            )
            started = time.perf_counter()
            add = [*sysupd, "release", "add", "--repo", str(repo), "--version", version.version]
            run_quiet([*add, *source], log)
            seconds[version.name] = round(time.perf_counter() - started, 2)
        run_quiet([*sysupd, "release", "publish", "--repo", str(repo)], log)
        store = _du(repo / "targets" / "chunks")
        record.write_text(json.dumps({"seconds": seconds, "store_bytes": store}))
        made[form] = ReleaseTimes(form, seconds, store)
    return made


def measure_ours(
    workload: Workload,
    work: Path,
    forms: Sequence[str],
    *,
    timeout_s: float,
    log: Path,
    runs: int = 1,
) -> list[Row]:
    """Every case of every form installed with delta updates on and off: one row each, of
    ``runs`` runs the one of median time (ok only if all were; the highest peak RSS). The runs
    of one case take turns, so a slow minute of the disk falls on all of them, and the turn
    starts one further each round (ours, first, cut, full; then first, cut, full, ours; …), so
    no row always runs right after the same other one (a run is slower after some than after
    others: after the deletes of a tree, or while the one before is still written back).

    Raises:
        BenchError: the server side could not be set up (a failed install is a row, not ok).
    """
    www = work / "delta-ours-www"
    remove(www)
    for form in forms:
        repo = _repo_dir(work, workload, form)
        (www / form).mkdir(parents=True)
        for part in ("metadata", "targets"):
            (www / form / part).symlink_to(repo / part)
    rows: list[Row] = []
    nginx = work / "delta-ours-nginx"
    remove(nginx / "nginx.pid")
    trash = Trash(work / "delta-ours-trash")
    with nginx_serving(www, nginx) as url:
        for form in forms:
            for case, version in workload.versions.items():
                runs_of: dict[str, list[Row]] = {peer: [] for peer in OURS}
                for round_ in range(runs):
                    turn = round_ % len(OURS)
                    for peer in (*OURS[turn:], *OURS[:turn]):
                        runs_of[peer].append(
                            _measure(
                                workload,
                                version,
                                form,
                                case,
                                peer,
                                f"{url}/{form}",
                                work,
                                nginx,
                                timeout_s,
                                log,
                                trash,
                            )
                        )
                for peer_runs in runs_of.values():
                    highest = max(row.peak_rss_kib for row in peer_runs)
                    rows.append(replace(median_row(peer_runs), peak_rss_kib=highest))
            trash.empty()
    return rows


def _measure(
    workload: Workload,
    version: Version,
    form: str,
    case: str,
    peer: str,
    server: str,
    work: Path,
    nginx: Path,
    timeout_s: float,
    log: Path,
    trash: Trash,
) -> Row:
    device = work / "delta-ours-device"
    remove(device)
    device.mkdir()
    slot_a, slot_b = _slots(workload, form, device)
    repo = _repo_dir(work, workload, form)
    config = device / "device.toml"
    kind = "raw" if form == "raw" else "directory"
    config.write_text(
        f'product = "{PRODUCT}"\n'
        f'trust_root = "{repo / "metadata" / "1.root.json"}"\n'
        f'slots = ["A:{kind}:{slot_a}", "B:{kind}:{slot_b}"]\n'
        f'factory_version = "{"0.9.0" if peer == "sysupd cut" else "1.0.0"}"\n'
        f"delta_updates = {'false' if peer == 'sysupd full' else 'true'}\n"
    )
    if peer == "sysupd":  # what installing the base with sysupd leaves on the device
        kept = device / "state" / "delta"
        kept.mkdir(parents=True)
        (base_index,) = (repo / "targets" / "releases").glob(f"*.{PRODUCT}-1.0.0.*.index")
        shutil.copyfile(base_index, kept / "A.1.0.0.index")
    # Both sources hot, as the peers' are (``_delta_peers``): the booted slot a delta reads,
    # and the files nginx serves a full install from.
    warm_all(slot_a, *(repo / "targets" / "releases").glob(f"*.{PRODUCT}-{version.version}.*"))
    before = len(access_log(nginx))
    command = [
        *sysupd_command(),
        "install",
        "--server",
        server,
        "--version",
        version.version,
        "--config",
        str(config),
        "--state-dir",
        str(device / "state"),
    ]
    note, ok, seconds, rss = "", False, 0.0, 0
    try:
        # Through GNU time: ru_maxrss from wait4 would keep this process's own high-water
        # mark across the child's exec.
        rss_file = device / "rss.txt"
        sample = run_timed(
            ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *command], log, timeout=timeout_s
        )
        seconds, rss = sample.wall_s, int(rss_file.read_text().split()[-1])
        ok = _holds(form, version, slot_b)
        if not ok:
            note = "slot B does not hold the new version"
    except BenchError as exc:
        note = str(exc).splitlines()[0][:200]
    sent, requests = _sent(access_log(nginx)[before:])
    payload = version.image_bytes if form == "raw" else _tar_bytes(repo, version)
    trash.put(device, tree=form == "tree")
    return Row(
        peer=peer,
        form=form,
        case=case,
        bytes_downloaded=sent,
        payload_bytes=payload,
        seconds=seconds,
        peak_rss_kib=rss,
        ok=ok,
        requests=requests,
        note=note,
    )


def _slots(workload: Workload, form: str, device: Path) -> tuple[Path, Path]:
    """Slot A holding the base (linked, never written), and an empty slot B."""
    if form == "raw":
        slot_a, slot_b = device / "slot-a.img", device / "slot-b.img"
        os.link(workload.base.image, slot_a)
        slot_b.touch()
        return slot_a, slot_b
    slot_a, slot_b = device / "slot-a", device / "slot-b"
    subprocess.run(["cp", "-al", str(workload.base.tree), str(slot_a)], check=True)
    slot_b.mkdir()
    return slot_a, slot_b


def _holds(form: str, version: Version, slot: Path) -> bool:
    if form == "raw":
        return sha256_file(slot, version.image_bytes) == version.image_sha256
    return tree_digest(slot) == version.tree_sha256


def _sent(lines: list[str]) -> tuple[int, int]:
    """Body bytes nginx sent, and the number of requests, from its combined-format lines."""
    total = 0
    for line in lines:
        fields = line.split('"')
        after = fields[2].split() if len(fields) > 2 else []
        if len(after) >= _LOG_LINE_BYTES and after[1].isdigit():
            total += int(after[1])
    return total, len(lines)


def _tar_bytes(repo: Path, version: Version) -> int:
    """The plain tar's length of a tree release: its chunk index's stated length."""
    (index,) = (repo / "targets" / "releases").glob(f"*.{PRODUCT}-{version.version}.tar.zst.index")
    data = index.read_bytes()
    size = int.from_bytes(data[8:12], "big")
    return int(json.loads(data[12 : 12 + size])["length"])


def _repo_dir(work: Path, workload: Workload, form: str) -> Path:
    return work / f"delta-ours-repo-{form}-{workload.mib}m-s{workload.seed}"


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def remove_repositories(work: Path) -> None:
    """Drop the kept repositories (``--fresh``)."""
    for path in work.glob("delta-ours-repo-*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()

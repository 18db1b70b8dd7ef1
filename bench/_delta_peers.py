"""The peers of the delta benchmark: casync and zchunk fetching each new version of
``_delta_workload``'s images and trees from nginx on loopback, the base version as their seed;
and a full download of each version, for reference. One ``Row`` per peer, form and case.

Per form, the payload is what sysupd ships: ``raw``, the ext4 image; ``tree``, the uncompressed
tar of the tree that ``sysupd release`` makes (``pack_tree``). Shares are of that payload.

- ``casync``: ``casync make`` of every version into one store per form (what a repository
  holds), zstd, chunks of 16/64/256 KiB (min/average/max: casync's default, and sysupd's
  average); the raw image as a blob index (``.caibx``), the tree as a directory (``.caidx``).
  Timed: ``casync extract --store=URL --seed=OLD URL/new.ca?idx OUT``, the index and the chunks
  over HTTP (casync's own curl helper), the base image or base tree as seed.
- ``zchunk``: ``zck`` of each payload (its default chunking: a buzhash, not settable from the
  command line, about 40 KiB on average here). ``zckdl -s`` takes only a ``.zck`` as its
  source, so the device needs the old payload as a ``.zck``: making it is ``prep_seconds``,
  not in ``seconds``. Timed: ``zckdl -s old.zck URL/new.zck`` (header, then multipart range
  requests), then ``unzck`` to the image, or ``unzck -c | tar -x`` to the tree.
- ``full``: ``curl -o`` of the whole payload; ``full-zstd``: ``curl | zstd -d`` of the payload
  compressed with ``zstd -3``. Both end at the payload file (a tree's tar is not extracted).

Bytes are nginx's ``$body_bytes_sent`` summed over the access log's lines for that run (range
and multipart overhead included). Seconds run from fork to reaping (``run_timed``). Peak RSS is
GNU time's ``%M``: the ``ru_maxrss`` of the largest single process of the run (casync's HTTP
helper, or ``unzck`` and ``tar`` beside ``sh``, included; a pipeline's are not summed). Not
``run_timed``'s own: a child forked from Python keeps Python's high-water mark through ``exec``
(the kernel carries it in the process's signal struct), so a 2 MiB ``curl`` would show the
benchmark's 35 MiB; ``time`` is a small process to fork from. Every output is checked against
the version (the image's SHA-256, the tree's ``tree_digest``, the tar's SHA-256) and deleted.
The page cache is warm: the seed and the served files are read before each run, and ``sync``
runs before it; the trees runs write are deleted after the form's rows, not between runs
(``_harness.Trash``: a deletion slowed the next run's file creation).

What is built on the server side (stores, ``.zck``, ``.zst``, tars) is kept under
``work/delta-peers-…`` and reused while its version's digest is the same; the caller puts the
checkout on ``sys.path`` for ``tools/`` (as ``bench/appliance.py`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from _delta_workload import CASES, Version, Workload, build_workload, tree_digest
from _harness import (
    BenchError,
    Sample,
    Trash,
    remove,
    run_main,
    run_quiet,
    run_timed,
    sha256_file,
    warm,
)
from _report import table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tools/

from sysupd.release.payloads import pack_tree
from tools.nginx import access_log, nginx_serving

__all__ = [
    "CASYNC_CHUNK_SIZE",
    "FORMS",
    "PEERS",
    "ROW_HEADING",
    "Row",
    "install_peer_programs",
    "measure_peers",
    "median_row",
    "peer_versions",
    "row_cells",
    "run_peers",
    "warm_all",
]

PEERS = ("casync", "zchunk", "full", "full-zstd")
FORMS = ("raw", "tree")
CASYNC_CHUNK_SIZE = "16384:65536:262144"
_TIMEOUT_S = 1800.0
# sendfile as in bench/_service.py's nginx; casync asks for every chunk on one connection.
_NGINX_EXTRA = "        sendfile on;\n        tcp_nopush on;\n        keepalive_requests 1000000;"
_LOG_LINE = re.compile(r'"[^"]*" (\d{3}) (\d+) ')
_PROGRAMS = {
    "casync": "casync",
    "zck": "zchunk",
    "zckdl": "zchunk",
    "unzck": "zchunk",
    "curl": "curl",
    "zstd": "zstd",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "nginx": "nginx",
    "time": "time",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One peer fetching one case's new version of one form."""

    peer: str  # one of PEERS
    form: str  # "raw" or "tree"
    case: str  # one of CASES
    bytes_downloaded: int  # nginx's body bytes for the run
    payload_bytes: int  # the new version's payload (image, or uncompressed tar)
    seconds: float
    peak_rss_kib: int
    ok: bool  # the output equals the new version
    requests: int = 0
    prep_seconds: float = 0.0  # what the device must do beforehand, not in seconds
    note: str = ""

    @property
    def share_pct(self) -> float:
        """Bytes downloaded as a percentage of the payload."""
        return 100.0 * self.bytes_downloaded / self.payload_bytes


ROW_HEADING = (
    "peer",
    "form",
    "case",
    "downloaded",
    "share",
    "seconds",
    "peak RSS MiB",
    "ok",
    "requests",
    "prep s",
    "note",
)


def row_cells(row: Row) -> tuple[str, ...]:
    """A row's cells under ``ROW_HEADING``, for ``_report.table``."""
    return (
        row.peer,
        row.form,
        row.case,
        f"{row.bytes_downloaded:,}",
        f"{row.share_pct:.2f} %",
        f"{row.seconds:.2f}",
        f"{row.peak_rss_kib / 1024:.1f}",
        "yes" if row.ok else "NO",
        f"{row.requests}",
        f"{row.prep_seconds:.2f}" if row.prep_seconds else "",
        row.note,
    )


def install_peer_programs(log: Path) -> None:
    """``apt-get install`` the Debian packages of the programs this module runs, if missing
    (as ``shared/bench-peers/install-deps.sh`` does for the install bench's peers).

    Raises:
        BenchError: apt-get failed.
    """
    missing = sorted(
        {
            package
            for program, package in _PROGRAMS.items()
            if shutil.which(program) is None and not Path("/usr/sbin", program).exists()
        }
    )
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, check=False)
            with log.open("ab") as out:
                out.write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(cmd)} failed; see {log}")


def peer_versions() -> dict[str, str]:
    """The peers' versions, for the table's header."""
    found: dict[str, str] = {}
    for name, cmd in (("casync", ["casync", "--version"]), ("zchunk", ["zck", "--version"])):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found[name] = (done.stdout or done.stderr).splitlines()[0].strip()
    return found


# -- the server side (cached) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Served:
    """One version of one form as nginx serves it, under ``www/FORM/``."""

    source_sha256: str  # the version's image or tree digest, which these were made of
    payload: Path  # the image (a hard link to the workload's) or the tar
    payload_sha256: str
    index: Path  # casync's .caibx or .caidx, its chunks in ``www/FORM/store``
    zck: Path
    zck_s: float  # what ``zck`` of the payload took
    zck_chunks: int
    zst: Path

    def record(self) -> str:
        return json.dumps(
            {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        )

    @classmethod
    def load(cls, text: str) -> _Served:
        fields = json.loads(text)
        paths = {k: Path(fields[k]) for k in ("payload", "index", "zck", "zst")}
        return cls(**{**fields, **paths})


def _made(out: Path, make: Sequence[str], log: Path) -> float:
    """Run ``make`` (which writes ``{out}``, a temporary name) unless ``out`` exists; its
    seconds. casync reads the kind of index from the name's suffix: the temporary keeps it."""
    if out.exists():
        return 0.0
    partial = out.with_name(f".partial-{out.name}")
    remove(partial)
    began = time.perf_counter()
    run_quiet([arg.replace("{out}", str(partial)) for arg in make], log, timeout=_TIMEOUT_S)
    seconds = time.perf_counter() - began
    partial.rename(out)
    return seconds


def _serve(version: Version, form: str, www: Path, log: Path) -> _Served:
    """What the server holds for ``version`` in ``form``: made once, then read from its record."""
    folder = www / form
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{version.name}.json"
    digest = version.image_sha256 if form == "raw" else version.tree_sha256
    if record.exists():
        served = _Served.load(record.read_text())
        if served.source_sha256 == digest:
            return served
        for stale in (served.payload, served.index, served.zck, served.zst):
            remove(stale)
    if form == "raw":
        payload, source = folder / f"{version.name}.img", version.image
        index, payload_sha256 = folder / f"{version.name}.caibx", version.image_sha256
        if not payload.exists():
            os.link(version.image, payload)
    else:
        payload, source = folder / f"{version.name}.tar", version.tree
        index = folder / f"{version.name}.caidx"
        partial = folder / f".partial-{payload.name}"
        with partial.open("wb") as out:
            payload_sha256 = pack_tree(source, out, compress=False, chunk_size=4 << 20).sha256
        partial.rename(payload)
    casync = ["casync", "make", f"--store={folder / 'store'}", "--compression=zstd"]
    _made(index, [*casync, f"--chunk-size={CASYNC_CHUNK_SIZE}", "{out}", str(source)], log)
    zck = folder / f"{payload.name}.zck"
    remove(zck)  # made again, to be timed: it is what the device has to do (prep_seconds)
    zck_s = _made(zck, ["zck", "-o", "{out}", str(payload)], log)
    chunks = re.search(r"Chunk count: (\d+)", run_quiet(["zck_read_header", str(zck)], log))
    zst = folder / f"{payload.name}.zst"
    _made(zst, ["zstd", "-q", "-3", "-T0", "-o", "{out}", str(payload)], log)
    count = int(chunks.group(1)) if chunks else 0
    served = _Served(digest, payload, payload_sha256, index, zck, zck_s, count, zst)
    record.write_text(served.record() + "\n")
    return served


# -- the runs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bench:
    """What every run of one ``measure_peers`` shares."""

    workload: Workload
    served: dict[tuple[str, str], _Served]  # by form and version name
    www: Path
    url: str
    nginx: Path  # nginx's work directory, for its access log
    out: Path  # a run's output folder, emptied after each
    log: Path
    timeout_s: float
    trash: Trash  # a tree's output goes there, deleted after each form's rows

    def url_of(self, path: Path) -> str:
        return f"{self.url}/{path.relative_to(self.www).as_posix()}"


def _timed(bench: _Bench, cmd: Sequence[str]) -> Sample:
    """``run_timed`` through GNU time, for the peak RSS (see the module's docstring)."""
    rss = bench.out.with_name("rss.txt")
    sample = run_timed(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss), *cmd], bench.log, timeout=bench.timeout_s
    )
    return Sample(sample.wall_s, int(rss.read_text().split()[-1]))


def warm_all(*paths: Path) -> None:
    """Every file of ``paths`` (files or directories) read, so its pages are cached."""
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                warm(file)


def _measure(bench: _Bench, peer: str, form: str, case: str) -> Row:
    """One peer's run; a failure is a row that is not ok, with what failed as its note."""
    version = bench.workload.versions[case]
    old, new = bench.served[form, "base"], bench.served[form, case]
    before = len(access_log(bench.nginx))
    remove(bench.out)
    bench.out.mkdir(parents=True)
    prep, note, ok = 0.0, "", False
    samples: list[Sample] = []
    try:
        if peer == "casync":
            ok = _casync(bench, form, version, new, samples)
            note = f"chunks {CASYNC_CHUNK_SIZE} B, zstd"
        elif peer == "zchunk":
            ok = _zchunk(bench, form, version, old, new, samples)
            prep = old.zck_s
            average = new.payload.stat().st_size // max(1, new.zck_chunks) // 1024
            note = (
                f"zckdl {samples[0].wall_s:.2f} s + unzck {samples[1].wall_s:.2f} s;"
                f" {new.zck_chunks} chunks, {average} KiB average; prep: zck of the old payload"
            )
        else:
            ok = _full(bench, peer, new, samples)
    except BenchError as exc:
        note = str(exc).splitlines()[0][:200]
    bench.trash.put(bench.out, tree=form == "tree")
    sent = [_LOG_LINE.search(line) for line in access_log(bench.nginx)[before:]]
    failed = sum(1 for m in sent if m is None or m.group(1) not in ("200", "206"))
    if failed:
        note = f"{failed} failed requests; {note}"
    return Row(
        peer=peer,
        form=form,
        case=case,
        bytes_downloaded=sum(int(m.group(2)) for m in sent if m is not None),
        payload_bytes=new.payload.stat().st_size,
        seconds=sum(s.wall_s for s in samples),
        peak_rss_kib=max((s.rss_kib for s in samples), default=0),
        ok=ok and not failed,
        requests=len(sent),
        prep_seconds=prep,
        note=note,
    )


def _same(form: str, version: Version, out: Path) -> bool:
    if form == "raw":
        return sha256_file(out) == version.image_sha256
    return tree_digest(out) == version.tree_sha256


def _casync(
    bench: _Bench, form: str, version: Version, new: _Served, samples: list[Sample]
) -> bool:
    base = bench.workload.base
    seed = base.image if form == "raw" else base.tree
    warm_all(seed, new.index)
    out = bench.out / ("new.img" if form == "raw" else "tree")
    cmd = [
        *("casync", "extract", f"--store={bench.url}/{form}/store", f"--seed={seed}"),
        *("--seed-output=no", bench.url_of(new.index), str(out)),
    ]
    samples.append(_timed(bench, cmd))
    return _same(form, version, out)


def _zchunk(
    bench: _Bench, form: str, version: Version, old: _Served, new: _Served, samples: list[Sample]
) -> bool:
    warm_all(old.zck, new.zck)
    # zckdl writes the URL's file name into its working directory; unzck drops the ``.zck``.
    fetch = 'cd "$1" && exec zckdl -q -s "$2" "$3"'
    cmd = ["sh", "-c", fetch, "sh", str(bench.out), str(old.zck), bench.url_of(new.zck)]
    samples.append(_timed(bench, cmd))
    got = bench.out / new.zck.name
    if form == "raw":
        unpack = ["sh", "-c", 'cd "$1" && exec unzck "$2"', "sh", str(bench.out), got.name]
        out = bench.out / new.payload.name
    else:
        out = bench.out / "tree"
        out.mkdir()
        script = 'unzck -c "$1" | tar -xf - -C "$2"'
        unpack = ["bash", "-o", "pipefail", "-c", script, "bash", str(got), str(out)]
    samples.append(_timed(bench, unpack))
    return _same(form, version, out)


def _full(bench: _Bench, peer: str, new: _Served, samples: list[Sample]) -> bool:
    out = bench.out / "payload"
    if peer == "full":
        warm_all(new.payload)
        cmd = ["curl", "-sS", "--fail", "-o", str(out), bench.url_of(new.payload)]
    else:
        warm_all(new.zst)
        script = 'curl -sS --fail "$1" | zstd -dq -o "$2"'
        cmd = ["bash", "-o", "pipefail", "-c", script, "bash", bench.url_of(new.zst), str(out)]
    samples.append(_timed(bench, cmd))
    return sha256_file(out) == new.payload_sha256


def measure_peers(
    workload: Workload,
    work: Path,
    *,
    forms: Sequence[str] = FORMS,
    peers: Sequence[str] = PEERS,
    runs: int = 1,
    timeout_s: float = _TIMEOUT_S,
) -> list[Row]:
    """Every peer on every case of ``workload`` (the base as the old version), in every form:
    one row each, in the order form, case, peer; of ``runs`` runs, the one of median time (ok
    only if all were). Server-side files are kept under ``work/delta-peers-…``; nginx runs only
    inside this call.

    Raises:
        BenchError: a server-side file could not be made (a failing run is a row, not an error).
    """
    root = work.resolve() / f"delta-peers-{workload.root.name}"
    www = root / "www"
    log = root / "peers.log"
    www.mkdir(parents=True, exist_ok=True)
    versions = [workload.base, *workload.versions.values()]
    served = {(f, v.name): _serve(v, f, www, log) for f in forms for v in versions}
    rows: list[Row] = []
    remove(root / "nginx" / "nginx.pid")  # left by a killed run, it would pass for a start
    with nginx_serving(www, root / "nginx", extra=_NGINX_EXTRA) as url:
        trash = Trash(root / "trash")
        bench = _Bench(
            workload, served, www, url, root / "nginx", root / "run", log, timeout_s, trash
        )
        for form in forms:
            for case in workload.versions:
                for peer in peers:
                    runs_of = [_measure(bench, peer, form, case) for _ in range(runs)]
                    rows.append(median_row(runs_of))
            trash.empty()
    return rows


def median_row(runs: Sequence[Row]) -> Row:
    """Of one row's ``runs``, the one of median time, ok only if all were."""
    ordered = sorted(runs, key=lambda row: row.seconds)
    return replace(ordered[len(ordered) // 2], ok=all(row.ok for row in runs))


def run_peers(
    workdir: Path,
    mib: int,
    cases: Sequence[str] = CASES,
    forms: Sequence[str] = FORMS,
    *,
    seed: int = 1,
    peers: Sequence[str] = PEERS,
    runs: int = 1,
    timeout_s: float = _TIMEOUT_S,
) -> list[Row]:
    """The workload of ``mib`` MiB (``build_workload``, cached in ``workdir``), then
    ``measure_peers`` on it; installs the peers first if they are missing.

    Raises:
        BenchError: a program could not be installed, or the workload or a server-side file
            could not be made.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    install_peer_programs(workdir / "apt.log")
    workload = build_workload(workdir, mib, seed, cases)
    return measure_peers(
        workload, workdir, forms=forms, peers=peers, runs=runs, timeout_s=timeout_s
    )


def _main() -> int:
    """The peers alone, for debugging: ``python bench/_delta_peers.py --mib 64``."""
    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/delta-bench-work"))  # noqa: S108
    parser.add_argument("--cases", default=" ".join(CASES))
    parser.add_argument("--forms", default=" ".join(FORMS))
    parser.add_argument("--peers", default=" ".join(PEERS))
    parser.add_argument("--runs", type=int, default=1)
    options = parser.parse_args()

    def body() -> None:
        began = time.perf_counter()
        rows = run_peers(
            options.workdir,
            options.mib,
            options.cases.split(),
            options.forms.split(),
            peers=options.peers.split(),
            runs=options.runs,
        )
        table([ROW_HEADING, *(row_cells(row) for row in rows)], left=3)
        print(f"{time.perf_counter() - began:.0f} s in all; {peer_versions()}")

    return run_main("bench/_delta_peers.py", 4 * 3600, body)


if __name__ == "__main__":
    sys.exit(_main())

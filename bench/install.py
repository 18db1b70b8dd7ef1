"""Benchmark of ``sysupd install``: offline bundles into the inactive slot, against the physical
pipeline (hash + durable copy of the same bytes) and, with ``--peers``, RAUC, SWUpdate and Mender.

Run: ``.venv/bin/python bench/install.py [--mib N] [--runs R] [--peers] [--keep]``

1. In a fresh directory under /tmp (or ``--workdir``) the project's own release tool
   (``sysupd release init|add|bundle``) builds a repository for the product ``bench`` with
   (a) a raw release of an N MiB random image, (b) a tree release of N one-MiB random files,
   uncompressed, and (c) the same tree with ``--compress zstd`` (``--no-zstd`` skips it), and
   writes their bundles.
2. Each bundle is installed R times with ``sysupd install BUNDLE --state-dir DIR --config FILE``,
   into a fresh state directory each time: the raw release into ``slots = ["A:raw:…",
   "B:raw:…"]``, two preallocated N MiB files in the work directory's filesystem; the trees into
   the default directory slots. Every install is checked afterwards (the slot's SHA-256, or the
   tree's files).
3. In the same rounds, on the same bundle file: the physical pipeline ``openssl dgst -sha256
   BUNDLE`` followed by ``dd if=BUNDLE of=TARGET bs=1M conv=fsync`` (timed together), and
   ``py_pipeline.py copy BUNDLE TARGET`` (read, SHA-256, write, fsync in one pass) for reference.
   TARGET is a preallocated file like the raw slot. The order of the three rotates every round.
4. Targets: install time at most 1.15 times the physical pipeline's, and peak RSS at most
   100 MiB. With the default size, the raw case also runs at 2048 MiB (``--rss-2g``), to show
   that memory does not grow with the image.
5. ``--peers`` runs ``../shared/bench-peers/run-all.sh N`` (the shared folder beside the
   checkout) once per peer (``--peer-list``; a failing peer is reported and the others go on)
   and folds their results into a raw-image table beside sysupd's. Mender needs loop devices
   for its slots, which this benchmark does not create, so it is left out unless named in
   ``--peer-list``.

How it measures: every contender is a subprocess; wall time is ``time.perf_counter`` from just
before the fork to its reaping, so the Python start-up and imports of ``sysupd`` are included
(the CLI's start-up alone is measured too, and printed). Peak RSS is ``ru_maxrss`` from
``os.wait4`` on that very child: the kernel's high-water mark of that process alone (not
``RUSAGE_CHILDREN``, whose ``ru_maxrss`` is a maximum over all children reaped so far, so deltas
of it cannot isolate one child). The page cache cannot be dropped reliably here, so it is warm on
purpose: each bundle is read once before every round, so every contender starts from cached
input. ``sync`` runs before every timed command, so none pays for another's dirty pages.
Everything large lives in the work directory and is deleted at the end unless ``--keep``; only
regular files are written, never a block or loop device. Every step is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from _harness import (
    MIB,
    BenchError,
    Sample,
    preallocate,
    remove,
    run_main,
    run_timed,
    sha256_file,
    sysupd_command,
    warm,
    workdir,
    write_random,
)
from _releases import (
    PRODUCT,
    add_release,
    bundle_release,
    device_config,
    init_repo,
    physical_pipeline,
    random_tree,
)
from _report import machine, mbs, revision, table, verdict

DEFAULT_MIB = 1024
RSS_2G_MIB = 2048
RATIO_TARGET = 1.15
RSS_TARGET_MIB = 100.0
PEERS_DIR = next(
    (
        up / "shared" / "bench-peers"
        for up in Path(__file__).resolve().parents[1:]
        if (up / "shared" / "bench-peers").is_dir()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "bench-peers",
)
"""``shared/bench-peers`` beside the checkout (or beside a folder holding it, for a worktree)."""
DEFAULT_PEERS = "physical rauc swupdate"
PY_PIPELINE = PEERS_DIR / "py_pipeline.py"

_PEER_TIMEOUT_S = 3600.0


# -- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One release and its measurements."""

    label: str
    kind: str  # "raw" or "tree"
    mib: int
    version: str
    runs: int
    bundle: Path = Path()
    payload_bytes: int = 0
    payload_sha256: str = ""
    bundle_sha256: str = ""
    build_s: float = 0.0
    config: Path = Path()
    slot_b: Path | None = None
    tree_check: tuple[str, str] = ("", "")  # one file's name and SHA-256
    sysupd: list[Sample] = field(default_factory=list)
    openssl: list[Sample] = field(default_factory=list)
    dd: list[Sample] = field(default_factory=list)
    pycopy: list[Sample] = field(default_factory=list)

    @property
    def pipeline(self) -> list[Sample]:
        """openssl + dd of each round, timed together."""
        return [
            Sample(a.wall_s + b.wall_s, max(a.rss_kib, b.rss_kib))
            for a, b in zip(self.openssl, self.dd, strict=True)
        ]


def median_s(samples: Sequence[Sample]) -> float:
    return statistics.median(s.wall_s for s in samples) if samples else float("nan")


def peak_mib(samples: Sequence[Sample]) -> float:
    return max((s.rss_kib for s in samples), default=0) / 1024


class Bench:
    """The work directory, the repository, and the rounds."""

    def __init__(self, options: argparse.Namespace, work: Path) -> None:
        self.options = options
        self.work = work
        self.logs = work / "logs"
        self.repo = work / "repo"
        self.sysupd = sysupd_command()
        self.timeout: float = options.timeout
        for sub in ("logs", "src", "bundles", "slots", "state", "configs"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.build_log = self.logs / "build.log"
        self.startup: list[Sample] = []

    # building

    def init_repo(self) -> None:
        init_repo(self.repo, self.build_log)

    def _add_and_bundle(self, case: Case, content: Sequence[str]) -> None:
        start = time.perf_counter()
        release = add_release(self.repo, case.version, content, self.build_log)
        case.payload_bytes, case.payload_sha256 = release.payload_bytes, release.payload_sha256
        case.bundle = self.work / "bundles" / f"{case.label}.bundle"
        bundle_release(self.repo, case.version, case.bundle, self.build_log)
        case.build_s = time.perf_counter() - start
        case.bundle_sha256 = sha256_file(case.bundle)

    def build_raw(self, case: Case) -> None:
        image = self.work / "src" / f"{case.label}.img"
        write_random(image, case.mib * MIB)
        self._add_and_bundle(case, ["--image", str(image)])
        remove(image)
        slot_a = self.work / "slots" / f"{case.label}-A.img"
        case.slot_b = self.work / "slots" / f"{case.label}-B.img"
        preallocate(slot_a, case.mib * MIB)
        case.config = self._config(case, [slot_a, case.slot_b])

    def make_tree(self, mib: int) -> tuple[Path, tuple[str, str]]:
        tree = self.work / "src" / "tree"
        return tree, random_tree(tree, mib)

    def build_tree(self, case: Case, tree: Path, check: tuple[str, str], compress: str) -> None:
        self._add_and_bundle(case, ["--tree", str(tree), "--compress", compress])
        case.tree_check = check
        case.config = self._config(case, None)

    def _config(self, case: Case, slots: list[Path] | None) -> Path:
        return device_config(self.work / "configs" / f"{case.label}.toml", self.repo, slots)

    # measuring

    def measure_startup(self, runs: int) -> None:
        """``sysupd install --help``: the interpreter and every import, no work."""
        for _ in range(runs):
            self.startup.append(
                run_timed(
                    [*self.sysupd, "install", "--help"],
                    self.logs / "startup.log",
                    timeout=60,
                )
            )

    def measure(self, case: Case) -> None:
        """R rounds of: pipeline, python copy, sysupd install (order rotating)."""
        target = self.work / "slots" / "pipeline-target.img"
        steps = [self._pipeline, self._pycopy, self._install]
        for run in range(case.runs):
            warm(case.bundle)
            for step in steps[run % 3 :] + steps[: run % 3]:
                step(case, run, target)
            print(
                f"  {case.label} round {run + 1}/{case.runs}: sysupd {case.sysupd[-1].wall_s:.2f} s"
                f" ({case.sysupd[-1].rss_kib / 1024:.0f} MiB), openssl+dd"
                f" {case.pipeline[-1].wall_s:.2f} s (openssl {case.openssl[-1].wall_s:.2f} +"
                f" dd {case.dd[-1].wall_s:.2f}), python copy {case.pycopy[-1].wall_s:.2f} s",
                flush=True,
            )
        remove(target)

    def _pipeline(self, case: Case, run: int, target: Path) -> None:
        openssl, dd = physical_pipeline(
            case.bundle,
            case.bundle_sha256,
            target,
            self.logs,
            f"{case.label}-{run}",
            timeout=self.timeout,
        )
        case.openssl.append(openssl)
        case.dd.append(dd)

    def _pycopy(self, case: Case, run: int, target: Path) -> None:
        preallocate(target, case.bundle.stat().st_size)
        log = self.logs / f"{case.label}-pycopy-{run}.log"
        case.pycopy.append(
            run_timed(
                [sys.executable, str(PY_PIPELINE), "copy", str(case.bundle), str(target)],
                log,
                timeout=self.timeout,
            )
        )
        if case.bundle_sha256 not in log.read_text():
            raise BenchError(f"py_pipeline.py copy printed another digest; see {log}")

    def _install(self, case: Case, run: int, _target: Path) -> None:
        state = self.work / "state" / f"{case.label}-{run}"
        remove(state)
        if case.slot_b is not None:
            preallocate(case.slot_b, case.mib * MIB)
        log = self.logs / f"{case.label}-install-{run}.log"
        cmd = [
            *self.sysupd,
            "install",
            str(case.bundle),
            "--state-dir",
            str(state),
            "--config",
            str(case.config),
        ]
        case.sysupd.append(run_timed(cmd, log, timeout=self.timeout))
        if f"installed {PRODUCT} {case.version}" not in log.read_text():
            raise BenchError(f"sysupd install did not say it installed; see {log}")
        self._check_installed(case, state)
        remove(state)

    def _check_installed(self, case: Case, state: Path) -> None:
        if case.slot_b is not None:
            if sha256_file(case.slot_b) != case.payload_sha256:
                raise BenchError(f"slot B ({case.slot_b}) does not hold the image")
            return
        slot = state / "slots" / "B"
        files = sorted(slot.iterdir())
        total = sum(p.stat().st_size for p in files)
        if len(files) != case.mib or total != case.mib * MIB:
            raise BenchError(f"slot B holds {len(files)} files of {total} bytes, not the tree")
        name, digest = case.tree_check
        if sha256_file(slot / name) != digest:
            raise BenchError(f"slot B's {name} differs from the tree's")


# -- the peers ---------------------------------------------------------------------------------


@dataclass
class PeerRow:
    tool: str
    mib: int
    walls: list[float]
    rss_kib: int


@dataclass
class PeerOutcome:
    peer: str
    ok: bool
    detail: str
    rows: list[PeerRow]
    header: str = ""


def read_peer_tsv(path: Path) -> list[PeerRow]:
    """Rows of results.tsv (tool, N, run, wall s, peak RSS KiB, note), grouped by tool and N."""
    grouped: dict[tuple[str, int], PeerRow] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 5:
            continue
        try:
            key = (parts[0], int(parts[1]))
            wall, rss = float(parts[3]), int(parts[4])
        except ValueError:
            continue
        row = grouped.setdefault(key, PeerRow(key[0], key[1], [], 0))
        row.walls.append(wall)
        row.rss_kib = max(row.rss_kib, rss)
    return list(grouped.values())


def run_peer(peer: str, mib: int, runs: int, work: Path, keep: bool) -> PeerOutcome:
    """``run-all.sh N`` for one peer, in its own directories; never raises for its failure."""
    results = work / "peers" / peer
    results.mkdir(parents=True, exist_ok=True)
    bench_tmp = work / f"peerbench-{peer}"
    log = work / "logs" / f"peer-{peer}.log"
    env = dict(os.environ)
    env.update(
        PEERS=peer,
        RUNS=str(runs),
        RESULTS_DIR=str(results),
        BENCH_TMP=str(bench_tmp),
        SKIP_NEG="1",  # negative-checks.sh always runs Mender, which needs loop devices
        KEEP="1" if keep else "0",
    )
    print(f"  peer {peer}: bash {PEERS_DIR / 'run-all.sh'} {mib}  (log {log})", flush=True)
    start = time.perf_counter()
    ok, detail = True, ""
    try:
        run_timed(
            ["bash", str(PEERS_DIR / "run-all.sh"), str(mib)],
            log,
            timeout=_PEER_TIMEOUT_S,
            env=env,
            sync_first=False,
        )
    except BenchError as exc:
        ok, detail = False, str(exc)
    elapsed = time.perf_counter() - start
    tsv = results / "results-latest.tsv"
    rows = read_peer_tsv(tsv if tsv.exists() else bench_tmp / "results.tsv")
    md = results / "results-latest.md"
    source = md if md.exists() else bench_tmp / "header.txt"
    header = ""
    with contextlib.suppress(OSError):
        header = "\n".join(
            line for line in source.read_text().splitlines() if line.startswith("# ")
        )
    if not keep:
        remove(bench_tmp)  # left behind when run-all.sh stopped early
    print(f"  peer {peer}: {'done' if ok else 'FAILED'} in {elapsed:.0f} s", flush=True)
    return PeerOutcome(peer, ok, detail, rows, header)


# -- printing ----------------------------------------------------------------------------------


def print_summary(cases: list[Case], startup: list[Sample]) -> None:
    start_s = median_s(startup)
    print()
    print("SUMMARY (medians; MB/s = payload bytes / 10^6 / s; ratio = sysupd / (openssl + dd))")
    rows: list[tuple[str, ...]] = [
        (
            "payload",
            "MiB",
            "runs",
            "sysupd s",
            "MB/s",
            "openssl+dd s",
            "MB/s",
            "ratio",
            "<=1.15",
            "ratio-startup",
            "py copy s",
            "peak RSS MiB",
            "<=100",
        )
    ]
    for case in cases:
        install, pipeline = median_s(case.sysupd), median_s(case.pipeline)
        ratio = install / pipeline
        rss = peak_mib(case.sysupd)
        rows.append(
            (
                case.label,
                f"{case.mib}",
                f"{len(case.sysupd)}",
                f"{install:.2f}",
                mbs(case.payload_bytes, install),
                f"{pipeline:.2f}",
                mbs(case.payload_bytes, pipeline),
                f"{ratio:.2f}",
                verdict(ratio <= RATIO_TARGET),
                f"{(install - start_s) / pipeline:.2f}",
                f"{median_s(case.pycopy):.2f}",
                f"{rss:.1f}",
                verdict(rss <= RSS_TARGET_MIB),
            )
        )
    table(rows, indent="")
    print(
        f"  sysupd CLI start-up alone (`sysupd install --help`, median of {len(startup)}):"
        f" {start_s:.2f} s, peak RSS {peak_mib(startup):.1f} MiB; it is inside every sysupd"
        " time above ('ratio-startup' takes it out, for information only)"
    )
    print("  min-max over runs (s):")
    for case in cases:
        spans = []
        for name, samples in (
            ("sysupd", case.sysupd),
            ("openssl", case.openssl),
            ("dd", case.dd),
            ("openssl+dd", case.pipeline),
            ("py copy", case.pycopy),
        ):
            walls = [s.wall_s for s in samples]
            spans.append(f"{name} {min(walls):.2f}-{max(walls):.2f}")
        print(f"    {case.label:<12} " + ", ".join(spans))
    raws = [c for c in cases if c.kind == "raw"]
    if raws:
        print(
            "  peak RSS of the raw install: "
            + ", ".join(f"{peak_mib(c.sysupd):.1f} MiB at {c.mib} MiB" for c in raws)
        )


def print_peers(outcomes: list[PeerOutcome], raw: Case) -> None:
    print()
    print(
        f"PEERS: the same-size raw image ({raw.mib} MiB) into a file-backed slot, verification on"
        " (medians; 'ratio' = tool / this run's openssl+dd on the sysupd raw bundle)"
    )
    pipeline = median_s(raw.pipeline)
    install = median_s(raw.sysupd)
    rows: list[tuple[str, ...]] = [
        ("tool", "MiB", "runs", "wall s", "min-max s", "MB/s", "ratio", "peak RSS MiB")
    ]
    rows.append(
        (
            "sysupd install (this run)",
            f"{raw.mib}",
            f"{len(raw.sysupd)}",
            f"{install:.2f}",
            f"{min(s.wall_s for s in raw.sysupd):.2f}-{max(s.wall_s for s in raw.sysupd):.2f}",
            mbs(raw.payload_bytes, install),
            f"{install / pipeline:.2f}",
            f"{peak_mib(raw.sysupd):.1f}",
        )
    )
    rows.append(
        (
            "openssl+dd (this run)",
            f"{raw.mib}",
            f"{len(raw.pipeline)}",
            f"{pipeline:.2f}",
            f"{min(s.wall_s for s in raw.pipeline):.2f}-{max(s.wall_s for s in raw.pipeline):.2f}",
            mbs(raw.payload_bytes, pipeline),
            "1.00",
            f"{peak_mib(raw.pipeline):.1f}",
        )
    )
    for outcome in outcomes:
        by_tool = {row.tool: row for row in outcome.rows if row.mib == raw.mib}
        if "openssl-dgst" in by_tool and "dd-fsync" in by_tool:  # their pipeline, as ours
            walls = [
                a + b
                for a, b in zip(
                    by_tool["openssl-dgst"].walls, by_tool["dd-fsync"].walls, strict=False
                )
            ]
            rss = max(by_tool["openssl-dgst"].rss_kib, by_tool["dd-fsync"].rss_kib)
            by_tool["openssl-dgst+dd-fsync"] = PeerRow("openssl-dgst+dd-fsync", raw.mib, walls, rss)
        for row in by_tool.values():
            wall = statistics.median(row.walls)
            rows.append(
                (
                    f"{row.tool} [{outcome.peer}]",
                    f"{row.mib}",
                    f"{len(row.walls)}",
                    f"{wall:.2f}",
                    f"{min(row.walls):.2f}-{max(row.walls):.2f}",
                    mbs(row.mib * MIB, wall),
                    f"{wall / pipeline:.2f}",
                    f"{row.rss_kib / 1024:.1f}",
                )
            )
    table(rows, indent="")
    for outcome in outcomes:
        if not outcome.ok:
            print(f"  peer {outcome.peer} FAILED: {outcome.detail}")
    seen: list[str] = []
    for outcome in outcomes:
        seen.extend(line for line in outcome.header.splitlines() if line not in seen)
    for line in seen:
        print(f"  {line}")
    print(
        "  notes: peers' peak RSS is /usr/bin/time -v's (RAUC: the larger of the `rauc install`"
        " client and the service's VmHWM, the service started before the clock); their image is"
        " another random image of the same size; swupdate never fsyncs a file slot (the +sync"
        " variant adds it); negative checks skipped (negative-checks.sh always runs Mender,"
        " which needs loop devices)"
    )


# -- main --------------------------------------------------------------------------------------


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--mib", type=int, default=DEFAULT_MIB, help="payload size in MiB")
    parser.add_argument("--runs", type=int, default=3, help="timed installs per payload")
    parser.add_argument(
        "--rss-2g",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also install a {RSS_2G_MIB} MiB raw image, for peak RSS"
        " [default: on when --mib is the default]",
    )
    parser.add_argument(
        "--zstd",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the tree compressed with zstd [default: on]",
    )
    parser.add_argument("--peers", action="store_true", help="also run the peer benchmarks")
    parser.add_argument(
        "--peer-list",
        default=DEFAULT_PEERS,
        help=f"peers for --peers, as run-all.sh's PEERS [default: {DEFAULT_PEERS!r};"
        " 'mender' needs loop devices]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, help="parent of the work directory [default: /tmp]")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed to one timed command"
    )
    options = parser.parse_args(argv)
    if options.mib <= 0 or options.runs <= 0 or options.timeout <= 0:
        parser.error("--mib, --runs and --timeout must be greater than 0")
    if options.rss_2g is None:
        options.rss_2g = options.mib == DEFAULT_MIB
    return options


def _time_limit(options: argparse.Namespace) -> int:
    gib = options.mib / 1024
    per_case = 120 + gib * (60 + options.runs * 60)
    limit = 300 + 3 * per_case
    if options.rss_2g:
        limit += 120 + 2 * (60 + options.runs * 60)
    if options.peers:
        limit += len(options.peer_list.split()) * (_PEER_TIMEOUT_S + 60)
    return int(limit)


def bench(options: argparse.Namespace, work: Path) -> None:
    """Every phase, in order; prints as it goes."""
    print(f"bench/install.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"  sysupd {revision()}")
    print(
        f"  work directory {work} ({shutil.disk_usage(work).free / (1 << 30):.0f} GiB free);"
        " page cache warm (each bundle read once before every round); sync before every timed"
        " command; wall time includes process start-up; peak RSS = ru_maxrss of the child from"
        " os.wait4"
    )
    b = Bench(options, work)
    b.init_repo()
    cases = [Case("raw", "raw", options.mib, "1.0.0", options.runs)]
    cases.append(Case("tree", "tree", options.mib, "1.1.0", options.runs))
    if options.zstd:
        cases.append(Case("tree+zstd", "tree", options.mib, "1.2.0", options.runs))
    if options.rss_2g:
        cases.append(Case("raw-2g", "raw", RSS_2G_MIB, "2.0.0", 1))

    print(f"building releases and bundles with `{shlex.join(b.sysupd)} release ...`", flush=True)
    tree: Path | None = None
    check = ("", "")
    for case in cases:
        if case.kind == "raw":
            b.build_raw(case)
        else:
            if tree is None:
                tree, check = b.make_tree(options.mib)
            b.build_tree(case, tree, check, "zstd" if case.label.endswith("zstd") else "none")
        print(
            f"  {case.label}: {case.payload_bytes:,} payload bytes, bundle"
            f" {case.bundle.stat().st_size:,} bytes, built in {case.build_s:.1f} s",
            flush=True,
        )
    if tree is not None:
        remove(tree)

    print("measuring", flush=True)
    b.measure_startup(options.runs)
    for case in cases:
        b.measure(case)
        if not options.keep:  # free the space now: the 2 GiB case comes last
            remove(case.bundle)
            for slot in (work / "slots").glob(f"{case.label}-*"):
                remove(slot)
    print_summary(cases, b.startup)

    if options.peers:
        print()
        print(f"running the peers ({options.peer_list}) at {options.mib} MiB", flush=True)
        outcomes = [
            run_peer(peer, options.mib, options.runs, work, options.keep)
            for peer in options.peer_list.split()
        ]
        print_summary(cases, b.startup)
        print_peers(outcomes, cases[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the verdicts, 1 if it could not run."""
    options = _options(argv)

    def body() -> None:
        with workdir(options.workdir, "sysupd-bench-install-", options.keep) as work:
            bench(options, work)

    return run_main("bench/install.py", _time_limit(options), body)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of delta updates: what sysupd downloads and how long it takes, beside casync and
zchunk on the same images, all from nginx on loopback.

Run: ``.venv/bin/python bench/delta.py [--mib N] [--cases "a b c d"] [--forms "raw tree"]
[--workdir DIR] [--runs N] [--no-peers] [--fresh]`` (``scripts/bench delta``). Defaults: 1024
MiB, every case and form, peers on, 3 runs a row (the median shown: this disk's noise is larger
than some differences measured), the work directory ``/tmp/sysupd-bench-delta`` kept as a cache
(the workload and the release repositories take minutes to make; ``--fresh`` makes them again).

1. The workload (``_delta_workload``): an OS-root-like tree of N MiB and four new versions —
   (a) nothing changed but the version file, (b) 1 % of the files rewritten, (c) 10 %, (d) a new
   30 MiB blob — and an ext4 image of each, one filesystem UUID and hash seed for all.
2. sysupd (``_delta_ours``): a release repository per form (``sysupd release add`` of the base and
   each version; its time and the chunk store's size are printed), then per case a fresh device
   whose booted slot holds the base installs the version with ``sysupd install --server
   --version`` — delta updates on, with the base's index kept as after installing it
   (``sysupd``), without it (``sysupd 1st``: it comes from the server), or with a booted
   release the server never had (``sysupd cut``: the booted slot is cut), and off (``sysupd
   full``).
3. The peers (``_delta_peers``): ``casync make`` + ``casync extract --seed`` of the base, and
   ``zck`` + ``zckdl --source`` of the base's ``.zck``; a plain ``curl`` of the whole payload
   (``full``, and ``full-zstd`` of the compressed one) beside them.

Bytes are nginx's body bytes for the run (metadata and indexes included) as a share of the
payload (the image, or the tree's uncompressed tar); wall time and peak RSS are the installing
process's (``os.wait4``), with what it reads warmed in the page cache first (ours: the booted
slot a delta reads and the release files nginx serves a full install, not the chunk store;
the peers: their inputs). The targets (issue 13): (b) at most 3 % for the tree and 5 % for the
image, and no more than the best peer; (a) metadata only; a delta install no slower than the
full install of the same release; peak RSS at most 100 MiB.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _delta_ours import OURS, measure_ours, prepare_repositories, remove_repositories
from _delta_peers import (
    FORMS,
    PEERS,
    ROW_HEADING,
    Row,
    install_peer_programs,
    measure_peers,
    peer_versions,
    row_cells,
)
from _delta_workload import CASE_TITLES, CASES, build_workload
from _harness import MIB, run_main
from _report import machine, revision, table, verdict

_TIMEOUT_S = 1800.0


def main() -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--cases", default=" ".join(CASES))
    parser.add_argument("--forms", default=" ".join(FORMS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sysupd-bench-delta"))  # noqa: S108
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="runs a row, the median shown")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="make the repositories again")
    options = parser.parse_args()
    return run_main(
        "bench/delta.py",
        6 * 3600,
        lambda: _run(
            options.workdir,
            options.mib,
            options.cases.split(),
            options.forms.split(),
            seed=options.seed,
            peers=not options.no_peers,
            fresh=options.fresh,
            runs=max(1, options.runs),
        ),
    )


def _run(
    work: Path,
    mib: int,
    cases: Sequence[str],
    forms: Sequence[str],
    *,
    seed: int,
    peers: bool,
    fresh: bool,
    runs: int,
) -> None:
    began = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "delta.log"
    print(
        f"delta benchmark: {mib} MiB, cases {' '.join(cases)}, forms {' '.join(forms)}; "
        f"the median of {runs} runs a row"
    )
    print(f"  {machine()}; sysupd {revision()}")
    if peers:
        install_peer_programs(work / "apt.log")
        print(f"  peers: {peer_versions()}")
    workload = build_workload(work, mib, seed, cases)
    print(f"  workload in {workload.root} ({workload.made_s:.0f} s this time)")
    for case, version in workload.versions.items():
        print(
            f"    ({case}) {CASE_TITLES[case]}: {version.changed_files} files, "
            f"{version.changed_bytes / MIB:.1f} MiB changed; image {version.image_bytes / MIB:.0f} "
            "MiB"
        )
    if fresh:
        remove_repositories(work)
    made = prepare_repositories(workload, work, forms, log)
    for form, times in made.items():
        adds = ", ".join(f"{name} {s:.0f} s" for name, s in times.seconds.items())
        print(f"  release add ({form}): {adds}; chunk store {times.store_bytes / MIB:.0f} MiB")
    rows = measure_ours(workload, work, forms, timeout_s=_TIMEOUT_S, log=log, runs=runs)
    if peers:
        rows += measure_peers(
            workload, work, forms=forms, peers=PEERS, runs=runs, timeout_s=_TIMEOUT_S
        )
    order = {name: n for n, name in enumerate((*OURS, *PEERS))}
    rows.sort(key=lambda row: (forms.index(row.form), row.case, order.get(row.peer, 99)))
    print()
    table([ROW_HEADING, *(row_cells(row) for row in rows)], left=3)
    print()
    _verdicts(rows, forms, cases)
    print(f"\n{time.perf_counter() - began:.0f} s in all; details in {log}")


def _verdicts(rows: list[Row], forms: Sequence[str], cases: Sequence[str]) -> None:
    """The issue's targets, each with what was measured."""
    lines: list[tuple[bool, str]] = []
    for form in forms:
        for case in cases:
            ours = _row(rows, "sysupd", form, case)
            full = _row(rows, "sysupd full", form, case)
            if ours is None:
                continue
            peers = [
                r
                for r in rows
                if r.form == form and r.case == case and r.peer in ("casync", "zchunk") and r.ok
            ]
            best = min(peers, key=lambda r: r.bytes_downloaded, default=None)
            if case == "b":
                limit = 3.0 if form == "tree" else 5.0
                lines.append(
                    (
                        ours.ok and ours.share_pct <= limit,
                        f"({case}) {form}: {ours.share_pct:.2f} % downloaded, at most {limit:g} %",
                    )
                )
            if best is not None and case in ("b", "c", "d"):
                lines.append(
                    (
                        ours.bytes_downloaded <= best.bytes_downloaded,
                        f"({case}) {form}: {ours.bytes_downloaded / MIB:.2f} MiB against "
                        f"{best.peer}'s {best.bytes_downloaded / MIB:.2f} MiB",
                    )
                )
            if case == "a":
                lines.append(
                    (
                        ours.ok and ours.share_pct <= 1.0,
                        f"({case}) {form}: {ours.bytes_downloaded / MIB:.2f} MiB downloaded "
                        f"({ours.requests} requests): metadata, the index and the version file",
                    )
                )
            first = _row(rows, "sysupd 1st", form, case)
            cut = _row(rows, "sysupd cut", form, case)
            deltas = [r for r in (ours, first, cut) if r is not None]
            hows = (
                (ours, "delta, index kept"),
                (first, "delta, index from the server"),
                (cut, "delta, booted slot cut"),
            )
            for run, how in hows:
                if full is not None and full.ok and run is not None:
                    lines.append(
                        (
                            run.seconds <= full.seconds,
                            f"({case}) {form}: {how} {run.seconds:.2f} s, full "
                            f"{full.seconds:.2f} s ({run.seconds / full.seconds:.2f}x)",
                        )
                    )
            rss = max(r.peak_rss_kib for r in deltas)
            lines.append(
                (
                    rss <= 100 * 1024,
                    f"({case}) {form}: peak RSS {rss / 1024:.0f} MiB (the highest delta row), "
                    "at most 100",
                )
            )
    for ok, text in lines:
        print(f"  {verdict(ok)}  {text}")


def _row(rows: list[Row], peer: str, form: str, case: str) -> Row | None:
    return next((r for r in rows if (r.peer, r.form, r.case) == (peer, form, case)), None)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of offline updates through the API: an uploaded bundle and a ``fetch_url`` bundle,
each from the first byte sent to the final ``sys/update_now`` event, against curl and the physical
pipeline on the same bytes.

Run: ``.venv/bin/python bench/offline.py [--mib N] [--runs R] [--rss-2g | --no-rss-2g] [--keep]``

1. In a fresh directory under /tmp (or ``--workdir``) the project's release tool (``sysupd release
   init|add|bundle``) builds a raw release of an N MiB random image for the product ``bench`` and
   writes its bundle. nginx serves the bundles' directory on 127.0.0.1.
2. Every measured update gets a fresh state directory and a fresh ``sysupd serve`` process (on
   127.0.0.1, kernel-chosen ports) configured with ``slots = ["A:raw:…", "B:raw:…"]``: two
   preallocated files in the work directory's filesystem, slot B preallocated anew every time.
   The service trusts the repository's root, ``auto_reboot = false``, ``event_interval_s = 1``.
   An administrator made beforehand with ``sysupd user add … --admin --password-stdin`` logs in
   over the WebSocket, untimed.
3. Each round times:
   (a) *upload*: ``sys/upload_file``, ``POST /upload`` of the bundle (by curl, streaming), then
       ``sys/update_now {"file_upload": …}`` until the final event;
   (b) *fetch_url*: ``sys/update_now {"fetch_url": "http://127.0.0.1:PORT/….bundle"}`` (from the
       same nginx) until the final event;
   and the baselines, on the same bundle file: for (a) ``curl -o FILE`` of the bundle from nginx,
   for (b) ``curl -o /dev/null``, each followed by the physical pipeline ``openssl dgst -sha256
   BUNDLE`` + ``dd if=BUNDLE of=TARGET bs=1M conv=fsync`` (timed together). The order rotates
   every round. Slot B is checked against the image's SHA-256 after every update (untimed).
4. Targets: each update at most 1.3 times its baseline; the service's peak RSS (``VmHWM`` of the
   ``sysupd serve`` process, read from /proc after the final event) at most 100 MiB with a
   2048 MiB image (``--rss-2g``, on by default at the default size: one more round at 2 GiB).

How it measures: wall time is ``time.perf_counter`` in this process; for the service legs from
just before the first request (``sys/upload_file``, or ``sys/update_now``) to the final event's
arrival, so the WebSocket round trips and event delivery are included; the service's start-up is
not (it is a long-running service). Baselines are subprocesses timed from fork to reaping. The
page cache is warm on purpose (the bundle is read before every round) and ``sync`` runs before
every timed step, so none pays for another's dirty pages. Only 127.0.0.1 is used. Everything
large lives in the work directory and is deleted at the end unless ``--keep``; every child
process is ended on exit; every step is bounded in time.

The helpers (processes, releases, the pipeline, nginx, the service, the WebSocket client) are
``bench/_harness.py``, ``_releases.py``, ``_service.py`` and ``_wsapi.py``, shared with the other
benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import (
    HOST,
    MIB,
    BenchError,
    Sample,
    kill_group,
    preallocate,
    remove,
    run_main,
    run_timed,
    sha256_file,
    sysupd_command,
    tail,
    warm,
    workdir,
)
from _releases import Release, add_raw_release, bundle_release, init_repo, physical_pipeline
from _report import machine, mbs, median, revision, span, table, verdict
from _service import (
    KDF,
    Serve,
    hot_spots,
    nginx_serving,
    sampled,
    service_config,
    start_serve,
    stop_serve,
)
from _wsapi import WsApi, check_final, job_lines

DEFAULT_MIB = 1024
RSS_2G_MIB = 2048
RATIO_TARGET = 1.3
RSS_TARGET_MIB = 100.0
UPLOAD_NAME = "bench.bundle"


# -- the offline benchmark ---------------------------------------------------------------------


@dataclass
class Baseline:
    """curl of the bundle from nginx, then openssl + dd of the bundle file."""

    curl: Sample
    openssl: Sample
    dd: Sample
    flush: Sample | None = None
    """For information, not in the baseline: ``sync`` right after ``curl -o FILE``, i.e. what
    making the downloaded file durable (as ``POST /upload`` does) would add."""

    @property
    def pipeline_s(self) -> float:
        return self.openssl.wall_s + self.dd.wall_s

    @property
    def total_s(self) -> float:
        return self.curl.wall_s + self.pipeline_s


@dataclass
class Leg:
    """One update through the service."""

    total_s: float
    upload_s: float  # 0 for fetch_url
    events: int
    hwm_kib: int
    start_hwm_kib: int
    lines: list[str]

    @property
    def install_s(self) -> float:
        return self.total_s - self.upload_s


@dataclass
class Case:
    """One release size and its measurements."""

    label: str
    mib: int
    runs: int
    release: Release
    bundle: Path
    bundle_bytes: int = 0
    bundle_sha256: str = ""
    config: Path = Path()
    slot_b: Path = Path()
    upload: list[Leg] = field(default_factory=list)
    fetch: list[Leg] = field(default_factory=list)
    base_file: list[Baseline] = field(default_factory=list)
    base_null: list[Baseline] = field(default_factory=list)


class OfflineBench:
    """The work directory, the repository, nginx, and the rounds."""

    def __init__(self, options: argparse.Namespace, work: Path) -> None:
        self.options = options
        self.work = work
        self.timeout: float = options.timeout
        self.logs = work / "logs"
        self.repo = work / "repo"
        for sub in ("logs", "bundles", "slots", "state", "configs", "scratch", "profiles"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.build_log = self.logs / "build.log"
        self.url = ""

    def build(self, label: str, mib: int, version: str, runs: int) -> Case:
        start = time.perf_counter()
        release = add_raw_release(self.repo, version, mib, self.work / "scratch", self.build_log)
        bundle = self.work / "bundles" / f"{label}.bundle"
        bundle_release(self.repo, version, bundle, self.build_log)
        case = Case(label, mib, runs, release, bundle)
        case.bundle_bytes = bundle.stat().st_size
        case.bundle_sha256 = sha256_file(bundle)
        slot_a = self.work / "slots" / f"{label}-A.img"
        case.slot_b = self.work / "slots" / f"{label}-B.img"
        preallocate(slot_a, mib * MIB)
        case.config = service_config(
            self.work / "configs" / f"{label}.toml", self.repo, [slot_a, case.slot_b]
        )
        print(
            f"  {label}: {release.payload_bytes:,} payload bytes, bundle {case.bundle_bytes:,}"
            f" bytes, built in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        return case

    # baselines

    def baseline(self, case: Case, run: int, to_file: bool) -> Baseline:
        kind = "file" if to_file else "null"
        out = self.work / "scratch" / "curl-out.bin"
        remove(out)
        curl = run_timed(
            [
                "curl",
                "-sS",
                "--fail",
                "-o",
                str(out) if to_file else "/dev/null",
                f"{self.url}/{case.bundle.name}",
            ],
            self.logs / f"{case.label}-curl-{kind}-{run}.log",
            timeout=self.timeout,
        )
        flush = None
        if to_file:
            if out.stat().st_size != case.bundle_bytes:
                raise BenchError(f"curl wrote {out.stat().st_size} bytes, not the bundle's")
            flush = run_timed(
                ["sync"], self.logs / "sync.log", timeout=self.timeout, sync_first=False
            )
        remove(out)
        target = self.work / "scratch" / "pipeline-target.img"
        openssl, dd = physical_pipeline(
            case.bundle,
            case.bundle_sha256,
            target,
            self.logs,
            f"{case.label}-{kind}-{run}",
            timeout=self.timeout,
        )
        remove(target)
        result = Baseline(curl, openssl, dd, flush)
        (case.base_file if to_file else case.base_null).append(result)
        return result

    # the service

    async def leg(self, case: Case, run: int, upload: bool) -> Leg:
        kind = "upload" if upload else "fetch"
        name = f"{case.label}-{kind}-{run}"
        preallocate(case.slot_b, case.mib * MIB)
        serve = await start_serve(case.config, self.work / "state" / name, self.logs, name)
        try:
            api = await WsApi.open(serve.ws_port)
            try:
                start_hwm = serve.hwm_kib()
                os.sync()
                samples = self.work / "profiles" / f"{name}.txt"
                async with (
                    sampled(self.options.py_spy, serve.pid, samples),
                    asyncio.timeout(self.timeout),
                ):
                    if upload:
                        leg = await self._upload_leg(case, serve, api, name)
                    else:
                        leg = await self._fetch_leg(case, api)
                leg.start_hwm_kib = start_hwm
                leg.hwm_kib = serve.hwm_kib()
            finally:
                await api.close()
        finally:
            stop_serve(serve)
        (self.logs / f"{name}-job.log").write_text("\n".join(leg.lines) + "\n")
        if sha256_file(case.slot_b, case.release.payload_bytes) != case.release.payload_sha256:
            raise BenchError(f"slot B ({case.slot_b}) does not hold the image after {name}")
        remove(serve.state_dir)
        (case.upload if upload else case.fetch).append(leg)
        return leg

    async def _upload_leg(self, case: Case, serve: Serve, api: WsApi, name: str) -> Leg:
        start = time.perf_counter()
        grant = await api.call("sys", "upload_file")
        log = self.logs / f"{name}-curl-upload.log"
        with log.open("wb") as err:
            curl = await asyncio.create_subprocess_exec(
                "curl",
                "-sS",
                "--fail-with-body",
                "-X",
                "POST",
                "-u",
                f"{grant['upload_user']}:{grant['upload_pass']}",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                "Expect:",
                "-T",
                str(case.bundle),
                f"http://{HOST}:{serve.http_port}/upload?filename={UPLOAD_NAME}",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
            try:
                out, _ = await curl.communicate()
            except BaseException:
                kill_group(curl.pid)
                await curl.wait()
                raise
        uploaded = time.perf_counter()
        if curl.returncode != 0:
            raise BenchError(f"the upload failed ({curl.returncode}): {out[-500:]!r} {tail(log)}")
        stored = json.loads(out)
        if stored.get("sha256") != case.bundle_sha256:
            raise BenchError(f"the service stored other bytes than the bundle: {stored}")
        reply = await api.call("sys", "update_now", {"file_upload": stored["file_upload"]})
        if reply.get("result") != "success":
            raise BenchError(f"sys/update_now refused the upload: {reply}")
        events, final = await api.wait_final(self.timeout)
        end = time.perf_counter()
        check_final(final, f"the update from the upload ({name})")
        return Leg(end - start, uploaded - start, events, 0, 0, job_lines(final))

    async def _fetch_leg(self, case: Case, api: WsApi) -> Leg:
        url = f"{self.url}/{case.bundle.name}"
        start = time.perf_counter()
        reply = await api.call("sys", "update_now", {"fetch_url": url})
        if reply.get("result") != "success":
            raise BenchError(f"sys/update_now refused {url}: {reply}")
        events, final = await api.wait_final(self.timeout)
        end = time.perf_counter()
        check_final(final, f"the update from {url}")
        return Leg(end - start, 0.0, events, 0, 0, job_lines(final))

    async def measure(self, case: Case) -> None:
        """R rounds of: (a) baseline, (a) upload, (b) baseline, (b) fetch_url; order rotating."""
        steps: list[tuple[str, Callable[[int], Any]]] = [
            ("curl>file", lambda run: self.baseline(case, run, True)),
            ("upload", lambda run: self.leg(case, run, True)),
            ("curl>null", lambda run: self.baseline(case, run, False)),
            ("fetch_url", lambda run: self.leg(case, run, False)),
        ]
        for run in range(case.runs):
            warm(case.bundle)
            shift = run % len(steps)
            for _, step in steps[shift:] + steps[:shift]:
                done = step(run)
                if asyncio.iscoroutine(done):
                    await done
            up, fe = case.upload[-1], case.fetch[-1]
            bf, bn = case.base_file[-1], case.base_null[-1]
            print(
                f"  {case.label} round {run + 1}/{case.runs}:"
                f" upload+update {up.total_s:.2f} s (upload {up.upload_s:.2f} + update"
                f" {up.install_s:.2f}; {up.hwm_kib / 1024:.0f} MiB) vs curl>file+openssl+dd"
                f" {bf.total_s:.2f} s ({bf.curl.wall_s:.2f} + {bf.openssl.wall_s:.2f} +"
                f" {bf.dd.wall_s:.2f});  fetch_url {fe.total_s:.2f} s"
                f" ({fe.hwm_kib / 1024:.0f} MiB) vs curl>null+openssl+dd {bn.total_s:.2f} s"
                f" ({bn.curl.wall_s:.2f} + {bn.openssl.wall_s:.2f} + {bn.dd.wall_s:.2f})",
                flush=True,
            )


def print_offline_summary(cases: Sequence[Case]) -> None:
    print()
    print(
        "SUMMARY (medians; MB/s = bundle bytes / 10^6 / s; baseline = curl of the bundle from the"
        " same nginx + openssl dgst -sha256 + dd conv=fsync; ratio = sysupd / baseline)"
    )
    rows: list[tuple[str, ...]] = [
        (
            "case",
            "MiB",
            "update",
            "runs",
            "sysupd s",
            "MB/s",
            "baseline s",
            "MB/s",
            "ratio",
            f"<={RATIO_TARGET}",
            "peak RSS MiB",
            f"<={RSS_TARGET_MIB:.0f}",
        ),
    ]
    for case in cases:
        for label, legs, bases in (
            ("upload+update_now", case.upload, case.base_file),
            ("fetch_url", case.fetch, case.base_null),
        ):
            took = median([leg.total_s for leg in legs])
            base = median([b.total_s for b in bases])
            ratio = took / base
            rss = max(leg.hwm_kib for leg in legs) / 1024
            rows.append(
                (
                    case.label,
                    f"{case.mib}",
                    label,
                    f"{len(legs)}",
                    f"{took:.2f}",
                    mbs(case.bundle_bytes, took),
                    f"{base:.2f}",
                    mbs(case.bundle_bytes, base),
                    f"{ratio:.2f}",
                    verdict(ratio <= RATIO_TARGET),
                    f"{rss:.1f}",
                    verdict(rss <= RSS_TARGET_MIB) if case.mib >= RSS_2G_MIB else "",
                )
            )
    table(rows, left=3)
    print("  parts (medians, s):")
    for case in cases:
        up = case.upload
        bf, bn = case.base_file, case.base_null
        print(
            f"    {case.label:<7} upload: POST /upload {median([x.upload_s for x in up]):.2f}"
            f" (curl>file {median([b.curl.wall_s for b in bf]):.2f}, then sync"
            f" {median([b.flush.wall_s for b in bf if b.flush]):.2f}), update_now to final event"
            f" {median([x.install_s for x in up]):.2f} (openssl+dd"
            f" {median([b.pipeline_s for b in bf]):.2f});  fetch_url: curl>null"
            f" {median([b.curl.wall_s for b in bn]):.2f}, openssl+dd"
            f" {median([b.pipeline_s for b in bn]):.2f}"
        )
    print("  min-max over runs (s):")
    for case in cases:
        print(
            f"    {case.label:<7} upload+update_now {span([x.total_s for x in case.upload])},"
            f" its baseline {span([b.total_s for b in case.base_file])}; fetch_url"
            f" {span([x.total_s for x in case.fetch])}, its baseline"
            f" {span([b.total_s for b in case.base_null])}; dd alone"
            f" {span([b.dd.wall_s for b in case.base_file + case.base_null])}"
        )
    starts = [leg.start_hwm_kib for case in cases for leg in case.upload + case.fetch]
    print(
        f"  peak RSS = VmHWM of the sysupd serve process after the final event; after start-up"
        f" and login alone it was {min(starts) / 1024:.1f}-{max(starts) / 1024:.1f} MiB"
    )
    first = cases[0]
    for label, legs in (("upload", first.upload), ("fetch_url", first.fetch)):
        if legs:
            print(f"  the job's log ({first.label}, {label}, round 1):")
            for line in legs[0].lines:
                print(f"    {line}")


async def offline_bench(options: argparse.Namespace, work: Path) -> None:
    print(f"bench/offline.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"  sysupd {revision()}")
    print(
        f"  work directory {work} ({shutil.disk_usage(work).free / (1 << 30):.0f} GiB free);"
        " page cache warm (the bundle is read before every round); sync before every timed"
        " step; a fresh state directory and `sysupd serve` process for every update; the"
        f" service's argon2id cost is cheap ({', '.join(f'{k}={v}' for k, v in KDF.items())})"
    )
    bench = OfflineBench(options, work)
    init_repo(bench.repo, bench.build_log)
    specs = [("raw", options.mib, "1.0.0", options.runs)]
    if options.rss_2g:
        specs.append(("raw-2g", RSS_2G_MIB, "2.0.0", 1))
    print(f"building releases and bundles with `{shlex.join(sysupd_command())} release ...`")
    cases = [bench.build(*spec) for spec in specs]
    with nginx_serving(work / "bundles", work / "nginx") as url:
        bench.url = url
        print(f"measuring (nginx at {url})", flush=True)
        for case in cases:
            await bench.measure(case)
            if not options.keep:  # free the space before the 2 GiB case
                for path in (
                    case.bundle,
                    case.slot_b,
                    case.slot_b.with_name(f"{case.label}-A.img"),
                ):
                    remove(path)
    print_offline_summary(cases)
    if options.py_spy:
        for case in cases:
            for kind in ("upload", "fetch"):
                path = work / "profiles" / f"{case.label}-{kind}-0.txt"
                print(f"\nHOT SPOTS of sysupd serve, {case.label} {kind} round 1 (py-spy {path}):")
                for line in hot_spots(path):
                    print(f"  {line}")


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--mib", type=int, default=DEFAULT_MIB, help="image size in MiB")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each update, each baseline)")
    parser.add_argument(
        "--rss-2g",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also one round with a {RSS_2G_MIB} MiB image, for peak RSS"
        " [default: on when --mib is the default]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, help="parent of the work directory [default: /tmp]")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed to one timed step"
    )
    parser.add_argument(
        "--py-spy",
        metavar="BIN",
        help="sample every sysupd serve during its update with this py-spy binary and print its"
        " hot spots (collapsed stacks in the work directory's profiles/, kept with --keep)",
    )
    options = parser.parse_args(argv)
    if options.mib <= 0 or options.runs <= 0 or options.timeout <= 0:
        parser.error("--mib, --runs and --timeout must be greater than 0")
    if options.rss_2g is None:
        options.rss_2g = options.mib == DEFAULT_MIB
    return options


def _time_limit(options: argparse.Namespace) -> int:
    gib = options.mib / 1024
    limit = 300 + gib * (90 + options.runs * 150)
    if options.rss_2g:
        limit += 2 * (90 + 150)
    return int(limit)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the verdicts, 1 if it could not run."""
    options = _options(argv)

    def body() -> None:
        with workdir(options.workdir, "sysupd-bench-offline-", options.keep) as work:
            asyncio.run(offline_bench(options, work))

    return run_main("bench/offline.py", _time_limit(options), body)


if __name__ == "__main__":
    sys.exit(main())

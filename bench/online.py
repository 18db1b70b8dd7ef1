"""Benchmark of online updates: ``sys/update_now {}`` from an update server (a release repository
served by nginx), against curl and the physical pipeline on the same bytes; and the time of an
update check that finds nothing new.

Run: ``.venv/bin/python bench/online.py [--mib N] [--runs R] [--checks K] [--keep]``

1. In a fresh directory under /tmp (or ``--workdir``) ``sysupd release init|add`` builds a raw
   release 1.0.0 of an N MiB random image for the product ``bench``, and ``sysupd release
   publish`` re-signs snapshot and timestamp. nginx (sendfile on) serves only the repository's
   ``metadata/`` and ``targets/`` on 127.0.0.1, as an update server would.
2. Every measured update gets a fresh state directory (so an empty TUF cache) and a fresh
   ``sysupd serve`` process (127.0.0.1, kernel-chosen ports) with ``update_server`` pointing at
   nginx, ``update_check_interval_s = 0``, ``slots = ["A:raw:…", "B:raw:…"]`` (two preallocated
   files in the work directory's filesystem, B anew every time), ``auto_reboot = false`` and
   ``event_interval_s = 1``. The administrator logs in over the WebSocket, untimed.
3. Each round times ``sys/update_now {}`` from the request to the final event (the check the call
   makes, the job's own refresh, the chunk list, the payload streamed into slot B, fsync, read
   back), and the baseline on the same bytes: ``curl -o /dev/null`` of the payload's target file
   from the same nginx, then ``openssl dgst -sha256 TARGET`` + ``dd if=TARGET of=FILE bs=1M
   conv=fsync``. The order alternates; slot B is checked afterwards (untimed).
4. The no-change check: a service whose installed version is already 1.0.0 calls
   ``sys/update_check`` and polls ``sys/updates_available`` every 5 ms until ``last_checked``
   changes, K + 1 times (the first with an empty metadata cache, reported apart; then the median
   of K). ``last_checked`` has milliseconds, so each check's result is told from the one before.
   nginx's access log gives the requests each check made.
5. Target: the update at most 1.3 times its baseline.

How it measures: as ``bench/offline.py`` (with the same helpers, ``bench/_*.py``): wall time
in this process for the service, fork to reaping for the baseline commands; warm page cache (the
target file is read before every round), ``sync`` before every timed step; peak RSS is the serve
process's ``VmHWM`` after the final event. Everything large is deleted at the end unless
``--keep``; every child process is ended on exit; every step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
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
    run_quiet,
    run_timed,
    sha256_file,
    sysupd_command,
    warm,
    workdir,
)
from _releases import Release, add_raw_release, init_repo, physical_pipeline
from _report import machine, mbs, median, revision, span, table, verdict
from _service import hot_spots, nginx_serving, sampled, service_config, start_serve, stop_serve
from _wsapi import WsApi, check_final, job_lines
from offline import DEFAULT_MIB, RATIO_TARGET, Baseline

VERSION = "1.0.0"
POLL_S = 0.005


@dataclass
class Update:
    """One ``sys/update_now {}``."""

    total_s: float
    reply_s: float  # until the call's reply (the check it makes)
    hwm_kib: int
    start_hwm_kib: int
    lines: list[str]


@dataclass
class Check:
    """One ``sys/update_check`` that found nothing new."""

    seconds: float
    requests: list[str]


@dataclass
class Results:
    updates: list[Update] = field(default_factory=list)
    baselines: list[Baseline] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    curl_timestamp: list[Sample] = field(default_factory=list)


class OnlineBench:
    """The work directory, the repository, nginx, and the rounds."""

    def __init__(self, options: argparse.Namespace, work: Path) -> None:
        self.options = options
        self.work = work
        self.timeout: float = options.timeout
        self.logs = work / "logs"
        self.repo = work / "repo"
        for sub in ("logs", "slots", "state", "configs", "scratch", "www", "profiles"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.build_log = self.logs / "build.log"
        self.slot_a = work / "slots" / "A.img"
        self.slot_b = work / "slots" / "B.img"
        self.release = Release("", 0, "")
        self.target = Path()
        self.url = ""
        self.results = Results()

    def build(self) -> None:
        start = time.perf_counter()
        init_repo(self.repo, self.build_log)
        self.release = add_raw_release(
            self.repo, VERSION, self.options.mib, self.work / "scratch", self.build_log
        )
        print(
            run_quiet(
                [*sysupd_command(), "release", "publish", "--repo", str(self.repo)], self.build_log
            ).strip()
        )
        found = [
            p
            for p in (self.repo / "targets" / "releases").glob(f"{self.release.payload_sha256}.*")
            if not p.name.endswith(".chunks")
        ]
        if len(found) != 1:
            raise BenchError(f"cannot find the payload's target file in {self.repo}: {found}")
        self.target = found[0]
        for part in ("metadata", "targets"):  # what an update server publishes; never keys/
            (self.work / "www" / part).symlink_to(self.repo / part)
        preallocate(self.slot_a, self.options.mib * MIB)
        print(
            f"  release {VERSION}: {self.release.payload_bytes:,} payload bytes, target file"
            f" {self.target.relative_to(self.repo)}, built in {time.perf_counter() - start:.1f} s",
            flush=True,
        )

    def config(self, name: str, **extra: object) -> Path:
        return service_config(
            self.work / "configs" / f"{name}.toml",
            self.repo,
            [self.slot_a, self.slot_b],
            update_server=self.url,
            update_check_interval_s=0,
            **extra,
        )

    # the baseline

    def baseline(self, run: int) -> Baseline:
        url = f"{self.url}/{self.target.relative_to(self.repo)}"
        curl = run_timed(
            ["curl", "-sS", "--fail", "-o", "/dev/null", url],
            self.logs / f"curl-{run}.log",
            timeout=self.timeout,
        )
        out = self.work / "scratch" / "pipeline-target.img"
        openssl, dd = physical_pipeline(
            self.target,
            self.release.payload_sha256,
            out,
            self.logs,
            f"pipeline-{run}",
            timeout=self.timeout,
        )
        remove(out)
        result = Baseline(curl, openssl, dd)
        self.results.baselines.append(result)
        return result

    # the service

    async def update(self, run: int) -> Update:
        name = f"update-{run}"
        preallocate(self.slot_b, self.options.mib * MIB)
        serve = await start_serve(
            self.config("update"),
            self.work / "state" / name,
            self.logs,
            name,
        )
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
                    start = time.perf_counter()
                    reply = await api.call("sys", "update_now", {})
                    replied = time.perf_counter()
                    if reply.get("result") != "success":
                        raise BenchError(f"sys/update_now {{}} refused: {reply}")
                    _, final = await api.wait_final(self.timeout)
                    end = time.perf_counter()
                check_final(final, f"the online update ({name})")
                result = Update(
                    end - start, replied - start, serve.hwm_kib(), start_hwm, job_lines(final)
                )
            finally:
                await api.close()
        finally:
            stop_serve(serve)
        (self.logs / f"{name}-job.log").write_text("\n".join(result.lines) + "\n")
        if sha256_file(self.slot_b, self.release.payload_bytes) != self.release.payload_sha256:
            raise BenchError(f"slot B ({self.slot_b}) does not hold the image after {name}")
        remove(serve.state_dir)
        self.results.updates.append(result)
        return result

    async def checks(self, count: int) -> None:
        """``count`` + 1 no-change checks on one service (the first has an empty cache)."""
        name = "checks"
        serve = await start_serve(
            self.config(name, factory_version=VERSION),
            self.work / "state" / name,
            self.logs,
            name,
        )
        access = self.work / "nginx" / "access.log"
        try:
            api = await WsApi.open(serve.ws_port)
            try:
                previous = (await api.call("sys", "updates_available")).get("last_checked")
                for _ in range(count + 1):
                    log_at = access.stat().st_size
                    start = time.perf_counter()
                    await api.call("sys", "update_check")
                    async with asyncio.timeout(self.timeout):
                        while True:
                            available = await api.call("sys", "updates_available")
                            if available.get("last_checked") != previous:
                                break
                            await asyncio.sleep(POLL_S)
                    seconds = time.perf_counter() - start
                    previous = available["last_checked"]
                    if available.get("error") or available.get("updates_available"):
                        raise BenchError(f"the check did not find 'no change': {available}")
                    with access.open("rb") as log:
                        log.seek(log_at)
                        requests = [_request(line) for line in log.read().decode().splitlines()]
                    self.results.checks.append(Check(seconds, requests))
            finally:
                await api.close()
        finally:
            stop_serve(serve)
        remove(serve.state_dir)
        for run in range(count):
            self.results.curl_timestamp.append(
                run_timed(
                    [
                        "curl",
                        "-sS",
                        "--fail",
                        "-o",
                        "/dev/null",
                        f"{self.url}/metadata/timestamp.json",
                    ],
                    self.logs / "curl-timestamp.log",
                    timeout=60,
                    sync_first=run == 0,
                )
            )

    async def measure(self) -> None:
        runs = self.options.runs
        for run in range(runs):
            warm(self.target)
            if run % 2 == 0:
                base = self.baseline(run)
                update = await self.update(run)
            else:
                update = await self.update(run)
                base = self.baseline(run)
            print(
                f"  round {run + 1}/{runs}: update_now {{}} {update.total_s:.2f} s (reply after"
                f" {update.reply_s:.2f} s; {update.hwm_kib / 1024:.0f} MiB) vs curl+openssl+dd"
                f" {base.total_s:.2f} s ({base.curl.wall_s:.2f} + {base.openssl.wall_s:.2f} +"
                f" {base.dd.wall_s:.2f})",
                flush=True,
            )


def _request(line: str) -> str:
    """``GET /path status`` from an nginx access log line (combined format)."""
    try:
        parts = line.split('"')
        quoted, status = parts[1], parts[2].split(maxsplit=1)[0]
    except IndexError:
        return line
    method, _, rest = quoted.partition(" ")
    return f"{method} {rest.rsplit(' ', 1)[0]} {status}"


def print_summary(bench: OnlineBench) -> None:
    results = bench.results
    release = bench.release
    print()
    print(
        "SUMMARY (medians; MB/s = payload bytes / 10^6 / s; baseline = curl of the payload's target"
        " file from the same nginx + openssl dgst -sha256 + dd conv=fsync; ratio = sysupd /"
        " baseline)"
    )
    took = median([u.total_s for u in results.updates])
    base = median([b.total_s for b in results.baselines])
    ratio = took / base
    rows: list[tuple[str, ...]] = [
        (
            "update",
            "MiB",
            "runs",
            "sysupd s",
            "MB/s",
            "baseline s",
            "MB/s",
            "ratio",
            f"<={RATIO_TARGET}",
            "peak RSS MiB",
        ),
        (
            "update_now {}",
            f"{bench.options.mib}",
            f"{len(results.updates)}",
            f"{took:.2f}",
            mbs(release.payload_bytes, took),
            f"{base:.2f}",
            mbs(release.payload_bytes, base),
            f"{ratio:.2f}",
            verdict(ratio <= RATIO_TARGET),
            f"{max(u.hwm_kib for u in results.updates) / 1024:.1f}",
        ),
    ]
    table(rows)
    print(
        f"  parts (medians, s): sys/update_now's reply (its check)"
        f" {median([u.reply_s for u in results.updates]):.2f}; baseline: curl"
        f" {median([b.curl.wall_s for b in results.baselines]):.2f}, openssl+dd"
        f" {median([b.pipeline_s for b in results.baselines]):.2f}"
    )
    print(
        f"  min-max over runs (s): update_now {span([u.total_s for u in results.updates])},"
        f" baseline {span([b.total_s for b in results.baselines])}, dd alone"
        f" {span([b.dd.wall_s for b in results.baselines])}"
    )
    starts = [u.start_hwm_kib for u in results.updates]
    print(
        "  peak RSS = VmHWM of the sysupd serve process after the final event (after start-up"
        f" and login alone: {min(starts) / 1024:.1f}-{max(starts) / 1024:.1f} MiB)"
    )
    if results.checks:
        first, rest = results.checks[0], results.checks[1:]
        warm_ms = median([c.seconds * 1000 for c in rest])
        curl_ms = median([s.wall_s * 1000 for s in results.curl_timestamp])
        print()
        print(
            "NO-CHANGE CHECK (sys/update_check, then sys/updates_available every"
            f" {POLL_S * 1000:.0f} ms until last_checked changes; metadata only)"
        )
        rest_ms = [c.seconds * 1000 for c in rest]
        table(
            [
                ("check", "count", "ms", "min-max ms", "requests"),
                ("first (empty cache)", "1", f"{first.seconds * 1000:.0f}", "",
                 f"{len(first.requests)}"),
                ("later (median)", f"{len(rest)}", f"{warm_ms:.0f}",
                 f"{min(rest_ms, default=0):.0f}-{max(rest_ms, default=0):.0f}",
                 f"{len(rest[-1].requests)}" if rest else ""),
                ("curl of timestamp.json", f"{len(results.curl_timestamp)}", f"{curl_ms:.0f}",
                 "", "1"),
            ]
        )  # fmt: skip
        print(f"  requests of the first check: {', '.join(first.requests)}")
        if rest:
            print(f"  requests of the last check: {', '.join(rest[-1].requests)}")
        print("  (curl of timestamp.json: a new process per request, for scale)")
    if results.updates:
        print("  the job's log (round 1):")
        for line in results.updates[0].lines:
            print(f"    {line}")


async def online_bench(options: argparse.Namespace, work: Path) -> None:
    print(f"bench/online.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"  sysupd {revision()}")
    print(
        f"  work directory {work} ({shutil.disk_usage(work).free / (1 << 30):.0f} GiB free);"
        " page cache warm (the target file is read before every round); sync before every timed"
        " step; a fresh state directory and `sysupd serve` process for every update"
    )
    bench = OnlineBench(options, work)
    print(f"building the repository with `{shlex.join(sysupd_command())} release ...`", flush=True)
    bench.build()
    with nginx_serving(work / "www", work / "nginx") as url:
        bench.url = url
        print(f"measuring (nginx at {url}, serving metadata/ and targets/)", flush=True)
        await bench.measure()
        if options.checks:
            print(f"  no-change checks: 1 + {options.checks}", flush=True)
            await bench.checks(options.checks)
    print_summary(bench)
    if options.py_spy:
        path = work / "profiles" / "update-0.txt"
        print(f"\nHOT SPOTS of sysupd serve, update round 1 (py-spy {path}):")
        for line in hot_spots(path):
            print(f"  {line}")


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--mib", type=int, default=DEFAULT_MIB, help="image size in MiB")
    parser.add_argument("--runs", type=int, default=3, help="rounds (update and baseline)")
    parser.add_argument(
        "--checks", type=int, default=7, help="no-change checks after the first (0: none)"
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
    if options.mib <= 0 or options.runs <= 0 or options.timeout <= 0 or options.checks < 0:
        parser.error("--mib, --runs and --timeout must be greater than 0, --checks at least 0")
    return options


def _time_limit(options: argparse.Namespace) -> int:
    return int(300 + options.mib / 1024 * (90 + options.runs * 120) + options.checks * 10)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the verdicts, 1 if it could not run."""
    options = _options(argv)

    def body() -> None:
        with workdir(options.workdir, "sysupd-bench-online-", options.keep) as work:
            asyncio.run(online_bench(options, work))

    return run_main("bench/online.py", _time_limit(options), body)


if __name__ == "__main__":
    sys.exit(main())

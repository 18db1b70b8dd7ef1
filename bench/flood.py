"""Benchmark of the service under connection floods: how many idle and slow connections it holds
while it still answers calls, at its default limits and systemd's default descriptor limit.

Run: ``.venv/bin/python bench/flood.py [--attackers N] [--seconds S] [--keep]``

1. ``sysupd serve`` on 127.0.0.1 (TLS off, the default settings: connection caps derived from the
   descriptor limit, 15 s idle timeout), started with ``RLIMIT_NOFILE`` = 1024 as systemd gives
   a service.
2. Baseline: calls with nobody else connected. A call is ``POST /api/sys/info`` with Basic
   credentials on a new connection from 127.0.0.1, one every 100 ms; its latency is from the
   connect to the whole reply.
3. Floods, each for S seconds, from N attackers spread over 200 source addresses (127.0.0.2 and
   up: other hosts, as far as the per-address cap is concerned). Each attacker keeps one
   connection open and opens another as soon as the service closes it:
   - idle: connects and sends nothing;
   - slow: sends a request line, then one header line every 10 s (never the end of the headers);
   - both: half of each.
   While a flood runs, the calls of step 2 go on, and every second the benchmark counts the
   attackers' connections that are open (connected, not yet closed by the service).
4. Per phase: the connections held (median and most at any second), the calls answered, the
   share answered within 1 s, their median and p99 latency, and the median's ratio to the
   baseline. No target is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path

from _harness import CHILDREN, HOST, BenchError, run_main
from _harness import workdir as make_workdir
from _report import machine, revision, table
from _service import ADMIN, KDF, Serve
from _service import start_serve as start_service

CALLERS = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
DESCRIPTOR_LIMIT = 1024
SOURCES = [f"127.0.0.{i}" for i in range(2, 202)]
CALL_EVERY_S = 0.1
SLOW_LINE_EVERY_S = 10.0
_TIME_LIMIT_S = 1800


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    attackers: int
    latencies: list[float] = field(default_factory=list)
    """Seconds, of the calls that were answered."""
    failed: int = 0
    held: list[int] = field(default_factory=list)
    """Attackers' sockets connected (held by the service or waiting in its accept queue), once
    a second."""
    descriptors: list[int] = field(default_factory=list)
    """The service's open descriptors, once a second."""


async def start_serve(work: Path) -> Serve:
    """``sysupd serve`` with systemd's descriptor limit and the default connection limits."""
    config = work / "sysupd.toml"
    values = {**KDF, "update_check_interval_s": 0, "auto_reboot": False}
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return await start_service(
        config, work / "state", work, "flood", descriptor_limit=DESCRIPTOR_LIMIT
    )


async def call(port: int, auth: str) -> float:
    """One call on a new connection; its latency in seconds (raises if it fails or takes >5 s)."""
    started = time.perf_counter()
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(HOST, 0))
        try:
            writer.write(
                f"POST /api/sys/info HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {auth}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            reply = await reader.read()
        finally:
            writer.close()
    if not reply.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"call answered {reply[:60]!r}")
    return time.perf_counter() - started


async def caller(port: int, auth: str, seconds: float) -> tuple[list[float], int]:
    """Calls for ``seconds``: the latencies of those answered, and how many failed."""
    latencies: list[float] = []
    failed = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        tick = time.monotonic()
        try:
            latencies.append(await call(port, auth))
        except (OSError, TimeoutError, BenchError):
            failed += 1
        await asyncio.sleep(max(0.0, CALL_EVERY_S - (time.monotonic() - tick)))
    return latencies, failed


def caller_process(port: int, auth: str, seconds: float) -> tuple[list[float], int]:
    """The calls from a process of their own: the attackers' event loop, busy reconnecting,
    must not delay them on the client's side."""
    return asyncio.run(caller(port, auth, seconds))


async def attacker(
    port: int, source: str, slow: bool, reconnect: bool, open_now: list[int], until: float
) -> None:
    """One connection at a time, reopened whenever the service closes it if ``reconnect``."""
    first = True
    while time.monotonic() < until and (first or reconnect):
        first = False
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.5)
            continue
        open_now[0] += 1
        try:
            if slow:
                writer.write(b"GET /api/sys/info HTTP/1.1\r\nHost: x\r\n")
            line = 0
            while time.monotonic() < until:
                wait = SLOW_LINE_EVERY_S if slow else until - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), max(wait, 0.01)) == b"":
                        break  # closed by the service
                if slow:
                    line += 1
                    writer.write(f"X-Slow-{line}: 1\r\n".encode())
        except OSError:
            pass
        finally:
            open_now[0] -= 1
            writer.close()
        await asyncio.sleep(0.05)  # as a flood would, reconnect (not a tight spin)


async def run_phase(
    serve: subprocess.Popen[bytes],
    port: int,
    auth: str,
    name: str,
    attackers: int,
    slow_share: float,
    seconds: float,
    reconnect: bool,
) -> Phase:
    phase = Phase(name, attackers)
    until = time.monotonic() + seconds
    open_now = [0]
    slow_count = int(attackers * slow_share)
    tasks = [
        asyncio.ensure_future(
            attacker(port, SOURCES[i % len(SOURCES)], i < slow_count, reconnect, open_now, until)
        )
        for i in range(attackers)
    ]
    await asyncio.sleep(min(3.0, seconds / 4))  # the flood builds up first
    loop = asyncio.get_running_loop()
    calls = loop.run_in_executor(
        CALLERS, caller_process, port, auth, until - time.monotonic() - 0.5
    )
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        phase.held.append(open_now[0])
        with contextlib.suppress(OSError):
            phase.descriptors.append(len(os.listdir(f"/proc/{serve.pid}/fd")))
    phase.latencies, phase.failed = await calls
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    return phase


async def measure(options: argparse.Namespace, work: Path) -> list[Phase]:
    serve = await start_serve(work)
    popen, port = serve.popen, serve.http_port
    auth = "Basic " + b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    try:
        seconds = options.seconds
        phases = [await run_phase(popen, port, auth, "no flood (baseline)", 0, 0, seconds, False)]
        kinds = [
            ("idle", 0.0, False),
            ("slow headers", 1.0, False),
            ("idle, reconnecting", 0.0, True),
            ("slow, reconnecting", 1.0, True),
        ]
        for attackers in options.attackers:
            for name, share, again in kinds:
                phases.append(
                    await run_phase(popen, port, auth, name, attackers, share, seconds, again)
                )
    finally:
        CHILDREN.end(popen)
    log = (work / "state" / "log" / "sysupd.log").read_text(errors="replace")
    print(f"  service log: {sum('connections' in ln for ln in log.splitlines())} lines on floods")
    return phases


def report(options: argparse.Namespace, phases: list[Phase]) -> None:
    print(f"sysupd connection flood benchmark — {revision()}")
    print(f"  {machine()}")
    print(
        f"  RLIMIT_NOFILE {DESCRIPTOR_LIMIT}, default limits; attackers over"
        f" {len(SOURCES)} addresses, {options.seconds:g} s a phase; a call every"
        f" {CALL_EVERY_S * 1000:.0f} ms on a new connection"
    )
    base = statistics.median(phases[0].latencies) if phases[0].latencies else float("nan")
    rows = [
        [
            "flood",
            "attackers",
            "sockets med",
            "service fds max",
            "calls",
            "within 1 s",
            "p50 ms",
            "p99 ms",
            "ratio",
        ]
    ]
    for phase in phases:
        lat = sorted(phase.latencies)
        total = len(lat) + phase.failed
        within = sum(1 for x in lat if x <= 1.0)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        rows.append(
            [
                phase.name,
                str(phase.attackers),
                str(int(statistics.median(phase.held))) if phase.held else "0",
                str(max(phase.descriptors, default=0)),
                f"{len(lat)}/{total}",
                f"{100 * within / max(total, 1):.1f} %",
                f"{p50 * 1000:.2f}",
                f"{p99 * 1000:.2f}",
                f"{p50 / base:.2f}",
            ]
        )
    table(rows)
    print("  sockets: the attackers' connected sockets (held, or in the kernel's accept queue);")
    print("  service fds: descriptors the service had open (its limit is 1024);")
    print("  ratio: the phase's median call latency over the baseline's.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--attackers",
        type=int,
        nargs="+",
        default=[500, 900, 1500, 3000],
        help="flood sizes to try, each idle then slow",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--workdir", type=Path, help="parent of the work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(options.attackers) + 256
    if soft < need:  # this process holds every attacker's socket
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))

    def body() -> None:
        with make_workdir(options.workdir, "sysupd-flood-", options.keep) as work:
            report(options, asyncio.run(measure(options, work)))

    return run_main("flood", _TIME_LIMIT_S, body)


if __name__ == "__main__":
    sys.exit(main())

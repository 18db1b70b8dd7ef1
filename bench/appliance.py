"""The scenarios of issue 12 on real boots of the reference appliance, one command for them all.

Run (as root: the image builder needs debootstrap and a chroot):
``.venv/bin/python bench/appliance.py [--only 1,3] [--keep] [--workdir DIR]``

1. Builds the appliance disk (``tools.appliance.build``), or reuses it from ``.cache/appliance``
   while its inputs are unchanged (a cold build takes 2 to 4 minutes, most of it debootstrap).
2. Runs each scenario of ``tools.appliance.suite.SCENARIOS`` in order, each on a fresh copy
   of the disk in QEMU (OVMF, TCG), in a directory of its own under the work directory: its
   serial console (``NAME/vm/serial.log``) stays there with ``--keep``.
3. Prints each scenario's result (PASS, or FAIL and what the guest reported instead) and its
   wall time — from the release's build to the machine's power-off, boots included — then a
   table of all of them. A failing scenario does not stop the others.

Exit status: 0 when every scenario ran and passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _harness import BenchError, run_main, workdir
from _report import machine, revision, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tools/

from tools.appliance.build import Appliance, build
from tools.appliance.commands import BuildError
from tools.appliance.scenarios import ScenarioFailed
from tools.appliance.suite import SCENARIOS, Scenario


async def run_scenario(
    scenario: Scenario, appliance: Appliance, work: Path
) -> tuple[bool, float, str]:
    """Run one scenario: whether it passed, its wall time and its summary (or what failed)."""
    began = time.monotonic()
    try:
        summary = await asyncio.wait_for(scenario.run(appliance, work), scenario.limit_s)
        passed = True
    except (ScenarioFailed, BuildError) as exc:
        summary, passed = str(exc), False
    except TimeoutError:
        summary, passed = f"did not end within {scenario.limit_s:g} s", False
    return passed, time.monotonic() - began, summary


def appliance_bench(options: argparse.Namespace, work: Path) -> bool:
    """Build, run the chosen scenarios, print their results; whether all passed."""
    print(f"bench/appliance.py: {revision()}; {machine()}")
    began = time.monotonic()
    try:
        appliance = build()
    except BuildError as exc:
        raise BenchError(f"the appliance disk could not be built: {exc}") from exc
    print(f"disk {appliance.disk} ready in {time.monotonic() - began:.0f} s")
    rows = [["scenario", "result", "wall time"]]
    passed_all = True
    for scenario in SCENARIOS:
        if options.only and scenario.number not in options.only:
            continue
        print(f"scenario {scenario.number}: {scenario.title} ...", flush=True)
        place = work / f"scenario-{scenario.number}"
        passed, seconds, summary = asyncio.run(run_scenario(scenario, appliance, place))
        passed_all &= passed
        verdict = "PASS" if passed else "FAIL"
        print(f"scenario {scenario.number}: {verdict} in {_minutes(seconds)}: {summary}")
        rows.append([f"{scenario.number}. {scenario.title}", verdict, _minutes(seconds)])
    print()
    table(rows)
    print(f"total {_minutes(time.monotonic() - began)}")
    return passed_all


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--only",
        type=lambda text: {int(n) for n in text.split(",")},
        help="the scenarios to run, e.g. 2,3 [default: all]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, help="parent of the work directory [default: /tmp]")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios; 0 when all passed, 1 otherwise."""
    options = _options(argv)
    passed: list[bool] = []

    def body() -> None:
        with workdir(options.workdir, "sysupd-bench-appliance-", options.keep) as work:
            passed.append(appliance_bench(options, work))

    limit = 600 + int(sum(scenario.limit_s for scenario in SCENARIOS))
    status = run_main("bench/appliance.py", limit, body)
    return status or (0 if passed and passed[0] else 1)


if __name__ == "__main__":
    sys.exit(main())

"""This start's boot as the service tells it: the slot learned at start, then the boot trial.

Before the listeners open, the engine learns the booted slot (settling an interrupted install,
noticing a fallback, recreating a lost or corrupt grubenv); then, in the background, the health
check runs and ``settle_boot`` confirms the slot or abandons a new one that failed, and the
service reboots into the previous slot.
Engine steps run in a worker thread: the bootloader's tool may run.

Invariants: ``settled`` is set exactly once, whatever happened, and after the trial's log line;
``status`` moves STARTING → TRIAL → (GOOD | UNHEALTHY | ROLLED_BACK | FAILED), or to ERROR with
``error`` saying why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sysupd.engine.boottrial import BootReport
from sysupd.engine.state import BootStatus
from sysupd.errors import SysupdError
from sysupd.system.health import run_health_check
from sysupd.system.reboot import RebootKind

if TYPE_CHECKING:
    from sysupd.api.service import Service

__all__ = ["BootWatch"]


class BootWatch:
    """The boot of one service start."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self.report: BootReport | None = None
        self.status = BootStatus.STARTING
        self.error = ""
        """Why the boot trial could not run, with ``BootStatus.ERROR``."""
        self.settled = asyncio.Event()

    def wire_status(self) -> str:
        """``sys/info``'s ``boot_status``: the status's word, or ``error: WHY``."""
        return f"error: {self.error}" if self.status is BootStatus.ERROR else str(self.status)

    async def learn(self) -> bool:
        """Learn the booted slot (before the listeners open, so every answer knows it); whether
        the trial can run."""
        service = self._service
        try:
            report = await asyncio.to_thread(service.engine().start)
        except SysupdError as exc:
            self.status, self.error = BootStatus.ERROR, str(exc)
            service.log.error(f"boot: {exc}")
            return False
        self.report = report
        service.log.info(f"booted slot {report.slot}, version {report.version}")
        if report.repaired:
            service.log.warning(f"boot: {report.repaired}")
        if report.interrupted:
            service.log.warning(f"boot: {report.interrupted}; the booted slot is unchanged")
        if report.rolled_back:
            service.log.warning(f"boot: rolled back: {report.rolled_back}")
        if report.trust_warning:
            service.log.warning(f"trust: {report.trust_warning}")
        self.status = BootStatus.TRIAL
        return True

    async def trial(self, learned: bool) -> None:
        """Confirm the booted slot with the health check, once it is known; ``settled`` after."""
        try:
            if learned:
                await self._run()
        finally:
            self.settled.set()

    async def _run(self) -> None:
        service = self._service
        settings = service.settings
        ok, detail = await run_health_check(
            settings.health_check_command, settings.health_check_timeout_s
        )
        try:
            verdict = await asyncio.to_thread(service.engine().settle_boot, ok, detail)
        except SysupdError as exc:
            self.status, self.error = BootStatus.ERROR, str(exc)
            service.log.error(f"boot trial: {exc}")
            return
        self.status = verdict.status
        if not verdict.reboot:
            if verdict.settled is not None:  # a new slot confirmed: its line says how
                service.log.info(f"boot trial: {verdict.settled.detail}")
            else:
                (service.log.info if ok else service.log.warning)(f"boot trial: {detail}")
            return
        slot = self.report.slot if self.report else "?"
        service.log.error(
            f"boot trial: {detail}; slot {slot} is abandoned and the previous slot boots next"
        )
        service.reboots.schedule(
            service.settings.auto_reboot_delay_s, RebootKind.RESTART, by="the boot trial"
        )

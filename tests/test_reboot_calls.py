"""sys/reboot, sys/reboot_time, sys/reboot_stop: the timer, its events and the reboot action."""

from __future__ import annotations

import asyncio

import pytest

from sysupd.api.service import Service
from sysupd.system.clock import ManualClock
from sysupd.system.reboot import ProcessExit
from tests.client import ApiError
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, wait_until


async def test_schedule_query_and_cancel(
    start_service: ServiceFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    service = await start_service(clock=clock)
    admin = await connect(service, login=ADMIN)
    user = await connect(service, login=USER)
    assert await user.call("sys", "reboot_time") == {"reboot_scheduled": False}

    reply = await admin.call("sys", "reboot", {})
    assert reply == {
        "reboot_delay_seconds": 300,
        "reboot_time": "2026-01-01T00:05:00Z",
        "reboot_type": "restart",
    }
    assert (await user.next_event("sys/reboot"))["args"] == reply
    clock.advance(100)
    assert await user.call("sys", "reboot_time") == {
        "reboot_scheduled": True,
        "reboot_delay_seconds": 200,
        "reboot_time": "2026-01-01T00:05:00Z",
        "reboot_type": "restart",
    }

    assert await admin.call("sys", "reboot_stop") == {"result": "success"}
    assert (await user.next_event("sys/reboot"))["args"] == {"reboot_scheduled": False}
    assert await user.call("sys", "reboot_time") == {"reboot_scheduled": False}
    assert await admin.call("sys", "reboot_stop") == {"result": "No reboot timer to stop"}


async def test_new_reboot_replaces_the_scheduled_one(
    start_service: ServiceFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    service = await start_service(clock=clock)
    admin = await connect(service, login=ADMIN)
    await admin.call("sys", "reboot", {"delay_seconds": 3600})
    reply = await admin.call("sys", "reboot", {"delay_seconds": 60, "poweroff": True})
    assert reply["reboot_type"] == "poweroff"
    state = await admin.call("sys", "reboot_time")
    assert state["reboot_delay_seconds"] == 60
    assert state["reboot_type"] == "poweroff"


@pytest.mark.parametrize(
    ("action", "poweroff", "expected"),
    [
        ("exec", False, ProcessExit.REEXEC),
        ("exec", True, ProcessExit.EXIT),
        ("exit", False, ProcessExit.EXIT),
    ],
)
async def test_due_reboot_runs_the_action(
    start_service: ServiceFactory,
    connect: ClientFactory,
    action: str,
    poweroff: bool,
    expected: ProcessExit,
) -> None:
    service = await start_service(reboot_action=action)
    admin = await connect(service, login=ADMIN)
    await admin.call("sys", "reboot", {"delay_seconds": 0, "poweroff": poweroff})
    how = await asyncio.wait_for(service.wait_exit_requested(), 5)
    assert how is expected
    assert await admin.call("sys", "reboot_time") == {"reboot_scheduled": False}


async def test_command_action_runs_the_command(
    start_service: ServiceFactory, connect: ClientFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    marker = tmp_path_factory.mktemp("cmd") / "rebooted"
    service = await start_service(reboot_action="command", reboot_command=f"touch {marker}")
    admin = await connect(service, login=ADMIN)
    await admin.call("sys", "reboot", {"delay_seconds": 0})
    await wait_until(
        lambda: any("exited with status 0" in line for line in service.log.lines()),
        5,
        "the log says the reboot command exited with status 0",
    )
    assert marker.exists()
    assert any(f"reboot command 'touch {marker}'" in line for line in service.log.lines())


async def test_failing_command_is_logged_and_service_keeps_running(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service(
        reboot_action="command", reboot_command="/nonexistent/reboot-tool now"
    )
    admin = await connect(service, login=ADMIN)
    await admin.call("sys", "reboot", {"delay_seconds": 0})
    await wait_until(
        lambda: any("could not start" in line for line in service.log.lines()),
        5,
        "the log says the reboot command could not start",
    )
    assert (await admin.call("sys", "info"))["system_id"] == service.system_id


@pytest.mark.parametrize("delay", [-1, "10", 1.5, True, None])
async def test_bad_delay_is_400_and_nothing_scheduled(
    service: Service, connect: ClientFactory, delay: object
) -> None:
    admin = await connect(service, login=ADMIN)
    with pytest.raises(ApiError) as refused:
        await admin.call("sys", "reboot", {"delay_seconds": delay})
    assert refused.value.code == "400"
    assert "delay_seconds" in refused.value.details
    assert service.reboots.plan is None

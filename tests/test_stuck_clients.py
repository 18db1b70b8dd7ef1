"""Clients that stop reading are cut off completely: nothing of them lingers in the service."""

from __future__ import annotations

import asyncio
import json

from sysupd.api.service import Service
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory, wait_until


async def test_pipelining_client_that_never_reads_is_removed(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service(session_queue_frames=8)
    stuck = await connect(service, login=ADMIN)
    healthy = await connect(service, login=USER)
    transport = stuck.ws._conn.transport  # type: ignore[union-attr]  # a client that stops reading
    assert transport is not None
    transport.pause_reading()
    for n in range(120):  # large replies, so the socket's buffers fill after a few frames
        service.log.info(f"padding {n} " + "p" * 4000)
    frame = json.dumps({"namespace": "sys", "name": "middleware_log", "id": "x", "args": {}})
    for _ in range(2000):
        if len(service.sessions) < 2:
            break
        try:
            await stuck.ws.send_str(frame)
        except ConnectionError:
            break  # the server cut it off
        service.events.publish("test/ping", {})
        await asyncio.sleep(0)  # a yield, not a wait: the service sends between our frames
    await wait_until(lambda: len(service.sessions) == 1, 10, "the stuck session is removed")
    assert (await healthy.call("sys", "info"))["system_id"] == service.system_id


async def test_unauthenticated_flooder_is_gone_after_the_login_deadline(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service(login_timeout_s=0.5, session_queue_frames=8)
    flooder = await connect(service)
    transport = flooder.ws._conn.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.pause_reading()
    junk = "x" * 60000
    for _ in range(200):
        try:
            await flooder.ws.send_str(junk)
        except ConnectionError:
            break
    await wait_until(lambda: not service.sessions, 15, "the flooder's session is removed")
    assert any("no login in time" in line for line in service.log.lines())


async def test_nothing_is_read_after_auth_clear(service: Service, connect: ClientFactory) -> None:
    client = await connect(service)
    await client.login(*ADMIN)
    await client.send_raw('{"namespace":"rpc","name":"auth_clear","id":"a","args":{}}')
    await client.send_raw('{"namespace":"sys","name":"reboot","id":"r","args":{}}')
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.unmatched.empty()
    assert service.reboots.plan is None


async def test_auth_clear_without_login_closes(service: Service, connect: ClientFactory) -> None:
    client = await connect(service)
    await client.send_raw('{"namespace":"rpc","name":"auth_clear","id":"a","args":{}}')
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.unmatched.empty()

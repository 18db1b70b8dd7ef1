"""Events go to every logged-in session, and a stuck client never delays the others."""

from __future__ import annotations

from sysupd.api.service import Service
from tests.conftest import ADMIN, USER, ClientFactory, ServiceFactory


async def test_event_reaches_every_logged_in_session(
    service: Service, connect: ClientFactory
) -> None:
    clients = [await connect(service, login=ADMIN if i % 2 else USER) for i in range(20)]
    assert service.events.publish("test/ping", {"n": 1}) == 20
    for client in clients:
        event = await client.next_event()
        assert event == {"namespace": "event", "name": "test/ping", "id": "event", "args": {"n": 1}}


async def test_stuck_client_is_closed_and_others_keep_up(
    start_service: ServiceFactory, connect: ClientFactory
) -> None:
    service = await start_service(session_queue_frames=8)
    stuck = await connect(service, login=ADMIN)
    healthy = await connect(service, login=USER)
    # The stuck client stops reading: its kernel buffers fill, then its queue on the server.
    transport = stuck.ws._conn.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.pause_reading()
    payload = "x" * 65536
    received = 0
    for n in range(400):
        service.events.publish("test/flood", {"n": n, "pad": payload})
        event = await healthy.next_event("test/flood")
        assert event["args"]["n"] == n
        received += 1
        if any("fell 8 frames behind" in line for line in service.log.lines()):
            break
    assert any("fell 8 frames behind" in line for line in service.log.lines())
    assert received < 400
    assert len(service.sessions) == 1  # only the healthy one is left
    reply = await healthy.call("sys", "info")
    assert reply["system_id"] == service.system_id
    transport.resume_reading()

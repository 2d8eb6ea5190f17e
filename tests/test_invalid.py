"""Bad requests get {ok: false}, nothing is published, and the GC keeps serving."""

from __future__ import annotations

import pytest
import zmq

from app import protocol
from conftest import ask, request

pytestmark = pytest.mark.timeout(60)

QUIET_WINDOW = 1.0  # seconds the spy listens for a publication that must not come


@pytest.fixture
def spy(system, zctx):
    """A subscriber to every topic of sede 1's GC, connected before the test sends."""
    sock = zctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://127.0.0.1:{system.ports['gc1-publish']}")
    # A slow joiner misses early messages: publish-and-see until the spy hears one.
    probe = request("DEVOLUCION", "L0001", "U-probe")
    for _ in range(50):
        ask(zctx, system.gc_endpoint(1), {**probe, "idSolicitud": f"P{_}",
                                          "idempotencyKey": f"probe-{_}"})
        if sock.poll(100):
            break
    assert system.wait_applied(20)
    while sock.poll(200):
        sock.recv_multipart()
    yield sock
    sock.close()


BAD = {
    "unknown operation": protocol.encode({**request("RESERVA", "L0001", "U1")}),
    "missing field": protocol.encode({k: v for k, v in request("DEVOLUCION", "L0001", "U1")
                                      .items() if k != "idLibro"}),
    "malformed JSON": b'{"op": "DEVOLUCION", "idLibro": ',
    "not an object": b"[1, 2, 3]",
    "oversized": protocol.encode({**request("DEVOLUCION", "L0001", "U1"),
                                  "pad": "x" * (protocol.MAX_MESSAGE_BYTES + 1)}),
    "unknown sede": protocol.encode({**request("DEVOLUCION", "L0001", "U1"), "sede": "SEDE9"}),
    "wrong type": protocol.encode({**request("RENOVACION", "L0001", "U1"), "idLibro": 17}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_is_refused_and_not_published(system, spy, zctx, case):
    answer = ask(zctx, system.gc_endpoint(1), BAD[case])

    assert answer["ok"] is False and answer["status"] == "invalid" and answer["error"]
    assert not spy.poll(QUIET_WINDOW * 1000), "an invalid request was published"
    follow_up = ask(zctx, system.gc_endpoint(1), request("DEVOLUCION", "L0002", "U2"))
    assert follow_up["ok"]
    assert spy.poll(5000), "a valid request after the bad one was not published"

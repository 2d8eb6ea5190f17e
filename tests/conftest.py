"""Fixtures that run the real system: processes on free loopback ports.

Every process a test starts is stopped by the fixture, also when the test fails;
sockets are closed with linger 0 and every receive has a timeout.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
import zmq

from app import cluster, protocol, seed, storage

ANSWER_TIMEOUT = 5.0  # seconds a test waits for any single answer


@pytest.fixture
def system(tmp_path) -> Iterator[cluster.Cluster]:
    """The primary GA, its replica, and both sedes' GCs and actors, all running."""
    with cluster.Cluster(str(tmp_path), run_id="test") as running:
        running.start_all()
        yield running


@pytest.fixture
def catalog() -> tuple[list[seed.Book], list[seed.Loan]]:
    return seed.build_catalog(42)


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def ask(context: zmq.Context, address: str, message: Any, timeout_s: float = ANSWER_TIMEOUT
        ) -> dict[str, Any]:
    """Send one frame (a dict is encoded as JSON, bytes go as they are) and return the answer."""
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send(message if isinstance(message, bytes) else protocol.encode(message))
        assert sock.poll(timeout_s * 1000), f"no answer from {address} in {timeout_s} s"
        return json.loads(sock.recv())
    finally:
        sock.close()


_counter = iter(range(1, 10**9))


def request(op: str, book: str, reader: str, sede: int = 1, key: str | None = None
            ) -> dict[str, Any]:
    number = next(_counter)
    request_id = f"T-{number}"
    return {"op": op, "idSolicitud": request_id, "idUsuario": reader, "idLibro": book,
            "sede": f"SEDE{sede}", "timestamp": protocol.utc_now_iso(),
            "idempotencyKey": key or f"{op}:{request_id}:{book}"}


def query(path: str, sql: str, *params: Any) -> list[tuple]:
    db = storage.open_readonly(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()

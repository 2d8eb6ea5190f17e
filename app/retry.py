"""Request/reply with a timeout, a fresh socket after every timeout, and backoff.

A REQ socket that timed out is stuck waiting for its reply, so it is closed with
linger 0 and replaced before the request is sent again (the lazy pirate
pattern). Waits between attempts double from BACKOFF_START up to BACKOFF_MAX with
random jitter, so many clients retrying at once do not hit a server in lockstep.
The caller keeps the same idempotency key in every resend.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import zmq

from app import protocol, wire

log = logging.getLogger("retry")

BACKOFF_START = 0.05  # seconds before the first resend
BACKOFF_MAX = 2.0  # seconds, cap of the doubling backoff
JITTER = 0.5  # each wait is drawn from [wait * (1 - JITTER), wait]


def backoff_delays(start: float = BACKOFF_START, cap: float = BACKOFF_MAX):
    """Endless waits: start, 2*start, ... capped, each with jitter."""
    wait = start
    while True:
        yield random.uniform(wait * (1 - JITTER), wait)
        wait = min(wait * 2, cap)


class LazyPirate:
    """One REQ connection to one endpoint, rebuilt after each timeout."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.context = context
        self.endpoint = endpoint
        self.socket: zmq.Socket | None = None

    def _open(self) -> zmq.Socket:
        if self.socket is None:
            self.socket = self.context.socket(zmq.REQ)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.connect(self.endpoint)
        return self.socket

    def reset(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """Send once and wait; the answer, or None after a timeout (socket renewed)."""
        sock = self._open()
        sock.send(protocol.encode(message))
        if sock.poll(wire.ms(timeout_s), zmq.POLLIN):
            return protocol.decode(sock.recv(), protocol.INTERNAL_MAX_BYTES)
        self.reset()
        return None

    def close(self) -> None:
        self.reset()

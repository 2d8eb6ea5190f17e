"""Taking every message a socket has waiting, without blocking and without exceptions.

A non-blocking receive on an empty socket raises ``zmq.Again``, and building that
exception costs more than the receive itself; asking the socket's EVENTS first
keeps the hot loops cheap.
"""

from __future__ import annotations

from typing import Iterator

import zmq


def waiting(sock: zmq.Socket, limit: int) -> Iterator[list[bytes]]:
    """Up to ``limit`` multipart messages that are already queued on ``sock``."""
    for _ in range(limit):
        if not sock.get(zmq.EVENTS) & zmq.POLLIN:
            return
        yield sock.recv_multipart(zmq.NOBLOCK)

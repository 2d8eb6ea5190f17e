"""Sending and taking multipart messages on the hot paths, cheaply.

pyzmq's convenience layer turns every flag and option into an enum and checks
every frame on each call; on a path that carries every request that costs more
than the ZeroMQ call itself. These helpers call the same socket methods of the
compiled layer with plain int flags. A non-blocking receive on an empty socket
raises ``zmq.Again``, and building that exception costs more than the receive;
``waiting`` asks the socket's EVENTS first instead. Poll timeouts go through
``ms``.
"""

from __future__ import annotations

import math
import select
import time
from typing import Iterator, Sequence

import zmq

try:
    from zmq.backend import Socket as _Compiled
    _send, _recv, _option = _Compiled.send, _Compiled.recv, _Compiled.get
except (ImportError, AttributeError):  # a pyzmq without the split: same calls, slower
    _send, _recv, _option = zmq.Socket.send, zmq.Socket.recv, zmq.Socket.getsockopt

EVENTS = int(zmq.EVENTS)
FD = int(zmq.FD)
RCVMORE = int(zmq.RCVMORE)
POLLIN = int(zmq.POLLIN)
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def ms(seconds: float) -> int:
    """A poll timeout in whole milliseconds, rounded up.

    pyzmq truncates a float timeout to whole milliseconds, so a wait of 0.6 ms
    would become a poll that returns at once, again and again until the time has
    passed: a busy loop.
    """
    return max(0, math.ceil(seconds * 1000))


def wait_readable(sock: zmq.Socket, seconds: float) -> bool:
    """Wait up to ``seconds``, to the microsecond, for a message on ``sock``.

    For schedules finer than ``ms`` allows. The socket's file descriptor only
    signals that its state may have changed, so EVENTS is asked before each wait.
    """
    deadline = time.perf_counter() + seconds
    fd = _option(sock, FD)
    while True:
        if has_message(sock):
            return True
        left = deadline - time.perf_counter()
        if left <= 0:
            return False
        select.select([fd], [], [], left)


def send(sock: zmq.Socket, frames: Sequence[bytes]) -> None:
    """Send ``frames`` (bytes each) as one multipart message."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, SNDMORE if i < last else 0)


def take(sock: zmq.Socket) -> list[bytes]:
    """One multipart message that is known to be waiting."""
    frames = [_recv(sock, NOBLOCK)]
    while _option(sock, RCVMORE):
        frames.append(_recv(sock, NOBLOCK))
    return frames


def has_message(sock: zmq.Socket) -> bool:
    return bool(_option(sock, EVENTS) & POLLIN)


def waiting(sock: zmq.Socket, limit: int) -> Iterator[list[bytes]]:
    """Up to ``limit`` multipart messages that are already queued on ``sock``."""
    for _ in range(limit):
        if not has_message(sock):
            return
        yield take(sock)

"""Several requests in flight to one GC, for request processes run at full speed.

A DEALER socket sends each request behind an empty delimiter frame, exactly as
a REQ socket would, so the GC sees no difference; answers come back in any
order and are matched by ``idSolicitud``. A request unanswered after its timeout
makes the whole socket suspect: it is replaced (linger 0) and every request
still in flight is sent again on the new one, with the same idempotency key,
after a backoff with jitter. A request is given up after its retries run out.

A paced process (``submit(request, due)``) sends each request at its due time
whether or not earlier ones were answered, and its answer time counts from that
due time: a stall then shows in every request it delayed, not only in the one
that was slow (no coordinated omission).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from app import protocol, wire
from app.retry import backoff_delays

log = logging.getLogger("pipeline")

MAX_TAKE = 1024  # answers taken in one pass; the rest wait for the next one


@dataclass
class InFlight:
    request: dict[str, Any]
    started: float
    sent: float
    attempts: int = 1


@dataclass
class Pipeline:
    context: zmq.Context
    endpoint: str
    window: int
    timeout_s: float
    retries: int
    on_answer: Callable[[dict[str, Any], dict[str, Any] | None, float], None]
    running: Callable[[], bool] = lambda: True
    flight: "OrderedDict[str, InFlight]" = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.socket = self._open()
        self.delays = backoff_delays()

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def submit(self, request: dict[str, Any], due: float | None = None) -> bool:
        """Send one request once its due time comes and the window has room.

        Answers are matched by ``idSolicitud``, so a request waits while another
        with the same id is in flight. False if the process was stopped first.
        """
        if due is not None:
            while self.running() and (wait := due - time.perf_counter()) > 0:
                self.pump(wait)
        request_id = request["idSolicitud"]
        while self.running() and (len(self.flight) >= self.window or request_id in self.flight):
            self.pump()
        if not self.running():
            return False
        if not self.flight:
            self.delays = backoff_delays()  # each burst of trouble starts with short waits
        now = time.perf_counter()
        self.flight[request_id] = InFlight(request, due or now, now)
        wire.send(self.socket, [b"", protocol.encode(request)])
        return True

    def drain(self) -> None:
        """Wait until every request in flight is answered or given up; on a stop,
        give up at once what is still in flight."""
        while self.flight and self.running():
            self.pump()
        now = time.perf_counter()
        for entry in self.flight.values():
            self.on_answer(entry.request, None, now - entry.started)
        self.flight.clear()

    def pump(self, at_most: float | None = None) -> None:
        """Take the answers that arrive within ``at_most`` seconds (or the timeout)."""
        if not self.flight:
            if at_most:
                time.sleep(at_most)
            return
        oldest = next(iter(self.flight.values()))
        wait = max(0.0, oldest.sent + self.timeout_s - time.perf_counter())
        paced = at_most is not None and at_most < wait  # back before the timeout is due
        if wire.wait_readable(self.socket, at_most if paced else wait):
            for frames in wire.waiting(self.socket, MAX_TAKE):
                self._take(frames[-1])
        elif not paced:
            self._resend_all()

    def _take(self, body: bytes) -> None:
        try:
            answer = protocol.from_text(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            log.warning("unreadable answer from %s: %r", self.endpoint, body[:80])
            return
        entry = self.flight.pop(str(answer.get("idSolicitud")), None)
        if entry is not None:  # else a late answer to a request already resent
            self.on_answer(entry.request, answer, time.perf_counter() - entry.started)
            self.delays = backoff_delays()

    def _resend_all(self) -> None:
        log.warning("no answer from %s in %.0f ms: new socket, resending %d requests",
                    self.endpoint, self.timeout_s * 1000, len(self.flight))
        self.socket.close(linger=0)
        time.sleep(next(self.delays))
        self.socket = self._open()
        now = time.perf_counter()
        for key, entry in list(self.flight.items()):
            if entry.attempts > self.retries:
                del self.flight[key]
                self.on_answer(entry.request, None, now - entry.started)
                continue
            entry.attempts += 1
            entry.sent = now
            wire.send(self.socket, [b"", protocol.encode(entry.request)])

    def close(self) -> None:
        self.socket.close(linger=0)

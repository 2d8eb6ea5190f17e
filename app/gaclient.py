"""An actor's connection to the GA pair, with timeouts and automatic failover.

Requests go to the GA that answered last. A timeout (the socket is then
replaced) or a ``not active`` answer moves the client to the other GA, after a
backoff with jitter, until one applies the batch; the same idempotency keys
travel in every resend, so a batch applied twice has its effect once.

The GA answers with the sequence number of each operation and ``replicated``,
the sequence known to be on both copies. Operations above that watermark are
kept: if the client has to move to the other GA they are sent there again first,
because an asynchronous replica may not have received them before the primary
died. ``take_safe`` hands back the keys that are on both copies, which is when a
return or renewal may be confirmed to the GC.

A batch holding a loan comes back only once the replica holds it too (the GA
holds the answer, see ``app.held``); if the GA dies meanwhile, the loan is
applied on the other GA and that outcome is the one answered.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from app import protocol
from app.retry import LazyPirate, backoff_delays

log = logging.getLogger("gaclient")

GA_TIMEOUT = 1.0  # seconds to wait for a GA answer before trying the other GA
PING_INTERVAL = 0.1  # seconds between watermark queries while keys wait


class StorageClient:
    def __init__(self, context: zmq.Context, endpoints: list[str], name: str,
                 running: Callable[[], bool] = lambda: True,
                 timeout_s: float = GA_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("at least one GA endpoint is needed")
        self.pirates = [LazyPirate(context, e) for e in endpoints]
        self.name = name
        self.running = running
        self.timeout_s = timeout_s
        self.current = 0
        self.holder: int | None = None  # which GA holds the unreplicated operations
        self.unreplicated: dict[str, tuple[dict[str, Any], int]] = {}
        self.safe: list[str] = []
        self.last_ping = 0.0
        self.retries = 0

    @property
    def endpoint(self) -> str:
        return self.pirates[self.current].endpoint

    def apply(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Apply ops on the active GA; their results, or None if stopped first."""
        delays = backoff_delays()
        keys = {op["idempotencyKey"] for op in ops}
        while self.running():
            carried = self._carried_over(keys)
            answer = self.pirates[self.current].request(
                {"type": "apply", "ops": carried + ops}, self.timeout_s)
            if answer is not None and answer.get("ok"):
                results = answer["results"]
                self._learn(carried + ops, results, answer)
                return results[len(carried):]
            why = "timed out" if answer is None else answer.get("error", "refused")
            self.retries += 1
            log.warning("%s: GA %s %s for %d ops (first %s); trying the other GA", self.name,
                        self.endpoint, why, len(ops), protocol.request_label(ops[0]))
            self.current = (self.current + 1) % len(self.pirates)
            time.sleep(next(delays))
        return None

    def _carried_over(self, sending: set[str]) -> list[dict[str, Any]]:
        """Operations the previous GA acknowledged but may not have replicated."""
        if self.holder is None or self.holder == self.current or not self.unreplicated:
            return []
        carried = [op for key, (op, _) in self.unreplicated.items() if key not in sending]
        log.warning("%s: resending %d unreplicated ops to %s", self.name, len(carried),
                    self.endpoint)
        return carried

    def _learn(self, ops: list[dict[str, Any]], results: list[dict[str, Any]],
               answer: dict[str, Any]) -> None:
        if self.holder != self.current:
            self.unreplicated.clear()
        self.holder = self.current
        for op, result in zip(ops, results):
            self.unreplicated[op["idempotencyKey"]] = (op, int(result.get("seq", 0)))
        self._release(int(answer.get("replicated", 0)))

    def _release(self, replicated: int) -> None:
        done = [k for k, (_, seq) in self.unreplicated.items() if seq <= replicated]
        for key in done:
            del self.unreplicated[key]
        self.safe.extend(done)

    def refresh(self) -> None:
        """Ask the GA holding our operations how far replication got (rate-limited)."""
        now = time.monotonic()
        if not self.unreplicated or now - self.last_ping < PING_INTERVAL:
            return
        self.last_ping = now
        answer = self.pirates[self.current].request({"type": "ping"}, self.timeout_s)
        if answer and answer.get("active") and self.holder == self.current:
            self._release(int(answer.get("replicated", 0)))

    def take_safe(self) -> list[str]:
        keys, self.safe = self.safe, []
        return keys

    def close(self) -> None:
        for pirate in self.pirates:
            pirate.close()

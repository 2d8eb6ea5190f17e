"""The link from one GA to its peer: heartbeats, and log shipping to the replica.

Each GA keeps one REQ socket to its peer and sends it, every HEARTBEAT_INTERVAL
(at once again while entries keep coming), a ``peer`` message carrying its state
and ``after``, the last sequence it holds (see ``app.failover`` for the wire
format). The active GA answers with the entries after that sequence, in order;
the passive GA applies them in one transaction each batch, so every change
reaches the replica exactly once, in order, and a restarted replica resumes from
its own last sequence. The request path never waits for any of this.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from app import failover, protocol, storage

log = logging.getLogger("replication")

LAG_LOG_INTERVAL = 5.0  # seconds between lag lines in the replica's log


class Follower:
    """One outstanding message to the peer at a time; a silent peer gets a fresh socket."""

    def __init__(self, context: zmq.Context, endpoint: str, library: storage.Library,
                 pair: failover.Pair) -> None:
        self.context = context
        self.endpoint = endpoint
        self.library = library
        self.pair = pair
        self.socket = self._open()
        self.sent_at: float | None = None
        self.next_at = 0.0
        self.caught_up_at = time.monotonic()
        self.lag_logged_at = 0.0

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def tick(self) -> None:
        """Send the next heartbeat when due; replace the socket if the peer is silent."""
        now = time.monotonic()
        if self.sent_at is not None:
            if now - self.sent_at < failover.HEARTBEAT_INTERVAL * 2:
                return
            self.socket.close(linger=0)
            self.socket = self._open()
            self.sent_at = None
        if now >= self.next_at:
            self.socket.send(protocol.encode({
                "type": "peer", "state": self.pair.state, "role": self.pair.role,
                "term": self.pair.term, "seq": self.library.last_seq,
                "after": self.library.last_seq}))
            self.sent_at = now

    def on_reply(self) -> None:
        answer = protocol.decode(self.socket.recv(), protocol.INTERNAL_MAX_BYTES)
        self.sent_at = None
        self.pair.on_peer_answer(answer)
        entries = answer.get("entries") or []
        if entries and self.pair.state == failover.PASSIVE:
            applied = self.library.replay(entries)
            log.debug("replayed %d entries, now at seq %d", applied, self.library.last_seq)
        self.pair.on_promote(answer)
        self._note_lag(answer)
        # Keep pulling at once while behind; otherwise wait for the next heartbeat.
        behind = self.pair.state == failover.PASSIVE and answer.get("seq", 0) > self.library.last_seq
        self.next_at = time.monotonic() + (0 if behind or entries else failover.HEARTBEAT_INTERVAL)

    def _note_lag(self, answer: dict[str, Any]) -> None:
        now = time.monotonic()
        lag_ops = max(0, int(answer.get("seq", 0)) - self.library.last_seq)
        if lag_ops == 0:
            self.caught_up_at = now
        if self.pair.state == failover.PASSIVE and now - self.lag_logged_at > LAG_LOG_INTERVAL:
            log.info("replica at seq %d, active peer at %s: lag %d ops, %.2f s",
                     self.library.last_seq, answer.get("seq"), lag_ops, now - self.caught_up_at)
            self.lag_logged_at = now

    def close(self) -> None:
        self.socket.close(linger=0)

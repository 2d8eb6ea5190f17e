"""Storage manager (GA): owns one copy of the library database and applies writes.

Wire protocol on its ROUTER socket (one JSON frame after the envelope)::

    -> {"type": "apply", "ops": [<request>, ...]}
    <- {"ok": true, "results": [<result>, ...], "seq": 812, "replicated": 809,
        "role": "primary", "active": true}
    -> {"type": "ping"}
    <- {"ok": true, "role": "primary", "active": true, "seq": 812, "replicated": 809}
    -> {"type": "status"}
    <- {"ok": true, ..., "books_on_loan": {"1": 50, "2": 150}, "available": 2882}

A GA that is not active answers ``apply`` with ``{"ok": false, "error": "not active"}``
so clients move on to the other GA. Replication and failover messages are
described in ``app.replication`` and ``app.failover``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import zmq

from app import (config, failover, held, lifecycle, metrics, priority, protocol, replication,
                 storage, wire)
from app import log as logsetup

log = logging.getLogger("ga")

POLL_INTERVAL = 0.1  # seconds between housekeeping passes when idle
MAX_BATCH = 500  # operations applied in one transaction
STOP_HANDOVER_WAIT = 3.0  # seconds a stopping active GA waits for its peer to take over


class StorageManager:
    def __init__(self, args) -> None:
        self.library = storage.Library(args.db)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(args.bind)
        self.metrics = metrics.MetricsWriter(args.metrics_dir, "ga", args.role, args.run_id,
                                             args.host)
        self.pair = failover.Pair(args.role, self.library, has_peer=bool(args.peer))
        self.shipper = replication.Follower(self.context, args.peer, self.library,
                                            self.pair) if args.peer else None
        self.held = held.Held(self._reply)
        self.unshipped_since: float | None = None  # first write the replica has not pulled
        self.pull_held = False  # the replica's pull waits here for new entries
        self.loans_waiting = 0  # loan answers held until the replica has them
        self.running = True
        self.stop_requested = False  # set by SIGTERM/SIGINT
        self.leave_by: float | None = None  # end of the handover a stop started
        log.info("GA %s on %s, db %s at seq %d, peer %s", args.role, args.bind, args.db,
                 self.library.last_seq, args.peer or "none")

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.shipper:
            poller.register(self.shipper.socket, zmq.POLLIN)
        while self.running:
            if self.stop_requested:
                self._leave()
            events = dict(poller.poll(wire.ms(self._poll_timeout())))
            if not events:
                logsetup.idle()
            if self.socket in events:
                self._drain()
            self.held.release()
            if self.shipper:
                if self.shipper.socket in events:
                    self.shipper.on_reply()
                old = self.shipper.socket
                self.shipper.tick()
                if self.shipper.socket is not old:
                    poller.unregister(old)
                    poller.register(self.shipper.socket, zmq.POLLIN)

    def _leave(self) -> None:
        """On a stop, an active GA with a live peer first hands writing over to it.

        Writes pause, the peer pulls every remaining entry and is told to take
        over; then this GA exits. So ``systemctl stop`` of the primary loses no
        acknowledged entry and the replica takes over without waiting for the
        primary to fall silent. Bounded by STOP_HANDOVER_WAIT.
        """
        if self.leave_by is None:
            self.leave_by = time.monotonic() + STOP_HANDOVER_WAIT
            if self.pair.state == failover.ACTIVE and self.pair.peer_alive():
                answer = self.pair.on_peer_message({"type": "handover"})
                log.warning("stopping: handing over to the peer first: %s", answer)
        handing_over = self.pair.state == failover.HANDING_OVER
        if not handing_over or time.monotonic() > self.leave_by:
            if handing_over:
                log.warning("stopping: the peer did not take over within %.1f s",
                            STOP_HANDOVER_WAIT)
            self.running = False

    def _poll_timeout(self) -> float:
        """Until the next thing due: a held answer's deadline or a message to the peer."""
        due = [POLL_INTERVAL]
        deadline = self.held.next_deadline()
        if deadline is not None:
            due.append(deadline - time.monotonic())
        if self.unshipped_since is not None and self.pull_held:
            due.append(self.unshipped_since + held.PULL_LINGER - time.monotonic())
        if self.shipper:
            due.append(self.shipper.due_in())
        return max(0.0, min(due))

    def _drain(self) -> None:
        """Take every waiting request; apply the writes in one transaction."""
        writes: list[tuple[list[bytes], dict[str, Any]]] = []
        for frames in wire.waiting(self.socket, MAX_BATCH):
            envelope, body = frames[:-1], frames[-1]
            try:
                message = protocol.decode(body, protocol.INTERNAL_MAX_BYTES)
                kind = message.get("type")
                if kind == "apply":
                    if not isinstance(message.get("ops"), list) or not message["ops"]:
                        raise protocol.InvalidRequest("apply needs a non-empty list of ops")
                    writes.append((envelope, message))
                elif kind == "peer":
                    self._answer_peer(envelope, message)
                else:
                    self._reply(envelope, self._control(message))
            except (ValueError, TypeError, KeyError) as exc:  # InvalidRequest included
                log.warning("bad message refused: %s", exc)
                self._reply(envelope, {"ok": False, "error": f"bad message: {exc}"})
        if writes:
            try:
                self._apply(writes)
            except Exception as exc:  # the batch rolled back; the GA keeps serving
                log.exception("batch of %d requests failed and was rolled back", len(writes))
                for envelope, _ in writes:
                    self._reply(envelope, {"ok": False, "error": f"batch failed: {exc}"})

    def _control(self, message: dict[str, Any]) -> dict[str, Any]:
        kind = message.get("type")
        if kind == "ping":
            return {"ok": True, **self.pair.describe()}
        if kind == "status":
            return {"ok": True, **self.pair.describe(), **state_summary(self.library)}
        answer = self.pair.on_peer_message(message)
        if answer is not None:
            return answer
        return {"ok": False, "error": f"unknown message type {kind!r}"}

    def _answer_peer(self, envelope: list[bytes], message: dict[str, Any]) -> None:
        """Answer the peer at once, unless it is a caught-up replica's pull: hold that."""
        answer = self.pair.on_peer_message(message)
        assert answer is not None
        quiet = not (answer["entries"] or answer.get("promote") or answer.get("diverged")
                     or answer.get("snapshot"))
        caught_up = message.get("after") == self.library.last_seq
        if not (quiet and caught_up and self.pair.state == failover.ACTIVE):
            self._reply(envelope, answer)
            return
        start = self.library.last_seq
        self.pull_held = True
        self.held.hold(envelope, lambda: self._pull_ready(start), lambda: self._ship(message),
                       held.PULL_HOLD)

    def _pull_ready(self, start: int) -> bool:
        """Ship now: a loan waits for the replica, enough entries, or they waited enough."""
        if self.pair.state != failover.ACTIVE:
            return True
        news = self.library.last_seq - start
        if news <= 0:
            return False
        return bool(self.loans_waiting or news >= held.PULL_BATCH or (
            time.monotonic() - (self.unshipped_since or 0.0) >= held.PULL_LINGER))

    def _ship(self, message: dict[str, Any]) -> dict[str, Any]:
        self.unshipped_since = None
        self.pull_held = False
        return self.pair.ship(message)

    def _apply(self, writes: list[tuple[list[bytes], dict[str, Any]]]) -> None:
        if not self.pair.may_write():
            for envelope, _ in writes:
                self._reply(envelope, {"ok": False, "error": "not active",
                                       **self.pair.describe()})
            return
        ops: list[dict[str, Any]] = []
        answers: list[tuple[list[bytes], list[Any]]] = []  # per request: op index or result
        for envelope, message in writes:
            slots: list[Any] = []
            for op in message.get("ops", []):
                try:
                    ops.append(protocol.validate(op if isinstance(op, dict) else {}))
                    slots.append(len(ops) - 1)
                except protocol.InvalidRequest as exc:
                    label = protocol.request_label(op) if isinstance(op, dict) else "-"
                    log.warning("refused invalid op %s: %s", label, exc)
                    slots.append({"ok": False, "status": "invalid", "error": str(exc)})
            answers.append((envelope, slots))
        started = time.perf_counter()
        results = self.library.apply_batch(ops, self.pair.term) if ops else []
        elapsed = time.perf_counter() - started
        if ops and self.unshipped_since is None:
            self.unshipped_since = time.monotonic()
        for op, result in zip(ops, results):
            status = "repeat" if result.get("repeat") else result["status"]
            log.info("%s %s -> %s%s", op["op"], protocol.request_label(op), status,
                     f" ({result['error']})" if result.get("error") else "")
            self.metrics.record(op["op"], op["idSolicitud"], op["idempotencyKey"], status,
                                elapsed, sede=op["sede"], run_id=op.get("runId"))
        for envelope, slots in answers:
            mine = [results[s] if isinstance(s, int) else s for s in slots]
            self._answer_writes(envelope, mine, [ops[s] for s in slots if isinstance(s, int)])

    def _answer_writes(self, envelope: list[bytes], results: list[dict[str, Any]],
                       ops: list[dict[str, Any]]) -> None:
        """Answer now, or, for a batch with a loan, once the replica holds it."""
        def build() -> dict[str, Any]:
            return {"ok": True, "results": results, **self.pair.describe()}

        newest = max((r.get("seq", 0) for r in results), default=0)
        has_loan = any(op["op"] == protocol.LOAN for op in ops)
        if not has_loan or self.pair.replicated() >= newest:
            self._reply(envelope, build())
            return
        started = time.monotonic()
        self.loans_waiting += 1

        def answered() -> dict[str, Any]:
            self.loans_waiting -= 1
            if self.pair.replicated() < newest:
                log.warning("loan batch up to seq %d answered before the replica holds it "
                            "(waited %.2f s)", newest, time.monotonic() - started)
            return build()

        self.held.hold(envelope, lambda: self.pair.replicated() >= newest, answered,
                       held.LOAN_REPLICA_WAIT)

    def _reply(self, envelope: list[bytes], answer: dict[str, Any]) -> None:
        wire.send(self.socket, [*envelope, protocol.encode(answer)])

    def stop(self) -> None:
        self.stop_requested = True  # the loop hands over first (see _leave)

    def close(self) -> None:
        if self.shipper:
            self.shipper.close()
        self.metrics.close()
        self.socket.close(linger=0)
        self.context.term()
        self.library.close()


def state_summary(library: storage.Library) -> dict[str, Any]:
    """Books on loan per sede and copies available, for status and inspection."""
    on_loan, total, available = storage.holdings(library.db)
    return {"books_on_loan": {str(k): v for k, v in on_loan.items()},
            "copies_total": total, "copies_available": available}


def main(argv: list[str] | None = None) -> int:
    p = config.parser("Storage manager (GA): applies operations to the library database")
    p.add_argument("--role", choices=("primary", "backup"), default="primary")
    p.add_argument("--bind", default="tcp://0.0.0.0:5570")
    p.add_argument("--peer", default="", help="the other GA's endpoint; empty for none")
    p.add_argument("--db", default="biblioteca.db")
    args = config.parse(p, argv)
    logsetup.configure(args.log_level)
    priority.request(args.realtime)
    return lifecycle.run(StorageManager(args), f"GA {args.role}")


if __name__ == "__main__":
    sys.exit(main())

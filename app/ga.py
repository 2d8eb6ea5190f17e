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
import signal
import sys
import time
from typing import Any

import zmq

from app import config, failover, metrics, protocol, replication, storage, wire
from app import log as logsetup

log = logging.getLogger("ga")

POLL_INTERVAL = 0.1  # seconds between housekeeping passes when idle
MAX_BATCH = 500  # operations applied in one transaction


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
        self.running = True
        log.info("GA %s on %s, db %s at seq %d, peer %s", args.role, args.bind, args.db,
                 self.library.last_seq, args.peer or "none")

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.shipper:
            poller.register(self.shipper.socket, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(POLL_INTERVAL * 1000))
            if not events:
                logsetup.idle()
            if self.socket in events:
                self._drain()
            if self.shipper:
                if self.shipper.socket in events:
                    self.shipper.on_reply()
                old = self.shipper.socket
                self.shipper.tick()
                if self.shipper.socket is not old:
                    poller.unregister(old)
                    poller.register(self.shipper.socket, zmq.POLLIN)

    def _drain(self) -> None:
        """Take every waiting request; apply the writes in one transaction."""
        writes: list[tuple[list[bytes], dict[str, Any]]] = []
        for frames in wire.waiting(self.socket, MAX_BATCH):
            envelope, body = frames[:-1], frames[-1]
            try:
                message = protocol.decode(body, protocol.INTERNAL_MAX_BYTES)
            except protocol.InvalidRequest as exc:
                log.warning("bad message: %s", exc)
                self._reply(envelope, {"ok": False, "error": str(exc)})
                continue
            if message.get("type") == "apply":
                writes.append((envelope, message))
            else:
                self._reply(envelope, self._control(message))
        if writes:
            self._apply(writes)

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

    def _apply(self, writes: list[tuple[list[bytes], dict[str, Any]]]) -> None:
        if not self.pair.may_write():
            for envelope, _ in writes:
                self._reply(envelope, {"ok": False, "error": "not active",
                                       **self.pair.describe()})
            return
        ops: list[dict[str, Any]] = []
        owners: list[tuple[list[bytes], int, int]] = []
        for envelope, message in writes:
            batch = [op for op in message.get("ops", []) if isinstance(op, dict)]
            valid = []
            for op in batch:
                try:
                    valid.append(protocol.validate(op))
                except protocol.InvalidRequest as exc:
                    log.warning("refused invalid op %s: %s", protocol.request_label(op), exc)
            owners.append((envelope, len(ops), len(ops) + len(valid)))
            ops.extend(valid)
        started = time.perf_counter()
        results = self.library.apply_batch(ops, self.pair.term) if ops else []
        elapsed = time.perf_counter() - started
        for op, result in zip(ops, results):
            log.debug("%s %s -> %s", op["op"], protocol.request_label(op), result["status"])
            self.metrics.record(op["op"], op["idSolicitud"], op["idempotencyKey"],
                                "repeat" if result.get("repeat") else result["status"],
                                elapsed, sede=op["sede"], run_id=op.get("runId"))
        described = self.pair.describe()
        for envelope, start, end in owners:
            self._reply(envelope, {"ok": True, "results": results[start:end], **described})

    def _reply(self, envelope: list[bytes], answer: dict[str, Any]) -> None:
        self.socket.send_multipart([*envelope, protocol.encode(answer)])

    def close(self) -> None:
        if self.shipper:
            self.shipper.close()
        self.metrics.close()
        self.socket.close(linger=0)
        self.context.term()
        self.library.close()


def state_summary(library: storage.Library) -> dict[str, Any]:
    """Books on loan per sede and copies available, for status and inspection."""
    db = library.db
    on_loan = dict(db.execute("SELECT sede, count(*) FROM loans WHERE status = 'ACTIVE'"
                              " GROUP BY sede").fetchall())
    total, available = db.execute("SELECT sum(total), sum(available) FROM books").fetchone()
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
    manager = StorageManager(args)

    def stop(signum, frame):
        manager.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manager.serve()
    finally:
        manager.close()
        log.info("GA stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

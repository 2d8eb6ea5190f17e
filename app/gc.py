"""Load manager (GC) of one sede: the request processes' only contact.

On its ROUTER socket (``bind``) it takes requests from PS (REQ) and answers::

    -> {"op": "DEVOLUCION", "idSolicitud": "S1-7", ..., "idempotencyKey": "k7"}
    <- {"ok": true, "status": "accepted", "msg": "the library is receiving the book",
        "idSolicitud": "S1-7"}
    -> {"op": "RENOVACION", ...}
    <- {"ok": true, "status": "accepted", "nuevaFechaEntrega": "2026-12-11", ...}
    -> {"op": "PRESTAMO", ...}          (forwarded to the loan actor, answered when applied)
    <- {"ok": true, "status": "granted", "fechaEntrega": "2026-12-18", ...}
    -> not JSON / unknown op / missing field
    <- {"ok": false, "status": "invalid", "error": "missing field(s): idLibro"}
    -> {"type": "status"}
    <- {"ok": true, "sede": 1, "accepted": 120, "pending": 3, "holding": 0, ...}

Returns and renewals are stored in the outbox before the answer, then published
together every PUBLISH_LINGER (so the actors and the GA work in batches) on the
PUB socket (``publish``), each as two frames, topic and JSON; a renewal carries
``fechaActual`` and ``nuevaFechaEntrega``; the socket is an XPUB, so the GC
knows (and its status says, as ``subscribed``) which topics have a subscriber.
Actors confirm applied keys on the PULL socket (``confirm``) as
``{"confirm": ["k7", ...]}``.

The answers may run ahead of what is applied, but only so far: while
``--max_backlog`` accepted entries are unconfirmed, new requests (loans too) are
held unanswered, in arrival order, until the actors catch up; status requests
are still answered, and frames that are not a JSON object of the allowed size
are refused at once. The request processes simply wait longer. Once MAX_HELD
requests are held, the GC stops reading its socket (status requests wait too)
until the held ones can go.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
from collections import deque
from typing import Any, Iterable

import zmq

from app import config, lifecycle, outbox, priority, protocol, wire
from app import log as logsetup

log = logging.getLogger("gc")

MAX_DRAIN = 512  # requests taken from the socket before their outbox commit
RESEND_SCAN = 0.25  # seconds between passes over unconfirmed outbox entries
PUBLISH_LINGER = 0.02  # seconds accepted entries may gather before they are published
PUBLISH_BATCH = 256  # accepted entries that are published at once, linger or not
PUB_HWM = 200_000  # messages queued per subscriber before ZeroMQ would drop
MAX_BACKLOG = 20_000  # default: accepted returns/renewals not yet confirmed applied
MAX_HELD = 2_000  # requests held while the backlog is full; past that the socket waits


class LoadManager:
    def __init__(self, args) -> None:
        self.sede = int(args.sede)
        self.sede_name = f"SEDE{self.sede}"
        os.makedirs(args.state_dir, exist_ok=True)
        self.outbox = outbox.Outbox(os.path.join(args.state_dir, f"outbox-sede{self.sede}.db"))
        self.context = zmq.Context()
        self.requests = self._socket(zmq.ROUTER, bind=args.bind)
        # XPUB: a PUB that also hears which topics its subscribers want.
        self.publisher = self._socket(zmq.XPUB, bind=args.publish)
        self.subscribed: set[str] = set()  # topics with at least one subscriber
        self.publisher.setsockopt(zmq.SNDHWM, PUB_HWM)
        self.confirms = self._socket(zmq.PULL, bind=args.confirm)
        self.confirms.setsockopt(zmq.RCVHWM, 0)
        self.loans = self._socket(zmq.DEALER, connect=args.loan_actor)
        self.max_backlog = int(args.max_backlog)
        self.held: deque[list[bytes]] = deque()  # requests waiting for the backlog to shrink
        self.holding = False  # for one log line when holding starts and one when it ends
        self.unpublished: list[tuple[str, str, str]] = []  # accepted, in the outbox
        self.publish_by: float | None = None  # when the oldest of them must go
        self.counts = {"accepted": 0, "answered": 0, "invalid": 0, "repeats": 0,
                       "loans_forwarded": 0, "confirmed": 0, "republished": 0}
        self.running = True
        log.info("GC sede %d: requests %s, publish %s, confirm %s, loan actor %s, "
                 "%d unconfirmed in outbox", self.sede, args.bind, args.publish, args.confirm,
                 args.loan_actor, self.outbox.pending())

    def _socket(self, kind: int, bind: str = "", connect: str = "") -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if bind:
            sock.bind(bind)
        if connect:
            sock.connect(connect)
        return sock

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self.loans, self.confirms, self.publisher):
            poller.register(sock, zmq.POLLIN)
        listening = False
        next_scan = 0.0
        while self.running:
            if listening != (len(self.held) < MAX_HELD):  # full: leave them in the socket
                listening = not listening
                if listening:
                    poller.register(self.requests, zmq.POLLIN)
                else:
                    poller.unregister(self.requests)
            release = bool(self.held) and not self._backlog_full()
            wait = 0.0 if release else RESEND_SCAN if self.publish_by is None else max(
                0.0, self.publish_by - time.monotonic())
            events = dict(poller.poll(wire.ms(wait)))
            if not events and self.publish_by is None and not self.held:
                logsetup.idle()
            if self.publisher in events:
                self._take_subscriptions()
            if self.confirms in events:
                self._take_confirmations()
            if self.loans in events:
                self._relay_loan_answers()
            if self.requests in events or release:
                self._take_requests()
            if self.unpublished and (len(self.unpublished) >= PUBLISH_BATCH
                                     or time.monotonic() >= self.publish_by):
                self._publish(self.unpublished)
                self.unpublished, self.publish_by = [], None
            if time.monotonic() >= next_scan:
                self.outbox.flush_confirmed()
                due = self.outbox.due()
                self._publish(due)
                self.counts["republished"] += len(due)
                next_scan = time.monotonic() + RESEND_SCAN

    def _backlog_full(self) -> bool:
        full = self.outbox.pending() >= self.max_backlog
        if full != self.holding:
            self.holding = full
            if full:
                log.warning("%d accepted and not yet applied: holding new requests until "
                            "the actors catch up", self.outbox.pending())
            else:
                log.info("backlog below %d again: taking requests", self.max_backlog)
        return full

    def _hold(self, arrived: Iterable[list[bytes]]) -> None:
        """Queue requests behind those held already; answer status requests, and refuse
        what is not a JSON object of the allowed size, at once (neither waits on the
        backlog, and an oversized frame is not kept)."""
        for frames in arrived:
            try:
                if is_status(protocol.decode(frames[-1])):
                    self._send_status(frames[:-1])
                    continue
            except protocol.InvalidRequest as exc:
                self._refuse_invalid(frames[:-1], frames[-1], exc)
                continue
            self.held.append(frames)
            if len(self.held) >= MAX_HELD:
                return

    def _take_requests(self) -> None:
        batch: Iterable[list[bytes]] = wire.waiting(
            self.requests, MAX_DRAIN if len(self.held) < MAX_HELD else 0)
        if self.held or self._backlog_full():  # arrivals queue behind what is held
            self._hold(batch)
            if self._backlog_full():
                return
            batch = [self.held.popleft() for _ in range(min(len(self.held), MAX_DRAIN))]
        to_store: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        stored_now: dict[str, dict[str, Any]] = {}  # key -> answer, this drain
        waiting: list[tuple[list[bytes], dict[str, Any]]] = []
        later: list[list[bytes]] = []  # past the backlog bound: back to the head of the queue
        for frames in batch:
            envelope, body = frames[:-1], frames[-1]
            try:
                request = protocol.decode(body)
                if is_status(request):
                    self._send_status(envelope)
                    continue
                request = protocol.contract_only(protocol.validate(request))
            except protocol.InvalidRequest as exc:
                self._refuse_invalid(envelope, body, exc)
                continue
            if later or self.outbox.pending() + len(to_store) >= self.max_backlog:
                later.append(frames)
                continue
            label = protocol.request_label(request)
            if request["op"] == protocol.LOAN:
                log.info("loan %s forwarded to the loan actor", label)
                wire.send(self.loans, [*envelope, protocol.encode(request)])
                self.counts["loans_forwarded"] += 1
                continue
            key = request["idempotencyKey"]
            earlier = stored_now.get(key) or self.outbox.answer_for(key)
            if earlier is not None:
                log.info("repeat %s %s: answering as before", request["op"], label)
                self.counts["repeats"] += 1
                waiting.append((envelope, {**earlier, "repeat": True}))
                continue
            payload, answer = self._accept(request)
            to_store.append((key, request["op"], payload, answer))
            stored_now[key] = answer
            waiting.append((envelope, answer))
        if to_store:
            if self.publish_by is None:
                self.publish_by = time.monotonic() + PUBLISH_LINGER
            self.unpublished.extend(self.outbox.accept(to_store))
            self.counts["accepted"] += len(to_store)
        for envelope, answer in waiting:
            self._send(envelope, answer)
        self.held.extendleft(reversed(later))

    def _accept(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The message to publish and the answer for the PS."""
        answer = {"ok": True, "status": "accepted", "idSolicitud": request["idSolicitud"],
                  "op": request["op"]}
        payload = dict(request)
        if request["op"] == protocol.RENEWAL:
            today = protocol.today()
            new_due = (today + dt.timedelta(days=protocol.RENEWAL_DAYS)).isoformat()
            payload["fechaActual"] = today.isoformat()
            payload["nuevaFechaEntrega"] = new_due
            answer["nuevaFechaEntrega"] = new_due
            answer["msg"] = f"renewal received; new due date {new_due}"
        else:
            answer["msg"] = "the library is receiving the book"
        log.info("accepted %s %s", request["op"], protocol.request_label(request))
        return payload, answer

    def _refuse_invalid(self, envelope: list[bytes], body: bytes,
                        exc: protocol.InvalidRequest) -> None:
        self.counts["invalid"] += 1
        request_id = "-"
        try:
            request_id = str(protocol.decode(body).get("idSolicitud", "-"))[:80]
        except protocol.InvalidRequest:
            pass
        log.warning("invalid request req=%s: %s", request_id, exc)
        self._send(envelope, {"ok": False, "status": "invalid", "error": str(exc),
                              "idSolicitud": request_id})

    def _publish(self, entries: list[tuple[str, str, str]]) -> None:
        for _, topic, payload in entries:
            wire.send(self.publisher, [topic.encode(), payload.encode()])

    def _relay_loan_answers(self) -> None:
        for frames in wire.waiting(self.loans, MAX_DRAIN):
            wire.send(self.requests, frames)
            self.counts["answered"] += 1

    def _take_subscriptions(self) -> None:
        """Frames ``\\x01TOPIC`` (a first subscriber) and ``\\x00TOPIC`` (the last one left)."""
        for frames in wire.waiting(self.publisher, MAX_DRAIN):
            flag, topic = frames[0][:1], frames[0][1:].decode("utf-8", "replace")
            if flag == b"\x01":
                self.subscribed.add(topic)
                log.info("topic %s has a subscriber", topic)
            elif flag == b"\x00":
                self.subscribed.discard(topic)
                log.warning("topic %s has no subscriber left", topic)

    def _take_confirmations(self) -> None:
        for frames in wire.waiting(self.confirms, MAX_DRAIN):
            try:
                message = protocol.decode(frames[-1])
            except protocol.InvalidRequest as exc:
                log.warning("bad confirmation: %s", exc)
                continue
            keys = [k for k in message.get("confirm", []) if isinstance(k, str)]
            self.counts["confirmed"] += self.outbox.confirm(keys)

    def _send(self, envelope: list[bytes], answer: dict[str, Any]) -> None:
        wire.send(self.requests, [*envelope, protocol.encode(answer)])
        self.counts["answered"] += 1

    def _send_status(self, envelope: list[bytes]) -> None:
        wire.send(self.requests, [*envelope, protocol.encode(self.status())])

    def status(self) -> dict[str, Any]:
        return {"ok": True, "sede": self.sede, "pending": self.outbox.pending(),
                "holding": len(self.held), "subscribed": sorted(self.subscribed), **self.counts}

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        log.info("GC sede %d counts: %s", self.sede, self.counts)
        for sock in (self.requests, self.publisher, self.confirms, self.loans):
            sock.close(linger=0)
        self.context.term()
        self.outbox.close()


def is_status(request: dict[str, Any]) -> bool:
    return request.get("type") == "status" and "op" not in request


def main(argv: list[str] | None = None) -> int:
    p = config.parser("Load manager (GC) of one sede")
    p.add_argument("--sede", type=int, choices=(1, 2), default=1)
    p.add_argument("--bind", default="tcp://0.0.0.0:5555", help="ROUTER for PS requests")
    p.add_argument("--publish", default="tcp://0.0.0.0:5560", help="PUB for actors")
    p.add_argument("--confirm", default="tcp://0.0.0.0:5561", help="PULL for confirmations")
    p.add_argument("--loan_actor", default="tcp://127.0.0.1:5580")
    p.add_argument("--state_dir", default=".", help="folder of the outbox database")
    p.add_argument("--max_backlog", type=int, default=MAX_BACKLOG,
                   help="accepted returns/renewals not yet applied beyond which new "
                        f"requests wait (default {MAX_BACKLOG})")
    args = config.parse(p, argv)
    if isinstance(args.max_backlog, bool) or not (
            isinstance(args.max_backlog, int) and args.max_backlog >= 1):
        p.error("--max_backlog must be a whole number of at least 1")
    logsetup.configure(args.log_level)
    priority.request(args.realtime)
    return lifecycle.run(LoadManager(args), f"GC sede {args.sede}")


if __name__ == "__main__":
    sys.exit(main())

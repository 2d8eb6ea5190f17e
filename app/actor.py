"""Actors of one sede: they apply operations through the active GA.

``--kind return`` and ``--kind renewal`` subscribe to the GC's topic
(DEVOLUCION or RENOVACION), apply what arrives in batches, and confirm to the
GC, on its PULL socket, the keys whose effect is on both copies of the data::

    SUB  <- [b"DEVOLUCION", {"op": "DEVOLUCION", "idSolicitud": "S1-7", ...}]
    PUSH -> {"confirm": ["k7", "k8"]}

``--kind loan`` binds a ROUTER that the GC forwards loan requests to, and
answers each once the GA has applied it (the loan is synchronous)::

    -> [envelope..., {"op": "PRESTAMO", ...}]
    <- [envelope..., {"ok": true, "status": "granted", "fechaEntrega": "2026-12-18"}]
    -> [envelope..., {"type": "ping"}]
    <- [envelope..., {"ok": true, "actor": "loan-sede1"}]
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import zmq

from app import config, gaclient, lifecycle, metrics, priority, protocol, wire
from app import log as logsetup

log = logging.getLogger("actor")

MAX_BATCH = 256  # operations sent to the GA in one request
IDLE_POLL = 0.05  # seconds to wait for work before checking replication again
TOPICS = {"return": protocol.RETURN, "renewal": protocol.RENEWAL}
OPERATION = {**TOPICS, "loan": protocol.LOAN}


class Actor:
    def __init__(self, args) -> None:
        self.kind = args.kind
        self.name = f"{args.kind}-sede{args.sede}"
        self.context = zmq.Context()
        self.running = True
        endpoints = args.ga if isinstance(args.ga, list) else args.ga.split(",")
        self.storage = gaclient.StorageClient(self.context, endpoints, self.name,
                                              running=lambda: self.running,
                                              timeout_s=args.ga_timeout)
        self.metrics = metrics.MetricsWriter(args.metrics_dir, "actor", self.name, args.run_id,
                                             args.host, sede=f"SEDE{args.sede}")
        if self.kind == "loan":
            self.inbox = self.context.socket(zmq.ROUTER)
            self.inbox.bind(args.bind)
            self.confirms = None
        else:
            self.inbox = self.context.socket(zmq.SUB)
            self.inbox.setsockopt(zmq.RCVHWM, 0)
            self.inbox.setsockopt(zmq.SUBSCRIBE, TOPICS[self.kind].encode())
            self.inbox.connect(args.gc_publish)
            self.confirms = self.context.socket(zmq.PUSH)
            self.confirms.setsockopt(zmq.SNDHWM, 0)
            self.confirms.connect(args.gc_confirm)
        self.inbox.setsockopt(zmq.LINGER, 0)
        log.info("actor %s ready: inbox %s, GA %s", self.name,
                 args.bind if self.kind == "loan" else args.gc_publish, endpoints)

    def serve(self) -> None:
        while self.running:
            if self.inbox.poll(wire.ms(IDLE_POLL), zmq.POLLIN):
                batch = self._drain()
                if batch:
                    self._handle(batch)
            else:
                self.storage.refresh()
                logsetup.idle()
            self._confirm()

    def _drain(self) -> list[tuple[list[bytes], dict[str, Any], float]]:
        batch = []
        for frames in wire.waiting(self.inbox, MAX_BATCH):
            received = time.perf_counter()
            try:
                request = protocol.decode(frames[-1])
                if self.kind == "loan" and request.get("type") == "ping":
                    wire.send(self.inbox, [*frames[:-1], protocol.encode(
                        {"ok": True, "actor": self.name})])
                    continue
                protocol.validate(request)
                if request["op"] != OPERATION[self.kind]:
                    raise protocol.InvalidRequest(
                        f"the {self.kind} actor does not handle {request['op']}")
            except protocol.InvalidRequest as exc:
                log.warning("%s: dropped invalid message: %s", self.name, exc)
                if self.kind == "loan":
                    wire.send(self.inbox, [*frames[:-1], protocol.encode(
                        {"ok": False, "status": "invalid", "error": str(exc)})])
                continue
            batch.append((frames[:-1], request, received))
        return batch

    def _handle(self, batch: list[tuple[list[bytes], dict[str, Any], float]]) -> None:
        # A resent publication may arrive twice in one batch; apply each key once.
        unique: dict[str, dict[str, Any]] = {}
        for _, request, _ in batch:
            unique.setdefault(request["idempotencyKey"], request)
        ops = list(unique.values())
        results = self.storage.apply(ops)
        if results is None:
            return  # stopping; the GC resends what was not confirmed
        done = time.perf_counter()
        by_key = {op["idempotencyKey"]: r for op, r in zip(ops, results)}
        for envelope, request, received in batch:
            result = by_key[request["idempotencyKey"]]
            status = "repeat" if result.get("repeat") else result["status"]
            log.info("%s %s %s -> %s%s", self.name, request["op"],
                     protocol.request_label(request), status,
                     f" ({result['error']})" if result.get("error") else "")
            self.metrics.record(request["op"], request["idSolicitud"],
                                request["idempotencyKey"], status, done - received,
                                run_id=request.get("runId"))
            if self.kind == "loan":
                answer = {**result, "idSolicitud": request["idSolicitud"], "op": request["op"]}
                wire.send(self.inbox, [*envelope, protocol.encode(answer)])

    def _confirm(self) -> None:
        keys = self.storage.take_safe()
        if keys and self.confirms is not None:
            self.confirms.send(protocol.encode({"confirm": keys}))

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.storage.close()
        self.metrics.close()
        self.inbox.close(linger=0)
        if self.confirms is not None:
            self.confirms.close(linger=1000)  # let the last confirmations leave
        self.context.term()


def main(argv: list[str] | None = None) -> int:
    p = config.parser("Actor of one sede: applies returns, renewals or loans through the GA")
    p.add_argument("--kind", choices=("return", "renewal", "loan"), required=True)
    p.add_argument("--sede", type=int, choices=(1, 2), default=1)
    p.add_argument("--gc_publish", default="tcp://127.0.0.1:5560")
    p.add_argument("--gc_confirm", default="tcp://127.0.0.1:5561")
    p.add_argument("--bind", default="tcp://0.0.0.0:5580", help="loan actor's ROUTER")
    p.add_argument("--ga", default="tcp://127.0.0.1:5570",
                   help="GA endpoints, comma-separated: primary first")
    p.add_argument("--ga_timeout", type=float, default=gaclient.GA_TIMEOUT,
                   help="seconds to wait for a GA answer")
    args = config.parse(p, argv)
    logsetup.configure(args.log_level)
    priority.request(args.realtime)
    return lifecycle.run(Actor(args), f"actor {args.kind}-sede{args.sede}")


if __name__ == "__main__":
    sys.exit(main())

"""Request process (PS): sends a file of requests to its sede's GC, one at a time.

The file holds one JSON request per line (see ``app.protocol``); blank lines are
skipped, a line that is not a JSON object is reported and skipped. A missing id,
timestamp or idempotency key is filled in. Each request waits up to
``--timeout_ms`` for its answer; after a timeout the socket is replaced and the
request sent again with the same key, up to ``--retries`` times, with a growing
backoff. Each answer is printed; the run ends with::

    [PS sede1-1] total=40 ok=35 refused=4 failed=1 skipped=0

and the exit status is 1 if any request got no answer at all (``failed``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
import zlib
from typing import Any, Iterator

import zmq

from app import config, metrics, priority, protocol
from app import log as logsetup
from app.pipeline import Pipeline
from app.retry import LazyPirate, backoff_delays

log = logging.getLogger("ps")

TIMEOUT_MS = 2000  # default wait for one answer
RETRIES = 3  # default resends after the first attempt


def read_requests(path: str, shard: tuple[int, int] = (0, 1)
                  ) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, request or None, error) for each non-blank line of this shard.

    Lines are shared among ``count`` processes by reader, so one reader's requests
    stay in file order within one process; bad lines go to shard 0.
    """
    index, count = shard
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            request: Any = None
            try:
                request = protocol.from_text(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as exc:
                error = f"not UTF-8 text: {exc}"
            except json.JSONDecodeError as exc:
                error = f"malformed JSON: {exc}"
            else:
                error = "" if isinstance(request, dict) else "not a JSON object"
            if error:
                if index == 0:
                    yield number, None, error
                continue
            reader = str(request.get("idUsuario", ""))
            if zlib.crc32(reader.encode()) % count == index:
                yield number, protocol.complete(request), ""


class RequestProcess:
    def __init__(self, args) -> None:
        self.args = args
        self.name = args.name
        self.context = zmq.Context()
        self.gc = LazyPirate(self.context, args.endpoint)
        self.metrics = metrics.MetricsWriter(args.metrics_dir, "ps", self.name, args.run_id,
                                             args.host, sede=args.sede)
        self.totals = {"total": 0, "ok": 0, "refused": 0, "failed": 0, "skipped": 0}
        self.pipeline = None
        if args.window > 1 or args.rate:
            self.pipeline = Pipeline(self.context, args.endpoint, args.window,
                                     args.timeout_ms / 1000, args.retries, self._record,
                                     running=lambda: self.running)
        self.running = True

    def run(self) -> dict[str, int]:
        shard = tuple(int(x) for x in self.args.shard.split("/"))
        start, sent = time.perf_counter(), 0
        for number, request, error in read_requests(self.args.file, shard):  # type: ignore
            if not self.running:
                break
            self.totals["total"] += 1
            if request is None:
                self.totals["skipped"] += 1
                log.error("%s line %d skipped: %s", self.args.file, number, error)
                continue
            request.setdefault("runId", self.args.run_id)
            due = start + sent / self.args.rate if self.args.rate else None
            if not self._send(request, due):
                self.totals["total"] -= 1  # stopped before it was sent
                break
            sent += 1
            if self.args.interval:
                time.sleep(self.args.interval)
        if self.pipeline is not None:
            self.pipeline.drain()
        return self.totals

    def _send(self, request: dict[str, Any], due: float | None = None) -> bool:
        """Send one request (at ``due``, if paced); False if stopped before it went."""
        if self.pipeline is not None:
            return self.pipeline.submit(request, due)
        label = protocol.request_label(request)
        started = time.perf_counter()
        delays = backoff_delays()
        answer = None
        for attempt in range(self.args.retries + 1):
            answer = self.gc.request(request, self.args.timeout_ms / 1000)
            if answer is not None or not self.running:
                break
            log.warning("%s %s: no answer in %d ms (attempt %d of %d)", request.get("op"),
                        label, self.args.timeout_ms, attempt + 1, self.args.retries + 1)
            if attempt < self.args.retries:
                time.sleep(next(delays))
        self._record(request, answer, time.perf_counter() - started)
        return True

    def _record(self, request: dict[str, Any], answer: dict[str, Any] | None,
                elapsed: float) -> None:
        if answer is None:
            status = "failed"
        elif answer.get("ok"):
            status = "ok"
        else:
            status = "invalid" if answer.get("status") == "invalid" else "refused"
        self.totals["refused" if status == "invalid" else status] += 1
        self.metrics.record(str(request.get("op")), str(request.get("idSolicitud")),
                            str(request.get("idempotencyKey")), status, elapsed,
                            sede=str(request.get("sede", self.args.sede)))
        if not self.args.quiet:
            shown = json.dumps(answer, ensure_ascii=False) if answer else "no answer"
            print(f"[PS {self.name}] {status.upper():7} {request.get('op')} "
                  f"{request.get('idSolicitud')} -> {shown}", flush=True)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.gc.close()
        self.metrics.close()
        self.context.term()


def out_of_range(args) -> str:
    """What is wrong with the numeric settings (from flags or the config file), if anything."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            math.isfinite(value))

    if not (isinstance(args.window, int) and args.window >= 1):
        return "--window must be a whole number of at least 1"
    if not (number(args.rate) and args.rate >= 0):
        return "--rate must be a number of requests per second, 0 or more (0: no schedule)"
    if not (number(args.interval) and args.interval >= 0):
        return "--interval must be a number of seconds, 0 or more"
    if not (isinstance(args.timeout_ms, int) and args.timeout_ms >= 1):
        return "--timeout_ms must be a whole number of milliseconds, at least 1"
    if not (isinstance(args.retries, int) and args.retries >= 0):
        return "--retries must be a whole number, 0 or more"
    return ""


def main(argv: list[str] | None = None) -> int:
    p = config.parser("Request process (PS): sends a JSONL file of requests to a GC")
    p.add_argument("--file", required=True, help="JSONL request file")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the GC's address")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between requests")
    p.add_argument("--timeout_ms", type=int, default=TIMEOUT_MS)
    p.add_argument("--retries", type=int, default=RETRIES)
    p.add_argument("--sede", default="", help="sede label for metrics rows")
    p.add_argument("--name", default="ps", help="instance name for logs and metrics")
    p.add_argument("--shard", default="0/1",
                   help="i/n: send only the lines of readers in share i of n")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--window", type=int, default=1,
                   help="requests in flight at once (1: one at a time, as a reader would)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="send this many requests per second on schedule, answered or not "
                        "(at most --window in flight; answer times count from the schedule)")
    args = config.parse(p, argv)
    problem = out_of_range(args)
    if problem:
        p.error(problem)
    logsetup.configure(args.log_level)
    priority.request(args.realtime)
    process = RequestProcess(args)

    def stop(signum, frame):
        process.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        totals = process.run()
    finally:
        process.close()
    print(f"[PS {process.name}] " + " ".join(f"{k}={v}" for k, v in totals.items()),
          flush=True)
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

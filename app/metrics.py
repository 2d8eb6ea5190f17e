"""Per-process metrics: one CSV row per timed event.

Columns (M1): run_id, host, sede, component, instance, op, request_id,
idempotency_key, status, latency_ms, ts. Long-running services tag a row with
the run id the request carried (``runId``, set by the PS), so rows of one run can
be picked out of a service's file. Files from several hosts are merged
from these raw rows, so percentiles are never averaged.
"""

from __future__ import annotations

import csv
import os
import time
from typing import TextIO

COLUMNS = ("run_id", "host", "sede", "component", "instance", "op", "request_id",
           "idempotency_key", "status", "latency_ms", "ts")
FLUSH_EVERY = 1.0  # seconds between flushes of buffered rows


class MetricsWriter:
    """Appends rows to ``<dir>/<component>-<instance>-<run_id>.csv``; no-op without a dir."""

    def __init__(self, directory: str | None, component: str, instance: str,
                 run_id: str, host: str, sede: str = "") -> None:
        self.fixed = (run_id, host, sede, component, instance)
        self.path: str | None = None
        self._handle: TextIO | None = None
        self._last_flush = time.monotonic()
        if directory:
            os.makedirs(directory, exist_ok=True)
            self.path = os.path.join(directory, f"{component}-{instance}-{run_id}.csv")
            fresh = not os.path.exists(self.path)
            self._handle = open(self.path, "a", newline="", buffering=1 << 16)
            self._csv = csv.writer(self._handle)
            if fresh:
                self._csv.writerow(COLUMNS)

    def record(self, op: str, request_id: str, key: str, status: str,
               latency_s: float, sede: str | None = None, run_id: str | None = None) -> None:
        """One row; ``run_id`` and ``sede`` default to the process's own."""
        if self._handle is None:
            return
        own_run, host, own_sede, component, instance = self.fixed
        self._csv.writerow((run_id or own_run, host, sede or own_sede, component, instance, op,
                            request_id, key, status, f"{latency_s * 1000:.3f}",
                            f"{time.time():.6f}"))
        now = time.monotonic()
        if now - self._last_flush > FLUSH_EVERY:
            self._handle.flush()
            self._last_flush = now

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

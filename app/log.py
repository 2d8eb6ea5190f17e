"""One logging setup for every process: time, component, level and message.

Request lines are many (one per request per hop), so they are written through
a buffer and flushed at least every FLUSH_INTERVAL, at once for a warning or an
error, whenever the process goes idle (``idle()``) and at exit.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
FLUSH_INTERVAL = 0.5  # seconds a buffered log line may wait
BUFFER_BYTES = 64 * 1024


class BufferedHandler(logging.StreamHandler):
    """A stderr handler that flushes by time and severity instead of by line."""

    def __init__(self) -> None:
        raw = os.fdopen(os.dup(sys.stderr.fileno()), "wb", buffering=BUFFER_BYTES)
        super().__init__(io.TextIOWrapper(raw, encoding="utf-8", errors="replace",
                                          write_through=False))
        self.flushed_at = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # ends with self.flush(), which decides

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.flushed_at >= FLUSH_INTERVAL or (
                self._last_level >= logging.WARNING):
            self.acquire()
            try:
                self.stream.flush()
            finally:
                self.release()
            self.flushed_at = now

    def handle(self, record: logging.LogRecord) -> bool:
        self._last_level = record.levelno
        return super().handle(record)

    def close(self) -> None:
        self.flush(force=True)
        super().close()

    _last_level = logging.NOTSET


class Formatter(logging.Formatter):
    """The standard format, with the date part of the time made once per second."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


_handler: BufferedHandler | None = None


def configure(level: str = "INFO") -> None:
    global _handler
    # Nothing in FORMAT needs the caller's file, thread or process: not looking
    # them up makes a record several times cheaper to build.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    _handler = BufferedHandler()
    _handler.setFormatter(Formatter())
    logging.basicConfig(level=level.upper(), handlers=[_handler], force=True)


def idle() -> None:
    """Called by loops with nothing to do: write out whatever is buffered."""
    if _handler is not None:
        _handler.flush(force=True)

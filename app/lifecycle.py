"""Running a service until SIGTERM or SIGINT, and always closing it.

``systemctl stop`` sends SIGTERM; the handler only asks the service to stop
(``stop()``), and the service's own loop finishes its current pass, so sockets,
databases and metrics files are closed from the main flow, never from inside a
signal handler.
"""

from __future__ import annotations

import gc
import logging
import signal
from typing import Protocol

log = logging.getLogger("lifecycle")


class Service(Protocol):
    def serve(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


def run(service: Service, name: str) -> int:
    """Serve until asked to stop; close in every case; exit status 0."""
    signal.signal(signal.SIGTERM, lambda signum, frame: service.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: service.stop())
    # Everything built so far (modules, sockets, caches) lives as long as the
    # process: out of the collector's sight, its full passes stay short.
    gc.freeze()
    try:
        service.serve()
    finally:
        service.close()
        log.info("%s stopped", name)
    return 0

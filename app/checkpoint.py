"""WAL checkpoints off the request path.

SQLite copies the write-ahead log back into the database file (a checkpoint)
from inside whichever commit crosses its page threshold; that commit then takes
milliseconds instead of tens of microseconds, and every request queued behind it
waits too. A database opened through ``Checkpointer`` turns that off and runs a
passive checkpoint every INTERVAL from a thread with its own connection instead:
a passive checkpoint never blocks the writer, and the thread waits inside SQLite
without holding the interpreter lock.

Under steady writes the log never starts over by itself: it can only do so
when a write begins with every frame already copied, and some write is always
under way while a checkpoint copies. So when the log has grown past
RESTART_PAGES, the thread follows the passive checkpoint with a RESTART one,
which holds the writer back only while it copies the few frames written since.
The log file thus stays around RESTART_PAGES plus what is written in one
INTERVAL (measured: up to 27 MiB for an outbox at 3,000 commits/s), and is cut
back to SIZE_LIMIT when it starts over.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from app import priority

log = logging.getLogger("checkpoint")

INTERVAL = 0.5  # seconds between passive checkpoints
RESTART_PAGES = 4000  # log pages (4 KiB each) after which the log is made to start over
BUSY_TIMEOUT = 1.0  # seconds a RESTART checkpoint waits for the writer to pause
SIZE_LIMIT = 16 * 1024 * 1024  # bytes the log file is cut back to when it starts over


class Checkpointer:
    def __init__(self, writer: sqlite3.Connection, path: str) -> None:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute(f"PRAGMA journal_size_limit={SIZE_LIMIT}")
        self.path = path
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"checkpoint {path}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        priority.normal_for_this_thread()  # bulk copying: never ahead of requests
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
        try:
            while not self.stopping.wait(INTERVAL):
                try:
                    _, pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if pages > RESTART_PAGES:
                        db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                except sqlite3.Error as exc:  # a busy database: the next pass tries again
                    log.warning("checkpoint of %s skipped: %s", self.path, exc)
        finally:
            db.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

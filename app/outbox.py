"""The GC's outbox: accepted returns and renewals, kept until an actor confirms.

Every accepted request is written here (and committed) before the PS gets its
answer, so a GC that dies after answering still holds it. Entries are published
until the actor confirms the operation is applied on the storage side; at most
WINDOW entries are in flight at once, so the PUB socket's queue never overflows.
Keys stay after confirmation, so a repeated request gets its first answer back,
marked as a repeat.

An entry unconfirmed for RESEND_AFTER is published again only if it looks lost:
its topic's actor has confirmed an entry published after it (an actor applies
and confirms in publication order), or has confirmed nothing at all for
RESEND_AFTER (it is down, or cannot reach the GA). An actor that is merely
behind is left to catch up: republishing its whole backlog would only make it
further behind.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable

from app import checkpoint, protocol

RESEND_AFTER = 3.0  # seconds without confirmation before an entry is published again
WINDOW = 20000  # entries published and not yet confirmed, at most

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    answer TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    confirmed_at REAL
);
-- Open entries are read once, at start, by a scan: an index on them would cost
-- every commit a page more for that one query.
DROP INDEX IF EXISTS outbox_open;
"""


class Outbox:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.checkpoints = checkpoint.Checkpointer(self.db, path)
        self.confirmed: list[str] = []  # confirmed, not yet marked in the file
        self.published = 0  # publications so far; each open entry keeps the number of its last
        self.confirmed_upto: dict[str, int] = {}  # topic -> newest publication confirmed
        self.progress_at: dict[str, float] = {}  # topic -> when a confirmation last came
        # Every key ever accepted, so a new key (nearly all of them) needs no lookup.
        self.known: set[str] = {key for (key,) in self.db.execute("SELECT key FROM outbox")}
        # Everything unconfirmed from an earlier life is due for publishing now.
        # An open entry: [topic, payload, published at (0.0: not yet), publication number].
        self.open: dict[str, list[Any]] = {
            key: [topic, payload, 0.0, 0] for key, topic, payload in self.db.execute(
                "SELECT key, topic, payload FROM outbox WHERE confirmed_at IS NULL")}

    def answer_for(self, key: str) -> dict[str, Any] | None:
        """The answer already given for this key, if any."""
        if key not in self.known:
            return None
        row = self.db.execute("SELECT answer FROM outbox WHERE key = ?", (key,)).fetchone()
        return protocol.from_text(row[0]) if row else None

    def accept(self, entries: list[tuple[str, str, dict[str, Any], dict[str, Any]]]
               ) -> list[tuple[str, str, str]]:
        """Store (key, topic, payload, answer) rows in one committed transaction.

        Returns the entries to publish at once (all of them while the window has
        room; the rest wait for ``due``).
        """
        now = time.time()
        rows = [(k, t, protocol.to_text(p), protocol.to_text(a), now) for k, t, p, a in entries]
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR IGNORE INTO outbox (key, topic, payload, answer, accepted_at)"
            " VALUES (?, ?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")
        send_now = len(self.open) < WINDOW
        sent_at = time.monotonic()
        publish = []
        for key, topic, payload, _, _ in rows:
            self.known.add(key)
            if key not in self.open:
                entry = self.open[key] = [topic, payload, 0.0, 0]
                if send_now:
                    publish.append(self._publication(key, entry, sent_at))
        return publish

    def _publication(self, key: str, entry: list[Any], now: float) -> tuple[str, str, str]:
        """Number an entry's next publication; (key, topic, payload) to publish."""
        self.published += 1
        entry[2], entry[3] = now, self.published
        return key, entry[0], entry[1]

    def confirm(self, keys: Iterable[str]) -> int:
        """Mark keys applied; returns how many were still open.

        The marks reach the file in batches (``flush_confirmed``): a confirmation
        lost in a crash only makes the entry be published once more, and the
        idempotency key absorbs that.
        """
        now = time.monotonic()
        done = 0
        for key in keys:
            entry = self.open.pop(key, None)
            if entry is None:
                continue
            topic, number = entry[0], entry[3]
            self.confirmed_upto[topic] = max(self.confirmed_upto.get(topic, 0), number)
            self.progress_at[topic] = now
            self.confirmed.append(key)
            done += 1
        return done

    def flush_confirmed(self) -> None:
        if not self.confirmed:
            return
        now = time.time()
        self.db.execute("BEGIN")
        self.db.executemany("UPDATE outbox SET confirmed_at = ? WHERE key = ?",
                            [(now, k) for k in self.confirmed])
        self.db.execute("COMMIT")
        self.confirmed = []

    def due(self) -> list[tuple[str, str, str]]:
        """Entries to publish now: never published, or unconfirmed and looking lost."""
        now = time.monotonic()
        in_flight = sum(1 for e in self.open.values() if e[2])
        budget = WINDOW - in_flight
        batch = []
        for key, entry in self.open.items():
            topic, _, sent_at, number = entry
            if sent_at == 0.0:
                if budget <= 0:
                    continue
                budget -= 1
            elif not (now - sent_at >= RESEND_AFTER and (
                    number < self.confirmed_upto.get(topic, 0)
                    or now - self.progress_at.get(topic, 0.0) >= RESEND_AFTER)):
                continue
            batch.append(self._publication(key, entry, now))
        return batch

    def pending(self) -> int:
        return len(self.open)

    def close(self) -> None:
        self.flush_confirmed()
        self.checkpoints.stop()
        self.db.close()

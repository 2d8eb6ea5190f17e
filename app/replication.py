"""The link from one GA to its peer: heartbeats, and log shipping to the replica.

Each GA keeps one REQ socket to its peer and sends it a ``peer`` message
carrying its state and ``after``, the last sequence it holds (see
``app.failover`` for the wire format): every HEARTBEAT_INTERVAL from an active
GA, and from a passive GA again as soon as the last answer came. The active GA
answers with the entries after that sequence, in order, and holds the pull of a
replica that already has everything until new entries exist (``app.held``), so
changes reach the replica within one round trip. The passive GA applies each
batch in one transaction, so every change reaches the replica exactly once, in
order, and a restarted replica resumes from its own last sequence. The request
path never waits for any of this, except a loan's answer (``app.held``).

A pull names the entry it ends with, so the active GA can tell a copy that is
merely behind from one that diverged (an old primary that wrote entries the
replica never received before it took over)::

    -> {"type": "peer", ..., "after": 812, "after_term": 3, "after_key": "k812"}
    <- {"ok": true, ..., "diverged": true, "common": 790, "common_key": "k790"}
    -> {"type": "peer", ..., "resync_from": 790}
    <- {"ok": true, ..., "snapshot": {"seq": 1040, "books": {...}, "loans": {...},
        "oplog": {...}}}

The diverged copy keeps its log up to ``common`` (the last entry both hold: the
same key at the same sequence, in a term the diverged copy knew), drops the rest
of its log, and installs the active GA's books, loans and log entries after
``common`` in one transaction. The dropped entries were acknowledged by a GA
that died before replicating them; the actors resend those (``app.gaclient``).
A snapshot travels in one message, so it holds at most about
protocol.INTERNAL_MAX_BYTES of log entries after the common point.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from app import failover, protocol, storage

log = logging.getLogger("replication")

LAG_LOG_INTERVAL = 5.0  # seconds between lag lines in the replica's log
PULL_INTERVAL = 0.001  # seconds between a held pull's answer and the next pull
RESYNC_TIMEOUT = 10.0  # seconds to wait for a snapshot before asking again
SNAPSHOT_TABLES = ("books", "loans")  # copied whole; the oplog only after the common point


class Follower:
    """One outstanding message to the peer at a time; a silent peer gets a fresh socket."""

    def __init__(self, context: zmq.Context, endpoint: str, library: storage.Library,
                 pair: failover.Pair) -> None:
        self.context = context
        self.endpoint = endpoint
        self.library = library
        self.pair = pair
        self.socket = self._open()
        self.sent_at: float | None = None
        self.next_at = 0.0
        self.caught_up_at = time.monotonic()
        self.lag_logged_at = 0.0
        self.resync_from: int | None = None  # set when the active peer says we diverged

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def due_in(self) -> float:
        """Seconds until tick() has something to do: send, or give up on an answer."""
        now = time.monotonic()
        if self.sent_at is not None:
            return self.sent_at + self._patience() - now
        return self.next_at - now

    def _patience(self) -> float:
        return RESYNC_TIMEOUT if self.resync_from is not None else (
            failover.HEARTBEAT_INTERVAL * 2)

    def tick(self) -> None:
        """Send the next heartbeat when due; replace the socket if the peer is silent."""
        now = time.monotonic()
        self.pair.note_loop(now)
        if self.sent_at is not None:
            if now - self.sent_at < self._patience():
                return
            self.socket.close(linger=0)
            self.socket = self._open()
            self.sent_at = None
        if now >= self.next_at:
            message = {"type": "peer", **self.pair.stamp(), "state": self.pair.state,
                       "role": self.pair.role,
                       "term": self.pair.term, "seq": self.library.last_seq,
                       **last_entry(self.library)}
            if self.resync_from is not None:
                message["resync_from"] = self.resync_from
            self.socket.send(protocol.encode(message))
            self.sent_at = now

    def on_reply(self) -> None:
        answer = protocol.decode(self.socket.recv(), protocol.INTERNAL_MAX_BYTES)
        self.sent_at = None
        self.pair.on_peer_answer(answer)
        entries = answer.get("entries") or []
        if self.pair.state == failover.PASSIVE:
            self._follow(answer, entries)
        self.pair.on_promote(answer)
        self._note_lag(answer)
        # Keep pulling at once while behind; otherwise wait for the next heartbeat.
        passive = self.pair.state == failover.PASSIVE
        behind = passive and answer.get("seq", 0) > self.library.last_seq
        # An active peer holds a caught-up pull until it has news (``app.held``), so a
        # passive GA asks again at once; anything else is a plain heartbeat.
        pause = PULL_INTERVAL if passive and answer.get("state") in (
            failover.ACTIVE, failover.HANDING_OVER) else failover.HEARTBEAT_INTERVAL
        self.next_at = time.monotonic() + (0 if behind or entries else pause)

    def _follow(self, answer: dict[str, Any], entries: list[list[Any]]) -> None:
        """Apply what the active peer shipped: entries, or a snapshot after divergence."""
        if answer.get("snapshot"):
            install_snapshot(self.library, answer["snapshot"], self.resync_from or 0)
            self.resync_from = None
            return
        if answer.get("diverged"):
            common = int(answer.get("common", 0))
            mine = entry_key(self.library, common)
            self.resync_from = common if mine == answer.get("common_key") else 0
            log.error("this copy diverged from the active peer after seq %d (have %d): "
                      "asking for a snapshot from seq %d", common, self.library.last_seq,
                      self.resync_from)
            return
        if not entries:
            return
        try:
            applied = self.library.replay(entries)
        except ValueError as exc:
            log.error("replication stopped: %s; pulling again from seq %d", exc,
                      self.library.last_seq)
            return
        log.debug("replayed %d entries, now at seq %d", applied, self.library.last_seq)

    def _note_lag(self, answer: dict[str, Any]) -> None:
        now = time.monotonic()
        lag_ops = max(0, int(answer.get("seq", 0)) - self.library.last_seq)
        if lag_ops == 0:
            self.caught_up_at = now
        if self.pair.state == failover.PASSIVE and now - self.lag_logged_at > LAG_LOG_INTERVAL:
            log.info("replica at seq %d, active peer at %s: lag %d ops, %.2f s",
                     self.library.last_seq, answer.get("seq"), lag_ops, now - self.caught_up_at)
            self.lag_logged_at = now

    def close(self) -> None:
        self.socket.close(linger=0)


# -- the log's tail, divergence and snapshots --------------------------------------


def entry_key(library: storage.Library, seq: int) -> str | None:
    row = library.db.execute("SELECT key FROM oplog WHERE seq = ?", (seq,)).fetchone()
    return row[0] if row else None


def last_entry(library: storage.Library) -> dict[str, Any]:
    """``after``, ``after_term`` and ``after_key`` of the newest local log entry."""
    row = library.db.execute("SELECT seq, term, key FROM oplog WHERE seq = ?",
                             (library.last_seq,)).fetchone()
    if row is None:
        return {"after": library.last_seq, "after_term": -1, "after_key": None}
    return {"after": row[0], "after_term": row[1], "after_key": row[2]}


def answer_pull(library: storage.Library, message: dict[str, Any], limit: int
                ) -> tuple[dict[str, Any], int | None]:
    """The active side of a pull: (answer fields, sequence the peer holds or None).

    None means the peer's copy is not a prefix of ours, so nothing it holds counts
    as replicated until it has installed a snapshot.
    """
    if message.get("resync_from") is not None:
        common = int(message["resync_from"])
        log.warning("peer diverged: sending a snapshot at seq %d with the log after %d",
                    library.last_seq, common)
        return {"entries": [], "snapshot": build_snapshot(library, common)}, None
    after = int(message.get("after", 0))
    key = message.get("after_key")
    # The same key at the same sequence in another term is no proof of a common
    # history: an actor resending its unreplicated operations after a failover can
    # put one of them back at the very position the dead primary had given it.
    mine = library.db.execute("SELECT key, term FROM oplog WHERE seq = ?", (after,)).fetchone()
    theirs = (key, int(message.get("after_term", -1)))
    if after > 0 and "after_key" in message and (mine is None or tuple(mine) != theirs):
        common = library.db.execute(
            "SELECT coalesce(max(seq), 0) FROM oplog WHERE seq <= ? AND term <= ?",
            (after, int(message.get("after_term", -1)))).fetchone()[0]
        log.error("peer holds seq %d (key %s) that this log does not: diverged after %d",
                  after, key, common)
        return {"entries": [], "diverged": True, "common": common,
                "common_key": entry_key(library, common)}, None
    return {"entries": library.entries_after(after, limit)}, after


def build_snapshot(library: storage.Library, common: int) -> dict[str, Any]:
    """Books and loans as they are now, and the raw log rows after ``common``."""
    snapshot: dict[str, Any] = {"seq": library.last_seq}
    queries = {name: f"SELECT * FROM {name}" for name in SNAPSHOT_TABLES}
    queries["oplog"] = "SELECT * FROM oplog WHERE seq > ? ORDER BY seq"
    for name, sql in queries.items():
        cursor = library.db.execute(sql, (common,) if name == "oplog" else ())
        snapshot[name] = {"columns": [c[0] for c in cursor.description],
                          "rows": cursor.fetchall()}
    return snapshot


def install_snapshot(library: storage.Library, snapshot: dict[str, Any], common: int
                     ) -> None:
    """Replace everything after ``common`` with the active peer's state, atomically."""
    db = library.db
    dropped = library.last_seq - common
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM oplog WHERE seq > ?", (common,))
        for name in reversed(SNAPSHOT_TABLES):  # loans refer to books
            db.execute(f"DELETE FROM {name}")
        for name in (*SNAPSHOT_TABLES, "oplog"):
            columns = snapshot[name]["columns"]
            db.executemany(f"INSERT INTO {name} ({', '.join(columns)}) VALUES "
                           f"({', '.join('?' * len(columns))})", snapshot[name]["rows"])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    library.last_seq = db.execute("SELECT coalesce(max(seq), 0) FROM oplog").fetchone()[0]
    log.warning("installed the active peer's snapshot: dropped %d local entries after seq "
                "%d, now at seq %d", dropped, common, library.last_seq)

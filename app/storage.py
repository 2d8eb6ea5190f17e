"""The library database: books, loans and the operation log, in one SQLite file.

Every operation is applied in its own savepoint inside a batch transaction, so
it is atomic; the CHECK constraints keep copies in range. The operation log
(``oplog``) is at once the idempotency table (unique key) and the replication
stream (one sequence number per applied or refused operation). An operation is
stamped with ``appliedAt`` before it is applied, so replaying the same stamped
operations in sequence order on an identical copy gives identical results.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from typing import Any, Iterable

from app import checkpoint, protocol

log = logging.getLogger("storage")

BUSY_TIMEOUT = 5.0  # seconds SQLite waits for a lock held by a reader

SCHEMA = """
CREATE TABLE IF NOT EXISTS books (
    code TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    total INTEGER NOT NULL CHECK (total >= 1),
    available INTEGER NOT NULL CHECK (available >= 0 AND available <= total)
);
CREATE TABLE IF NOT EXISTS loans (
    id INTEGER PRIMARY KEY,
    book TEXT NOT NULL REFERENCES books(code),
    reader TEXT NOT NULL,
    sede INTEGER NOT NULL,
    loaned_on TEXT NOT NULL,
    due_date TEXT NOT NULL,
    renewals INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'RETURNED')),
    returned_on TEXT
);
CREATE INDEX IF NOT EXISTS loans_active ON loans (book, reader, status);
CREATE TABLE IF NOT EXISTS oplog (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    op TEXT NOT NULL,
    request_id TEXT NOT NULL,
    sede TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'refused')),
    request TEXT NOT NULL,
    result TEXT NOT NULL,
    term INTEGER NOT NULL,
    applied_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def connect(path: str) -> sqlite3.Connection:
    """Open a database in WAL mode with explicit transactions."""
    db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT,
                         check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a killed process; only a power cut can lose
    # the last commits, which the replica then still holds.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(SCHEMA)
    return db


def open_readonly(path: str) -> sqlite3.Connection:
    """A connection that cannot change the file (for inspection and checks)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def holdings(db: sqlite3.Connection) -> tuple[dict[int, int], int, int]:
    """(active loans per sede, copies in all, copies available)."""
    on_loan = dict(db.execute("SELECT sede, count(*) FROM loans WHERE status = 'ACTIVE'"
                              " GROUP BY sede").fetchall())
    total, available = db.execute("SELECT sum(total), sum(available) FROM books").fetchone()
    return on_loan, total, available


class Library:
    """Applies operations to one copy of the library database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = connect(path)
        self.checkpoints = checkpoint.Checkpointer(self.db, path)
        self.last_seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM oplog").fetchone()[0]

    # -- metadata ---------------------------------------------------------------

    def get_meta(self, name: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else default

    def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        (name, value))

    # -- applying ---------------------------------------------------------------

    def apply_batch(self, requests: Iterable[dict[str, Any]], term: int,
                    applied_at: str | None = None) -> list[dict[str, Any]]:
        """Apply requests in one transaction; return one result per request.

        A request whose key is already in the log is not applied again: its
        stored result comes back with ``repeat: true``.
        """
        stamp = applied_at or protocol.utc_now_iso()
        results = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for request in requests:
                results.append(self._apply_one(request, stamp, term))
            self.db.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise
        return results

    def _roll_back(self) -> None:
        """Undo the open transaction and forget the sequence numbers it used."""
        self.db.execute("ROLLBACK")
        self.last_seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM oplog").fetchone()[0]

    def _apply_one(self, request: dict[str, Any], stamp: str, term: int) -> dict[str, Any]:
        key = request["idempotencyKey"]
        row = self.db.execute("SELECT result FROM oplog WHERE key = ?", (key,)).fetchone()
        if row:
            return {**protocol.from_text(row[0]), "repeat": True}
        stamped = {**request, "appliedAt": stamp}  # never the client's: replay passes its own
        self.db.execute("SAVEPOINT op")
        try:
            result = self._decide(stamped)
        except sqlite3.IntegrityError as exc:
            self.db.execute("ROLLBACK TO op")
            log.error("integrity error %s: %s", protocol.request_label(request), exc)
            result = {"ok": False, "status": "refused", "error": f"integrity: {exc}"}
        self.last_seq += 1
        result["seq"] = self.last_seq
        self.db.execute(
            "INSERT INTO oplog (seq, key, op, request_id, sede, outcome, request, result,"
            " term, applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.last_seq, key, stamped["op"], stamped["idSolicitud"], stamped["sede"],
             "applied" if result["ok"] else "refused", protocol.to_text(stamped),
             protocol.to_text(result), term, stamped["appliedAt"]))
        self.db.execute("RELEASE op")
        return result

    def _decide(self, request: dict[str, Any]) -> dict[str, Any]:
        day = dt.date.fromisoformat(request["appliedAt"][:10])
        if request["op"] == protocol.LOAN:
            return self._loan(request, day)
        loan = self.db.execute(
            "SELECT id, renewals FROM loans WHERE book = ? AND reader = ? AND status = 'ACTIVE'"
            " ORDER BY id LIMIT 1", (request["idLibro"], request["idUsuario"])).fetchone()
        if loan is None:
            return {"ok": False, "status": "refused",
                    "error": f"no active loan of {request['idLibro']} "
                             f"by {request['idUsuario']}"}
        if request["op"] == protocol.RETURN:
            return self._return(request, loan[0], day)
        return self._renew(request, loan[0], loan[1], day)

    def _loan(self, request: dict[str, Any], day: dt.date) -> dict[str, Any]:
        book = self.db.execute("SELECT available FROM books WHERE code = ?",
                               (request["idLibro"],)).fetchone()
        if book is None:
            return {"ok": False, "status": "refused",
                    "error": f"no such book {request['idLibro']}"}
        if book[0] == 0:
            return {"ok": False, "status": "refused",
                    "error": f"no copies of {request['idLibro']} left"}
        due = (day + dt.timedelta(days=protocol.LOAN_DAYS)).isoformat()
        self.db.execute("UPDATE books SET available = available - 1 WHERE code = ?",
                        (request["idLibro"],))
        cursor = self.db.execute(
            "INSERT INTO loans (book, reader, sede, loaned_on, due_date, status)"
            " VALUES (?, ?, ?, ?, ?, 'ACTIVE')",
            (request["idLibro"], request["idUsuario"], protocol.sede_number(request["sede"]),
             day.isoformat(), due))
        return {"ok": True, "status": "granted", "loanId": cursor.lastrowid,
                "fechaEntrega": due}

    def _return(self, request: dict[str, Any], loan_id: int, day: dt.date) -> dict[str, Any]:
        self.db.execute("UPDATE loans SET status = 'RETURNED', returned_on = ? WHERE id = ?",
                        (day.isoformat(), loan_id))
        self.db.execute("UPDATE books SET available = available + 1 WHERE code = ?",
                        (request["idLibro"],))
        return {"ok": True, "status": "applied", "loanId": loan_id}

    def _renew(self, request: dict[str, Any], loan_id: int, renewals: int,
               day: dt.date) -> dict[str, Any]:
        if renewals >= protocol.MAX_RENEWALS:
            return {"ok": False, "status": "refused", "loanId": loan_id,
                    "error": f"loan {loan_id} already renewed {renewals} times"}
        try:  # the GC's date travels with the renewal; anything else gets the rule's
            due = dt.date.fromisoformat(request["nuevaFechaEntrega"]).isoformat()
        except (KeyError, TypeError, ValueError):
            due = (day + dt.timedelta(days=protocol.RENEWAL_DAYS)).isoformat()
        self.db.execute("UPDATE loans SET due_date = ?, renewals = renewals + 1 WHERE id = ?",
                        (due, loan_id))
        return {"ok": True, "status": "applied", "loanId": loan_id, "fechaEntrega": due}

    # -- the log as a replication stream ------------------------------------------

    def entries_after(self, seq: int, limit: int) -> list[list[Any]]:
        """Log entries ``[seq, term, request, result]`` after ``seq``, oldest first."""
        rows = self.db.execute(
            "SELECT seq, term, request, result FROM oplog WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit)).fetchall()
        return [[s, t, protocol.from_text(req), protocol.from_text(res)] for s, t, req, res in rows]

    def replay(self, entries: list[list[Any]]) -> int:
        """Apply shipped entries in one transaction; return how many were new.

        Entries at or below the local sequence are skipped; a gap is an error the
        caller resolves by asking again from ``last_seq``.
        """
        fresh = [e for e in entries if e[0] > self.last_seq]
        if not fresh:
            return 0
        if fresh[0][0] != self.last_seq + 1:
            raise ValueError(f"gap in replication: have {self.last_seq}, got {fresh[0][0]}")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for seq, term, request, expected in fresh:
                got = self._apply_one(request, request["appliedAt"], term)
                if got.get("repeat") or got["seq"] != seq or got["ok"] != expected["ok"]:
                    raise ValueError(f"replica diverged at seq {seq}: {got} != {expected}")
            self.db.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise
        return len(fresh)

    def close(self) -> None:
        self.checkpoints.stop()
        self.db.close()

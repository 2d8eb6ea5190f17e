"""Consistency verdict for a run: nothing acknowledged lost, nothing applied twice.

``python -m app.checker --metrics DIR [--metrics DIR] --db A.db [--db B.db]``
reads the request processes' rows (``ps-*.csv``) and the databases, and checks:

- lost: a request a PS saw acknowledged (a return or renewal accepted, a loan
  granted or refused by the library) whose key is not in the operation log, or a
  loan whose logged outcome differs from the answer the PS got;
- doubled: effects that do not match the log (loans created, returned or renewed
  more often than the log says);
- copies: a book with copies below zero or available + on loan != total;
- replicas: with two databases, once quiet, any difference between their logs
  or their book and loan tables.

The database with the highest (term, sequence) is taken as the authoritative
one. Exit status 1 on any violation, 2 when it cannot run (a folder or a
database missing or unreadable, no PS rows at all).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import sqlite3
import sys
from collections import Counter
from dataclasses import dataclass, field

from app import storage

SHOWN = 5  # examples printed per kind of violation


@dataclass
class Verdict:
    checked: Counter = field(default_factory=Counter)
    violations: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, kind: str, detail: str) -> None:
        self.violations.setdefault(kind, []).append(detail)

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        lines = ["consistency check: " + ("PASS" if self.ok else "FAIL"),
                 "  checked: " + ", ".join(f"{k} {v}" for k, v in self.checked.items())]
        for kind in ("lost", "doubled", "copies", "replicas"):
            found = self.violations.get(kind, [])
            lines.append(f"  {kind}: {len(found)}")
            lines.extend(f"    {d}" for d in found[:SHOWN])
        return "\n".join(lines)


def acknowledged(folders: list[str]) -> dict[str, tuple[str, str]]:
    """key -> (op, PS status) for every request a PS got a library answer to."""
    acked: dict[str, tuple[str, str]] = {}
    for folder in folders:
        for path in glob.glob(os.path.join(folder, "**", "ps-*.csv"), recursive=True):
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    if row["status"] in ("ok", "refused"):
                        acked[row["idempotency_key"]] = (row["op"], row["status"])
    return acked


def open_db(path: str) -> sqlite3.Connection:
    return storage.open_readonly(path)


def position(path: str) -> tuple[int, int]:
    db = open_db(path)
    try:
        term = db.execute("SELECT value FROM meta WHERE name = 'term'").fetchone()
        seq = db.execute("SELECT coalesce(max(seq), 0) FROM oplog").fetchone()[0]
    finally:
        db.close()
    return (int(term[0]) if term else 0, seq)


def check_lost(db: sqlite3.Connection, acked: dict[str, tuple[str, str]],
               verdict: Verdict) -> None:
    logged = {k: (op, outcome, res) for k, op, outcome, res in
              db.execute("SELECT key, op, outcome, result FROM oplog")}
    for key, (op, status) in acked.items():
        entry = logged.get(key)
        if op == "PRESTAMO":
            verdict.checked["loans answered"] += 1
            if entry is None:
                verdict.fail("lost", f"{key}: PS got '{status}', loan not in the log")
            elif (entry[1] == "applied") != (status == "ok"):
                verdict.fail("lost", f"{key}: PS got '{status}', log says '{entry[1]}'")
        elif status == "ok":
            verdict.checked["returns/renewals acknowledged"] += 1
            if entry is None:
                verdict.fail("lost", f"{key}: {op} acknowledged to the PS, not in the log")


def check_effects(db: sqlite3.Connection, verdict: Verdict) -> None:
    """Every effect in the tables is explained by exactly one log entry."""
    results = [(op, json.loads(res)) for op, res in db.execute(
        "SELECT op, result FROM oplog WHERE outcome = 'applied'")]
    seeded = int(db.execute("SELECT value FROM meta WHERE name = 'seeded_loans'")
                 .fetchone()[0])
    granted = Counter(r["loanId"] for op, r in results if op == "PRESTAMO")
    returned = Counter(r["loanId"] for op, r in results if op == "DEVOLUCION")
    renewed = Counter(r["loanId"] for op, r in results if op == "RENOVACION")
    verdict.checked["log entries applied"] += len(results)
    for loan_id in [x for x, n in (granted | returned).items() if n > 1]:
        verdict.fail("doubled", f"loan {loan_id}: granted {granted[loan_id]}x, "
                                f"returned {returned[loan_id]}x")
    created = db.execute("SELECT count(*) FROM loans WHERE id > ?", (seeded,)).fetchone()[0]
    if created != sum(granted.values()):
        verdict.fail("doubled", f"{created} loans created, {sum(granted.values())} granted")
    for loan_id, renewals, status in db.execute("SELECT id, renewals, status FROM loans"):
        if renewals != renewed.get(loan_id, 0):
            verdict.fail("doubled", f"loan {loan_id}: {renewals} renewals, "
                                    f"log has {renewed.get(loan_id, 0)}")
        if (status == "RETURNED") != (returned.get(loan_id, 0) == 1):
            verdict.fail("doubled", f"loan {loan_id}: {status}, log has "
                                    f"{returned.get(loan_id, 0)} returns")


def check_copies(db: sqlite3.Connection, verdict: Verdict) -> None:
    rows = db.execute(
        "SELECT b.code, b.total, b.available, count(l.id) FROM books b LEFT JOIN loans l"
        " ON l.book = b.code AND l.status = 'ACTIVE' GROUP BY b.code").fetchall()
    verdict.checked["books"] += len(rows)
    for code, total, available, on_loan in rows:
        if available < 0 or available + on_loan != total:
            verdict.fail("copies", f"{code}: total {total}, available {available}, "
                                   f"on loan {on_loan}")


def digest(db: sqlite3.Connection) -> dict[str, str]:
    parts = {"oplog": "SELECT seq, key, outcome FROM oplog ORDER BY seq",
             "books": "SELECT code, total, available FROM books ORDER BY code",
             "loans": "SELECT id, book, reader, status, due_date, renewals FROM loans ORDER BY id"}
    return {name: hashlib.sha256(repr(db.execute(q).fetchall()).encode()).hexdigest()
            for name, q in parts.items()}


def check(folders: list[str], paths: list[str]) -> Verdict:
    verdict = Verdict()
    ranked = sorted(paths, key=position, reverse=True)
    main_db = open_db(ranked[0])
    try:
        check_lost(main_db, acknowledged(folders), verdict)
        check_effects(main_db, verdict)
        check_copies(main_db, verdict)
        for other in ranked[1:]:
            copy = open_db(other)
            try:
                check_copies(copy, verdict)
                mine, theirs = digest(main_db), digest(copy)
                for part in mine:
                    if mine[part] != theirs[part]:
                        verdict.fail("replicas", f"{part} differs between {ranked[0]} "
                                                 f"{position(ranked[0])} and {other} "
                                                 f"{position(other)}")
            finally:
                copy.close()
    finally:
        main_db.close()
    return verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", action="append", default=[], help="folder with ps-*.csv")
    p.add_argument("--db", action="append", required=True, help="database (1 or 2)")
    args = p.parse_args(argv)
    problems = [f"no such folder: {f}" for f in args.metrics if not os.path.isdir(f)]
    problems += [f"no such database: {d}" for d in args.db if not os.path.isfile(d)]
    if args.metrics and not problems and not any(
            glob.glob(os.path.join(f, "**", "ps-*.csv"), recursive=True) for f in args.metrics):
        problems.append("no request process rows (ps-*.csv) under the metrics folders")
    if problems:
        print("consistency check: cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        verdict = check(args.metrics, args.db)
    except sqlite3.DatabaseError as exc:
        print(f"consistency check: cannot read a database: {exc}", file=sys.stderr)
        return 2
    print(verdict.render())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Print the state of a library database, or of a live GA, for demos.

``python -m app.inspect --db FILE`` shows books on loan per sede, copies
available, the latest operations (refusals included) and the replication
position kept in the file; ``--ga ENDPOINT`` asks a running GA instead
(role, state, term, sequence, replication lag), and ``--watch 1`` keeps asking
every second while a run goes on; ``--backup OUT`` writes a
consistent copy of the database (SQLite online backup) for collection.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time

import zmq

from app import storage
from app.retry import LazyPirate

LAST_OPERATIONS = 10
ASK_TIMEOUT = 2.0  # seconds to wait for a live GA


def summary(path: str) -> dict:
    db = storage.open_readonly(path)
    try:
        on_loan, total, available = storage.holdings(db)
        outcomes = dict(db.execute("SELECT outcome, count(*) FROM oplog GROUP BY outcome"))
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        last = db.execute("SELECT seq, op, request_id, outcome, result FROM oplog"
                          " ORDER BY seq DESC LIMIT ?", (LAST_OPERATIONS,)).fetchall()
        seq = db.execute("SELECT coalesce(max(seq), 0) FROM oplog").fetchone()[0]
    finally:
        db.close()
    return {"books_on_loan": {f"sede{k}": v for k, v in sorted(on_loan.items())},
            "copies_total": total, "copies_available": available, "seq": seq,
            "term": int(meta.get("term", 0)), "applied": outcomes.get("applied", 0),
            "refused": outcomes.get("refused", 0), "last": last}


def render(path: str, state: dict) -> str:
    lines = [f"database {path}",
             f"  books on loan: {state['books_on_loan']}  copies available: "
             f"{state['copies_available']} of {state['copies_total']}",
             f"  operations: {state['applied']} applied, {state['refused']} refused; "
             f"log at seq {state['seq']}, term {state['term']}",
             "  latest operations:"]
    for seq, op, request_id, outcome, result in state["last"]:
        detail = json.loads(result).get("error", "")
        lines.append(f"    #{seq:<6} {op:<10} {request_id:<14} {outcome:<8} {detail}")
    return "\n".join(lines)


def backup(path: str, out: str) -> None:
    source = storage.open_readonly(path)
    target = sqlite3.connect(out)
    with target:
        source.backup(target)
    source.close()
    target.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", action="append", default=[], help="database file (repeatable)")
    p.add_argument("--ga", action="append", default=[], help="live GA endpoint (repeatable)")
    p.add_argument("--backup", help="write a consistent copy of the single --db here")
    p.add_argument("--watch", type=float, default=0,
                   help="with --ga: ask again every this many seconds until Ctrl-C")
    args = p.parse_args(argv)
    if args.backup:
        backup(args.db[0], args.backup)
        print(f"copied {args.db[0]} to {args.backup}")
        return 0
    for path in args.db:
        print(render(path, summary(path)))
    context = zmq.Context()
    try:
        status = show_live(context, args.ga)
        while args.watch and args.ga:
            time.sleep(args.watch)
            print(time.strftime("%H:%M:%S"))
            status = show_live(context, args.ga)
    except KeyboardInterrupt:
        pass
    finally:
        context.destroy(linger=0)
    return status


def show_live(context: zmq.Context, addresses: list[str]) -> int:
    """One line per live GA; 1 if any of them did not answer."""
    status = 0
    for address in addresses:
        pirate = LazyPirate(context, address)
        answer = pirate.request({"type": "status"}, ASK_TIMEOUT)
        pirate.close()
        if answer is None:
            print(f"GA {address}: no answer in {ASK_TIMEOUT} s", flush=True)
            status = 1
            continue
        print(f"GA {address}: role {answer['role']}, {answer['state']}, term {answer['term']},"
              f" seq {answer['seq']}, replicated {answer['replicated']}, lag "
              f"{answer['lag_ops']} ops, peer {'up' if answer['peer_alive'] else 'silent'}; "
              f"on loan {answer['books_on_loan']}, available {answer['copies_available']}",
              flush=True)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        sys.exit(0)

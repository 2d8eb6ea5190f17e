"""What a kill -9 of the primary GA costs during a steady run (a benchmark, not a test).

Starts the GA pair and both sedes locally, runs ``--ps`` request processes per
sede over mixed request files, kills the primary GA with SIGKILL once it has
applied about half of the requests, lets the run finish on the replica, and
prints (every process at the priority it is deployed with, ``app.priority``):

- the failover gap: from the kill to the first write the replica applied in its
  new term (its oplog ``applied_at``);
- the longest answer time any PS saw (its metrics rows);
- requests retried: PS resends after a timeout, and actor batches sent again to
  the other GA (both counted from their logs);
- the checker's verdict on the replica alone, then on both copies once the old
  primary was restarted and caught up.

Usage: ``python loadtests/bench_failover.py [--ps 2] [--count 2000] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import glob
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from app import checker, cluster, priority, requests, storage  # noqa: E402

KILL_SHARE = 0.5  # share of the requests applied before the primary is killed
WAIT = 600.0  # seconds for any phase (PS finishing, outboxes draining, catch-up)
PS_FLAGS = ("--timeout_ms", "2000", "--retries", "30", "--quiet")


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {WAIT} s")
        time.sleep(0.05)


def seq(system: cluster.Cluster, role: str) -> int:
    status = system.ga_status(role)
    return status["seq"] if status else -1


def first_write_after(db_path: str, term: int) -> dt.datetime | None:
    db = storage.open_readonly(db_path)
    try:
        row = db.execute("SELECT min(applied_at) FROM oplog WHERE term > ?",
                         (term,)).fetchone()
    finally:
        db.close()
    if not row or not row[0]:
        return None
    return dt.datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.timezone.utc)


def longest_answer_ms(metrics: str) -> float:
    longest = 0.0
    for path in glob.glob(os.path.join(metrics, "ps-*.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                longest = max(longest, float(row["latency_ms"]))
    return longest


def count_lines(logs: str, pattern: str, text: str) -> int:
    total = 0
    for path in glob.glob(os.path.join(logs, pattern)):
        with open(path, encoding="utf-8", errors="replace") as handle:
            total += sum(1 for line in handle if text in line)
    return total


def run_once(workdir: str, ps: int, count: int, seed: int) -> dict[str, object]:
    requests.main(["--ps", str(ps), "--count", str(count), "--seed", str(seed),
                   "--out", os.path.join(workdir, "req")])
    files = sorted(glob.glob(os.path.join(workdir, "req", "sede*.jsonl")))
    with cluster.Cluster(os.path.join(workdir, "run"), run_id="failover",
                         realtime=dict(priority.RECOMMENDED)) as system:
        system.start_all()
        term = system.ga_status("primary")["term"]
        processes = [system.ps(os.path.basename(p)[:-6], p, int(os.path.basename(p)[4]),
                               *PS_FLAGS) for p in files]
        wait_until(lambda: seq(system, "primary") >= KILL_SHARE * len(files) * count,
                   "half of the run")
        killed = dt.datetime.now(dt.timezone.utc)
        system.signal("ga-primary", signal.SIGKILL)
        for process in processes:
            process.wait(WAIT)
        wait_until(lambda: system.wait_applied(5), "every outbox drained")
        replica = system.ga_status("backup")
        alone = checker.check([system.metrics], [system.db_path("backup")])

        system.start("ga-primary")
        wait_until(lambda: seq(system, "primary") == seq(system, "backup"), "catch-up")
        both = checker.check([system.metrics], [system.db_path("backup"),
                                                system.db_path("primary")])
        first = first_write_after(system.db_path("backup"), term)
        return {
            "gap_s": (first - killed).total_seconds() if first else float("nan"),
            "replica_state": replica["state"] if replica else "silent",
            "longest_ps_answer_ms": longest_answer_ms(system.metrics),
            "ps_resends": count_lines(system.logs, "ps-*.log", "no answer in"),
            "actor_ga_retries": count_lines(system.logs, "[lr]*[0-9].log", "trying the other GA"),
            "resent_unreplicated": count_lines(system.logs, "[lr]*[0-9].log",
                                               "unreplicated ops"),
            "verdict_replica": alone,
            "verdict_both": both,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ps", type=int, default=2, help="request processes per sede")
    p.add_argument("--count", type=int, default=2000, help="requests per process")
    p.add_argument("--repeat", type=int, default=1, help="independent runs")
    p.add_argument("--seed", type=int, default=21)
    args = p.parse_args(argv)
    failures = 0
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as workdir:
            result = run_once(workdir, args.ps, args.count, args.seed + run)
        alone, both = result.pop("verdict_replica"), result.pop("verdict_both")
        print(f"run {run + 1}: " + " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
        print(f"  replica alone: lost {len(alone.violations.get('lost', []))}, doubled "
              f"{len(alone.violations.get('doubled', []))}, "
              f"{'PASS' if alone.ok else 'FAIL'}")
        print("  both copies after catch-up:\n    "
              + both.render().replace("\n", "\n    "))
        failures += not (alone.ok and both.ok)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole lending system on this machine, fed with real request files.

``python -m app.demo`` (``make demo``) starts the primary GA and its replica,
and for each of two sedes a GC with its loan, return and renewal actors, all on
free loopback ports; then two request processes per sede share the sede's
request file. It shows progress, waits until every request is answered and
every return and renewal applied and replicated, stops everything, and prints
the per-sede, per-operation table, the database before and after, and the
consistency verdict. Logs, metrics and databases stay in ``runs/<run id>/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from importlib import resources

from app import checker, cluster, inspect, priority, report, requests

APPLY_TIMEOUT = 120.0  # seconds to wait for outboxes to empty after the PS finish
PROGRESS_EVERY = 1.0  # seconds between progress lines


def default_files() -> list[str]:
    data = resources.files("app") / "data"
    return [str(data / f"requests-sede{s}.jsonl") for s in (1, 2)]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ps_per_sede", type=int, default=2)
    p.add_argument("--count", type=int, default=0,
                   help="generate this many requests per PS instead of the shipped files")
    p.add_argument("--seed", type=int, default=7, help="seed for generated requests")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--no_replica", action="store_true", help="run the primary GA alone")
    p.add_argument("--no_realtime", action="store_true",
                   help="run every process at normal priority (default: app.priority's "
                        "recommended real-time priorities, where this machine allows them)")
    return p.parse_args(argv)


def plan(args: argparse.Namespace, workdir: str) -> list[tuple[str, str, int, list[str]]]:
    """(name, file, sede, extra PS flags) for every request process."""
    n = args.ps_per_sede
    if args.count:
        folder = os.path.join(workdir, "requests")
        requests.main(["--ps", str(n), "--count", str(args.count), "--seed", str(args.seed),
                       "--out", folder])
        return [(f"sede{s}-{i}", os.path.join(folder, f"sede{s}-{i}.jsonl"), s, [])
                for s in (1, 2) for i in range(1, n + 1)]
    files = default_files()
    return [(f"sede{s}-{i}", files[s - 1], s, ["--shard", f"{i - 1}/{n}"])
            for s in (1, 2) for i in range(1, n + 1)]


def expected(jobs: list[tuple[str, str, int, list[str]]], ps_per_sede: int,
             generated: bool) -> int:
    total = sum(cluster.request_count(path) for _, path, _, _ in jobs)
    return total if generated else total // ps_per_sede


def priorities(asked: dict[str, int], policies: dict[str, str]) -> str:
    """One line on how the processes are scheduled, for the run's header."""
    granted = {cluster.kind_of(name) for name, how in policies.items() if how != "normal"}
    if not granted:
        return ("real-time priorities refused here (needs root or CAP_SYS_NICE): every "
                "process at normal priority")
    shown = ", ".join(f"{kind} {level}" + ("" if kind in granted else " (refused)")
                      for kind, level in asked.items())
    return f"real-time priorities: {shown}; the other processes at normal priority"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    workdir = os.path.abspath(os.path.join(args.runs_dir, run_id))
    os.makedirs(workdir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    system = cluster.Cluster(workdir, replica=not args.no_replica, run_id=run_id,
                             realtime={} if args.no_realtime else dict(priority.RECOMMENDED))
    print(f"run {run_id}: logs, metrics and databases in {workdir}")
    try:
        system.start_all()
        before = inspect.summary(system.db_path("primary"))
        print(f"started GA{' pair' if system.replica else ''}, 2 GCs and 6 actors")
        jobs = plan(args, workdir)
        total = expected(jobs, args.ps_per_sede, bool(args.count))
        with system.launching():
            processes = [system.ps(name, path, sede, "--quiet", "--retries", "10", *extra,
                                   stdout=subprocess.PIPE)
                         for name, path, sede, extra in jobs]
            policies = system.scheduling()
        print(priorities(system.realtime, policies) if system.realtime
              else "every process at normal priority (--no_realtime)")
        answered = follow(system, processes, total)
        summaries = [p.stdout.read().decode().strip() for p in processes]
        print("\n".join(summaries))
        applied = system.wait_applied(APPLY_TIMEOUT)
        print("every return and renewal applied and confirmed" if applied
              else f"returns/renewals still pending after {APPLY_TIMEOUT:.0f} s")
        running = [r for r in ("primary", "backup") if f"ga-{r}" in system.components
                   and system.components[f"ga-{r}"].process.poll() is None]
        for role in {"primary", "backup"} - set(running) if system.replica else ():
            print(f"the {role} GA stopped during the run: its copy is left out of the checks")
        caught_up = wait_replica(system) if len(running) == 2 else True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process")
        return 130
    finally:
        system.stop()
    dbs = [system.db_path(role) for role in running]
    after = inspect.summary(max(dbs, key=checker.position))  # the copy that wrote last
    print()
    print(report.render(report.table(report.read_rows([system.metrics]))))
    print()
    show_state(before, after)
    verdict = checker.check([system.metrics], dbs)
    print(verdict.render())
    good = answered == total and applied and caught_up and verdict.ok
    print(f"\ndemo {'PASSED' if good else 'FAILED'}: {answered} of {total} requests answered")
    return 0 if good else 1


def follow(system: cluster.Cluster, processes: list[subprocess.Popen], total: int) -> int:
    """Print progress until every request process has ended; answers counted by the GCs."""
    answered = 0
    while True:
        done = all(p.poll() is not None for p in processes)
        statuses = [system.gc_status(s) for s in system.sedes]
        answered = sum(s["answered"] for s in statuses if s)
        pending = sum(s["pending"] for s in statuses if s)
        print(f"  answered {answered}/{total}, returns/renewals not yet applied: {pending}",
              flush=True)
        if done:
            return answered
        time.sleep(PROGRESS_EVERY)


def wait_replica(system: cluster.Cluster, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        primary, backup = system.ga_status("primary"), system.ga_status("backup")
        if primary and backup and primary["seq"] == backup["seq"]:
            print(f"replica caught up at seq {backup['seq']}")
            return True
        time.sleep(0.2)
    print("replica did not catch up in time")
    return False


def show_state(before: dict, after: dict) -> None:
    print("database            before          after")
    for sede in sorted(set(before["books_on_loan"]) | set(after["books_on_loan"])):
        print(f"  on loan {sede:<9} {before['books_on_loan'].get(sede, 0):>6} "
              f"{after['books_on_loan'].get(sede, 0):>14}")
    print(f"  copies available  {before['copies_available']:>6} {after['copies_available']:>14}"
          f"   (of {after['copies_total']})")
    print(f"  log sequence      {before['seq']:>6} {after['seq']:>14}")
    print()


if __name__ == "__main__":
    sys.exit(main())

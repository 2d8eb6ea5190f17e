"""Throughput and answer times of the whole chain (a benchmark, not a test).

Starts the GA pair and both sedes locally, generates request files (``--mix``),
runs ``--ps`` request processes per sede, and for each offered load prints:

- acknowledged requests per second (answers the PS got, over the PS wall time,
  start-up and the last answers included);
- applied operations per second on the primary GA: its log entries over the time
  from the first request sent to the last entry applied, so a back end that
  falls behind the answers and catches up later is counted at its real pace;
- ack p50/p99 of returns and renewals and p50/p99 of loan answers, from the PS
  metrics rows, also as ratios against a baseline measured in this run: a bare
  ZeroMQ REQ/ROUTER round trip on loopback with the same message size;
- CPU time per request of every service and of the PS together;
- whether the speed target holds (TARGET_APPLIED_PER_S with ack p99 under
  TARGET_ACK_P99_MS);

and a table of all runs at the end. A load is full speed (0: every PS sends as
soon as it may, ``--window`` requests in flight) or a rate (the PS send on a
fixed schedule whatever the answers, and an answer's time counts from its
scheduled send, so a stall weighs on every request it delays).

Usage: ``python loadtests/bench_chain.py [--mix published] [--window 4]
[--rate 0,1000,5000] [--ps 2] [--count 5000] [--repeat 1] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time

from typing import Any

import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from app import cluster, priority, protocol, report, requests  # noqa: E402

BASELINE_ROUND_TRIPS = 5000
PS_WAIT = 600.0  # seconds a run's request processes may take
PACED_WINDOW = 256  # requests a paced PS may have in flight unless --window says otherwise
KINDS = ("ps", "gc", "loan", "ga", "return", "renewal")  # kinds of process, for --realtime
BEHIND = 0.9  # answered below this share of the offered rate: the run is overloaded
TARGET_APPLIED_PER_S = 5000  # the speed target: applied operations per second...
TARGET_ACK_P99_MS = 2.0  # ...with return/renewal answers this fast at the 99th percentile


def baseline_round_trip_ms() -> list[float]:
    """Round trips of a realistic request through a ROUTER that answers at once."""
    context = zmq.Context()
    server = context.socket(zmq.ROUTER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = context.socket(zmq.REQ)
    client.connect(f"tcp://127.0.0.1:{port}")
    body = protocol.encode({"op": "DEVOLUCION", "idSolicitud": "S1P1-00001", "idUsuario": "U1",
                            "idLibro": "L0001", "sede": "SEDE1", "timestamp": "x" * 27,
                            "idempotencyKey": "DEVOLUCION:S1P1-00001:L0001"})

    def echo():
        for _ in range(BASELINE_ROUND_TRIPS):
            frames = server.recv_multipart()
            protocol.decode(frames[-1])
            server.send_multipart([*frames[:-1], b'{"ok":true}'])

    thread = threading.Thread(target=echo)
    thread.start()
    times = []
    for _ in range(BASELINE_ROUND_TRIPS):
        started = time.perf_counter()
        client.send(body)
        client.recv()
        times.append((time.perf_counter() - started) * 1000)
    thread.join()
    client.close(0)
    server.close(0)
    context.term()
    return sorted(times)


def applied_rate(db_path: str, since: float) -> tuple[int, float]:
    """Operations in the GA's log, and how many per second from ``since`` (epoch
    seconds) to the last one applied."""
    db = sqlite3.connect(db_path)
    count, last = db.execute("SELECT count(*), max(applied_at) FROM oplog").fetchone()
    db.close()
    if not count:
        return 0, 0.0
    end = dt.datetime.fromisoformat(last.rstrip("Z")).replace(tzinfo=dt.timezone.utc)
    span = end.timestamp() - since
    return count, count / span if span > 0 else float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_cpu(system: cluster.Cluster) -> dict[str, float]:
    """CPU seconds of every running service, by component name."""
    used = {}
    for name, component in system.components.items():
        process = component.process
        if process is not None and process.poll() is None and not name.startswith("ps-"):
            used[name] = cpu_seconds(process.pid)
    return used


def one_run(args: argparse.Namespace, workdir: str, rate: float, window: int
            ) -> dict[str, Any]:
    folder = os.path.join(workdir, "requests")
    requests.main(["--ps", str(args.ps), "--count", str(args.count), "--seed", "11",
                   "--mix", args.mix, "--out", folder])
    with cluster.Cluster(workdir, replica=not args.no_replica, run_id="bench",
                         realtime=args.realtime) as system:
        system.start_all()
        cpu_before = service_cpu(system)
        started, started_wall = time.perf_counter(), time.time()
        pacing = ["--rate", str(rate / (2 * args.ps))] if rate else []
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with system.launching():
            processes = [system.ps(f"sede{s}-{i}", os.path.join(folder, f"sede{s}-{i}.jsonl"),
                                   s, "--quiet", "--window", str(window), *pacing)
                         for s in (1, 2) for i in range(1, args.ps + 1)]
            policies = system.scheduling()  # may reap a PS that ended: counted in children
        for process in processes:
            process.wait(PS_WAIT)
        ps_wall = time.perf_counter() - started
        applied_all = system.wait_applied(300)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = {name: used - cpu_before.get(name, 0.0)
               for name, used in service_cpu(system).items()}
        cpu["ps (all)"] = (children.ru_utime + children.ru_stime
                           - children_before.ru_utime - children_before.ru_stime)
    rows = report.read_rows([system.metrics])
    ps_rows = [r for r in rows if r["component"] == "ps"]
    acked = sum(r["status"] in ("ok", "refused") for r in ps_rows)
    count, per_s = applied_rate(system.db_path("primary"), started_wall)
    ack_ms = sorted(float(r["latency_ms"]) for r in ps_rows
                    if r["op"] in (protocol.RETURN, protocol.RENEWAL))
    loan_ms = sorted(float(r["latency_ms"]) for r in ps_rows if r["op"] == protocol.LOAN)
    return {"requests": len(ps_rows), "acked": acked, "acked_per_s": acked / ps_wall,
            "applied": count, "applied_per_s": per_s, "all_applied": float(applied_all),
            "ack_p50_ms": report.percentile(ack_ms, 50),
            "ack_p99_ms": report.percentile(ack_ms, 99),
            "loan_p50_ms": report.percentile(loan_ms, 50),
            "loan_p99_ms": report.percentile(loan_ms, 99), "loans": len(loan_ms), "cpu": cpu,
            "policies": policies}


def parse_realtime(text: str) -> dict[str, int]:
    """``"gc=10,ps=10"`` -> real-time priority by kind of process."""
    levels: dict[str, int] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        kind, _, level = part.partition("=")
        if kind not in KINDS or not level.isdigit() or not 1 <= int(level) <= 99:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected KIND=PRIORITY, KIND one of {', '.join(KINDS)}, "
                "PRIORITY 1-99")
        levels[kind] = int(level)
    return levels


def keep(workdir: str, target: str) -> None:
    """Copy a run's folder to ``target``, replacing what an earlier call left there."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(workdir, target)
    print(f"  logs, metrics and databases kept in {target}")


def parse_rates(text: str) -> list[float]:
    """``"0,2000,5000"`` -> [0.0, 2000.0, 5000.0]; 0 is full speed."""
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or any(not math.isfinite(r) or r < 0 for r in rates):
        raise argparse.ArgumentTypeError("rates are numbers >= 0 (0: full speed)")
    return rates


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def print_run(n: int, args: argparse.Namespace, rate: float, window: int,
              r: dict[str, Any], base_p50: float, base_p99: float) -> None:
    offered = f"offered {rate:.0f} req/s" if rate else "full speed"
    print(f"run {n}: {2 * args.ps} PS x {args.count} {args.mix} requests, {offered}, window "
          f"{window}, replica {'off' if args.no_replica else 'on'}")
    print(f"  acknowledged   {r['acked']:>7} of {r['requests']}  {r['acked_per_s']:9.0f} req/s")
    print(f"  applied on GA  {r['applied']:>7}            {r['applied_per_s']:9.0f} ops/s"
          f"  (all returns/renewals applied: {bool(r['all_applied'])})")
    print(f"  ack (return/renewal) p50 {r['ack_p50_ms']:.3f} ms = "
          f"{r['ack_p50_ms'] / base_p50:.1f}x baseline, p99 {r['ack_p99_ms']:.3f} ms = "
          f"{r['ack_p99_ms'] / base_p99:.1f}x baseline")
    realtime = sorted(f"{name} {how}" for name, how in r["policies"].items() if how != "normal")
    print(f"  real-time: {', '.join(realtime) or 'none'}")
    if rate and r["acked_per_s"] < BEHIND * rate:
        print(f"  behind schedule: {r['acked_per_s']:.0f} of {rate:.0f} req/s answered; the "
              "chain (or the PS on this machine) could not keep up")
    if r["loans"]:
        print(f"  loan answer p50 {r['loan_p50_ms']:.3f} ms, p99 {r['loan_p99_ms']:.3f} ms")
    total = sum(r["cpu"].values())
    print(f"  CPU per request: {1e6 * total / r['requests']:.0f} us in all; by component"
          f" (us): " + ", ".join(f"{name} {1e6 * used / r['requests']:.0f}"
                                 for name, used in sorted(r["cpu"].items())))
    met = r["applied_per_s"] >= TARGET_APPLIED_PER_S and r["ack_p99_ms"] < TARGET_ACK_P99_MS
    print(f"  target (>= {TARGET_APPLIED_PER_S} applied ops/s and ack p99 < "
          f"{TARGET_ACK_P99_MS:g} ms): {'met' if met else 'not met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ps", type=at_least_one, default=2, help="request processes per sede")
    p.add_argument("--count", type=at_least_one, default=5000, help="requests per process")
    p.add_argument("--repeat", type=at_least_one, default=1, help="runs per load")
    p.add_argument("--no_replica", action="store_true")
    p.add_argument("--mix", choices=("mixed", "published"), default="mixed",
                   help="published: returns and renewals only")
    p.add_argument("--window", type=at_least_one, default=1,
                   help="requests each PS keeps in flight (1: one at a time)")
    p.add_argument("--rate", type=parse_rates, default=[0.0],
                   help="offered loads, comma-separated: requests per second from all PS "
                        "together, sent on schedule (open loop), answer times counted from "
                        "the schedule; 0 is full speed (default)")
    recommended = ",".join(f"{kind}={level}" for kind, level in priority.RECOMMENDED.items())
    p.add_argument("--realtime", type=parse_realtime, default=dict(priority.RECOMMENDED),
                   help="SCHED_FIFO priorities by kind of process (default, as deployed: "
                        f"{recommended}); empty: every process at normal priority")
    p.add_argument("--keep", default="", help="copy each run's folder under this folder")
    args = p.parse_args()
    slowest = min((r for r in args.rate if r), default=0.0)
    if slowest and args.count / (slowest / (2 * args.ps)) > PS_WAIT:
        p.error(f"at {slowest:g} req/s, {args.count} requests per PS take longer than "
                f"{PS_WAIT:.0f} s: offer more or send fewer")
    if args.keep:
        if os.path.exists(args.keep) and not os.path.isdir(args.keep):
            p.error(f"--keep {args.keep}: not a folder")
        os.makedirs(args.keep, exist_ok=True)
    base = baseline_round_trip_ms()
    base_p50, base_p99 = report.percentile(base, 50), report.percentile(base, 99)
    print(f"baseline bare ZeroMQ round trip: p50 {base_p50:.3f} ms, p99 {base_p99:.3f} ms")
    summary = []
    n = 0
    for rate in args.rate:
        window = PACED_WINDOW if rate and args.window == 1 else args.window
        for _ in range(args.repeat):
            n += 1
            with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
                try:
                    r = one_run(args, workdir, rate, window)
                finally:  # kept also when the run failed: that is when it is wanted
                    if args.keep:
                        keep(workdir, os.path.join(args.keep, f"run{n}"))
            print_run(n, args, rate, window, r, base_p50, base_p99)
            summary.append((rate, window, r))
    print(f"\n{args.mix} requests, {2 * args.ps} PS; answer times in ms")
    print("| offered req/s | window | acked req/s | applied ops/s | ack p50 | ack p99 |"
          " loan p50 | loan p99 | CPU us/request |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, window, r in summary:
        cpu = 1e6 * sum(r["cpu"].values()) / r["requests"]
        loans = (f"{r['loan_p50_ms']:.1f} | {r['loan_p99_ms']:.1f}" if r["loans"] else "- | -")
        load = f"{rate:.0f}" if rate else "full speed"
        print(f"| {load} | {window} | {r['acked_per_s']:.0f} | {r['applied_per_s']:.0f} |"
              f" {r['ack_p50_ms']:.2f} | {r['ack_p99_ms']:.2f} | {loans} | {cpu:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection against real processes: late actors, a GC or GA down, a hung GA.

Every test runs the system as local processes (``app.cluster``), injects one fault
with a signal (SIGKILL for a crash, SIGSTOP/SIGCONT for a hung process), waits on
conditions with deadlines, and ends with the checker's verdict. The GA failover
scenarios (kill -9 of the primary, catch-up, handover) are in ``test_failover``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest
import zmq

from app import checker, cluster, protocol, requests
from conftest import query

PS_WAIT = 240.0  # seconds a request process may take to finish under faults
APPLIED_WAIT = 120.0  # seconds for every outbox to drain after the PS are done
CONDITION_WAIT = 60.0  # seconds for a status condition (role, sequence) to hold
PATIENT_PS = ("--timeout_ms", "2000", "--retries", "30", "--quiet")


# -- helpers shared with test_failover ---------------------------------------------


def wait_for(condition: Callable[[], bool], timeout_s: float = CONDITION_WAIT,
             what: str = "condition") -> None:
    """Poll until condition() holds; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout_s} s")
        time.sleep(0.1)


def write_requests(folder: str, ps_per_sede: int, count: int, seed: int = 7,
                   mix: str = "mixed", tag: str = "") -> list[tuple[int, str]]:
    """Generate request files; (sede, path) for each. ``tag`` makes ids and keys unique
    against an earlier batch of the same run."""
    requests.main(["--ps", str(ps_per_sede), "--count", str(count), "--seed", str(seed),
                   "--mix", mix, "--out", folder])
    files = sorted(glob.glob(os.path.join(folder, "sede*.jsonl")))
    if tag:
        for path in files:
            with open(path, encoding="utf-8") as handle:
                lines = [json.loads(line) for line in handle if line.strip()]
            with open(path, "w", encoding="utf-8") as handle:
                for request in lines:
                    request["idSolicitud"] = tag + request["idSolicitud"]
                    request["idempotencyKey"] = tag + request["idempotencyKey"]
                    handle.write(json.dumps(request) + "\n")
    return [(int(os.path.basename(p)[4]), p) for p in files]


def start_ps(system: cluster.Cluster, files: list[tuple[int, str]], *flags: str,
             tag: str = "") -> list[subprocess.Popen]:
    return [system.ps(tag + os.path.basename(path)[:-6], path, sede, *flags)
            for sede, path in files]


def finish_ps(processes: list[subprocess.Popen], timeout_s: float = PS_WAIT) -> None:
    for process in processes:
        assert process.wait(timeout_s) == 0


def published_count(files: list[tuple[int, str]]) -> int:
    """Returns and renewals in the files (all of their lines with ``--mix published``)."""
    total = 0
    for _, path in files:
        with open(path, encoding="utf-8") as handle:
            total += sum(1 for line in handle if '"op": "PRESTAMO"' not in line)
    return total


def ga_field(system: cluster.Cluster, role: str, name: str):
    status = system.ga_status(role)
    return None if status is None else status.get(name)


def seq_reached(system: cluster.Cluster, role: str, seq: int) -> bool:
    current = ga_field(system, role, "seq")
    return current is not None and current >= seq


def caught_up(system: cluster.Cluster) -> bool:
    """Both GAs answer, one active and one passive, with the same sequence."""
    primary, backup = system.ga_status("primary"), system.ga_status("backup")
    if primary is None or backup is None:
        return False
    states = {primary["state"], backup["state"]}
    return states == {"active", "passive"} and primary["seq"] == backup["seq"]


def log_lines(system: cluster.Cluster, name: str, pattern: str) -> list[str]:
    path = os.path.join(system.logs, f"{name}.log")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line for line in handle if re.search(pattern, line)]


def verdict_for(system: cluster.Cluster, *roles: str) -> checker.Verdict:
    return checker.check([system.metrics], [system.db_path(r) for r in roles])


def ps_counts(system: cluster.Cluster, status: str) -> int:
    """Rows with this status in every PS metrics file."""
    total = 0
    for path in glob.glob(os.path.join(system.metrics, "ps-*.csv")):
        with open(path, encoding="utf-8") as handle:
            total += sum(1 for line in handle if f",{status}," in line)
    return total


# -- the tests ---------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_actors_started_after_the_ps_still_apply_everything(tmp_path):
    """Returns and renewals accepted before any actor subscribed are resent and applied."""
    files = write_requests(str(tmp_path / "req"), 1, 300, mix="published")
    with cluster.Cluster(str(tmp_path / "run"), run_id="late") as system:
        system.define()
        for name in ("ga-primary", "ga-backup", "loan1", "loan2", "gc1", "gc2"):
            system.start(name)
        system.wait_ready()
        finish_ps(start_ps(system, files, "--quiet"))
        assert all(system.gc_status(s)["pending"] > 0 for s in (1, 2))

        for name in ("return1", "renewal1", "return2", "renewal2"):
            system.start(name)
        assert system.wait_applied(APPLIED_WAIT)

        wait_for(lambda: caught_up(system), what="replica caught up")
        verdict = verdict_for(system, "primary", "backup")
    assert verdict.checked["returns/renewals acknowledged"] == published_count(files)
    assert verdict.ok, verdict.render()


@pytest.mark.timeout(300)
def test_gc_down_while_a_ps_runs(tmp_path):
    """The PS times out, resends on a fresh socket, and finishes once the GC is back."""
    files = write_requests(str(tmp_path / "req"), 1, 400)
    with cluster.Cluster(str(tmp_path / "run"), run_id="gcdown") as system:
        system.start_all()
        processes = start_ps(system, files, *PATIENT_PS)
        wait_for(lambda: system.gc_status(1)["answered"] >= 100, what="sede 1 under way")

        system.signal("gc1", signal.SIGKILL)
        time.sleep(3.0)  # the outage itself: the PS must ride it out
        system.start("gc1")
        finish_ps(processes)
        assert system.wait_applied(APPLIED_WAIT)

        timeouts = log_lines(system, "ps-sede1-1", r"no answer in")
        wait_for(lambda: caught_up(system), what="replica caught up")
        verdict = verdict_for(system, "primary", "backup")
    assert timeouts, "the PS of sede 1 never timed out: the GC outage was not exercised"
    assert ps_counts(system, "failed") == 0
    assert verdict.ok, verdict.render()


@pytest.mark.timeout(300)
def test_ga_down_with_actors_running(tmp_path):
    """The only GA dies; actors retry with backoff and finish once it is back."""
    files = write_requests(str(tmp_path / "req"), 1, 400)
    with cluster.Cluster(str(tmp_path / "run"), replica=False, run_id="gadown") as system:
        system.start_all()
        processes = start_ps(system, files, *PATIENT_PS)
        wait_for(lambda: seq_reached(system, "primary", 150), what="GA under way")

        system.signal("ga-primary", signal.SIGKILL)
        time.sleep(3.0)  # the outage itself
        system.start("ga-primary")
        finish_ps(processes)
        assert system.wait_applied(APPLIED_WAIT)

        retries = [line for kind in ("loan", "return", "renewal") for sede in (1, 2)
                   for line in log_lines(system, f"{kind}{sede}", r"timed out|not active")]
        verdict = verdict_for(system, "primary")
    assert retries, "no actor had to retry: the GA outage was not exercised"
    assert ps_counts(system, "failed") == 0
    assert verdict.ok, verdict.render()


@pytest.mark.timeout(300)
def test_hung_primary_ga_actors_time_out_and_move_on(tmp_path):
    """A primary GA frozen by SIGSTOP: actors give up on it, the replica serves.

    After SIGCONT the old primary must not write again in its old term: it steps
    down and catches up.
    """
    files = write_requests(str(tmp_path / "req"), 1, 600)
    with cluster.Cluster(str(tmp_path / "run"), run_id="hung") as system:
        system.start_all()
        processes = start_ps(system, files, *PATIENT_PS)
        wait_for(lambda: seq_reached(system, "primary", 200), what="primary under way")

        system.signal("ga-primary", signal.SIGSTOP)
        try:
            wait_for(lambda: ga_field(system, "backup", "state") == "active",
                     what="replica active while the primary hangs")
            backup_seq = ga_field(system, "backup", "seq")
            wait_for(lambda: seq_reached(system, "backup", backup_seq + 50),
                     what="replica serving writes")
        finally:
            system.signal("ga-primary", signal.SIGCONT)
        finish_ps(processes)
        assert system.wait_applied(APPLIED_WAIT)

        wait_for(lambda: caught_up(system), what="old primary caught up")
        assert ga_field(system, "primary", "state") == "passive"
        timeouts = [line for kind in ("loan", "return", "renewal") for sede in (1, 2)
                    for line in log_lines(system, f"{kind}{sede}", r"timed out")]
        verdict = verdict_for(system, "backup", "primary")
        writers = writers_per_term(system)
    assert timeouts, "no actor timed out on the hung GA"
    assert all(len(roles) == 1 for roles in writers.values()), writers
    assert verdict.ok, verdict.render()


@pytest.mark.timeout(300)
def test_two_sedes_at_full_speed(tmp_path):
    """Two PS per sede, no pause: every operation atomic, copies consistent, copies equal."""
    files = write_requests(str(tmp_path / "req"), 2, 1000, seed=11)
    with cluster.Cluster(str(tmp_path / "run"), run_id="full") as system:
        system.start_all()
        finish_ps(start_ps(system, files, "--quiet"))
        assert system.wait_applied(APPLIED_WAIT)
        wait_for(lambda: caught_up(system), what="replica caught up")
        verdict = verdict_for(system, "primary", "backup")
    assert verdict.checked["loans answered"] > 0
    assert verdict.ok, verdict.render()


@pytest.mark.timeout(400)
def test_gc_and_actor_killed_and_restarted_mid_run(tmp_path):
    """kill -9 of the sede 1 GC and the sede 2 return actor, both restarted."""
    files = write_requests(str(tmp_path / "req"), 2, 800, seed=13)
    with cluster.Cluster(str(tmp_path / "run"), run_id="kill") as system:
        system.start_all()
        processes = start_ps(system, files, *PATIENT_PS)
        wait_for(lambda: system.gc_status(1)["answered"] >= 300, what="sede 1 under way")

        system.signal("gc1", signal.SIGKILL)
        system.signal("return2", signal.SIGKILL)
        time.sleep(2.0)  # the outage itself
        system.start("gc1")
        system.start("return2")
        finish_ps(processes)
        assert system.wait_applied(APPLIED_WAIT)

        wait_for(lambda: caught_up(system), what="replica caught up")
        verdict = verdict_for(system, "primary", "backup")
    assert ps_counts(system, "failed") == 0
    assert verdict.ok, verdict.render()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_100k_returns_and_renewals_at_full_speed(tmp_path):
    """4 PS x 25,000 returns and renewals, no pause: nothing acknowledged is lost."""
    files = write_requests(str(tmp_path / "req"), 2, 25_000, seed=17, mix="published")
    with cluster.Cluster(str(tmp_path / "run"), run_id="bulk") as system:
        system.start_all()
        finish_ps(start_ps(system, files, "--quiet"), timeout_s=1500)
        assert system.wait_applied(600)
        wait_for(lambda: caught_up(system), timeout_s=300, what="replica caught up")
        verdict = verdict_for(system, "primary", "backup")
    assert verdict.checked["returns/renewals acknowledged"] == published_count(files)
    assert verdict.ok, verdict.render()


# -- split-brain evidence ----------------------------------------------------------


def writers_per_term(system: cluster.Cluster) -> dict[int, set[str]]:
    """term -> the GAs that logged becoming active in it, checked against the oplogs.

    Each GA's log says when it became active and in which term; every oplog row
    of a term must come from its single writer, so on both copies the rows of one
    term form one contiguous run of sequence numbers.
    """
    writers: dict[int, set[str]] = {}
    for role in ("primary", "backup"):
        for line in log_lines(system, f"ga-{role}", r"becomes ACTIVE in term"):
            term = int(re.search(r"becomes ACTIVE in term (\d+)", line).group(1))
            writers.setdefault(term, set()).add(role)
    for role in ("primary", "backup"):
        rows = query(system.db_path(role),
                     "SELECT term, min(seq), max(seq), count(*) FROM oplog GROUP BY term")
        for term, first, last, count in rows:
            assert last - first + 1 == count, f"term {term} interleaved on {role}"
            assert term in writers, f"oplog rows of term {term} but no GA became active"
    return writers


@pytest.mark.timeout(300)
def test_a_full_backlog_holds_new_requests_until_the_actors_catch_up(tmp_path):
    """Past --max_backlog unapplied returns/renewals the GC answers nothing new (status
    excepted); once actors run, every held request is answered and applied once."""
    files = [f for f in write_requests(str(tmp_path / "req"), 1, 40, mix="published")
             if f[0] == 1]
    with cluster.Cluster(str(tmp_path / "run"), sedes=(1,), run_id="backlog",
                         extra={"gc1": ["--max_backlog", "10"]}) as system:
        system.define()
        for name in ("ga-primary", "ga-backup", "loan1", "gc1"):
            system.start(name)
        system.wait_ready()
        processes = start_ps(system, files, "--timeout_ms", "60000", "--quiet")
        wait_for(lambda: system.gc_status(1)["holding"] == 1, what="a request held")
        status = system.gc_status(1)
        assert (status["accepted"], status["pending"]) == (10, 10)
        assert processes[0].poll() is None  # still waiting for that answer

        for name in ("return1", "renewal1"):
            system.start(name)
        finish_ps(processes)
        assert system.wait_applied(APPLIED_WAIT)
        status = system.gc_status(1)
        verdict = verdict_for(system, "primary")
    assert status["accepted"] == published_count(files) == 40
    assert status["holding"] == 0
    assert log_lines(system, "gc1", "holding new requests")
    assert verdict.checked["returns/renewals acknowledged"] == 40
    assert verdict.ok, verdict.render()


def _backlog_of_three(tmp_path) -> cluster.Cluster:
    """Sede 1 with a GC that holds requests past 3 unapplied, and no return or
    renewal actor yet (so nothing it accepts is applied)."""
    system = cluster.Cluster(str(tmp_path / "run"), sedes=(1,), run_id="backlog",
                             extra={"gc1": ["--max_backlog", "3"]})
    system.define()
    for name in ("ga-primary", "ga-backup", "loan1", "gc1"):
        system.start(name)
    system.wait_ready()
    return system


@pytest.mark.timeout(300)
def test_held_requests_are_answered_in_arrival_order_also_past_one_drain(tmp_path):
    """More are held than the GC takes in one pass, and more arrive while they are
    released: every answer still comes back in the order its request was sent."""
    (_, path), = [f for f in write_requests(str(tmp_path / "req"), 1, 700, mix="published")
                  if f[0] == 1]
    with open(path, encoding="utf-8") as handle:
        bodies = [line.strip().encode() for line in handle if line.strip()]
    early, late = bodies[:650], bodies[650:]
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    answers: list[str] = []

    def take(count: int) -> None:
        while len(answers) < count and client.poll(30_000):
            answers.append(json.loads(client.recv_multipart()[-1])["idSolicitud"])

    with _backlog_of_three(tmp_path) as system:
        client.connect(system.gc_endpoint(1))
        for body in early:
            client.send_multipart([b"", body])
        take(3)  # accepted before the backlog filled
        wait_for(lambda: system.gc_status(1)["holding"] == len(early) - 3, what="all held")
        for name in ("return1", "renewal1"):
            system.start(name)
        take(10)  # the release has begun
        for body in late:
            client.send_multipart([b"", body])
        take(len(bodies))
        assert system.wait_applied(APPLIED_WAIT)
    client.close()
    context.term()
    assert answers == [json.loads(b)["idSolicitud"] for b in bodies]


@pytest.mark.timeout(120)
def test_while_holding_an_oversized_frame_is_refused_at_once_and_not_kept(tmp_path):
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    files = write_requests(str(tmp_path / "req"), 1, 10, mix="published")
    with open(files[0][1], encoding="utf-8") as handle:
        bodies = [line.strip().encode() for line in handle if line.strip()][:4]
    with _backlog_of_three(tmp_path) as system:
        client.connect(system.gc_endpoint(files[0][0]))
        for body in bodies:  # three accepted (the bound), the fourth held
            client.send_multipart([b"", body])
        wait_for(lambda: system.gc_status(1)["holding"] == 1, what="one held")
        client.send_multipart([b"", b"[" + b" " * protocol.MAX_MESSAGE_BYTES + b"]"])
        answers = []
        while len(answers) < 4 and client.poll(10_000):
            answers.append(json.loads(client.recv_multipart()[-1]))
        assert system.gc_status(1)["holding"] == 1
    client.close()
    context.term()
    assert [a["ok"] for a in answers] == [True, True, True, False]
    assert answers[-1]["status"] == "invalid" and "exceeds" in answers[-1]["error"]


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_a_gc_refuses_a_backlog_bound_below_one(value, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app.gc", "--max_backlog", value, "--state_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--max_backlog" in result.stderr

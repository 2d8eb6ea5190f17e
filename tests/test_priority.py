"""Real-time scheduling of the processes on the request path (app.priority)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import zmq

from app import cluster, priority
from app.retry import LazyPirate

START_TIMEOUT = 15.0  # seconds for a GC to answer its first status request
STOP_TIMEOUT = 10.0

may_ask = pytest.mark.skipif(
    os.geteuid() != 0, reason="asking for a real-time priority needs root here")


def _policy(tid: int) -> str:
    policy = os.sched_getscheduler(tid)
    if policy == os.SCHED_FIFO:
        return f"FIFO {os.sched_getparam(tid).sched_priority}"
    return "normal" if policy == os.SCHED_OTHER else str(policy)


@may_ask
def test_a_gc_asked_for_realtime_runs_its_zeromq_threads_there_and_checkpoints_normally(
        tmp_path):
    bind, publish, confirm, loan = (cluster.endpoint(p) for p in cluster.free_ports(4))
    with open(tmp_path / "gc.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.gc", "--realtime", "7", "--state_dir", str(tmp_path),
             "--bind", bind, "--publish", publish, "--confirm", confirm, "--loan_actor", loan],
            stdout=subprocess.DEVNULL, stderr=log)
    context = zmq.Context()
    pirate = LazyPirate(context, bind)
    try:
        assert pirate.request({"type": "status"}, START_TIMEOUT) is not None
        threads = {}
        for tid in os.listdir(f"/proc/{process.pid}/task"):
            with open(f"/proc/{process.pid}/task/{tid}/comm", encoding="utf-8") as handle:
                threads[int(tid)] = (handle.read().strip(), _policy(int(tid)))
        zeromq = [how for name, how in threads.values() if name.startswith("ZMQbg")]
        others = [how for tid, (name, how) in threads.items()
                  if tid != process.pid and not name.startswith("ZMQbg")]
        assert threads[process.pid][1] == "FIFO 7"
        assert zeromq and set(zeromq) == {"FIFO 7"}, threads
        assert others == ["normal"], threads  # the outbox's checkpoint thread
    finally:
        pirate.close()
        context.term()
        process.terminate()
        process.wait(STOP_TIMEOUT)
    assert "running at real-time priority 7" in (tmp_path / "gc.log").read_text()


def _unprivileged(level: int, started_at: int = 0) -> subprocess.CompletedProcess[str]:
    """``priority.request(level)`` in a process without CAP_SYS_NICE and with a real-time
    limit of 0, started at SCHED_FIFO ``started_at`` (as systemd would) or normally.

    Prints whether it got a real-time priority, and its policy and priority after.
    """
    tools = [shutil.which(name) for name in ("chrt", "prlimit", "setpriv")]
    if None in tools:
        pytest.skip("chrt, prlimit or setpriv (util-linux) is absent")
    chrt, prlimit, setpriv = tools
    script = ("import logging, os; logging.basicConfig(); from app import priority; "
              f"print(priority.request({level}), os.sched_getscheduler(0), "
              "os.sched_getparam(0).sched_priority)")
    start = [chrt, "--fifo", str(started_at)] if started_at else []
    return subprocess.run(
        [*start, prlimit, "--rtprio=0", setpriv, "--inh-caps=-sys_nice",
         "--bounding-set=-sys_nice", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30)


@may_ask
def test_a_refused_priority_is_logged_and_the_process_runs_on():
    result = _unprivileged(10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", str(os.SCHED_OTHER), "0"]
    assert "real-time priority 10 refused" in result.stderr
    assert "running at normal priority" in result.stderr


@may_ask
def test_a_process_started_at_its_priority_keeps_it_or_lowers_it_without_privilege():
    kept = _unprivileged(10, started_at=10)
    assert kept.stdout.split() == ["True", str(os.SCHED_FIFO), "10"], kept.stderr
    lowered = _unprivileged(5, started_at=10)
    assert lowered.stdout.split() == ["True", str(os.SCHED_FIFO), "5"], lowered.stderr
    normal = _unprivileged(0, started_at=5)
    assert normal.stdout.split() == ["False", str(os.SCHED_OTHER), "0"], normal.stderr
    raised = _unprivileged(10, started_at=5)
    assert raised.stdout.split() == ["False", str(os.SCHED_FIFO), "5"], raised.stderr
    assert "refused" in raised.stderr
    invalid = _unprivileged(150, started_at=5)  # a bad setting never keeps a priority
    assert invalid.stdout.split() == ["False", str(os.SCHED_OTHER), "0"], invalid.stderr
    assert "ignored" in invalid.stderr


def test_no_priority_or_one_out_of_range_changes_nothing(caplog):
    before = os.sched_getscheduler(0)
    with caplog.at_level(logging.WARNING, logger="priority"):
        assert priority.request(0) is False
        assert not caplog.records
        assert priority.request(150) is False
        assert priority.request(-3) is False
        assert priority.request(True) is False
    assert os.sched_getscheduler(0) == before
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "real-time priority 150 ignored", "real-time priority -3 ignored",
        "real-time priority True ignored"]


def test_returning_to_normal_is_harmless_when_already_normal():
    before = os.sched_getscheduler(0)
    priority.normal_for_this_thread()
    assert os.sched_getscheduler(0) == before


def test_component_kinds_for_priorities():
    assert [cluster.kind_of(n) for n in ("gc1", "ga-backup", "ps-sede1-2", "return2",
                                          "loan1", "ga-primary")] == [
        "gc", "ga", "ps", "return", "loan", "ga"]


@may_ask
def test_a_thread_spinning_at_realtime_priority_puts_its_process_back_to_normal():
    script = """
import logging, os, time
logging.basicConfig()
from app import priority
assert priority.request(3, spin_limit_s=0.2)
started = time.monotonic()
while os.sched_getscheduler(0) == os.SCHED_FIFO and time.monotonic() - started < 5:
    pass  # never waits
print(round(time.monotonic() - started, 1), os.sched_getscheduler(0))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    spun, policy = result.stdout.split()
    assert int(policy) == os.SCHED_OTHER and 0.1 <= float(spun) < 2, result.stdout
    assert "without waiting (a busy loop?)" in result.stderr

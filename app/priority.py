"""Real-time CPU scheduling for the processes a reader waits on.

With more processes than cores, a GC or PS woken by a message often finds both
cores busy with batch work (actors and GAs applying what was published), and
the normal scheduler lets that work run on for a while first: the answer waits
milliseconds for a core, although computing it takes a tenth of one. A process
started with ``--realtime N`` (or ``realtime = N`` in its config file) asks for
SCHED_FIFO at priority N before it creates its ZeroMQ context, so the context's
I/O threads inherit it. It then takes a core the moment a message arrives and
gives it back as soon as it waits again; ordinary processes use the rest.

Bulk work inside such a process (WAL checkpoints) returns its own thread to
normal scheduling with ``normal_for_this_thread``. (SCHED_RESET_ON_FORK is not
used: Linux applies it to new threads too, and the I/O threads would lose the
priority.)

A real-time thread that never waits would keep every ordinary process, and any
real-time one of equal or lower priority on its core, from running. So the
process also sets RLIMIT_RTTIME: once one of its threads has run SPIN_LIMIT of
CPU time without waiting, the kernel sends SIGXCPU, and the handler moves every
thread of the process back to normal scheduling and logs a warning. A busy loop
then costs a core, as it would anyway, but starves nothing.

Asking needs root, CAP_SYS_NICE, or a real-time priority limit of at least N
(systemd: ``LimitRTPRIO=N``), unless the process was started at that priority
already (systemd: ``CPUSchedulingPolicy=fifo``, as the deployed units do). A
refused request is logged as a warning and the process runs on at normal
priority. Lowering the priority, or leaving it, needs nothing.
"""

from __future__ import annotations

import logging
import os
import resource
import signal

log = logging.getLogger("priority")

LOWEST, HIGHEST = 1, 99  # SCHED_FIFO priorities Linux accepts
SPIN_LIMIT = 2.0  # seconds of CPU a real-time thread may use without waiting
# By kind of process: what a reader is waiting on comes first, then what a loan
# waits on; returns and renewals are applied in the background (left out: normal).
RECOMMENDED = {"ps": 10, "gc": 10, "loan": 5, "ga": 5}


def request(priority: int, spin_limit_s: float = SPIN_LIMIT) -> bool:
    """Run the calling thread, and threads it creates later, at SCHED_FIFO ``priority``.

    0 means normal scheduling, also for a process that was started at a
    real-time priority (systemd's ``CPUSchedulingPolicy=`` in a unit that
    several kinds of process share). Returns whether the thread now runs at a
    real-time priority.
    """
    valid = isinstance(priority, int) and not isinstance(priority, bool) and (
        priority == 0 or LOWEST <= priority <= HIGHEST)
    if not valid:
        log.warning("real-time priority %r ignored (a whole number from %d to %d, or 0): "
                    "running at normal priority", priority, LOWEST, HIGHEST)
    if not valid or priority == 0:
        normal_for_this_thread()
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        kept = level_of(0)
        log.warning("real-time priority %d refused (%s): running at %s", priority, exc,
                    f"real-time priority {kept}" if kept else "normal priority")
        return False
    _guard_against_spinning(spin_limit_s)
    log.info("running at real-time priority %d (SCHED_FIFO)", priority)
    return True


def _guard_against_spinning(limit_s: float) -> None:
    """SIGXCPU once a thread has run ``limit_s`` at real-time priority without waiting."""
    _, hard = resource.getrlimit(resource.RLIMIT_RTTIME)
    soft = round(limit_s * 1_000_000)  # microseconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_RTTIME, (soft, hard))

    def demote(signum, frame) -> None:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
            except OSError:  # the thread ended meanwhile
                pass
        log.warning("a thread ran %.1f s at real-time priority without waiting (a busy "
                    "loop?): the whole process is back at normal priority", soft / 1e6)

    signal.signal(signal.SIGXCPU, demote)


def normal_for_this_thread() -> None:
    """Put the calling thread back under normal scheduling (always allowed)."""
    if not set_for_this_thread(0):
        log.warning("could not return a thread to normal scheduling")


def set_for_this_thread(level: int) -> bool:
    """SCHED_FIFO at ``level``, or normal scheduling for 0, without a word either way
    (also fit to run in a child between fork and exec); False if refused."""
    try:
        if level:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(level))
        elif os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


def level_of(tid: int) -> int:
    """The SCHED_FIFO priority of a thread or process (0: this one), 0 if it is not
    real-time; raises OSError if it does not exist."""
    if os.sched_getscheduler(tid) != os.SCHED_FIFO:
        return 0
    return os.sched_getparam(tid).sched_priority

"""The supervisor: one small process per host that keeps its container booted.

Started by `lab up` as

    unshare --mount --propagation private -- python -m app.lab.supervisor HOST

it runs in a private mount namespace, so the tmpfs it mounts on /run/systemd
is its own (this machine's /run is on disk, and systemd-nspawn refuses to clean
scratch directories there). It joins the host's cgroups, then runs
systemd-nspawn booting systemd, and starts it again when the container reboots
(exit code 133). SIGTERM is passed on to nspawn, which asks the container's
systemd for an orderly halt; the supervisor then exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.lab import cgroups
from app.lab.command import run
from app.lab.layout import PROJECT_ROOT, Host, host_named
from app.lab.network import NETNS_DIR

REBOOT_EXIT_CODE = 133  # systemd-nspawn: the container asked to reboot
SCRATCH_DIR = Path("/run/systemd")
MOUNT_TIMEOUT = 10.0  # seconds
STOP_TIMEOUT = 20.0  # seconds between TERM and KILL at `lab down`
KILL_TIMEOUT = 5.0  # seconds for killed processes to vanish
POLL_INTERVAL = 0.05  # seconds
MODULE = "app.lab.supervisor"

log = logging.getLogger(__name__)


def nspawn_command(host: Host) -> list[str]:
    return [
        "systemd-nspawn",
        "--quiet",
        f"--directory={host.root_dir}",
        f"--machine={host.name}",
        "--boot",
        "--register=no",  # no machined on this machine
        "--keep-unit",  # without it nspawn wants a system bus
        f"--network-namespace-path={NETNS_DIR / host.netns}",
        "--console=pipe",
        "--link-journal=no",
        "--resolv-conf=off",
    ]


def supervise(host: Host) -> int:
    """Run the container until it halts or we are told to stop; return nspawn's code."""
    cgroups.join(host, os.getpid())
    SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
    run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755", "bib-scratch", str(SCRATCH_DIR)],
        timeout=MOUNT_TIMEOUT,
    )

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        log.info("booting %s", host.name)
        child = subprocess.Popen(nspawn_command(host), stdin=subprocess.DEVNULL)
        code = child.wait()
        if code != REBOOT_EXIT_CODE or stopping:
            log.info("%s exited with %d", host.name, code)
            return code
        log.info("%s rebooted", host.name)


def start(host: Host) -> int:
    """Start the host's supervisor detached from us; record and return its pid."""
    host.state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with host.console_log.open("ab") as console:
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                MODULE,
                host.name,
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host.pid_file.write_text(f"{process.pid}\n")
    log.info("started supervisor of %s as pid %d", host.name, process.pid)
    return process.pid


def _alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def supervisor_pid(host: Host) -> int | None:
    """The pid of this host's supervisor if it runs; checks it is ours, not a reused pid."""
    try:
        pid = int(host.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    ours = MODULE.encode() in argv and host.name.encode() in argv
    return pid if ours and _alive(pid) else None


def _wait_gone(lab_hosts: list[Host], deadline: float) -> list[Host]:
    """Wait until no process is left in these hosts' cgroups; return the hosts left."""
    remaining = lab_hosts
    while remaining and time.monotonic() < deadline:
        remaining = [h for h in remaining if any(_alive(p) for p in cgroups.pids(h))]
        if remaining:
            time.sleep(POLL_INTERVAL)
    return remaining


def stop(lab_hosts: list[Host]) -> None:
    """Halt the containers in parallel: TERM their supervisors, KILL what outlives the bound."""
    asked, orphaned = [], []
    for host in lab_hosts:
        pid = supervisor_pid(host)
        if pid is not None:
            log.info("stopping %s (supervisor pid %d)", host.name, pid)
            os.kill(pid, signal.SIGTERM)
            asked.append(host)
        elif cgroups.pids(host):
            orphaned.append(host)  # supervisor gone: nobody to ask for a halt

    stubborn = orphaned + _wait_gone(asked, time.monotonic() + STOP_TIMEOUT)
    for host in stubborn:
        pids = cgroups.pids(host)
        log.warning("%s did not halt; killing %s", host.name, sorted(pids))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile
                os.kill(pid, signal.SIGKILL)

    left = _wait_gone(stubborn, time.monotonic() + KILL_TIMEOUT)
    if left:
        raise RuntimeError(f"processes left in the cgroups of {[h.name for h in left]}")
    for host in lab_hosts:
        host.pid_file.unlink(missing_ok=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(message)s")
    return supervise(host_named(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())

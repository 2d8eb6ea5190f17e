"""Bringing the whole lab up and down, in the right order, idempotently.

up:   key and ssh_config -> bridge -> per host: netns + veth, tmpfs + overlay,
      supervisor (container) -> wait for port 22 of every host
down: stop containers (TERM, KILL after a bound) -> unmount overlays and
      tmpfs -> delete namespaces (and veths) -> bridge -> cgroups

`down` works from whatever is found, not from a record of what `up` did, so it
also cleans after an `up` that failed half way.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from app.lab import cgroups, network, rootfs, ssh, supervisor
from app.lab.layout import ALL_HOSTS, BRIDGE, STATE_DIR, Host

BOOT_TIMEOUT = 60.0  # seconds for every sshd to answer after the containers start
STATE_TIMEOUT = 10.0  # seconds for `systemctl is-system-running` over SSH
REQUIRED_TOOLS = ("systemd-nspawn", "unshare", "ip", "mount", "ssh", "ssh-keygen")
SSHD = "/usr/sbin/sshd"

log = logging.getLogger(__name__)


class LabError(RuntimeError):
    """The lab cannot be brought up or down on this machine."""


@dataclass(frozen=True)
class UpReport:
    started: list[str]
    already_up: list[str]
    seconds: float


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    running: bool
    link_up: bool
    sshd: bool
    systemd: str  # running, degraded, starting, ... or "-" when unknown


def check_machine() -> None:
    """Fail early, with the fix, when the machine cannot run the lab."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mounts, namespaces, cgroups)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not os.path.exists(SSHD):
        missing.append(SSHD)
    if missing:
        raise LabError(f"missing {', '.join(missing)}: run `bash app/lab/deps.sh`")


def up(lab_hosts: tuple[Host, ...]) -> UpReport:
    """Boot the hosts not already running and wait until each one's sshd answers."""
    check_machine()
    begin = time.monotonic()
    public_key = ssh.ensure_key()
    ssh.write_config()
    network.ensure_bridge()

    started, already_up = [], []
    for host in lab_hosts:
        if supervisor.supervisor_pid(host) is not None:
            already_up.append(host.name)
            continue
        _clean_host(host)  # leftovers of a host that crashed or half started
        network.create_host_network(host)
        rootfs.mount_root(host, public_key)
        supervisor.start(host)
        started.append(host.name)

    silent = ssh.wait_for_sshd(lab_hosts, BOOT_TIMEOUT)
    if silent:
        names = ", ".join(host.name for host in silent)
        logs = ", ".join(str(host.console_log) for host in silent)
        raise LabError(f"sshd of {names} silent after {BOOT_TIMEOUT:.0f} s; see {logs}")
    return UpReport(started, already_up, time.monotonic() - begin)


def _clean_host(host: Host) -> None:
    supervisor.stop([host])
    rootfs.unmount_root(host)
    network.delete_host_network(host)
    cgroups.remove(host)


def down() -> float:
    """Tear the whole lab down, whatever state it is in; return the seconds it took."""
    check_machine()
    begin = time.monotonic()
    supervisor.stop(list(ALL_HOSTS))
    for point in rootfs.lab_mounts():
        rootfs.unmount(point)
    for host in ALL_HOSTS:
        network.delete_host_network(host)
    for name in network.lab_namespaces():
        network.delete_namespace(name)
    network.delete_bridge()
    for host in ALL_HOSTS:
        cgroups.remove(host)
    cgroups.remove_lab_parent()
    shutil.rmtree(STATE_DIR / "hosts", ignore_errors=True)
    return time.monotonic() - begin


def leftovers() -> list[str]:
    """Whatever of the lab is still on the machine: empty once `down` did its work."""
    found = [f"netns {name}" for name in network.lab_namespaces()]
    found += [f"mount {point}" for point in rootfs.lab_mounts()]
    found += [f"cgroup {path}" for path in cgroups.lab_cgroups()]
    for host in ALL_HOSTS:
        found += [f"process {pid} of {host.name}" for pid in sorted(cgroups.pids(host))]
        if network.link_exists(host.veth):
            found.append(f"link {host.veth}")
    if network.link_exists(BRIDGE):
        found.append(f"link {BRIDGE}")
    return found


def systemd_state(host: Host) -> str:
    """What `systemctl is-system-running` says inside the host, or "-" if unreachable."""
    result = ssh.run_remote(host, ["systemctl", "is-system-running"], timeout=STATE_TIMEOUT)
    return result.stdout.strip() or "-"


def status() -> list[HostStatus]:
    rows = []
    for host in ALL_HOSTS:
        running = supervisor.supervisor_pid(host) is not None
        sshd = running and ssh.port_open(host.address)
        rows.append(
            HostStatus(
                name=host.name,
                address=host.address,
                running=running,
                link_up=network.link_is_up(host),
                sshd=sshd,
                systemd=systemd_state(host) if sshd else "-",
            )
        )
    return rows


def set_link(host: Host, up: bool) -> None:
    if not network.link_exists(host.veth):
        raise LabError(f"{host.name} is not up (no link {host.veth})")
    network.set_link(host, up)


def ssh_exec(host: Host, command: list[str]) -> None:
    """Replace this process with an SSH session to the host (the `lab ssh` command)."""
    argv = ssh.ssh_command(host, command)
    os.execvp(argv[0], argv)

"""The emulated lab end to end: boot 3 hosts, reach them, partition one, tear down.

Needs root and systemd-nspawn (install with `bash app/lab/deps.sh`). Every step
is bounded: commands run with timeouts and conditions are polled against a
deadline, and the lab is torn down even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from app.lab import cgroups, control
from app.lab.layout import BRIDGE, PROJECT_ROOT, host_named, hosts
from app.lab.ssh import CONFIG_FILE, port_open

HOST_COUNT = 3
CLI_TIMEOUT = 90.0  # seconds for one `lab` command
SSH_TIMEOUT = 45.0  # seconds for one command over SSH
SYSTEMD_WAIT = 30  # seconds `systemctl is-system-running --wait` may take inside
LINK_TIMEOUT = 10.0  # seconds for a partition to show, or to heal
PROBE_TIMEOUT = 0.5  # seconds, one TCP probe of port 22
POLL_INTERVAL = 0.1  # seconds

pytestmark = [
    pytest.mark.lab,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        shutil.which("systemd-nspawn") is None or not os.path.exists("/usr/sbin/sshd"),
        reason="systemd-nspawn or sshd missing: run `bash app/lab/deps.sh`",
    ),
]


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.lab", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def ssh(host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(CONFIG_FILE), host, command],
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_INTERVAL)
    return False


@pytest.fixture(scope="module")
def lab_up() -> Iterator[None]:
    lab("down")  # whatever an earlier run left
    try:
        result = lab("up", "--hosts", str(HOST_COUNT))
        assert result.returncode == 0, result.stdout + result.stderr
        print(result.stdout)
        yield
    finally:
        lab("down")


def test_up_is_idempotent(lab_up: None) -> None:
    result = lab("up", "--hosts", str(HOST_COUNT))

    assert result.returncode == 0, result.stderr
    assert "already up" in result.stdout


@pytest.mark.parametrize("name", [host.name for host in hosts(HOST_COUNT)])
def test_host_boots_systemd_with_sshd(lab_up: None, name: str) -> None:
    result = ssh(name, f"timeout {SYSTEMD_WAIT} systemctl is-system-running --wait")
    state = result.stdout.strip()
    if state == "degraded":
        failed = ssh(name, "systemctl --failed --no-legend --plain")
        print(f"{name} degraded; failed units:\n{failed.stdout}")

    assert state in ("running", "degraded"), result.stdout + result.stderr
    assert ssh(name, "hostname").stdout.strip() == name


def test_host_has_python_venv_and_only_the_lab_network(lab_up: None) -> None:
    name = "lab-sede1"
    check = (
        "/usr/bin/python3 -c 'import sys; print(sys.version_info[:2])' && "
        "/usr/bin/python3 -m venv /tmp/venv-check && echo venv-ok && ip route"
    )
    result = ssh(name, check)

    assert result.returncode == 0, result.stderr
    assert "(3, 11)" in result.stdout
    assert "venv-ok" in result.stdout
    assert "default" not in result.stdout


def test_hosts_reach_each_other(lab_up: None) -> None:
    probe = (
        '/usr/bin/python3 -c "import socket; '
        "socket.create_connection(('10.77.0.12', 22), timeout=2).close(); print('ok')\""
    )
    result = ssh("lab-sede1", probe)

    assert result.stdout.strip() == "ok", result.stderr


def test_status_reports_every_host(lab_up: None) -> None:
    rows = {row.name: row for row in control.status()}

    for host in hosts(HOST_COUNT):
        assert rows[host.name].sshd
        assert rows[host.name].systemd in ("running", "degraded")
    assert not rows["lab-ga"].running


def test_link_down_partitions_host_and_up_heals_it(lab_up: None) -> None:
    host = host_named("lab-sede2")
    try:
        assert lab("link", host.name, "down").returncode == 0
        assert wait_until(
            lambda: not port_open(host.address, timeout=PROBE_TIMEOUT), LINK_TIMEOUT
        ), "host still answers with its link down"
    finally:
        assert lab("link", host.name, "up").returncode == 0

    assert wait_until(lambda: port_open(host.address, timeout=PROBE_TIMEOUT), LINK_TIMEOUT)
    assert ssh(host.name, "true").returncode == 0


def test_down_leaves_nothing_behind(lab_up: None) -> None:
    result = lab("down")

    assert result.returncode == 0, result.stderr
    assert control.leftovers() == []
    netns = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert "bib-" not in netns
    processes = subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert "app.lab.supervisor" not in processes
    assert lab("down").returncode == 0  # idempotent


def test_down_cleans_up_after_a_half_failed_up() -> None:
    """What an `up` that died half way leaves: bridge, a namespace, a tmpfs, a cgroup."""
    host = host_named("lab-ga")
    try:
        for command in (
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "netns", "add", host.netns],
        ):
            subprocess.run(command, capture_output=True, timeout=10, check=True)
        host.tmpfs_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "bib-test", str(host.tmpfs_dir)], timeout=10, check=True
        )
        for hierarchy in cgroups.hierarchies():
            (hierarchy / host.cgroup / "payload").mkdir(parents=True)
        assert len(control.leftovers()) >= 4
    finally:
        result = lab("down")

    assert result.returncode == 0, result.stderr
    assert control.leftovers() == []

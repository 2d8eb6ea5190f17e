"""SSH into the lab: the lab's key pair, an ssh_config, and waiting for port 22.

`ssh -F .lab/ssh_config lab-sede1` reaches a host as root with the lab key;
host keys are fresh at every `lab up`, so they are neither checked nor stored.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence

from app.lab.command import run
from app.lab.layout import ALL_HOSTS, STATE_DIR, Host

KEY_FILE = STATE_DIR / "ssh" / "id_ed25519"
CONFIG_FILE = STATE_DIR / "ssh_config"
SSH_PORT = 22
CONNECT_TIMEOUT = 1.0  # seconds, one TCP probe of port 22
PROBE_INTERVAL = 0.1  # seconds between probes
KEYGEN_TIMEOUT = 10.0  # seconds

log = logging.getLogger(__name__)


def ensure_key() -> str:
    """Generate the lab's key pair once; return the public key."""
    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        KEY_FILE.parent.chmod(0o700)
        log.info("generating the lab key %s", KEY_FILE)
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bib-lab", "-f", str(KEY_FILE)],
            timeout=KEYGEN_TIMEOUT,
        )
    return KEY_FILE.with_suffix(".pub").read_text()


def write_config() -> None:
    """Write the ssh_config naming every lab host (absolute paths: works from any cwd)."""
    entries = [f"Host {host.name}\n    HostName {host.address}\n" for host in ALL_HOSTS]
    common = (
        "Host lab-*\n"
        "    User root\n"
        f"    IdentityFile {KEY_FILE.resolve()}\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n"
        "    ConnectTimeout 5\n"
    )
    CONFIG_FILE.write_text("# Written by `lab up`.\n" + "\n".join(entries) + "\n" + common)


def port_open(address: str, port: int = SSH_PORT, timeout: float = CONNECT_TIMEOUT) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_sshd(lab_hosts: Iterable[Host], timeout: float) -> list[Host]:
    """Poll port 22 of each host until it answers or `timeout` s pass; return the silent."""
    begin = time.monotonic()
    waiting = list(lab_hosts)
    while waiting and time.monotonic() < begin + timeout:
        for host in [host for host in waiting if port_open(host.address)]:
            log.info("sshd of %s answers after %.1f s", host.name, time.monotonic() - begin)
            waiting.remove(host)
        if waiting:
            time.sleep(PROBE_INTERVAL)
    return waiting


def ssh_command(host: Host, command: Sequence[str] = ()) -> list[str]:
    return ["ssh", "-F", str(CONFIG_FILE), host.name, *command]


def run_remote(
    host: Host, command: Sequence[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run `command` on the host over SSH; never raises on a non-zero exit."""
    return run(ssh_command(host, command), timeout=timeout, check=False)

"""Day-to-day operations on a deployed biblioteca system (Fabric 3).

The hosts come from the Ansible inventory, read through ``ansible-inventory --list``;
there is no second host list. The inventory is ``$BIBLIOTECA_INVENTORY``, by default
``inventory/lab.ini``. Run from the repository root:

    fab status
    fab run --ps-per-sede 2 --count 100 [--seed 7] [--run-id r1]
    fab collect-metrics [--run-id r1]        # into results/<run-id>/<host>/
    fab fault --host lab-sede1 --action stop --unit gc
    fab link --host lab-ga --state down      # emulated lab only
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

from fabric import Connection, task

from app.lab.command import beside_python
from paramiko.client import RejectPolicy

ROOT = Path(__file__).resolve().parent
INVENTORY = Path(os.environ.get("BIBLIOTECA_INVENTORY", "inventory/lab.ini"))
RESULTS = ROOT / "results"
LAST_RUN = RESULTS / "LAST_RUN"

VENV_PYTHON = "/opt/biblioteca/venv/bin/python"
METRICS_DIR = "/var/lib/biblioteca/metrics"
GA_DB = "/var/lib/biblioteca/ga/biblioteca.db"
SERVICE_USER = "biblioteca"

# Only the emulated lab's own subnet may be driven with `lab link`.
LAB_SUBNET = ipaddress.ip_network("10.77.0.0/24")
CONNECT_TIMEOUT = 10  # seconds
UNIT_PATTERN = re.compile(r"^biblioteca-[a-z]+(@[A-Za-z0-9_.-]+)?\.service$")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
FAULT_COMMANDS = {
    "stop": ["systemctl", "stop"],
    "start": ["systemctl", "start"],
    "restart": ["systemctl", "restart"],
    # A crash, not a clean stop: Restart=on-failure brings the unit back.
    "kill": ["systemctl", "kill", "--signal=SIGKILL"],
}


def _tool(name: str) -> str:
    """An Ansible command from the Python running fab, else from PATH."""
    found = beside_python(name)
    if found is None:
        sys.exit(f"{name} not found: install ansible-core next to fabric")
    return found


def _inventory_path() -> Path:
    path = INVENTORY if INVENTORY.is_absolute() else ROOT / INVENTORY
    if not path.exists():
        sys.exit(f"inventory {path} does not exist (BIBLIOTECA_INVENTORY)")
    return path


@cache
def _inventory() -> dict:
    """The inventory as ansible-inventory prints it: groups and _meta.hostvars."""
    listing = subprocess.run(
        [_tool("ansible-inventory"), "-i", str(_inventory_path()), "--list"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(listing.stdout)


def _group(name: str) -> list[str]:
    """Hosts of a group and of its child groups, in inventory order, without repeats."""
    data = _inventory()
    entry = data.get(name, {})
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts.extend(h for h in _group(child) if h not in hosts)
    return hosts


def _hostvars(host: str) -> dict:
    hostvars = _inventory().get("_meta", {}).get("hostvars", {})
    if host not in hostvars and host not in _group("all"):
        sys.exit(f"{host} is not in {_inventory_path()}")
    return hostvars.get(host, {})


def _address(host: str) -> str:
    return _hostvars(host).get("ansible_host", host)


def _render(value: str) -> str:
    """Resolve the one template the inventories use; refuse any other."""
    value = value.replace("{{ inventory_dir }}", str(_inventory_path().parent))
    if "{{" in value:
        sys.exit(f"cannot resolve inventory value {value!r} outside Ansible")
    return value


def _connection(host: str) -> Connection:
    """An SSH connection set up like Ansible's: user, key, host key checking."""
    hostvars = _hostvars(host)
    connect_kwargs = {}
    key = hostvars.get("ansible_ssh_private_key_file")
    if key:
        connect_kwargs["key_filename"] = _render(key)
    connection = Connection(
        _address(host),
        user=hostvars.get("ansible_user", "root"),
        port=int(hostvars.get("ansible_port", 22)),
        connect_timeout=CONNECT_TIMEOUT,
        connect_kwargs=connect_kwargs,
    )
    ssh_args = hostvars.get("ansible_ssh_common_args", "")
    if "StrictHostKeyChecking=no" not in ssh_args:
        # Outside the lab, known host keys only, as ssh would insist.
        connection.client.load_system_host_keys()
        connection.client.set_missing_host_key_policy(RejectPolicy())
    return connection


def _sudo_prefix(host: str) -> list[str]:
    become = str(_hostvars(host).get("ansible_become", "false")).lower() in ("true", "yes", "1")
    return ["sudo", "-n"] if become else []


def _remote(host: str, argv: list[str], **kwargs):
    """Run argv on host (through sudo when the inventory says become)."""
    command = shlex.join(_sudo_prefix(host) + argv)
    with _connection(host) as connection:
        return connection.run(command, **kwargs)


def _run_id(run_id: str | None) -> str:
    if run_id is None:
        if not LAST_RUN.exists():
            sys.exit("no --run-id and no results/LAST_RUN: start a run first (fab run)")
        run_id = LAST_RUN.read_text().strip()
    if not RUN_ID_PATTERN.match(run_id):
        sys.exit(f"run id {run_id!r}: letters, digits, '.', '_' and '-' only")
    return run_id


def _unit(name: str) -> str:
    """Accept `gc`, `actor@loan`, `biblioteca-ga` or a full unit name."""
    unit = name if name.startswith("biblioteca-") else f"biblioteca-{name}"
    if not unit.endswith(".service"):
        unit += ".service"
    if not UNIT_PATTERN.match(unit):
        sys.exit(f"{name!r} is not a biblioteca unit (e.g. gc, ga, actor@loan, ps@sede1-1)")
    return unit


@task
def status(c):
    """Show every biblioteca unit of every host."""
    for host in _group("biblioteca"):
        print(f"== {host} ({_address(host)})")
        result = _remote(host, ["systemctl", "list-units", "--all", "--plain", "--no-legend",
                                "--no-pager", "biblioteca-*.service"], hide=True, warn=True)
        print(result.stdout.rstrip() or "(no biblioteca unit)")


@task(help={"ps-per-sede": "request processes per sede", "count": "requests per process",
            "seed": "seed of the request files", "run-id": "name of the run"})
def run(c, ps_per_sede=2, count=100, seed=42, run_id=None):
    """Start a multi-sede run on the clients host and wait for it (playbooks/run.yml)."""
    argv = [_tool("ansible-playbook"), "-i", str(_inventory_path()), "playbooks/run.yml",
            "-e", f"ps_per_sede={int(ps_per_sede)}", "-e", f"count={int(count)}",
            "-e", f"seed={int(seed)}"]
    if run_id is not None:
        argv += ["-e", f"run_id={_run_id(run_id)}"]
    c.run(shlex.join(argv), pty=False)
    print(f"run id: {_run_id(None)}; next: fab collect-metrics")


def _belongs_to_run(name: str, run_id: str) -> bool:
    """Request processes write one file per run; long-running services one per deploy."""
    return not name.startswith("ps-") or name.endswith(f"-{run_id}.csv")


def _collect_host(host: str, folder: Path, run_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with _connection(host) as connection:
        sudo = shlex.join(_sudo_prefix(host))
        listing = connection.run(f"{sudo} find {METRICS_DIR} -maxdepth 1 -name '*.csv'",
                                 hide=True, warn=True)
        for remote in sorted(listing.stdout.split()):
            if _belongs_to_run(Path(remote).name, run_id):
                connection.get(remote, str(folder / Path(remote).name))

        journal = connection.run(f"{sudo} journalctl -u 'biblioteca-*' -o short-iso --no-pager",
                                 hide=True, warn=True)
        (folder / "journal.log").write_text(journal.stdout)

        if host in _group("ga_primary") or host in _group("ga_replica"):
            _backup_database(connection, sudo, folder)


def _backup_database(connection: Connection, sudo: str, folder: Path) -> None:
    """A consistent copy of the GA database, read as the service account."""
    copy = f"/tmp/biblioteca-backup-{os.getpid()}.db"
    as_service = f"{sudo} runuser -u {SERVICE_USER} --"
    made = connection.run(f"{as_service} {VENV_PYTHON} -m app.inspect --db {GA_DB} "
                          f"--backup {copy}", hide=True, warn=True)
    if made.failed:
        # Same result with the sqlite3 online backup API, for a host without app.inspect.
        script = ("import sqlite3, sys; s = sqlite3.connect(sys.argv[1]); "
                  "d = sqlite3.connect(sys.argv[2]); s.backup(d); d.close()")
        made = connection.run(f"{as_service} {VENV_PYTHON} -c {shlex.quote(script)} "
                              f"{GA_DB} {copy}", hide=True, warn=True)
    if made.ok:
        connection.get(copy, str(folder / "ga.db"))
    else:
        print(f"   no database copy: {made.stderr.strip()[-200:]}")
    connection.run(f"{sudo} rm -f {copy}", hide=True, warn=True)


@task(help={"run-id": "run to file the results under (default: the last fab/ansible run)"})
def collect_metrics(c, run_id=None):
    """Copy metrics, logs and GA databases into results/<run-id>/<host>/ and report."""
    run_id = _run_id(run_id)
    target = RESULTS / run_id
    for host in _group("biblioteca"):
        print(f"== {host}: collecting into {target / host}")
        _collect_host(host, target / host, run_id)

    print(f"== report of {target}")
    report = c.run(shlex.join([sys.executable, "-m", "app.report", str(target)]),
                   warn=True, hide=True)
    print(report.stdout.rstrip())
    if report.failed:
        print(f"(app.report failed; the files are collected) {report.stderr.strip()[-500:]}")


@task(help={"host": "inventory host", "action": "stop, start, restart or kill (SIGKILL)",
            "unit": "gc, ga, actor@loan, ps@sede1-1 or a full unit name"})
def fault(c, host, action, unit):
    """Inject a fault: systemctl stop/start/restart/kill a unit on one host."""
    if action not in FAULT_COMMANDS:
        sys.exit(f"action must be one of {', '.join(FAULT_COMMANDS)}")
    unit = _unit(unit)
    _remote(host, FAULT_COMMANDS[action] + [unit])
    state = _remote(host, ["systemctl", "is-active", unit], hide=True, warn=True)
    print(f"{host}: {action} {unit} -> {state.stdout.strip()}")


@task(help={"host": "lab host", "state": "down or up"})
def link(c, host, state):
    """Set an emulated lab host's link down or up (a partition), with `lab link`."""
    if state not in ("down", "up"):
        sys.exit("state must be down or up")
    try:
        address = ipaddress.ip_address(_address(host))
    except ValueError:
        sys.exit(f"{host} has no address in the inventory")
    if address not in LAB_SUBNET:
        sys.exit(f"{host} ({address}) is not an emulated lab host")
    c.run(shlex.join([sys.executable, "-m", "app.lab", "link", host, state]))

"""A cgroup per host, in every cgroup hierarchy the containers use.

This machine has no systemd as PID 1 to hand out cgroups, and runs hybrid
cgroups (v1 hierarchies plus the unified one). Without a cgroup of its own,
every container shared the controller's, and `systemctl status` inside failed
with an I/O error. So each host's supervisor joins `bib-lab/<host>` in the
unified, `name=systemd` and memory hierarchies before it starts the container;
the container's systemd then builds its tree below. The same cgroups let
`lab down` find every process of a host, and prove none is left.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.lab.layout import NAME_PREFIX, Host

CGROUP_ROOT = Path("/sys/fs/cgroup")
HYBRID_HIERARCHIES = ("unified", "systemd", "memory")
LAB_CGROUP = f"{NAME_PREFIX}lab"

log = logging.getLogger(__name__)


def hierarchies() -> list[Path]:
    """Mount points of the hierarchies the lab uses on this machine."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]  # cgroups v2 only
    return [CGROUP_ROOT / name for name in HYBRID_HIERARCHIES if (CGROUP_ROOT / name).is_dir()]


def host_cgroups(host: Host) -> list[Path]:
    return [hierarchy / host.cgroup for hierarchy in hierarchies()]


def join(host: Host, pid: int) -> None:
    """Create the host's cgroups where missing and move `pid` into each."""
    for directory in host_cgroups(host):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").write_text(f"{pid}\n")
        log.debug("pid %d joined %s", pid, directory)


def _tree(directory: Path) -> list[Path]:
    """`directory` and every cgroup below it, deepest first."""
    found = [Path(root) for root, _, _ in os.walk(directory)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def pids(host: Host) -> set[int]:
    """Every process in the host's cgroups, at any depth, in any hierarchy."""
    found: set[int] = set()
    for directory in host_cgroups(host):
        for cgroup in _tree(directory):
            try:
                text = (cgroup / "cgroup.procs").read_text()
            except OSError:  # removed meanwhile by the container's systemd (ENOENT, ENODEV)
                continue
            found.update(int(line) for line in text.split())
    return found


def remove(host: Host) -> None:
    """Remove the host's (empty) cgroups, and the lab's parent once it is empty."""
    for directory in host_cgroups(host):
        for cgroup in _tree(directory):
            log.debug("removing cgroup %s", cgroup)
            cgroup.rmdir()
        parent = directory.parent
        if parent.is_dir() and not any(p.is_dir() for p in parent.iterdir()):
            parent.rmdir()


def lab_cgroups() -> list[Path]:
    """The lab's cgroups still present, in any hierarchy."""
    return [h / LAB_CGROUP for h in hierarchies() if (h / LAB_CGROUP).is_dir()]


def remove_lab_parent() -> None:
    for directory in lab_cgroups():
        for cgroup in _tree(directory):
            cgroup.rmdir()

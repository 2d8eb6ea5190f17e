"""Names, addresses and paths of the emulated lab, shared by every mechanism.

The names and addresses are a contract with `inventory/lab.ini`; change both
together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SUBNET_PREFIX = 24  # bits
BRIDGE = "bib-br0"
BRIDGE_ADDRESS = "10.77.0.1"
NAME_PREFIX = "bib-"  # of every namespace, link and cgroup the lab creates
PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("BIB_LAB_DIR", PROJECT_ROOT / ".lab"))


@dataclass(frozen=True)
class Host:
    """One emulated VM: its name, address and where its state lives."""

    name: str
    address: str

    @property
    def netns(self) -> str:
        return NAME_PREFIX + self.name

    @property
    def mac(self) -> str:
        """A fixed, locally administered MAC for the guest side, from the address.

        A new random MAC at every boot left stale ARP entries in the controller and
        the other hosts, and a restarted host was unreachable for about 20 s.
        """
        last_octet = int(self.address.rsplit(".", 1)[1])
        return f"02:62:69:00:00:{last_octet:02x}"

    @property
    def veth(self) -> str:
        """The host side of the veth pair, attached to the bridge (15 chars max)."""
        return NAME_PREFIX + self.name

    @property
    def cgroup(self) -> str:
        """Relative path of the host's cgroup in every hierarchy the lab uses."""
        return f"{NAME_PREFIX}lab/{self.name}"

    @property
    def state_dir(self) -> Path:
        return STATE_DIR / "hosts" / self.name

    @property
    def tmpfs_dir(self) -> Path:
        """A tmpfs holding the overlay's upper and work directories."""
        return self.state_dir / "tmpfs"

    @property
    def root_dir(self) -> Path:
        """The merged overlay: the container's root filesystem."""
        return self.state_dir / "root"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "supervisor.pid"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"


ALL_HOSTS: tuple[Host, ...] = (
    Host("lab-sede1", "10.77.0.11"),
    Host("lab-sede2", "10.77.0.12"),
    Host("lab-client", "10.77.0.13"),
    Host("lab-ga", "10.77.0.14"),
)


def hosts(count: int) -> tuple[Host, ...]:
    """The first `count` lab hosts (3 without the separate GA host, or 4)."""
    if count not in (3, 4):
        raise ValueError(f"the lab has 3 or 4 hosts, not {count}")
    return ALL_HOSTS[:count]


def host_named(name: str) -> Host:
    for host in ALL_HOSTS:
        if host.name == name:
            return host
    known = ", ".join(host.name for host in ALL_HOSTS)
    raise ValueError(f"no lab host {name!r} (known: {known})")

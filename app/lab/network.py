"""The lab network: one host bridge, and per host a namespace joined to it by a veth.

    controller (10.77.0.1 on bib-br0)
        |-- bib-lab-sede1 (veth) <-> eth0 10.77.0.11 in netns bib-lab-sede1
        |-- bib-lab-sede2 (veth) <-> eth0 10.77.0.12 in netns bib-lab-sede2
        ...

Inside a namespace there is no default route, so a host reaches nothing but
the lab subnet. Setting the host side of a veth down is the partition fault.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from app.lab.command import run
from app.lab.layout import BRIDGE, BRIDGE_ADDRESS, NAME_PREFIX, SUBNET_PREFIX, Host

NETNS_DIR = Path("/run/netns")
GUEST_INTERFACE = "eth0"
IP_TIMEOUT = 10.0  # seconds
VETH_GONE_TIMEOUT = 2.0  # seconds for a veth to vanish with its namespace
POLL_INTERVAL = 0.02  # seconds

log = logging.getLogger(__name__)


def _ip(*args: str, check: bool = True) -> str:
    return run(["ip", *args], timeout=IP_TIMEOUT, check=check).stdout


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def lab_namespaces() -> list[str]:
    """Every network namespace the lab may have left, by its prefix."""
    listing = _ip("netns", "list")
    names = (line.split()[0] for line in listing.splitlines() if line.strip())
    return [name for name in names if name.startswith(NAME_PREFIX)]


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        log.info("creating bridge %s", BRIDGE)
        _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "replace", f"{BRIDGE_ADDRESS}/{SUBNET_PREFIX}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for family in ("ipv4", "ipv6"):
        # Never route what the hosts send to the bridge: they reach the subnet only.
        forwarding = Path("/proc/sys/net", family, "conf", BRIDGE, "forwarding")
        if forwarding.exists():
            forwarding.write_text("0\n")


def delete_bridge() -> None:
    if link_exists(BRIDGE):
        log.info("deleting bridge %s", BRIDGE)
        _ip("link", "delete", BRIDGE)


def create_host_network(host: Host) -> None:
    """Create the namespace, the veth pair and the guest address, from scratch."""
    log.info("creating netns %s with %s", host.netns, host.address)
    _ip("netns", "add", host.netns)
    _ip(
        "link",
        "add",
        host.veth,
        "type",
        "veth",
        "peer",
        "name",
        GUEST_INTERFACE,
        "address",
        host.mac,
        "netns",
        host.netns,
    )
    _ip("link", "set", host.veth, "master", BRIDGE)
    _ip("link", "set", host.veth, "up")

    guest = ("-n", host.netns)
    _ip(*guest, "addr", "add", f"{host.address}/{SUBNET_PREFIX}", "dev", GUEST_INTERFACE)
    _ip(*guest, "link", "set", GUEST_INTERFACE, "up")
    _ip(*guest, "link", "set", "lo", "up")


def delete_host_network(host: Host) -> None:
    """Delete the namespace (which takes the veth pair with it) and any stray veth."""
    if netns_exists(host.netns):
        log.info("deleting netns %s", host.netns)
        _ip("netns", "delete", host.netns)
    deadline = time.monotonic() + VETH_GONE_TIMEOUT
    while link_exists(host.veth) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)  # the kernel removes the pair after the namespace
    if link_exists(host.veth):
        _ip("link", "delete", host.veth, check=False)


def delete_namespace(name: str) -> None:
    log.info("deleting netns %s", name)
    _ip("netns", "delete", name)


def set_link(host: Host, up: bool) -> None:
    """Set the host side of the host's veth up or down: a partition of that host."""
    state = "up" if up else "down"
    log.info("setting %s %s", host.veth, state)
    _ip("link", "set", host.veth, state)


def link_is_up(host: Host) -> bool:
    flags_file = Path("/sys/class/net", host.veth, "flags")
    if not flags_file.exists():
        return False
    iff_up = 0x1
    return bool(int(flags_file.read_text().strip(), 16) & iff_up)

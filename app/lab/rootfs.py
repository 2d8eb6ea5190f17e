"""Each host's root filesystem: an overlay of the machine's root with a tmpfs on top.

    <state>/hosts/<host>/tmpfs   tmpfs: upper/ and work/ of the overlay
    <state>/hosts/<host>/root    overlay: lower=/ upper=tmpfs/upper

Before mounting, the upper layer is seeded with what makes the host its own
machine: hostname, machine id, SSH host key, the lab's key for root, an empty
fstab, and a unit directory holding only sshd (every unit enabled on this
machine, e.g. a database server, would boot in each host otherwise). Home and
temporary directories are opaque so the controller's dotfiles do not leak in.
Everything written in a host lives in RAM and is gone at `lab down`.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from app.lab.command import run
from app.lab.layout import ALL_HOSTS, PROJECT_ROOT, STATE_DIR, Host

TMPFS_SIZE = "2g"  # upper limit; a tmpfs uses only what is written
MOUNT_TIMEOUT = 10.0  # seconds
KEYGEN_TIMEOUT = 10.0  # seconds
OPAQUE_XATTR = "trusted.overlay.opaque"
SYSTEM_UNIT_DIR = "/lib/systemd/system"
# Directories of the machine the hosts must not see; the project's top-level
# directory is hidden too, so hosts run what was deployed, not the checkout.
OPAQUE_DIRS = ("root", "home", "tmp", "var/tmp", "etc/systemd/system")
STICKY_DIRS = ("tmp", "var/tmp")
SSHD_DROP_IN = """\
# Written by app.lab.rootfs: key-only root login with this host's own key.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
"""

log = logging.getLogger(__name__)


def _opaque_dirs() -> list[str]:
    top = PROJECT_ROOT.parts[1] if len(PROJECT_ROOT.parts) > 1 else ""
    extra = [top] if top and top not in ("usr", "etc", "var", "opt", "srv") else []
    return [*OPAQUE_DIRS, *extra]


def mounted_points() -> list[Path]:
    """Mount points of this mount namespace, as /proc/self/mountinfo lists them."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(Path(raw.encode().decode("unicode_escape")))
    return points


def lab_mounts() -> list[Path]:
    """Mounts under the lab's state directory, newest first (the unmount order)."""
    state = STATE_DIR.resolve()
    inside = [p for p in mounted_points() if p == state or state in p.parents]
    return list(reversed(inside))


def _seed_upper(host: Host, upper: Path, authorized_key: str) -> None:
    for relative in _opaque_dirs():
        directory = upper / relative
        directory.mkdir(parents=True, exist_ok=True)
        os.setxattr(directory, OPAQUE_XATTR, b"y")
    (upper / "root").chmod(0o700)
    for relative in STICKY_DIRS:
        (upper / relative).chmod(0o1777)

    etc = upper / "etc"
    (etc / "hostname").write_text(host.name + "\n")
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    (etc / "fstab").write_text("# no mounts: the container manager provides them\n")
    (etc / "resolv.conf").write_text("# no name servers: the lab has no outside network\n")
    names = "".join(f"{peer.address}\t{peer.name}\n" for peer in ALL_HOSTS)
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{names}")

    units = etc / "systemd" / "system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "ssh.service").symlink_to(f"{SYSTEM_UNIT_DIR}/ssh.service")
    (units / "sshd.service").symlink_to(f"{SYSTEM_UNIT_DIR}/ssh.service")

    ssh_dir = etc / "ssh"
    (ssh_dir / "sshd_config.d").mkdir(parents=True, exist_ok=True)
    (ssh_dir / "sshd_config.d" / "lab.conf").write_text(SSHD_DROP_IN)
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"root@{host.name}",
            "-f",
            str(ssh_dir / "ssh_host_ed25519_key"),
        ],
        timeout=KEYGEN_TIMEOUT,
    )

    root_ssh = upper / "root" / ".ssh"
    root_ssh.mkdir(mode=0o700)
    authorized = root_ssh / "authorized_keys"
    authorized.write_text(authorized_key.strip() + "\n")
    authorized.chmod(0o600)


def mount_root(host: Host, authorized_key: str) -> None:
    """Mount the host's tmpfs, seed its upper layer and mount the overlay on top."""
    for directory in (host.tmpfs_dir, host.root_dir):
        directory.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"mode=0755,size={TMPFS_SIZE}",
            f"bib-{host.name}",
            str(host.tmpfs_dir),
        ],
        timeout=MOUNT_TIMEOUT,
    )
    upper, work = host.tmpfs_dir / "upper", host.tmpfs_dir / "work"
    upper.mkdir()
    work.mkdir()
    _seed_upper(host, upper, authorized_key)

    options = f"lowerdir=/,upperdir={upper},workdir={work}"
    log.info("mounting overlay for %s", host.name)
    run(
        ["mount", "-t", "overlay", "-o", options, f"bib-{host.name}", str(host.root_dir)],
        timeout=MOUNT_TIMEOUT,
    )


def unmount(point: Path) -> None:
    """Unmount `point`; detach it lazily if something still holds it busy."""
    log.info("unmounting %s", point)
    result = run(["umount", str(point)], timeout=MOUNT_TIMEOUT, check=False)
    if result.returncode != 0:
        log.warning("umount %s failed (%s); detaching lazily", point, result.stderr.strip())
        run(["umount", "--lazy", str(point)], timeout=MOUNT_TIMEOUT)


def unmount_root(host: Host) -> None:
    """Unmount the overlay and then the tmpfs under it, whichever are mounted."""
    for point in (host.root_dir, host.tmpfs_dir):
        while point.resolve() in mounted_points():
            unmount(point)

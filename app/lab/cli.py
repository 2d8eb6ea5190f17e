"""The `lab` command: emulated lab VMs on this machine.

lab up [--hosts 3|4]      boot the hosts, wait for their sshd
lab down                  tear everything down
lab status                hosts, addresses, sshd, systemd state
lab link HOST down|up     partition a host from the bridge, or heal it
lab ssh HOST [CMD...]     a shell or a command on a host, as root
lab demo [--hosts 3|4]    up, deploy, a run with the primary GA stopped half way,
                          collect, report, check, down (see app/lab/demo.py)
"""

from __future__ import annotations

import argparse
import logging
import sys

from app.lab import control, demo
from app.lab.command import CommandError
from app.lab.layout import ALL_HOSTS, host_named, hosts
from app.lab.ssh import CONFIG_FILE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lab", description="Emulated lab VMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="boot the lab hosts")
    up.add_argument("--hosts", type=int, choices=(3, 4), default=4)
    commands.add_parser("down", help="tear the lab down")
    commands.add_parser("status", help="show the lab hosts")

    names = [host.name for host in ALL_HOSTS]
    link = commands.add_parser("link", help="set a host's link down or up")
    link.add_argument("host", choices=names)
    link.add_argument("state", choices=("down", "up"))

    shell = commands.add_parser("ssh", help="ssh into a host")
    shell.add_argument("host", choices=names)
    shell.add_argument("remote_command", nargs=argparse.REMAINDER)

    main_job = commands.add_parser("demo", help="the main job end to end, then lab down")
    demo.add_arguments(main_job)
    return parser


def _up(count: int) -> int:
    report = control.up(hosts(count))
    if report.started:
        print(f"started {', '.join(report.started)}")
    if report.already_up:
        print(f"already up: {', '.join(report.already_up)}")
    if not report.started:
        print(f"lab already up ({report.seconds:.1f} s to check)")
    else:
        print(f"lab up: {count} hosts answer on port 22 after {report.seconds:.1f} s")
    print(f"ssh config: {CONFIG_FILE}")
    return 0


def _down() -> int:
    seconds = control.down()
    left = control.leftovers()
    if left:
        print("lab down left: " + "; ".join(left), file=sys.stderr)
        return 1
    print(f"lab down in {seconds:.1f} s")
    return 0


def _status() -> int:
    print(f"{'host':<12}{'address':<13}{'container':<11}{'link':<6}{'sshd':<6}systemd")
    for row in control.status():
        container = "up" if row.running else "down"
        link = "up" if row.link_up else "down"
        sshd = "yes" if row.sshd else "no"
        print(f"{row.name:<12}{row.address:<13}{container:<11}{link:<6}{sshd:<6}{row.systemd}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "up":
            return _up(args.hosts)
        if args.command == "down":
            return _down()
        if args.command == "status":
            return _status()
        if args.command == "demo":
            return demo.run(demo.options_from(args))
        if args.command == "link":
            control.set_link(host_named(args.host), up=args.state == "up")
            print(f"{args.host}: link {args.state}")
            return 0
        control.ssh_exec(host_named(args.host), args.remote_command)
    except (control.LabError, CommandError, demo.DemoError) as error:
        print(f"lab {args.command}: {error}", file=sys.stderr)
        if args.command == "up":
            print("run `lab down` to clean up what was started", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line flags with defaults read from a TOML file.

Each component declares its flags with argparse; ``--config FILE`` supplies
values for any of them (keys spelled like the long flag, with underscores) and
a flag given on the command line wins over the file.
"""

from __future__ import annotations

import argparse
import socket
import tomllib
from typing import Sequence


def parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every process shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="TOML file with defaults for any flag")
    p.add_argument("--metrics_dir", help="folder for this process's metrics CSV")
    p.add_argument("--run_id", default="adhoc", help="run id written in every metrics row")
    p.add_argument("--host", default=socket.gethostname(), help="host name for metrics")
    p.add_argument("--log_level", default="INFO")
    p.add_argument("--realtime", type=int, default=0,
                   help="SCHED_FIFO priority 1-99 for a process on the request path "
                        "(0: normal scheduling); see app.priority")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse twice: once to find ``--config``, once with the file as defaults."""
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config")
    first, _ = finder.parse_known_args(argv)
    if first.config:
        with open(first.config, "rb") as handle:
            values = tomllib.load(handle)
        known = {action.dest for action in p._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            p.error(f"{first.config}: unknown key(s) {', '.join(unknown)}")
        p.set_defaults(**values)
        for action in p._actions:
            if action.dest in values:
                action.required = False  # the file supplies it
    return p.parse_args(argv)

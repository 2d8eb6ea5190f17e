"""Running system commands: explicit argument lists, a timeout, logged."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

DEFAULT_TIMEOUT = 30.0  # seconds

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A command exited non-zero; carries what it wrote to stderr."""


def run(
    args: Sequence[str], timeout: float = DEFAULT_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `args` without a shell and return its result; raise on failure if `check`."""
    log.debug("run %s", " ".join(args))
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise CommandError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result

"""Running system commands: explicit argument lists, a timeout, logged."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TIMEOUT = 30.0  # seconds

log = logging.getLogger(__name__)


def beside_python(name: str) -> str | None:
    """A command installed next to the running Python (a venv's ansible, fab), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


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

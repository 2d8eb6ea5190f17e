"""The inspect command shows a database and both live GAs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ask, request

pytestmark = pytest.mark.timeout(60)


def run_inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.inspect", *args], capture_output=True,
                          text=True, timeout=30)


def test_inspect_shows_the_pair_and_the_database(system, catalog, zctx, tmp_path):
    _, loans = catalog
    loan = loans[0]
    assert ask(zctx, system.gc_endpoint(loan.sede),
               request("DEVOLUCION", loan.book, loan.reader, sede=loan.sede))["ok"]
    assert system.wait_applied(20)

    live = run_inspect("--ga", system.ga_endpoints()[0], "--ga", system.ga_endpoints()[1])
    copy = tmp_path / "copy.db"
    backup = run_inspect("--db", system.db_path("primary"), "--backup", str(copy))
    offline = run_inspect("--db", str(copy))

    assert live.returncode == 0, live.stdout + live.stderr
    assert "role primary, active" in live.stdout and "role backup, passive" in live.stdout
    assert backup.returncode == 0
    assert "operations: 1 applied, 0 refused" in offline.stdout
    assert "DEVOLUCION" in offline.stdout

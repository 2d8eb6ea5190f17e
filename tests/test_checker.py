"""The checker finds what is wrong, and says when it cannot judge."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys

import pytest

from app import metrics, seed, storage
from conftest import request

pytestmark = pytest.mark.timeout(30)


def checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.checker", *args], capture_output=True,
                          text=True, timeout=20)


@pytest.fixture
def run(tmp_path):
    """A database with one applied return and a PS file that saw two returns accepted."""
    db = str(tmp_path / "ga.db")
    seed.write(db, 42)
    _, loans = seed.build_catalog(42)
    applied = request("DEVOLUCION", loans[0].book, loans[0].reader)
    library = storage.Library(db)
    library.apply_batch([applied], term=0)
    library.close()
    folder = tmp_path / "metrics"
    folder.mkdir()
    with open(folder / "ps-x-run.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(metrics.COLUMNS)
        for key in (applied["idempotencyKey"], "DEVOLUCION:lost:L0002"):
            out.writerow(("run", "h", "SEDE1", "ps", "x", "DEVOLUCION", "r", key, "ok", "1", "0"))
    return db, str(folder)


def test_an_acknowledged_request_missing_from_the_log_is_lost(run):
    db, folder = run
    result = checker("--metrics", folder, "--db", db)
    assert result.returncode == 1
    assert "lost: 1" in result.stdout and "DEVOLUCION:lost:L0002" in result.stdout


def test_copies_that_do_not_add_up_and_differing_replicas_are_found(run, tmp_path):
    db, _ = run
    copy = str(tmp_path / "copy.db")
    source, target = sqlite3.connect(db), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    code = target.execute("SELECT code FROM books WHERE available < total LIMIT 1").fetchone()[0]
    target.execute("UPDATE books SET available = available + 1 WHERE code = ?", (code,))
    target.commit()
    target.close()

    result = checker("--db", db, "--db", copy)

    assert result.returncode == 1
    assert "copies: 1" in result.stdout and code in result.stdout
    assert "replicas: 1" in result.stdout


def test_it_refuses_to_judge_without_its_inputs(run, tmp_path):
    db, _ = run
    assert checker("--metrics", str(tmp_path / "nowhere"), "--db", db).returncode == 2
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    assert checker("--db", str(junk)).returncode == 2

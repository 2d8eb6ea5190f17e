"""Two request processes fight over the same few books: copies stay consistent."""

from __future__ import annotations

import json
import random

import pytest

from app import checker
from conftest import request

pytestmark = pytest.mark.timeout(120)

REQUESTS_PER_PS = 300
CONTESTED_BOOKS = 6


def write_contest(path, books, readers, sede, rng):
    """Loans, returns and renewals of the same few books by a small set of readers."""
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(REQUESTS_PER_PS):
            op = rng.choice(("PRESTAMO", "PRESTAMO", "DEVOLUCION", "RENOVACION"))
            handle.write(json.dumps(request(op, rng.choice(books), rng.choice(readers),
                                            sede=sede)) + "\n")


def test_two_ps_on_the_same_books_keep_copies_consistent(system, catalog, tmp_path):
    books, _ = catalog
    contested = [b.code for b in books if b.total <= 2][:CONTESTED_BOOKS]
    readers = ["U0001", "U0002", "U0003"]
    rng = random.Random(5)
    processes = []
    for sede in (1, 2):
        path = tmp_path / f"contest-{sede}.jsonl"
        write_contest(path, contested, readers, sede, rng)
        processes.append(system.ps(f"contest-{sede}", str(path), sede, "--quiet"))

    for process in processes:
        assert process.wait(90) == 0
    assert system.wait_applied(60)

    verdict = checker.check([system.metrics], [system.db_path("primary")])
    assert verdict.ok, verdict.render()
    assert verdict.checked["books"] == len(books)
    assert verdict.checked["loans answered"] > 0

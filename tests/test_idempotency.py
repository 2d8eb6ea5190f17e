"""A request sent twice with the same key has its effect once; the repeat says so."""

from __future__ import annotations

import pytest

from conftest import ask, query, request

pytestmark = pytest.mark.timeout(60)


def test_same_return_twice_is_applied_once(system, catalog, zctx):
    _, loans = catalog
    loan = next(x for x in loans if x.sede == 2)
    message = request("DEVOLUCION", loan.book, loan.reader, sede=2)

    first = ask(zctx, system.gc_endpoint(2), message)
    assert system.wait_applied(20)
    second = ask(zctx, system.gc_endpoint(2), message)
    assert system.wait_applied(20)

    assert first["ok"] and not first.get("repeat")
    assert second["ok"] and second["repeat"] is True
    db = system.db_path("primary")
    assert query(db, "SELECT count(*) FROM oplog WHERE key = ?",
                 message["idempotencyKey"]) == [(1,)]
    book = query(db, "SELECT total - available FROM books WHERE code = ?", loan.book)[0][0]
    active = query(db, "SELECT count(*) FROM loans WHERE book = ? AND status = 'ACTIVE'",
                   loan.book)[0][0]
    assert book == active


def test_same_loan_twice_keeps_its_outcome(system, catalog, zctx):
    books, loans = catalog
    lent = {x.book for x in loans}
    book = next(b for b in books if b.total > 1 and b.code not in lent)
    message = request("PRESTAMO", book.code, "U0020")

    first = ask(zctx, system.gc_endpoint(1), message)
    second = ask(zctx, system.gc_endpoint(1), message)

    assert first["status"] == second["status"] == "granted"
    assert first["loanId"] == second["loanId"] and second["repeat"] is True
    rows = query(system.db_path("primary"), "SELECT available, total FROM books WHERE code = ?",
                 book.code)
    assert rows == [(book.total - 1, book.total)]

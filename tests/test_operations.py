"""The three operations through the real chain: PS request -> GC -> actor -> GA."""

from __future__ import annotations

import datetime as dt

import pytest

from app import protocol
from conftest import ask, query, request

pytestmark = pytest.mark.timeout(60)


def sede1_loan(catalog):
    books, loans = catalog
    return next(x for x in loans if x.sede == 1)


def test_return_frees_a_copy(system, catalog, zctx):
    loan = sede1_loan(catalog)
    db = system.db_path("primary")
    before = query(db, "SELECT available FROM books WHERE code = ?", loan.book)[0][0]

    answer = ask(zctx, system.gc_endpoint(1), request("DEVOLUCION", loan.book, loan.reader))

    assert answer["ok"] and answer["status"] == "accepted"
    assert system.wait_applied(20)
    assert query(db, "SELECT available FROM books WHERE code = ?", loan.book)[0][0] == before + 1
    status = query(db, "SELECT status FROM loans WHERE book = ? AND reader = ?",
                   loan.book, loan.reader)
    assert status == [("RETURNED",)]


def test_renewal_moves_due_date_and_third_is_refused(system, catalog, zctx):
    loan = sede1_loan(catalog)
    db = system.db_path("primary")
    expected_due = (protocol.today() + dt.timedelta(days=7)).isoformat()

    answers = []
    for _ in range(3):
        answers.append(ask(zctx, system.gc_endpoint(1),
                           request("RENOVACION", loan.book, loan.reader)))
        assert system.wait_applied(20)  # one at a time, so the third is the third

    assert all(a["ok"] and a["nuevaFechaEntrega"] == expected_due for a in answers)
    due, renewals = query(db, "SELECT due_date, renewals FROM loans WHERE book = ? AND"
                              " reader = ? AND status = 'ACTIVE'", loan.book, loan.reader)[0]
    assert (due, renewals) == (expected_due, 2)
    refused = query(db, "SELECT key, result FROM oplog WHERE op = 'RENOVACION' AND"
                        " outcome = 'refused'")
    assert len(refused) == 1 and "already renewed 2 times" in refused[0][1]


def test_return_or_renewal_without_active_loan_changes_nothing(system, catalog, zctx):
    books, loans = catalog
    lent = {x.book for x in loans}
    book = next(b for b in books if b.code not in lent)
    db = system.db_path("primary")
    before = query(db, "SELECT available, total FROM books WHERE code = ?", book.code)

    for op in ("DEVOLUCION", "RENOVACION"):
        assert ask(zctx, system.gc_endpoint(2), request(op, book.code, "U0001", sede=2))["ok"]
    assert system.wait_applied(20)

    assert query(db, "SELECT available, total FROM books WHERE code = ?", book.code) == before
    outcomes = query(db, "SELECT op, outcome, result FROM oplog WHERE sede = 'SEDE2'")
    assert {(op, outcome) for op, outcome, _ in outcomes} == {
        ("DEVOLUCION", "refused"), ("RENOVACION", "refused")}
    assert all("no active loan" in result for _, _, result in outcomes)


def test_single_copy_book_second_loan_refused(system, catalog, zctx):
    books, loans = catalog
    lent = {x.book for x in loans}
    single = next(b for b in books if b.total == 1 and b.code not in lent)

    first = ask(zctx, system.gc_endpoint(1), request("PRESTAMO", single.code, "U0010"))
    second = ask(zctx, system.gc_endpoint(2), request("PRESTAMO", single.code, "U0011", sede=2))

    assert first["ok"] and first["status"] == "granted"
    assert first["fechaEntrega"] == (protocol.today() + dt.timedelta(days=14)).isoformat()
    assert not second["ok"] and "no copies" in second["error"]
    rows = query(system.db_path("primary"), "SELECT available FROM books WHERE code = ?",
                 single.code)
    assert rows == [(0,)]


def test_unknown_book_is_refused(system, zctx):
    answer = ask(zctx, system.gc_endpoint(1), request("PRESTAMO", "L9999", "U0001"))
    assert not answer["ok"] and "no such book" in answer["error"]

"""Hostile input reaches every process that listens; each answers or drops it and
keeps serving, and nothing it sends changes the library in a way it should not."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from app import protocol
from conftest import ask, query, request

pytestmark = pytest.mark.timeout(90)

DEEP = b"[" * 8000 + b"]" * 8000  # under the size limit, over the parser's recursion


def wire_text(message) -> bytes:
    """JSON as any client library may write it: a lone surrogate becomes a \\ud800 escape."""
    return json.dumps(message).encode()


def still_serving(system, zctx) -> None:
    assert ask(zctx, system.ga_endpoints()[0], {"type": "ping"})["ok"]
    assert ask(zctx, system.gc_endpoint(1), {"type": "status"})["ok"]
    loan = ask(zctx, f"tcp://127.0.0.1:{system.ports['gc1-loan']}", {"type": "ping"})
    assert loan["ok"]
    for name in system.components:
        system.assert_alive(name)


def test_client_cannot_choose_when_a_loan_was_applied(system, catalog, zctx):
    books, loans = catalog
    lent = {x.book for x in loans}
    book = next(b for b in books if b.total > 1 and b.code not in lent)
    for stamp in ("garbage", "2099-01-01T00:00:00Z", 5):
        answer = ask(zctx, system.gc_endpoint(1),
                     {**request("PRESTAMO", book.code, "U0100"), "appliedAt": stamp})
        assert answer["ok"], answer
        assert answer["fechaEntrega"] == (protocol.today() + dt.timedelta(days=14)).isoformat()
    still_serving(system, zctx)


@pytest.mark.parametrize("body", [
    DEEP,
    wire_text({**request("DEVOLUCION", "L0001", "U1"), "idempotencyKey": "k\ud800"}),
    wire_text({**request("PRESTAMO", "L0001", "U1"), "idUsuario": "\udcff"}),
], ids=["deep-nesting", "lone-surrogate-key", "lone-surrogate-loan"])
def test_gc_refuses_what_it_cannot_read(system, zctx, body):
    answer = ask(zctx, system.gc_endpoint(1), body)
    assert answer["ok"] is False and answer["status"] == "invalid"
    still_serving(system, zctx)


@pytest.mark.parametrize("message", [
    {"type": "apply", "ops": 5},
    {"type": "apply", "ops": None},
    {"type": "apply", "ops": "notalist"},
    {"type": "apply"},
    {"type": "peer", "seq": "abc", "term": "x"},
    {"type": "apply", "ops": [{**request("PRESTAMO", "L0001", "U1"), "appliedAt": 5}]},
    {"type": "apply", "ops": [{**request("DEVOLUCION", "L0001", "U1"),
                               "idempotencyKey": "k\ud800"}]},
], ids=["ops-int", "ops-null", "ops-string", "ops-missing", "peer-junk", "appliedAt-int",
        "surrogate-in-op"])
def test_ga_survives_malformed_internal_messages(system, zctx, message):
    before = query(system.db_path("primary"), "SELECT sum(available), count(*) FROM books")
    body = wire_text(message)
    answer = ask(zctx, system.ga_endpoints()[0], body)
    if b"\\ud800" in body:  # a lone surrogate: the frame is refused as a whole
        assert answer["ok"] is False and "bad message" in answer["error"]
    elif message.get("type") == "apply" and isinstance(message.get("ops"), list):
        results = answer["results"]
        assert len(results) == 1 and results[0]["status"] in ("granted", "invalid", "refused")
    elif message.get("type") == "peer":  # refused, or ignored as older than the real peer
        assert answer["ok"] is False or answer["state"] == "active"
    else:
        assert answer["ok"] is False and answer["error"]
    assert system.ga_status("primary")["state"] == "active"
    assert ask(zctx, system.ga_endpoints()[0], DEEP)["ok"] is False
    still_serving(system, zctx)
    if "appliedAt" not in json.dumps(message):
        after = query(system.db_path("primary"), "SELECT sum(available), count(*) FROM books")
        assert after == before


def test_loan_actor_refuses_other_operations(system, zctx):
    address = f"tcp://127.0.0.1:{system.ports['gc1-loan']}"
    answer = ask(zctx, address, request("DEVOLUCION", "L0001", "U1"))
    assert answer["ok"] is False and "does not handle DEVOLUCION" in answer["error"]
    assert query(system.db_path("primary"), "SELECT count(*) FROM oplog") == [(0,)]


def test_ps_reads_a_bom_and_skips_a_line_that_is_not_utf8(system, tmp_path):
    path = tmp_path / "odd.jsonl"
    good = json.dumps({"op": "PRESTAMO", "idUsuario": "U0001", "idLibro": "L9999",
                       "sede": "SEDE1"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + b'{"op": "\xff\xfe"}\n' + DEEP + b"\n")

    process = system.ps("odd", str(path), 1, stdout=subprocess.PIPE)
    out = process.communicate(timeout=30)[0].decode()

    assert process.returncode == 0
    assert "total=3 ok=0 refused=1 failed=0 skipped=2" in out

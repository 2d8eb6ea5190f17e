"""The GC's outbox on a real SQLite file, with its clock under the test's control:
what it publishes again, and when."""

from __future__ import annotations

import types

import pytest

from app import outbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def box(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(outbox, "time", types.SimpleNamespace(
        monotonic=clock.monotonic, time=clock.time))
    opened = outbox.Outbox(str(tmp_path / "outbox.db"))
    yield opened, clock
    opened.close()


def accept(box: outbox.Outbox, topic: str, *keys: str) -> list[str]:
    published = box.accept([(k, topic, {"op": topic, "idempotencyKey": k}, {"ok": True})
                            for k in keys])
    return [key for key, _, _ in published]


def test_an_actor_that_is_behind_but_confirming_gets_no_republications(box):
    box, clock = box
    assert accept(box, "DEVOLUCION", "k1", "k2", "k3") == ["k1", "k2", "k3"]
    clock.now += 2
    assert box.confirm(["k1"]) == 1
    clock.now += outbox.RESEND_AFTER - 1  # k2 and k3 waited RESEND_AFTER; k1 came 1 s ago
    assert box.due() == []
    assert box.pending() == 2


def test_an_entry_passed_over_by_a_later_confirmation_is_published_again(box):
    box, clock = box
    accept(box, "DEVOLUCION", "lost", "k2")
    accept(box, "RENOVACION", "r0", "r1")
    clock.now += 2
    box.confirm(["k2", "r0"])
    assert box.due() == []  # not before RESEND_AFTER
    clock.now += outbox.RESEND_AFTER - 2
    assert [key for key, _, _ in box.due()] == ["lost"]  # r1 is next in line, not lost
    clock.now += 0.1
    assert box.due() == []  # "lost" went out again just now
    clock.now += 2
    assert [key for key, _, _ in box.due()] == ["r1"]  # nothing from its actor for 3.1 s


def test_everything_is_published_again_when_a_topic_makes_no_progress(box):
    box, clock = box
    accept(box, "RENOVACION", "r1", "r2")
    clock.now += outbox.RESEND_AFTER
    assert [key for key, _, _ in box.due()] == ["r1", "r2"]
    assert box.due() == []


def test_unconfirmed_entries_survive_a_restart_and_go_out_first(tmp_path):
    first = outbox.Outbox(str(tmp_path / "outbox.db"))
    accept(first, "DEVOLUCION", "k1", "k2")
    first.confirm(["k1"])
    first.close()
    again = outbox.Outbox(str(tmp_path / "outbox.db"))
    try:
        assert [key for key, _, _ in again.due()] == ["k2"]
        assert again.answer_for("k1") == {"ok": True}  # repeats get the first answer
        assert again.answer_for("never") is None
    finally:
        again.close()

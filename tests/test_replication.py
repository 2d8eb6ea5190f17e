"""Log shipping between two copies, without processes: prefixes and divergence."""

from __future__ import annotations

import pytest

from app import replication, seed, storage
from conftest import request

pytestmark = pytest.mark.timeout(30)


def library(tmp_path, name: str) -> storage.Library:
    path = str(tmp_path / f"{name}.db")
    seed.write(path, 42)
    return storage.Library(path)


def renewal(key: str) -> dict:
    return {**request("RENOVACION", "L0001", "U0001"), "idempotencyKey": key}


def pull_from(copy: storage.Library) -> dict:
    return {"type": "peer", **replication.last_entry(copy)}


def test_a_copy_that_is_behind_gets_the_missing_entries(tmp_path):
    active, replica = library(tmp_path, "active"), library(tmp_path, "replica")
    active.apply_batch([renewal(f"k{i}") for i in range(5)], term=0)
    replica.replay(active.entries_after(0, 3))

    answer, holds = replication.answer_pull(active, pull_from(replica), limit=100)

    assert holds == 3 and [e[0] for e in answer["entries"]] == [4, 5]
    assert replica.replay(answer["entries"]) == 2 and replica.last_seq == 5


def test_same_key_at_same_seq_in_another_term_is_divergence(tmp_path):
    """The old primary wrote k3, k4 in term 0 and died before shipping them; the
    replica took over in term 1, applied x3 and then k4 (resent by an actor), which
    lands at seq 4 again. The old primary's last entry looks shared; it is not."""
    old, new = library(tmp_path, "old"), library(tmp_path, "new")
    old.apply_batch([renewal("k1"), renewal("k2")], term=0)
    new.replay(old.entries_after(0, 100))
    old.apply_batch([renewal("k3"), renewal("k4")], term=0)
    new.apply_batch([renewal("x3"), renewal("k4")], term=1)
    assert replication.entry_key(old, 4) == replication.entry_key(new, 4) == "k4"

    answer, holds = replication.answer_pull(new, pull_from(old), limit=100)

    assert holds is None and answer["diverged"] is True
    assert answer["common"] == 2 and answer["common_key"] == "k2"

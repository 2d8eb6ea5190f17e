"""Answers the GA keeps back until they are worth sending.

Two kinds wait here:

- the replica's pull when it already holds everything (a long poll): it is
  answered once new entries have gathered for PULL_LINGER (or PULL_BATCH of
  them, or at once when a loan waits for the replica), or after PULL_HOLD with
  nothing, which still serves as the heartbeat; so changes reach the replica
  within a round trip plus PULL_LINGER, in batches;
- the answer to a batch holding a loan, until the replica holds the batch (or
  the replica is declared dead, or LOAN_REPLICA_WAIT passes). A reader told
  "granted" must find that loan on whichever copy survives: if the primary died
  before shipping it, the loan actor resends it to the replica, where the
  returns and renewals of other actors may have been replayed in another order
  and the outcome could differ. Returns and renewals are not held: the GC keeps
  them until they are on both copies (``app.gaclient``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("held")

PULL_HOLD = 0.2  # seconds a caught-up replica's pull may wait for new entries
PULL_LINGER = 0.02  # seconds new entries may gather before the held pull is answered
PULL_BATCH = 256  # new entries that answer the held pull at once
LOAN_REPLICA_WAIT = 3.0  # seconds a loan answer waits for the replica at most


@dataclass
class HeldAnswer:
    envelope: list[bytes]
    ready: Callable[[], bool]  # true once the answer may go
    build: Callable[[], dict[str, Any]]  # the answer, built when it goes
    deadline: float


@dataclass
class Held:
    send: Callable[[list[bytes], dict[str, Any]], None]
    waiting: list[HeldAnswer] = field(default_factory=list)

    def hold(self, envelope: list[bytes], ready: Callable[[], bool],
             build: Callable[[], dict[str, Any]], wait_s: float) -> None:
        self.waiting.append(HeldAnswer(envelope, ready, build, time.monotonic() + wait_s))

    def release(self) -> None:
        """Send every held answer whose condition holds or whose time ran out."""
        if not self.waiting:
            return
        now = time.monotonic()
        still = []
        for item in self.waiting:
            if item.ready() or now >= item.deadline:
                self.send(item.envelope, item.build())
            else:
                still.append(item)
        self.waiting = still

    def next_deadline(self) -> float | None:
        return min((item.deadline for item in self.waiting), default=None)

"""Which GA of the pair may accept writes: a binary-star state machine.

Each GA is ``starting``, ``active`` or ``passive`` and holds a ``term`` number,
kept in its database, that grows by one at every takeover. The two GAs talk
every HEARTBEAT_INTERVAL through ``app.replication``; what they say is::

    -> {"type": "peer", "state": "passive", "role": "backup", "term": 3, "after": 812}
    <- {"ok": true, "state": "active", "role": "primary", "term": 3, "seq": 815,
        "entries": [[813, 3, {...}, {...}], ...], "promote": false}

Rules:
- a passive GA takes over only when its peer has been silent for PEER_DEAD_AFTER
  **and** a client asks it to apply a write (so a partition that a client does
  not see cannot make two writers);
- a starting GA becomes passive if its peer is active; when neither is active the
  one with the higher (term, sequence, configured primary) becomes active; with
  its peer silent it serves only if it was the last writer it knows of (term 0
  and configured primary, or its own term is the one it last wrote in);
- a passive GA adopts the term of its active peer, and waits while its peer is
  starting (the starting side decides);
- every message between the two carries (boot, beat), and one older than the
  newest heard is ignored, so a late resend cannot revive a state that is gone;
- two active GAs in one term (which the rules above should prevent) end with the
  one holding less data stepping down;
- an active GA that hears of an active peer with a higher term steps down;
- ``handover`` makes the active GA stop writing, wait until its peer has every
  entry, and tell it to take over (the way the primary role is handed back);
- an active GA that was frozen (its loop stalled for STALL_AFTER, as after
  SIGSTOP/SIGCONT or a swapped-out process) and whose peer is silent refuses
  writes for RESUME_QUARANTINE: while it stood still its peer may have taken
  over, and the next heartbeat will tell it so. Without this, the writes queued
  on its socket during the freeze would be applied in a term that has ended.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from app import storage

log = logging.getLogger("failover")

HEARTBEAT_INTERVAL = 0.25  # seconds between messages to the peer
PEER_DEAD_AFTER = 1.0  # seconds of peer silence before a takeover is allowed
ENTRIES_PER_PULL = 2000  # log entries shipped in one answer to the peer
STALL_AFTER = 0.5  # seconds between two passes of the GA loop that mean it was frozen
RESUME_QUARANTINE = 2 * PEER_DEAD_AFTER  # seconds without writes after a freeze, peer silent

STARTING, ACTIVE, PASSIVE, HANDING_OVER = "starting", "active", "passive", "handing_over"


class Pair:
    """The local GA's view of the pair; consulted before every write."""

    def __init__(self, role: str, library: storage.Library, has_peer: bool) -> None:
        self.role = role
        self.library = library
        self.has_peer = has_peer
        self.term = int(library.get_meta("term", "0"))
        self.wrote_in_term = int(library.get_meta("wrote_in_term", "-1"))
        self.state = STARTING if has_peer else ACTIVE
        self.started = time.monotonic()
        self.peer_seen = 0.0  # monotonic time of the last word from the peer
        self.peer_state = ""
        self.peer_term = -1
        self.peer_rank: tuple[int, int, bool] = (-1, 0, False)
        self.peer_acked = 0  # highest seq the peer said it holds
        self.peer_seq = 0  # the peer's own last seq
        self.last_loop = time.monotonic()  # the GA loop's last pass
        self.boot = time.time()  # this incarnation, for the peer to order our messages
        self.beat = 0
        self.peer_mark: tuple[float, int] = (0.0, 0)  # newest (boot, beat) heard
        self.resumed_at = -RESUME_QUARANTINE  # when this GA last came back from a freeze
        if not has_peer:
            self._remember_writer()

    # -- questions asked by the GA loop ------------------------------------------

    def peer_alive(self) -> bool:
        return self.has_peer and time.monotonic() - self.peer_seen < PEER_DEAD_AFTER

    def note_loop(self, now: float) -> None:
        """Called on every pass of the GA loop; notices that the process was frozen."""
        if now - self.last_loop > STALL_AFTER:
            self.resumed_at = now
            if self.state == ACTIVE and self.has_peer and not self.peer_alive():
                log.warning("GA %s stood still for %.1f s with its peer silent: no writes "
                            "until the peer answers or %.1f s pass", self.role,
                            now - self.last_loop, RESUME_QUARANTINE)
        self.last_loop = now

    def may_write(self) -> bool:
        """Called when a client asks for a write; may trigger the takeover."""
        self.note_loop(time.monotonic())
        if self.state == ACTIVE:
            return not self._quarantined()
        if self.state == HANDING_OVER or self.peer_alive():
            return False
        if self.state == PASSIVE:
            self._become_active(max(self.term, self.peer_term) + 1, "peer silent, client asked")
            return True
        silent_for = time.monotonic() - self.started
        if silent_for >= PEER_DEAD_AFTER and self._was_last_writer():
            self._become_active(self.term, "peer never answered since start")
            return True
        return False

    def _quarantined(self) -> bool:
        """Just back from a freeze with a silent peer: the peer may be writing now."""
        recent = time.monotonic() - self.resumed_at < RESUME_QUARANTINE
        return self.has_peer and recent and not self.peer_alive()

    def replicated(self) -> int:
        """The sequence known to be on both copies (all of it without a live peer)."""
        if self.peer_alive():
            return min(self.peer_acked, self.library.last_seq)
        return self.library.last_seq

    def describe(self) -> dict[str, Any]:
        """The state every answer carries; ``lag_ops`` is how far the replica trails."""
        if self.state == PASSIVE:
            lag = max(0, self.peer_seq - self.library.last_seq) if self.peer_alive() else 0
        else:
            lag = self.library.last_seq - self.replicated()
        return {"role": self.role, "state": self.state, "active": self.state == ACTIVE,
                "term": self.term, "seq": self.library.last_seq,
                "replicated": self.replicated(), "peer_alive": self.peer_alive(),
                "lag_ops": lag}

    # -- messages from the peer ------------------------------------------------

    def on_peer_message(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Answer the peer's heartbeat/pull, or a handover command; None if not ours."""
        kind = message.get("type")
        if kind == "handover":
            return self._start_handover()
        if kind != "peer":
            return None
        self._heard(message)
        return self.ship(message)

    def ship(self, message: dict[str, Any]) -> dict[str, Any]:
        """The answer to a peer's message: our state, and entries if we lead."""
        answer = {"ok": True, "type": "peer", **self.stamp(), "state": self.state,
                  "role": self.role,
                  "term": self.term, "seq": self.library.last_seq, "entries": [],
                  "promote": False}
        if self.state in (ACTIVE, HANDING_OVER) and message.get("state") != ACTIVE:
            from app import replication  # the shipping half of the peer link
            shipped, held = replication.answer_pull(self.library, message, ENTRIES_PER_PULL)
            answer.update(shipped)
            if held is not None:
                self.peer_acked = held
            caught_up = held == self.library.last_seq
            if self.state == HANDING_OVER and caught_up:
                answer["promote"] = True
                self.state = PASSIVE
                log.warning("handover: peer holds seq %d; stepping down to passive", held)
        return answer

    def on_peer_answer(self, answer: dict[str, Any]) -> None:
        """What the peer said back to our heartbeat/pull (entries already replayed)."""
        self._heard(answer)

    def on_promote(self, answer: dict[str, Any]) -> None:
        """The active peer handed over and we hold everything it wrote."""
        if answer.get("promote") and answer.get("seq") == self.library.last_seq:
            self._become_active(max(self.term, self.peer_term) + 1, "handed over by peer")

    def stamp(self) -> dict[str, Any]:
        """Marks every message to the peer carries, so it can drop stale ones."""
        self.beat += 1
        return {"boot": self.boot, "beat": self.beat}

    def _heard(self, message: dict[str, Any]) -> None:
        mark = (float(message.get("boot", 0.0)), int(message.get("beat", 0)))
        if mark < self.peer_mark:
            # Sent before something we already heard (a resend on a replaced socket
            # can arrive late): acting on it would act on a state that is gone.
            log.debug("stale message from the peer ignored: %s < %s", mark, self.peer_mark)
            return
        self.peer_mark = mark
        self.peer_seen = time.monotonic()
        self.peer_state = message.get("state", "")
        self.peer_seq = int(message.get("seq", 0))
        self.peer_term = int(message.get("term", -1))
        self.peer_rank = (self.peer_term, int(message.get("seq", 0)),
                          message.get("role") == "primary")
        if self.peer_state in (ACTIVE, HANDING_OVER):
            if self.state == STARTING:
                self._set_passive("peer is active")
            elif self.state == ACTIVE and self.peer_term > self.term:
                log.error("peer is active in higher term %d (mine %d): stepping down",
                          self.peer_term, self.term)
                self._set_passive("peer is active in a higher term")
            elif (self.state == ACTIVE and self.peer_state == ACTIVE
                  and self.peer_term == self.term and self._rank() < self.peer_rank):
                log.error("peer is active in my own term %d with newer data: stepping down",
                          self.term)
                self._set_passive("two active GAs in one term; the peer leads")
            if self.state == PASSIVE and self.peer_term > self.term:
                self._adopt_term(self.peer_term)
        elif self.state == PASSIVE and self.peer_state == STARTING:
            return  # the starting peer decides, from our state
        elif self.state in (STARTING, PASSIVE) and self.peer_state in (STARTING, PASSIVE):
            # Neither side writes: the one with the newest data leads.
            if self._rank() > self.peer_rank:
                self._become_active(self.term, f"peer is {self.peer_state}, this GA leads")
            else:
                self._set_passive("peer leads")

    def _rank(self) -> tuple[int, int, bool]:
        return (self.term, self.library.last_seq, self.role == "primary")

    def _start_handover(self) -> dict[str, Any]:
        if self.state != ACTIVE:
            return {"ok": False,
                    "error": f"only the active GA can hand over (this is {self.state})"}
        if not self.peer_alive():
            return {"ok": False, "error": "peer is not answering; nothing to hand over to"}
        self.state = HANDING_OVER
        log.warning("handover requested at seq %d: writes paused until the peer catches up",
                    self.library.last_seq)
        return {"ok": True, "state": self.state, "seq": self.library.last_seq}

    # -- transitions -----------------------------------------------------------

    def _was_last_writer(self) -> bool:
        return (self.term == 0 and self.role == "primary") or self.wrote_in_term == self.term

    def _adopt_term(self, term: int) -> None:
        self.term = term
        self.library.db.execute("BEGIN IMMEDIATE")
        self.library.set_meta("term", str(term))
        self.library.db.execute("COMMIT")

    def _set_passive(self, why: str) -> None:
        if self.state != PASSIVE:
            log.warning("GA %s becomes passive (term %d): %s", self.role, self.term, why)
        self.state = PASSIVE

    def _become_active(self, term: int, why: str) -> None:
        self.term = term
        self.state = ACTIVE
        self._remember_writer()
        log.warning("GA %s becomes ACTIVE in term %d at seq %d: %s", self.role, term,
                    self.library.last_seq, why)

    def _remember_writer(self) -> None:
        self.wrote_in_term = self.term
        self.library.db.execute("BEGIN IMMEDIATE")
        self.library.set_meta("term", str(self.term))
        self.library.set_meta("wrote_in_term", str(self.term))
        self.library.db.execute("COMMIT")


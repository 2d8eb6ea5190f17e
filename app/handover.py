"""Hand the writer role of the GA pair to the passive GA (how the primary gets it back).

``python -m app.handover --ga ENDPOINT [--peer ENDPOINT]`` sends the active GA::

    -> {"type": "handover"}
    <- {"ok": true, "state": "handing_over", "seq": 5120}
    <- {"ok": false, "error": "only the active GA can hand over (this is passive)"}

and then polls it with ``{"type": "status"}`` until it is passive in a higher
term, which it only learns from its peer once that peer took over (with
``--peer``, also until the peer itself says it is active). Prints one line with
the result; exit status 0 when the peer took over, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import zmq

from app.retry import LazyPirate

ANSWER_TIMEOUT = 2.0  # seconds to wait for one answer from a GA
HANDOVER_TIMEOUT = 15.0  # seconds for the whole handover before giving up
POLL_INTERVAL = 0.1  # seconds between status queries


def ask(context: zmq.Context, endpoint: str, message: dict[str, Any]
        ) -> dict[str, Any] | None:
    pirate = LazyPirate(context, endpoint)
    try:
        return pirate.request(message, ANSWER_TIMEOUT)
    finally:
        pirate.close()


def handover(context: zmq.Context, ga: str, peer: str = "",
             timeout_s: float = HANDOVER_TIMEOUT) -> tuple[bool, str]:
    """Ask the active GA at ``ga`` to hand over; (done, what happened)."""
    before = ask(context, ga, {"type": "status"})
    if before is None:
        return False, f"{ga} does not answer"
    answer = ask(context, ga, {"type": "handover"})
    if answer is None or not answer.get("ok"):
        return False, f"{ga} refused: {answer.get('error') if answer else 'no answer'}"

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mine = ask(context, ga, {"type": "status"})
        stepped_down = (mine is not None and mine.get("state") == "passive"
                        and mine.get("term", -1) > before.get("term", -1))
        theirs = ask(context, peer, {"type": "status"}) if peer and stepped_down else None
        if stepped_down and (not peer or (theirs is not None and theirs.get("active"))):
            return True, (f"handed over at seq {answer.get('seq')}: {ga} is passive, the peer"
                          f" is active in term {mine['term']}")
        time.sleep(POLL_INTERVAL)
    return False, f"the peer did not take over within {timeout_s} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ga", required=True, help="endpoint of the active GA")
    p.add_argument("--peer", default="", help="endpoint of the GA that should take over")
    p.add_argument("--timeout", type=float, default=HANDOVER_TIMEOUT, help="seconds")
    args = p.parse_args(argv)
    context = zmq.Context()
    try:
        done, what = handover(context, args.ga, args.peer, args.timeout)
    finally:
        context.destroy(linger=0)
    print(("handover done: " if done else "handover failed: ") + what, flush=True)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())

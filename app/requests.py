"""Write request files that refer to the seeded library, deterministically.

``python -m app.requests --ps 2 --count 500 --seed 7 --out DIR`` writes
``DIR/sede1-1.jsonl``, ``DIR/sede1-2.jsonl``, ``DIR/sede2-1.jsonl`` ... : for
each sede, ``--ps`` files of ``--count`` requests. Each file works on its own
share of the books and readers (no two files touch the same book), so whatever
order the processes run in, every request is meaningful: returns and renewals of
loans that exist (the seeded ones, or ones the same file took out before), loans
of books with copies, and a few that must be refused (a third renewal, a book
with no copies left, a book that does not exist). ``--mix published`` writes
returns and renewals only (once the known loans are returned, returns and
renewals of books the reader does not hold, which the library refuses).
``--showcase`` writes the two small files shipped with the package, one per
sede.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Any

from app import protocol, seed

MIXES = {"mixed": (0.4, 0.3, 0.3), "published": (0.0, 0.5, 0.5)}  # loan, return, renewal
REFUSAL_SHARE = 0.05  # requests deliberately refused (no book, no copy, 3rd renewal)
STAMP = "2026-12-04T09:00:00Z"


class Share:
    """One file's books, readers and the loans it knows of, simulated as it writes."""

    def __init__(self, books: list[seed.Book], loans: list[seed.Loan], readers: list[str],
                 prefix: str, sede: int, rng: random.Random) -> None:
        self.copies = {b.code: b.total for b in books}
        self.active: list[list[Any]] = []  # [book, reader, renewals]
        for loan in loans:
            self.copies[loan.book] -= 1
            self.active.append([loan.book, loan.reader, 0])
        self.books = [b.code for b in books]
        self.readers = readers
        self.prefix = prefix
        self.sede = f"SEDE{sede}"
        self.rng = rng
        self.count = 0
        self.loans_allowed = True

    def request(self, op: str, book: str, reader: str) -> dict[str, Any]:
        self.count += 1
        request_id = f"{self.prefix}-{self.count:05d}"
        return {"op": op, "idSolicitud": request_id, "idUsuario": reader, "idLibro": book,
                "sede": self.sede, "timestamp": STAMP,
                "idempotencyKey": f"{op}:{request_id}:{book}"}

    def loan(self) -> dict[str, Any]:
        free = [b for b in self.rng.sample(self.books, min(20, len(self.books)))
                if self.copies[b] > 0]
        if not free:
            return self.refused()
        book, reader = free[0], self.rng.choice(self.readers)
        self.copies[book] -= 1
        self.active.append([book, reader, 0])
        return self.request(protocol.LOAN, book, reader)

    def give_back(self) -> dict[str, Any]:
        if not self.active:
            return self.loan() if self.loans_allowed else self.unmatched(protocol.RETURN)
        book, reader, _ = self.active.pop(self.rng.randrange(len(self.active)))
        self.copies[book] += 1
        return self.request(protocol.RETURN, book, reader)

    def renew(self) -> dict[str, Any]:
        if not self.active:
            return self.loan() if self.loans_allowed else self.unmatched(protocol.RENEWAL)
        loan = self.rng.choice(self.active)
        loan[2] += 1
        return self.request(protocol.RENEWAL, loan[0], loan[1])

    def unmatched(self, op: str) -> dict[str, Any]:
        """A return or renewal of a book this reader does not hold: recorded as refused."""
        return self.request(op, self.rng.choice(self.books), self.rng.choice(self.readers))

    def refused(self) -> dict[str, Any]:
        """A request the library must refuse."""
        choice = self.rng.randrange(3)
        if choice == 0:
            return self.request(protocol.LOAN, "L9999", self.rng.choice(self.readers))
        empty = [b for b in self.books if self.copies[b] == 0]
        if choice == 1 and empty:
            return self.request(protocol.LOAN, self.rng.choice(empty),
                                self.rng.choice(self.readers))
        renewed = [x for x in self.active if x[2] >= protocol.MAX_RENEWALS]
        if renewed:
            loan = self.rng.choice(renewed)
            return self.request(protocol.RENEWAL, loan[0], loan[1])
        return self.request(protocol.RETURN, self.rng.choice(self.books), "U9999")


def shares(catalog_seed: int, sedes_ps: list[tuple[int, int]], rng: random.Random
           ) -> list[tuple[str, Share]]:
    """Split books, readers and seeded loans among (sede, index) files."""
    books, loans = seed.build_catalog(catalog_seed)
    n = len(sedes_ps)
    out = []
    for slot, (sede, index) in enumerate(sedes_ps):
        mine = books[slot::n]
        codes = {b.code for b in mine}
        readers = [seed.reader_id(r) for r in range(slot + 1, seed.READERS + 1, n)]
        my_loans = [x for x in loans if x.book in codes]
        name = f"sede{sede}-{index}"
        out.append((name, Share(mine, my_loans, readers, f"S{sede}P{index}", sede, rng)))
    return out


def generate(share: Share, count: int, mix: str) -> list[dict[str, Any]]:
    weights = MIXES[mix]
    share.loans_allowed = weights[0] > 0
    makers = (share.loan, share.give_back, share.renew)
    requests = []
    for _ in range(count):
        if mix == "mixed" and share.rng.random() < REFUSAL_SHARE:
            requests.append(share.refused())
        else:
            requests.append(share.rng.choices(makers, weights)[0]())
    return requests


def showcase(share: Share) -> list[dict[str, Any]]:
    """A short, readable file that exercises every rule once, then ordinary traffic."""
    single = next(b for b in share.books if share.copies[b] == 1)
    first, second = share.active[0], share.active[1]
    reader_a, reader_b = share.readers[0], share.readers[1]
    share.copies[single] = 0
    scripted = [
        share.request(protocol.RENEWAL, first[0], first[1]),
        share.request(protocol.RENEWAL, first[0], first[1]),
        share.request(protocol.RENEWAL, first[0], first[1]),  # third: refused, recorded
        share.request(protocol.RETURN, second[0], second[1]),
        share.request(protocol.LOAN, single, reader_a),  # the only copy: granted
        share.request(protocol.LOAN, single, reader_b),  # refused: no copies left
        share.request(protocol.LOAN, "L9999", reader_a),  # refused: no such book
        share.request(protocol.RETURN, single, reader_b),  # no active loan: refused
        share.request(protocol.RENEWAL, single, reader_a),
        share.request(protocol.RETURN, single, reader_a),
    ]
    share.active = share.active[2:]
    return scripted + generate(share, 14, "mixed")


def write(path: str, requests: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for request in requests:
            handle.write(json.dumps(request, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ps", type=int, default=2, help="request processes per sede")
    p.add_argument("--count", type=int, default=100, help="requests per file")
    p.add_argument("--seed", type=int, default=7, help="seed of the request stream")
    p.add_argument("--catalog_seed", type=int, default=42, help="seed the library was built with")
    p.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    p.add_argument("--showcase", action="store_true",
                   help="write requests-sede1.jsonl and requests-sede2.jsonl instead")
    p.add_argument("--out", required=True, help="folder for the files")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    if args.showcase:
        for name, share in shares(args.catalog_seed, [(1, 1), (2, 1)], rng):
            write(os.path.join(args.out, f"requests-{name[:5]}.jsonl"), showcase(share))
        print(f"wrote the showcase files into {args.out}")
        return 0
    slots = [(sede, i) for sede in (1, 2) for i in range(1, args.ps + 1)]
    for name, share in shares(args.catalog_seed, slots, rng):
        write(os.path.join(args.out, f"{name}.jsonl"), generate(share, args.count, args.mix))
    print(f"wrote {len(slots)} files of {args.count} requests into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the starting library deterministically from a seed number.

``python -m app.seed --db biblioteca.db --seed 42`` writes 1000 books (some with a
single copy) and 200 active loans on distinct books: 50 made at sede 1 and 150 at
sede 2. The same seed always gives the same catalogue, so both sedes, the request
files and the tests agree on what exists.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
from dataclasses import dataclass

from app import protocol, storage

BOOKS = 1000
LOANS_PER_SEDE = {1: 50, 2: 150}
SINGLE_COPY_SHARE = 0.2  # fraction of books with one copy
MAX_COPIES = 5
READERS = 400
SEED_DAY = dt.date(2026, 11, 20)  # loan date of the seeded loans; fixed so seeds repeat

WORDS = ("Cien", "Años", "Soledad", "Rayuela", "Ficciones", "Pedro", "Páramo", "Aleph",
         "Ciudad", "Perros", "Tiempo", "Héroe", "Casa", "Espíritus", "Amor", "Cólera",
         "Laberinto", "Río", "Noche", "Tregua", "Sombra", "Viento", "Memoria", "Fuego")
AUTHORS = ("García Márquez", "Cortázar", "Borges", "Rulfo", "Vargas Llosa", "Allende",
           "Paz", "Benedetti", "Mistral", "Neruda", "Fuentes", "Onetti", "Bolaño")


@dataclass(frozen=True)
class Book:
    code: str
    title: str
    author: str
    total: int


@dataclass(frozen=True)
class Loan:
    book: str
    reader: str
    sede: int
    loaned_on: str
    due_date: str


def book_code(index: int) -> str:
    return f"L{index:04d}"


def reader_id(index: int) -> str:
    return f"U{index:04d}"


def build_catalog(seed: int) -> tuple[list[Book], list[Loan]]:
    """The books and the active loans for a seed, without touching any file."""
    rng = random.Random(seed)
    books = []
    for i in range(1, BOOKS + 1):
        single = rng.random() < SINGLE_COPY_SHARE
        title = " ".join(rng.sample(WORDS, 3))
        books.append(Book(book_code(i), title, rng.choice(AUTHORS),
                          1 if single else rng.randint(2, MAX_COPIES)))
    on_loan = rng.sample(books, sum(LOANS_PER_SEDE.values()))
    loans = []
    due = (SEED_DAY + dt.timedelta(days=protocol.LOAN_DAYS)).isoformat()
    for sede, count in LOANS_PER_SEDE.items():
        for book in on_loan[:count]:
            reader = reader_id(rng.randint(1, READERS))
            loans.append(Loan(book.code, reader, sede, SEED_DAY.isoformat(), due))
        on_loan = on_loan[count:]
    return books, loans


def write(path: str, seed: int) -> None:
    """Create the database file at ``path`` holding the catalogue for ``seed``."""
    books, loans = build_catalog(seed)
    lent = {loan.book for loan in loans}
    db = storage.connect(path)
    db.execute("BEGIN")
    db.executemany("INSERT INTO books (code, title, author, total, available)"
                   " VALUES (?, ?, ?, ?, ?)",
                   [(b.code, b.title, b.author, b.total, b.total - (b.code in lent))
                    for b in books])
    db.executemany("INSERT INTO loans (book, reader, sede, loaned_on, due_date, status)"
                   " VALUES (?, ?, ?, ?, ?, 'ACTIVE')",
                   [(x.book, x.reader, x.sede, x.loaned_on, x.due_date) for x in loans])
    db.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                   [("seed", str(seed)), ("seeded_loans", str(len(loans)))])
    db.execute("COMMIT")
    db.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="database file to create")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="replace an existing file")
    args = p.parse_args(argv)
    if os.path.exists(args.db):
        if not args.force:
            print(f"{args.db} exists; use --force to replace it", file=sys.stderr)
            return 1
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(args.db + suffix):
                os.remove(args.db + suffix)
    os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    write(args.db, args.seed)
    books, loans = build_catalog(args.seed)
    print(f"seeded {args.db}: {len(books)} books, {len(loans)} active loans, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

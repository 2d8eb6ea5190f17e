"""Distributed book-lending system: request processes, load managers, actors and
storage managers talking ZeroMQ, with SQLite storage replicated across two sedes."""

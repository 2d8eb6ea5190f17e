"""The request contract shared by every component, and its validation.

A request travels as one JSON object in one ZeroMQ frame::

    {"op": "PRESTAMO", "idSolicitud": "S1-0001", "idUsuario": "U0042",
     "idLibro": "L0007", "sede": "SEDE1", "timestamp": "2026-12-04T15:00:00Z",
     "idempotencyKey": "PRESTAMO:S1-0001:L0007"}

A PS also adds ``runId``, which every hop copies into its metrics rows; fields
beyond the contract travel unchanged. Every answer carries ``ok``; a refusal or
an invalid request also carries ``error``; an answer to a request already seen
carries ``repeat: true``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import orjson

MAX_MESSAGE_BYTES = 16 * 1024  # larger requests are refused without parsing
INTERNAL_MAX_BYTES = 16 * 1024 * 1024  # batches between actors, GAs and GA peers

LOAN = "PRESTAMO"
RETURN = "DEVOLUCION"
RENEWAL = "RENOVACION"
OPERATIONS = (LOAN, RETURN, RENEWAL)
PUBLISHED = (RETURN, RENEWAL)  # answered at once by the GC, applied by actors

REQUIRED_FIELDS = ("op", "idSolicitud", "idUsuario", "idLibro", "sede", "timestamp",
                   "idempotencyKey")
MAX_FIELD_CHARS = 200
SEDES = ("SEDE1", "SEDE2")
PASSED_ON = ("runId",)  # optional fields beyond the contract that travel with a request

LOAN_DAYS = 14
RENEWAL_DAYS = 7
MAX_RENEWALS = 2


class InvalidRequest(ValueError):
    """A request that breaks the contract; its message is sent back as ``error``."""


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sede_number(sede: str) -> int:
    """``"SEDE2"`` -> 2."""
    return int(sede.removeprefix("SEDE"))


def decode(frame: bytes, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Parse one frame into a JSON object, or raise InvalidRequest."""
    if len(frame) > limit:
        raise InvalidRequest(f"message of {len(frame)} bytes exceeds {limit}")
    try:
        message = orjson.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # orjson's error is one
        if isinstance(frame, bytes) and not utf8(frame):
            raise InvalidRequest("not UTF-8 text") from None
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    if not isinstance(message, dict):
        raise InvalidRequest("a request must be a JSON object")
    return message


def utf8(frame: bytes) -> bool:
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode(message: dict[str, Any]) -> bytes:
    """One compact UTF-8 JSON frame."""
    return orjson.dumps(message)


def to_text(value: Any) -> str:
    """Compact JSON text, as stored in the databases."""
    return orjson.dumps(value).decode()


def from_text(text: str | bytes) -> Any:
    """The value of JSON text read back from a database or a request file."""
    return orjson.loads(text)


def validate(request: Any) -> dict[str, Any]:
    """Check a request against the contract; return it unchanged or raise."""
    if not isinstance(request, dict):
        raise InvalidRequest("a request must be a JSON object")
    missing = [name for name in REQUIRED_FIELDS if not request.get(name)]
    if missing:
        raise InvalidRequest(f"missing field(s): {', '.join(missing)}")
    for name in (*REQUIRED_FIELDS, *PASSED_ON):
        value = request.get(name)
        if value is None and name in PASSED_ON:
            continue
        if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
            raise InvalidRequest(f"field {name} must be a string of at most "
                                 f"{MAX_FIELD_CHARS} characters")
        if value.isascii():
            continue
        try:
            value.encode("utf-8")  # a lone surrogate from a \ud800 escape fails here
        except UnicodeEncodeError:
            raise InvalidRequest(f"field {name} is not valid text") from None
    if request["op"] not in OPERATIONS:
        raise InvalidRequest(f"unknown operation {request['op']!r}")
    if request["sede"] not in SEDES:
        raise InvalidRequest(f"unknown sede {request['sede']!r}")
    return request


def contract_only(request: dict[str, Any]) -> dict[str, Any]:
    """The request as it travels on: contract fields and ``runId``, nothing else.

    Whatever else a client adds is dropped here, so no client can set a field
    that a later hop fills in itself (the GA's ``appliedAt``, the GC's dates).
    """
    return {k: request[k] for k in (*REQUIRED_FIELDS, *PASSED_ON) if k in request}


def complete(request: dict[str, Any]) -> dict[str, Any]:
    """Fill what a request process may leave out: id, timestamp and key."""
    if not request.get("idSolicitud"):
        request["idSolicitud"] = f"S-{uuid.uuid4().hex[:12]}"
    if not request.get("timestamp"):
        request["timestamp"] = utc_now_iso()
    if not request.get("idempotencyKey"):
        request["idempotencyKey"] = (
            f"{request.get('op')}:{request['idSolicitud']}:{request.get('idLibro')}")
    return request


def request_label(request: dict[str, Any]) -> str:
    """The fragment every log line about a request carries."""
    return f"req={request.get('idSolicitud', '-')} key={request.get('idempotencyKey', '-')}"

"""Error codes, row errors and fatal errors (docs/protocol.md, section 5)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight


class Code(str, enum.Enum):
    """A sluice error code.

    One vocabulary serves row errors (usually MALFORMED, TYPE_MISMATCH,
    CONSTRAINT_VIOLATION or REJECTED) and fatal errors. It is a ``str``
    enum so that ``Code.REJECTED == "REJECTED"`` and codes travel as the
    plain strings the protocol spells.
    """

    MALFORMED = "MALFORMED"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    CONSTRAINT_VIOLATION = "CONSTRAINT_VIOLATION"
    REJECTED = "REJECTED"
    LATE = "LATE"
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    TIMEOUT = "TIMEOUT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"

    def __str__(self) -> str:
        return self.value


# The table of protocol.md section 5: sluice code, the gRPC status a fatal
# error with that code ends the exchange with (name and number), and whether
# the engine retries the epoch. tests/test_errors.py checks that it equals
# testdata/protocol/error_codes.json, the table all SDKs share.
ERROR_CODES: tuple[tuple[str, str, int, bool], ...] = (
    ("MALFORMED", "INVALID_ARGUMENT", 3, False),
    ("TYPE_MISMATCH", "INVALID_ARGUMENT", 3, False),
    ("CONSTRAINT_VIOLATION", "INVALID_ARGUMENT", 3, False),
    ("REJECTED", "INVALID_ARGUMENT", 3, False),
    ("LATE", "INVALID_ARGUMENT", 3, False),
    ("SCHEMA_MISMATCH", "INVALID_ARGUMENT", 3, False),
    ("INVALID_ARGUMENT", "INVALID_ARGUMENT", 3, False),
    ("TIMEOUT", "DEADLINE_EXCEEDED", 4, True),
    ("UNAVAILABLE", "UNAVAILABLE", 14, True),
    ("INTERNAL", "INTERNAL", 13, False),
)

_GRPC = {code: grpc for code, grpc, _, _ in ERROR_CODES}


def valid_code(code: object) -> bool:
    """Whether ``code`` is a code of the protocol (the engine reads any
    other row error code as REJECTED, so the SDK refuses to send one)."""
    return isinstance(code, str) and str(code) in _GRPC


class StageError(Exception):
    """A fatal error: it ends the exchange (or action) with the gRPC status
    of its code and the message ``[CODE] message``.

    Raise it from :meth:`Stage.open`, :meth:`Processor.process` or
    :meth:`Processor.flush` to fail the exchange with that code, e.g.
    ``StageError(Code.INVALID_ARGUMENT, "max_quantity must be positive")``
    for a bad config or ``StageError(Code.UNAVAILABLE, ...)`` when a
    dependency is down (the engine retries those). Any other exception
    fails the exchange as INTERNAL: the stage has a bug.
    """

    def __init__(self, code: Code | str, message: str):
        if not valid_code(code):
            raise ValueError(f"unknown sluice error code {code!r}")
        self.code = Code(str(code))
        self.message = str(message)
        super().__init__(f"[{self.code.value}] {self.message}")

    @property
    def grpc_status(self) -> str:
        """The name of the gRPC status this error travels as."""
        return _GRPC[self.code.value]


@dataclass(frozen=True)
class RowError:
    """One input row that failed, reported instead of output.

    ``row`` is the index of the row in the input batch given to
    :meth:`Processor.process` (never in the output). The engine applies the
    stage's ``on_error`` policy to it (fail, skip or dead_letter), so a
    reported row must be left out of the output.
    """

    row: int
    code: Code | str
    message: str


def to_flight_error(err: StageError) -> Exception:
    """The pyarrow exception that makes the Flight server answer with the
    gRPC status of ``err``'s code (pyarrow maps ArrowInvalid to
    INVALID_ARGUMENT and each FlightError subclass to its own status).

    pyarrow appends ". Detail: ..." to the status message (and, for
    ArrowInvalid, the Python traceback of the raise); the message still
    starts with ``[CODE]``, which is what the engine reads.
    """
    text = str(err)
    grpc = err.grpc_status
    if grpc == "INVALID_ARGUMENT":
        return pa.ArrowInvalid(text)
    if grpc == "DEADLINE_EXCEEDED":
        return flight.FlightTimedOutError(text)
    if grpc == "UNAVAILABLE":
        return flight.FlightUnavailableError(text)
    return flight.FlightInternalError(text)

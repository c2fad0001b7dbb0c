"""The stage manifest (the ``describe`` action) and protocol versions
(docs/protocol.md, section 2)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa

from ._envelope import EnvelopeError, dumps, loads
from ._errors import Code, StageError

PROTOCOL_V1 = "sluice.stage.v1"
"""The first protocol version."""

PROTOCOL_V1_1 = "sluice.stage.v1.1"
"""Adds ``plain_types`` and ``timing`` to the manifest, and the snapshots
of stateful stages (``OpenRequest.snapshot``, ``Processor.snapshot``)."""

PROTOCOLS = (PROTOCOL_V1_1, PROTOCOL_V1)
"""The versions this SDK speaks, newest first: ``describe`` answers in the
newest one the engine speaks too."""

LANGUAGE = "python"

MAX_MESSAGE_SIZE = 64 << 20
"""The gRPC message limit both ends accept (a batch is one message)."""

DEFAULT_MAX_BATCH_ROWS = 65536
DEFAULT_MAX_BATCH_BYTES = 32 << 20
"""Half the message limit, so that an output batch somewhat larger than its
input (a stage that adds columns) still fits in one message."""


@dataclass(frozen=True)
class SchemaDecl:
    """A named, versioned schema contract and its Arrow schema.

    In the manifest it is ``{"name", "version", "ipc"}``, ``ipc`` being the
    schema as an IPC schema message (what Flight's ``SchemaResult`` holds),
    base64: exact for every Arrow type, so no type names need agreeing on.
    """

    name: str
    version: str
    schema: pa.Schema

    def to_json(self) -> dict[str, str]:
        ipc = self.schema.serialize().to_pybytes()
        return {"name": self.name, "version": self.version, "ipc": base64.b64encode(ipc).decode("ascii")}

    @classmethod
    def from_json(cls, obj: Any) -> "SchemaDecl":
        """Reads a manifest's schema entry (for clients and tests)."""
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("name", "version", "ipc")):
            raise ValueError('a schema is {"name","version","ipc"}, all strings')
        raw = base64.b64decode(obj["ipc"], validate=True)
        return cls(obj["name"], obj["version"], pa.ipc.read_schema(pa.py_buffer(raw)))


@dataclass(frozen=True)
class Timing:
    """How fast the stage promises to answer (v1.1): the engine measures
    every batch's round trip against it. Both in milliseconds, positive,
    ``batch_p99_ms <= max_answer_ms``; ``max_answer_ms`` is the engine's
    per-batch timeout when the pipeline sets none."""

    batch_p99_ms: int
    max_answer_ms: int


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


@dataclass(frozen=True)
class Manifest:
    """What a stage says about itself; ``describe`` returns it as JSON and
    the SDK checks every exchange against it.

    ``input_schema`` None: the stage accepts any schema. ``output_schema``
    None: the output schema is the input schema, allowed only when
    ``input_schema`` is None (a pass-through). The engine slices its input
    to ``max_batch_rows`` and ``max_batch_bytes``. ``stateful``: output
    depends on earlier batches of the exchange (then ``flush`` matters);
    in a v1.1 exchange the state also takes part in the engine's commits:
    the processor starts from ``OpenRequest.snapshot`` and must implement
    ``Processor.snapshot``.
    ``ordering``: ``"preserve"`` (output rows keep input order) or
    ``"none"``. ``errors``: ``"row"`` (the stage may report row errors) or
    ``"fatal_only"`` (it never does; the SDK enforces it).

    v1.1 only, left out of the answer to a v1 engine: ``plain_types`` (the
    engine casts view types such as Utf8View to plain ones before sending)
    and ``timing``.
    """

    name: str
    version: str
    language: str = LANGUAGE
    input_schema: Optional[SchemaDecl] = None
    output_schema: Optional[SchemaDecl] = None
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    stateful: bool = False
    ordering: str = "preserve"
    errors: str = "row"
    plain_types: bool = False
    timing: Optional[Timing] = None

    def problems(self) -> list[str]:
        """What makes this manifest invalid (empty when it is valid)."""
        p = []
        for key in ("name", "version", "language"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                p.append(f"{key} must be a non-empty string")
        for key in ("input_schema", "output_schema"):
            decl = getattr(self, key)
            if decl is not None and not (
                isinstance(decl, SchemaDecl)
                and isinstance(decl.name, str)
                and isinstance(decl.version, str)
                and isinstance(decl.schema, pa.Schema)
            ):
                p.append(f"{key} must be None or a SchemaDecl(name, version, pyarrow.Schema)")
        if self.input_schema is not None and self.output_schema is None:
            p.append("output_schema is None but input_schema is not: None means output = input, which needs any input")
        if not _positive_int(self.max_batch_rows):
            p.append(f"max_batch_rows {self.max_batch_rows!r} is not a positive int")
        if not _positive_int(self.max_batch_bytes) or self.max_batch_bytes > MAX_MESSAGE_SIZE:
            p.append(f"max_batch_bytes {self.max_batch_bytes!r} is not in 1..{MAX_MESSAGE_SIZE} (the gRPC message limit)")
        for key in ("stateful", "plain_types"):
            if not isinstance(getattr(self, key), bool):
                p.append(f"{key} must be a bool")
        if self.ordering not in ("preserve", "none"):
            p.append(f"ordering {self.ordering!r} is not 'preserve' or 'none'")
        if self.errors not in ("row", "fatal_only"):
            p.append(f"errors {self.errors!r} is not 'row' or 'fatal_only'")
        t = self.timing
        if t is not None and not (
            isinstance(t, Timing)
            and _positive_int(t.batch_p99_ms)
            and _positive_int(t.max_answer_ms)
            and t.batch_p99_ms <= t.max_answer_ms
        ):
            p.append("timing must be None or Timing(batch_p99_ms, max_answer_ms), positive ints, the p99 at most the maximum")
        return p

    def to_json(self, protocol: str) -> bytes:
        """The manifest as answered in ``protocol``, keys in the protocol's
        order. A v1 answer leaves out what v1.1 added: a v1 engine does not
        know those keys."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        obj: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "language": self.language,
            "protocol": protocol,
            "input_schema": self.input_schema.to_json() if self.input_schema else None,
            "output_schema": self.output_schema.to_json() if self.output_schema else None,
            "max_batch_rows": self.max_batch_rows,
            "max_batch_bytes": self.max_batch_bytes,
            "stateful": self.stateful,
            "ordering": self.ordering,
            "errors": self.errors,
        }
        if protocol != PROTOCOL_V1:
            if self.plain_types:
                obj["plain_types"] = True
            if self.timing is not None:
                obj["timing"] = {"batch_p99_ms": self.timing.batch_p99_ms, "max_answer_ms": self.timing.max_answer_ms}
        return dumps(obj)


def negotiate(body: bytes) -> str:
    """The protocol version to answer ``describe`` in, from its request body.

    The engine names the versions it speaks, ``{"protocols":[...]}``; an
    empty body is a v1 engine, which predates negotiation. The answer is the
    newest version both speak, so a stage built with this SDK works with
    old and new engines alike. Raises an INVALID_ARGUMENT StageError naming
    both sides' versions when there is none, or when the body is not that
    JSON.
    """
    if not bytes(body).strip():
        engine = [PROTOCOL_V1]
    else:
        try:
            req = loads(body)
        except EnvelopeError as e:
            raise StageError(Code.INVALID_ARGUMENT, f'the describe request is not {{"protocols":[...]}}: {e}') from None
        if (
            not isinstance(req, dict)
            or "protocols" not in req  # other keys are ignored: a newer engine may add some
            or not isinstance(req["protocols"], list)
            or not all(isinstance(v, str) for v in req["protocols"])
        ):
            raise StageError(
                Code.INVALID_ARGUMENT,
                'the describe request is not {"protocols":[...]} (a list of version strings)',
            )
        engine = req["protocols"]
        if not engine:
            raise StageError(Code.INVALID_ARGUMENT, "the describe request names no protocol version")
    for version in PROTOCOLS:
        if version in engine:
            return version
    raise StageError(
        Code.INVALID_ARGUMENT,
        f"the engine speaks {', '.join(engine)}; this stage speaks {', '.join(PROTOCOLS)}",
    )

"""The envelope: the JSON object in the app_metadata of every message
(docs/protocol.md, section 4).

Every SDK encodes an envelope to the same bytes (the golden vectors of
testdata/protocol/envelopes.jsonl), so that the messages of a stage are
comparable across languages in logs and packet captures. The canonical
form is what ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``
writes for a dict whose keys are in the protocol's order: no whitespace,
non-ASCII text as is, ``<``, ``>`` and ``&`` not escaped, control
characters as ``\\b \\t \\n \\f \\r`` or ``\\u00XX`` (lower-case hex).
Integers are Python ints, so epochs and sequence numbers up to 2**64 - 1
stay exact (no float on the way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from ._errors import RowError

VERSION = 1
# "unchanged" (v1.1, stage -> engine, only when the open request offers it):
# the output for input batch in_seq is that batch itself, as the engine sent
# it; no rows travel back, the engine reuses the batch it holds
KINDS = ("batch", "end", "ack", "row_errors", "flushed", "release", "unchanged")
_U64 = (1 << 64) - 1


class EnvelopeError(ValueError):
    """An envelope that cannot be read; the message says why."""


@dataclass(frozen=True)
class Lineage:
    """Who produced a batch: ``stage`` is the manifest's name."""

    stage: str
    kind: str
    version: str
    language: str


@dataclass(frozen=True)
class Slot:
    """A range of an exchange's shared memory (v1.1; this SDK takes the
    plain Flight path and never sees one from an engine, but reads and
    writes the key like the other SDKs)."""

    offset: int
    length: int


@dataclass(frozen=True)
class Envelope:
    """One envelope. Optional keys are ``None`` when absent (and then left
    out of the encoding); ``in_seq`` 0 is present. ``snapshot`` is the
    state of a stateful v1.1 stage on ``flushed``, as the base64 text of
    the wire (``""``, an empty state, is present)."""

    kind: str
    epoch: int
    seq: int
    in_seq: Optional[int] = None
    traceparent: Optional[str] = None
    lineage: Optional[Lineage] = None
    errors: Optional[tuple[RowError, ...]] = None
    rows: Optional[int] = None
    snapshot: Optional[str] = None
    shm: Optional[Slot] = None
    v: int = VERSION


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate (from text decoded with surrogateescape, or a
        # "\ud800" escape read from JSON) has no UTF-8 form: write U+FFFD,
        # as Go's encoder does for invalid UTF-8
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def dumps(value: Any) -> bytes:
    """Canonical JSON bytes of ``value`` (dicts keep their key order)."""
    return _dumps(value)


def encode(env: Envelope) -> bytes:
    """The canonical bytes of ``env``."""
    obj: dict[str, Any] = {"v": env.v, "kind": env.kind, "epoch": env.epoch, "seq": env.seq}
    if env.in_seq is not None:
        obj["in_seq"] = env.in_seq
    if env.traceparent is not None:
        obj["traceparent"] = env.traceparent
    if env.lineage is not None:
        lin = env.lineage
        obj["lineage"] = {"stage": lin.stage, "kind": lin.kind, "version": lin.version, "language": lin.language}
    if env.errors is not None:
        obj["errors"] = [{"row": e.row, "code": str(e.code), "message": e.message} for e in env.errors]
    if env.rows is not None:
        obj["rows"] = env.rows
    if env.snapshot is not None:
        obj["snapshot"] = env.snapshot
    if env.shm is not None:
        obj["shm"] = {"offset": env.shm.offset, "length": env.shm.length}
    return _dumps(obj)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise EnvelopeError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise EnvelopeError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except EnvelopeError:
        raise
    except (ValueError, RecursionError, TypeError) as e:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and ints
        # with too many digits
        raise EnvelopeError(f"not JSON: {e}") from None


def _uint(obj: dict[str, Any], key: str, required: bool, limit: int = _U64) -> Optional[int]:
    value = obj.get(key)
    if value is None:
        if required:
            raise EnvelopeError(f'missing "{key}"')
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise EnvelopeError(f'"{key}" is {json.dumps(value)[:40]}, not an integer in 0..{limit}')
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise EnvelopeError(f'{where}: "{key}" is missing or not a string')
    return value


def decode(data: bytes | str) -> Envelope:
    """Reads an envelope; raises :class:`EnvelopeError` saying what is wrong.

    Accepts any JSON spelling of an envelope (whitespace, key order,
    escapes); unknown keys are ignored (a newer peer may add some) and a
    ``null`` optional key is absent.
    """
    if not isinstance(data, str):
        data = bytes(data)
    if not data.strip():
        raise EnvelopeError("empty envelope")
    obj = loads(data)
    if not isinstance(obj, dict):
        raise EnvelopeError("an envelope is a JSON object")
    v = obj.get("v")
    if v is None:
        raise EnvelopeError('missing "v"')
    if isinstance(v, bool) or not isinstance(v, int) or v != VERSION:
        raise EnvelopeError(f'unsupported envelope version "v":{json.dumps(v)[:40]}, want {VERSION}')
    kind = obj.get("kind")
    if kind is None:
        raise EnvelopeError('missing "kind"')
    if kind not in KINDS:
        raise EnvelopeError(f"unknown kind {json.dumps(kind)[:60]}")
    epoch = _uint(obj, "epoch", True)
    seq = _uint(obj, "seq", True)
    in_seq = _uint(obj, "in_seq", False)
    traceparent = obj.get("traceparent")
    if traceparent is not None and not isinstance(traceparent, str):
        raise EnvelopeError('"traceparent" is not a string')
    lineage = None
    if obj.get("lineage") is not None:
        lin = obj["lineage"]
        if not isinstance(lin, dict):
            raise EnvelopeError('"lineage" is not an object')
        lineage = Lineage(*(_str(lin, k, "lineage") for k in ("stage", "kind", "version", "language")))
    errors = None
    if obj.get("errors") is not None:
        raw = obj["errors"]
        if not isinstance(raw, list):
            raise EnvelopeError('"errors" is not an array')
        out = []
        for i, e in enumerate(raw):
            if not isinstance(e, dict):
                raise EnvelopeError(f"errors[{i}] is not an object")
            row = _uint(e, "row", True)
            out.append(RowError(row, _str(e, "code", f"errors[{i}]"), _str(e, "message", f"errors[{i}]")))
        errors = tuple(out)
    rows = _uint(obj, "rows", False)
    snapshot = obj.get("snapshot")
    if snapshot is not None and not isinstance(snapshot, str):
        raise EnvelopeError('"snapshot" is not a string')
    shm = None
    if obj.get("shm") is not None:
        raw = obj["shm"]
        if not isinstance(raw, dict):
            raise EnvelopeError('"shm" is not an object')
        shm = Slot(_uint(raw, "offset", True), _uint(raw, "length", True))
    if kind == "release" and shm is None:
        raise EnvelopeError('a "release" must name its slot ("shm")')
    if shm is not None and kind not in ("batch", "release"):
        raise EnvelopeError(f'a "{kind}" names a slot of shared memory ("shm"); only "batch" and "release" do')
    return Envelope(kind=kind, epoch=epoch, seq=seq, in_seq=in_seq, traceparent=traceparent,
                    lineage=lineage, errors=errors, rows=rows, snapshot=snapshot, shm=shm, v=v)

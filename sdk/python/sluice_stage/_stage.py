"""What a stage implements: :class:`Stage` and :class:`Processor`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import pyarrow as pa

from ._errors import Code, RowError, StageError
from ._manifest import Manifest


@dataclass(frozen=True)
class Processed:
    """The answer to one input batch.

    ``output``: the rows to send on, or None (or a batch of zero rows) for
    none; its schema must be the exchange's output schema (names and types;
    metadata and nullability flags may differ, nulls in a not-null column
    may not). ``errors``: the input rows that failed; each must name a row
    of the input batch, at most once, and be left out of ``output``. A row
    in neither is filtered out silently.
    """

    output: Optional[pa.RecordBatch] = None
    errors: Sequence[RowError] = field(default_factory=tuple)


@dataclass(frozen=True)
class OpenRequest:
    """The first message of an exchange (one partition of one epoch): the
    engine's open request and what the SDK derived from it.

    ``stage`` is the stage's name in the pipeline, ``config`` its config
    table (any JSON value; None when the pipeline sets none),
    ``input_schema`` the schema of the input batches (already checked
    against the manifest) and ``output_schema`` the schema output batches
    must have (the manifest's, or the input schema for a pass-through).

    ``snapshot`` (protocol v1.1, a stateful stage): the state the last
    committed epoch left for this stage and partition, as the processor's
    :meth:`Processor.snapshot` returned it (decoded from the base64 of the
    wire); None when there is none (the first epoch, a stage that is not
    stateful, a v1 exchange), ``b""`` for an empty state. A stateful stage
    must start the exchange from exactly this state, never from what it
    holds in memory: after a failed epoch the engine replays it from the
    snapshot of the last commit.
    """

    protocol: str
    stage: str
    epoch: int
    partition: int
    config: Any
    input_schema: pa.Schema
    output_schema: pa.Schema
    snapshot: Optional[bytes] = None

    def config_with(self, **defaults: Any) -> dict[str, Any]:
        """The config table as a dict: ``defaults`` overridden by the
        pipeline's config.

        A key that is not in ``defaults``, or a value whose JSON type
        differs from its default's, raises an INVALID_ARGUMENT StageError:
        a typo in the pipeline file then fails the exchange loudly at open
        instead of being ignored. A default of None accepts any value.
        """
        cfg = self.config
        if cfg is None:
            return dict(defaults)
        if not isinstance(cfg, dict):
            raise StageError(Code.INVALID_ARGUMENT, f"stage {self.stage!r}: config must be a table, got {json.dumps(cfg)[:60]}")
        out = dict(defaults)
        for key, value in cfg.items():
            if key not in defaults:
                known = ", ".join(sorted(defaults)) or "none"
                raise StageError(Code.INVALID_ARGUMENT, f"stage {self.stage!r}: config: unknown key {key!r} (known: {known})")
            want = defaults[key]
            if want is not None and not _same_json_type(want, value):
                raise StageError(
                    Code.INVALID_ARGUMENT,
                    f"stage {self.stage!r}: config: {key} must be {_json_type(want)}, got {json.dumps(value)[:60]}",
                )
            out[key] = value
        return out


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _same_json_type(default: Any, value: Any) -> bool:
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return True  # 45 where 45.0 is expected
    return _json_type(default) == _json_type(value)


class Processor:
    """Transforms the batches of one exchange, in order, from one thread.

    Keep per-exchange state here (a stateful stage buffers rows until
    :meth:`flush`), not in the :class:`Stage`, which all exchanges share.
    A stateful stage restores its state from :attr:`OpenRequest.snapshot`
    and gives it back in :meth:`snapshot` (protocol v1.1).
    """

    def process(self, batch: pa.RecordBatch) -> "Processed | pa.RecordBatch | None":
        """Answers one input batch.

        Return a :class:`Processed` (output rows and row errors), or just
        the output batch, or None for no output row. The SDK answers a
        batch without output rows with an ``ack``, splits an output batch
        too large for one gRPC message, and sends row errors after the
        output. Raise :class:`StageError` to fail the exchange with its
        code; any other exception fails it as INTERNAL.

        Returning ``batch`` itself (or its very columns in a new batch)
        costs no copy back when the engine offers it (v1.1): the SDK sends
        an ``unchanged`` answer naming the batch and the engine reuses the
        batch it holds (when the input schema passes for the output schema
        as the engine compares types, nested field names and metadata
        included; otherwise as rows). A copy or a slice of equal values
        goes as rows. Row errors with ``batch`` itself as the output are
        INTERNAL, offered ``unchanged`` answers or not: its rows are all in
        it.
        """
        raise NotImplementedError

    def flush(self) -> Iterable[pa.RecordBatch]:
        """Called once after the engine's ``end``, never when the exchange
        fails. A stateful stage returns what it held back; those batches
        are sent before ``flushed``. The default holds nothing."""
        return ()

    def snapshot(self) -> bytes:
        """The state after the exchange, for a stateful stage (the
        manifest says ``stateful``) in a protocol v1.1 exchange, where the
        state takes part in the engine's commits.

        Called once after :meth:`flush`, when the engine has ended the
        epoch; the bytes (``bytes``, ``bytearray`` or ``memoryview``, any
        encoding the stage reads back; ``b""`` for an empty state) go out,
        base64, in the ``flushed`` message. The engine commits them with
        the epoch and hands them back as :attr:`OpenRequest.snapshot` of
        the partition's next exchange, or of the replay of this epoch if it
        fails. Never called for a v1 exchange, a stage that is not
        stateful, or an exchange that failed. Raise :class:`StageError` to
        fail the exchange with its code (no ``flushed`` is sent).

        The default raises NotImplementedError: a stateful stage must
        override it, else its v1.1 exchanges fail INTERNAL.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Called once when the exchange ends, however it ends (flushed,
        failed or cancelled): release what the processor holds."""


class Stage:
    """An external stage: what :func:`serve` serves.

    One Stage serves every exchange of the process, and exchanges run
    concurrently in the Flight server's threads: :meth:`open` must be
    thread-safe, and per-exchange state belongs in the Processor.
    """

    def manifest(self) -> Manifest:
        """Describes the stage. Called once, when the server is built; the
        SDK checks it and every exchange against it."""
        raise NotImplementedError

    def open(self, request: OpenRequest) -> Processor:
        """Starts one exchange and returns its Processor.

        Raise ``StageError(Code.INVALID_ARGUMENT, ...)`` for a bad config
        (:meth:`OpenRequest.config_with` does), ``StageError(Code.UNAVAILABLE,
        ...)`` when a dependency is down; any other exception is INTERNAL.
        """
        raise NotImplementedError

    def health(self) -> None:
        """Answers the ``health`` action: raise (anything) when the stage
        cannot serve, and the engine sends no work (gRPC UNAVAILABLE). The
        default is healthy."""

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
    """

    protocol: str
    stage: str
    epoch: int
    partition: int
    config: Any
    input_schema: pa.Schema
    output_schema: pa.Schema

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
    """

    def process(self, batch: pa.RecordBatch) -> "Processed | pa.RecordBatch | None":
        """Answers one input batch.

        Return a :class:`Processed` (output rows and row errors), or just
        the output batch, or None for no output row. The SDK answers a
        batch without output rows with an ``ack``, splits an output batch
        too large for one gRPC message, and sends row errors after the
        output. Raise :class:`StageError` to fail the exchange with its
        code; any other exception fails it as INTERNAL.
        """
        raise NotImplementedError

    def flush(self) -> Iterable[pa.RecordBatch]:
        """Called once after the engine's ``end``, never when the exchange
        fails. A stateful stage returns what it held back; those batches
        are sent before ``flushed``. The default holds nothing."""
        return ()

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

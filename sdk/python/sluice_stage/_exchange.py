"""One exchange (docs/protocol.md, section 3): read the open request, then
answer every input batch in order, then flush after ``end`` (and, for a
stateful stage in v1.1, send its snapshot with ``flushed``)."""

from __future__ import annotations

import base64
import binascii
import ctypes
import json
import logging
from typing import TYPE_CHECKING, Any, Iterable, Optional

import pyarrow as pa
import pyarrow.flight as flight

from ._envelope import Envelope, EnvelopeError, Lineage, decode, encode, loads
from ._errors import Code, RowError, StageError, valid_code
from ._manifest import MAX_MESSAGE_SIZE, PROTOCOL_V1_1, PROTOCOLS
from ._stage import OpenRequest, Processed, Processor

if TYPE_CHECKING:
    from ._server import StageServer

log = logging.getLogger("sluice_stage")

MESSAGE_BUDGET = MAX_MESSAGE_SIZE // 2
"""The most bytes of one output batch message. Half the 64 MiB limit, so
that neither the estimate nor the IPC framing can push a message over it;
a larger output batch goes as several ``batch`` messages (row slices, no
copy) answering the same input batch."""


class Cancelled(Exception):
    """The engine cancelled the exchange (or went away)."""


def exact_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether ``a`` and ``b`` are equal as the engine compares types (Rust's
    DataType equality): nested fields (of a struct, list, map, union,
    run-end encoding, a dictionary's values, an extension's storage) with
    the same names, nullability and metadata too, at every depth.
    ``equals(check_metadata=True)`` compares those, except inside a
    dictionary's value type, hence the walk."""
    if not a.equals(b, check_metadata=True):
        return False
    if isinstance(a, pa.DictionaryType):  # equal: b is one too
        return exact_type(a.index_type, b.index_type) and exact_type(a.value_type, b.value_type)
    if isinstance(a, pa.BaseExtensionType):
        return isinstance(b, pa.BaseExtensionType) and exact_type(a.storage_type, b.storage_type)
    if a.num_fields != b.num_fields:
        return False
    for i in range(a.num_fields):
        x, y = a.field(i), b.field(i)
        if x.name != y.name or x.nullable != y.nullable or x.metadata != y.metadata or not exact_type(x.type, y.type):
            return False
    return True


def schema_difference(
    want: pa.Schema, got: pa.Schema, *, looser_nulls_ok: bool, exact_types: bool = False
) -> Optional[str]:
    """Why ``got`` cannot be used where ``want`` is declared, naming the
    first offending field, or None. Same rule as the engine and the other
    SDKs: same fields in order, same names, equal types (metadata ignored),
    and no nullable field where ``want`` says not null, unless
    ``looser_nulls_ok`` (output, where the SDK checks the data instead).
    With ``exact_types`` the types are compared by :func:`exact_type`, as
    the engine compares a batch it reuses; top-level fields as above."""
    for i, w in enumerate(want):
        if i >= len(got):
            return f'field "{w.name}": missing (expected {w.type} at position {i})'
        g = got.field(i)
        if g.name != w.name:
            return f'field {i}: expected "{w.name}", got "{g.name}"'
        if not (exact_type(w.type, g.type) if exact_types else g.type.equals(w.type)):
            return f'field "{w.name}": expected {w.type}, got {g.type}'
        if g.nullable and not w.nullable and not looser_nulls_ok:
            return f'field "{w.name}": expected not null, got nullable'
    if len(got) > len(want):
        g = got.field(len(want))
        return f'field "{g.name}": not declared ({g.type} at position {len(want)})'
    return None


def pieces(batch: pa.RecordBatch, budget: int = MESSAGE_BUDGET) -> list[pa.RecordBatch]:
    """``batch`` cut into zero-copy row slices whose IPC messages are at
    most ``budget`` bytes each, in order. A single row larger than the
    budget goes alone; one that cannot fit in a gRPC message at all is an
    INTERNAL error (the engine would refuse the message)."""
    if batch.nbytes <= budget:
        return [batch]
    size = pa.ipc.get_record_batch_size(batch)
    if size <= budget:
        return [batch]
    if batch.num_rows <= 1:
        if size > MAX_MESSAGE_SIZE - (1 << 20):
            raise StageError(
                Code.INTERNAL,
                f"an output row of {size} bytes does not fit in one gRPC message ({MAX_MESSAGE_SIZE} bytes)",
            )
        return [batch]
    half = batch.num_rows // 2
    return pieces(batch.slice(0, half), budget) + pieces(batch.slice(half), budget)


class _CArray(ctypes.Structure):
    """``struct ArrowArray`` of the Arrow C data interface: the physical
    layout of an array, as pyarrow exports it without copying a value."""


_CArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_CArray))),
    ("dictionary", ctypes.POINTER(_CArray)),
    ("release", ctypes.CFUNCTYPE(None, ctypes.POINTER(_CArray))),
    ("private_data", ctypes.c_void_p),
]


class _CSchema(ctypes.Structure):
    """``struct ArrowSchema`` of the Arrow C data interface: the type of an
    exported array, node for node."""


_CSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),  # binary, not NUL-terminated as a whole: not read
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_CSchema))),
    ("dictionary", ctypes.POINTER(_CSchema)),
    ("release", ctypes.CFUNCTYPE(None, ctypes.POINTER(_CSchema))),
    ("private_data", ctypes.c_void_p),
]

# Formats whose export ends with one more buffer than the array has: the
# sizes of the variadic data buffers (string_view, binary_view), an array
# the exporter allocates anew at each export. Its address says nothing of
# where the values are (the data buffers before it do), so it is left out.
_VARIADIC_SIZES = (b"vu", b"vz")


def _walk(c: _CArray, s: _CSchema) -> tuple:
    n = c.n_buffers - 1 if s.format in _VARIADIC_SIZES else c.n_buffers
    if c.n_children != s.n_children or bool(c.dictionary) != bool(s.dictionary):
        raise ValueError("an exported array and its schema disagree")  # not expected of pyarrow
    return (
        c.length,
        c.offset,
        tuple(c.buffers[i] for i in range(n)),
        tuple(_walk(c.children[i].contents, s.children[i].contents) for i in range(c.n_children)),
        _walk(c.dictionary.contents, s.dictionary.contents) if c.dictionary else None,
    )


def _layout(array: pa.Array) -> tuple:
    """Where ``array``'s values are: length, offset and buffer addresses, of
    it, its children and its dictionary, at every depth (the array exported
    with its schema, to tell which buffers are the values')."""
    c, s = _CArray(), _CSchema()
    try:
        array._export_to_c(ctypes.addressof(c), ctypes.addressof(s))
        return _walk(c, s)
    finally:
        # a struct not (or no longer) exported has no release callback
        if c.release:
            c.release(ctypes.byref(c))
        if s.release:
            s.release(ctypes.byref(s))


def is_input(out: pa.RecordBatch, batch: pa.RecordBatch) -> bool:
    """Whether ``out`` is the input ``batch`` by construction: as many rows
    and columns, each column of the same type over the very same memory
    (offsets, lengths and buffer addresses, children and dictionaries
    included), whatever RecordBatch object holds them (pyarrow makes a new
    wrapper at every ``column(i)``, and the output may be stamped with the
    output schema). Buffer addresses alone would not do: a dictionary, or a
    child's offset, is not in ``buffers()``. Equal values elsewhere (a copy)
    are not the input: comparing values would cost what sending them does."""
    if out is batch:
        return True
    if out.num_rows != batch.num_rows or out.num_columns != batch.num_columns:
        return False
    try:
        for i in range(out.num_columns):
            a, b = out.column(i), batch.column(i)
            if not a.type.equals(b.type) or _layout(a) != _layout(b):
                return False
    except Exception:  # a type the C data interface does not carry: send the rows
        return False
    return True


def _implements_snapshot(proc: Any) -> bool:
    """Whether ``proc`` has a snapshot method other than the base class's,
    which only raises."""
    fn = getattr(proc, "snapshot", None)
    return callable(fn) and getattr(fn, "__func__", None) is not Processor.snapshot


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class Exchange:
    """The state of one exchange; :meth:`run` drives it."""

    def __init__(self, server: "StageServer", context: Any, descriptor: Any, reader: Any, writer: Any):
        self.server = server
        self.manifest = server.manifest
        self.context = context
        self.descriptor = descriptor
        self.reader = reader
        self.writer = writer
        self.request: Optional[OpenRequest] = None
        self.seq = 0  # the next envelope's seq: every message with an envelope counts
        self.rows = 0  # output rows sent, for "flushed"
        # the engine takes "unchanged" answers (v1.1, offered in the open
        # request) and the input schema passes for the output schema as the
        # engine compares them (exact_type)
        self.unchanged = False
        self.lineage = Lineage(self.manifest.name, "external", self.manifest.version, self.manifest.language)

    # --- the protocol ------------------------------------------------------

    def run(self) -> None:
        self.request = req = self._open_request()
        # the state takes part in commits: "flushed" carries its snapshot
        stateful = self.manifest.stateful and req.protocol == PROTOCOL_V1_1
        proc = self._call("open", self.server.stage.open, req)
        if not callable(getattr(proc, "process", None)):
            raise StageError(Code.INTERNAL, f"open returned {type(proc).__name__}, not a Processor")
        try:
            if stateful and not _implements_snapshot(proc):
                # found before any work is done: "flushed" could not be sent
                raise StageError(Code.INTERNAL, self._no_snapshot(proc))
            # the schema message goes first, in every exchange: an ack or
            # row_errors may come before any output batch
            self._io(self.writer.begin, req.output_schema)
            while True:
                chunk = self._next()
                if chunk.data is None:
                    self._end(chunk.app_metadata)
                    break
                env = self._input_envelope(chunk)
                batch = chunk.data  # one object: each .data is a new wrapper
                answer = self._call("process", proc.process, batch)
                self._answer(env.seq, batch, answer)
            # a generator's body runs inside list(): guarded like flush itself
            flushed = self._call("flush", lambda: self._batches(proc.flush()))
            for batch in flushed:
                out = self._conform(batch)
                if out.num_rows:
                    self._send_batch(out, None)
            snapshot = self._snapshot(proc) if stateful else None
            self._send_metadata(Envelope("flushed", req.epoch, self.seq, rows=self.rows, snapshot=snapshot))
        finally:
            close = getattr(proc, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("sluice_stage: Processor.close of stage %r raised", self.manifest.name)

    def _open_request(self) -> OpenRequest:
        m = self.manifest
        d = self.descriptor
        if d is None or d.descriptor_type != flight.DescriptorType.CMD or not d.command:
            raise StageError(
                Code.INVALID_ARGUMENT,
                "the first message must carry a CMD FlightDescriptor whose cmd is the open request",
            )
        try:
            o = loads(d.command)
        except EnvelopeError as e:
            raise StageError(Code.INVALID_ARGUMENT, f"open request: {e}") from None
        if not isinstance(o, dict):
            raise StageError(Code.INVALID_ARGUMENT, "open request: not a JSON object")
        protocol = o.get("protocol")
        if protocol not in PROTOCOLS:
            raise StageError(
                Code.INVALID_ARGUMENT,
                f"the engine opened the exchange in {json.dumps(protocol)[:60]}; this stage speaks {', '.join(PROTOCOLS)}",
            )
        stage, epoch, partition = o.get("stage"), o.get("epoch"), o.get("partition")
        if not isinstance(stage, str):
            raise StageError(Code.INVALID_ARGUMENT, 'open request: "stage" is missing or not a string')
        for key, value, limit in (("epoch", epoch, (1 << 64) - 1), ("partition", partition, (1 << 32) - 1)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise StageError(Code.INVALID_ARGUMENT, f'open request: "{key}" is not an integer in 0..{limit}')
        snapshot = o.get("snapshot")  # null: none
        if snapshot is not None:
            if not isinstance(snapshot, str):
                raise StageError(
                    Code.INVALID_ARGUMENT,
                    f"open request: snapshot is {json.dumps(snapshot)[:40]}; want a base64 string or null",
                )
            try:
                snapshot = base64.b64decode(snapshot, validate=True)
            except (binascii.Error, ValueError) as e:
                raise StageError(
                    Code.INVALID_ARGUMENT, f"open request: snapshot: not base64 (standard alphabet, padded): {e}"
                ) from None
        try:
            in_schema = self.reader.schema
        except Exception as e:
            raise StageError(Code.INVALID_ARGUMENT, f"the first message carries no input schema: {_first_line(e)}") from None
        if m.input_schema is not None:
            why = schema_difference(m.input_schema.schema, in_schema, looser_nulls_ok=False)
            if why:
                d = m.input_schema
                raise StageError(Code.SCHEMA_MISMATCH, f"stage {m.name!r}: input {why} (declared {d.name} v{d.version})")
        out_schema = m.output_schema.schema if m.output_schema is not None else in_schema
        if protocol == PROTOCOL_V1_1:  # a v1 engine never offers it: the key means nothing there
            offer = o.get("unchanged")  # null: not offered
            if offer is not None and not isinstance(offer, bool):
                raise StageError(
                    Code.INVALID_ARGUMENT, f"open request: unchanged is {json.dumps(offer)[:40]}; want true or false"
                )
            # The engine reuses its input batch under the output schema and
            # checks it there as declared (not the data), with its own strict
            # type comparison, so an input schema that does not pass for the
            # output schema that way (a nullable field declared not null on
            # the way out, another name or metadata of a nested field) goes
            # back as rows, stamped.
            self.unchanged = bool(offer) and schema_difference(
                out_schema, in_schema, looser_nulls_ok=False, exact_types=True
            ) is None
        return OpenRequest(protocol, stage, epoch, partition, o.get("config"), in_schema, out_schema, snapshot)

    def _next(self) -> Any:
        try:
            return self.reader.read_chunk()
        except StopIteration:
            raise StageError(
                Code.INVALID_ARGUMENT,
                'the input ended without an "end" message: the exchange is aborted, nothing is flushed',
            ) from None
        except Exception as e:
            if self.context.is_cancelled():
                raise Cancelled() from None
            raise StageError(Code.INVALID_ARGUMENT, f"reading input: {_first_line(e)}") from None

    def _envelope(self, meta: Any, what: str) -> Envelope:
        if meta is None or meta.size == 0:
            raise StageError(Code.INVALID_ARGUMENT, f"{what} has no envelope (app_metadata)")
        try:
            env = decode(meta.to_pybytes())
        except EnvelopeError as e:
            raise StageError(Code.INVALID_ARGUMENT, f"{what}: {e}") from None
        if env.epoch != self.request.epoch:
            raise StageError(
                Code.INVALID_ARGUMENT,
                f"{what} seq {env.seq} is for epoch {env.epoch}, the exchange is for epoch {self.request.epoch}",
            )
        return env

    def _input_envelope(self, chunk: Any) -> Envelope:
        env = self._envelope(chunk.app_metadata, "an input batch")
        if env.kind != "batch":
            raise StageError(Code.INVALID_ARGUMENT, f'an input message with rows has kind "{env.kind}", not "batch"')
        if env.shm is not None:
            # this SDK takes no shared memory: the rows are in the message
            raise StageError(
                Code.INVALID_ARGUMENT,
                f"input batch seq {env.seq} carries its IPC data and names a slot of shared memory too",
            )
        n = chunk.data.num_rows
        if n > self.manifest.max_batch_rows:
            raise StageError(
                Code.INVALID_ARGUMENT,
                f"input batch seq {env.seq} has {n} rows, more than max_batch_rows {self.manifest.max_batch_rows}",
            )
        return env

    def _end(self, meta: Any) -> None:
        env = self._envelope(meta, "a metadata-only input message")
        if env.kind != "end":
            raise StageError(
                Code.INVALID_ARGUMENT,
                f'a metadata-only input message has kind "{env.kind}"; only "end" comes without rows',
            )

    def _answer(self, in_seq: int, batch: pa.RecordBatch, answer: Any) -> None:
        in_rows = batch.num_rows
        if isinstance(answer, Processed):
            out, errors = answer.output, answer.errors
        elif answer is None or isinstance(answer, pa.RecordBatch):
            out, errors = answer, ()
        else:
            raise StageError(
                Code.INTERNAL,
                f"process returned {type(answer).__name__}; expected Processed, a pyarrow.RecordBatch or None",
            )
        # checked before anything of this answer is sent: a bad row error
        # is the stage's bug, and the engine would refuse it anyway
        errors = self._row_errors(errors, in_rows)
        if out is not None:
            out = self._conform(out)
        # The output is the input itself, every row of it: row errors for the
        # batch would be rows delivered and reported both. Refused whether
        # or not the engine takes "unchanged" answers, so that its offer (a
        # pipeline key) never decides whether a stage passes. (is_input is
        # only asked when its answer matters.)
        same = out is not None and out.num_rows > 0 and bool(errors or self.unchanged) and is_input(out, batch)
        if same and errors:
            raise StageError(
                Code.INTERNAL,
                f"stage {self.manifest.name!r} answered input batch seq {in_seq} with its input unchanged and "
                f"reported {len(errors)} row error(s) for it: a stage must leave the rows it reports out of "
                "its output, or they are delivered and reported both",
            )
        if same and self.unchanged:
            # the engine reuses the batch it sent: its rows count as sent
            self._send_metadata(Envelope("unchanged", self.request.epoch, self.seq, in_seq=in_seq))
            self.rows += in_rows
        elif out is not None and out.num_rows > 0:
            self._send_batch(out, in_seq)
        else:
            # Flight cannot send an empty body; every input batch gets an answer
            self._send_metadata(Envelope("ack", self.request.epoch, self.seq, in_seq=in_seq))
        if errors:
            self._send_metadata(Envelope("row_errors", self.request.epoch, self.seq, in_seq=in_seq, errors=errors))

    def _row_errors(self, errors: Any, in_rows: int) -> tuple[RowError, ...]:
        name = self.manifest.name
        if errors is None:
            return ()
        try:
            errors = list(errors)
        except TypeError:
            raise StageError(Code.INTERNAL, f"stage {name!r}: row errors must be a list of RowError") from None
        if not errors:
            return ()
        if self.manifest.errors == "fatal_only":
            raise StageError(
                Code.INTERNAL,
                f"stage {name!r} reported {len(errors)} row error(s), but its manifest says errors = \"fatal_only\"",
            )
        seen: set[int] = set()
        out = []
        for e in errors:
            if not isinstance(e, RowError):
                raise StageError(Code.INTERNAL, f"stage {name!r}: a row error is a {type(e).__name__}, not a RowError")
            row = e.row
            if isinstance(row, bool) or not isinstance(row, int):
                raise StageError(Code.INTERNAL, f"stage {name!r}: a row error names row {row!r}, not an int")
            if not 0 <= row < in_rows:
                raise StageError(
                    Code.INTERNAL, f"stage {name!r}: a row error names row {row}, the input batch has {in_rows} rows"
                )
            if row in seen:
                raise StageError(Code.INTERNAL, f"stage {name!r}: two row errors name row {row}")
            seen.add(row)
            if not valid_code(e.code):
                raise StageError(Code.INTERNAL, f"stage {name!r}: the row error of row {row} has the unknown code {e.code!r}")
            if not isinstance(e.message, str):
                raise StageError(Code.INTERNAL, f"stage {name!r}: the message of the row error of row {row} is not a str")
            out.append(RowError(row, str(e.code), e.message))
        return tuple(out)

    def _conform(self, batch: Any) -> pa.RecordBatch:
        """``batch`` checked against the output schema and stamped with it
        (the stream has one schema; metadata and nullability flags may
        differ, nulls in a not-null column may not)."""
        name = self.manifest.name
        if not isinstance(batch, pa.RecordBatch):
            raise StageError(Code.INTERNAL, f"stage {name!r}: an output is a {type(batch).__name__}, not a pyarrow.RecordBatch")
        want = self.request.output_schema
        if not batch.schema.equals(want):
            why = schema_difference(want, batch.schema, looser_nulls_ok=True)
            if why:
                raise StageError(Code.SCHEMA_MISMATCH, f"stage {name!r}: output {why}")
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=want)
        for i, f in enumerate(want):
            if not f.nullable and batch.column(i).null_count:
                raise StageError(
                    Code.SCHEMA_MISMATCH,
                    f'stage {name!r}: output field "{f.name}": declared not null, has {batch.column(i).null_count} null(s)',
                )
        return batch

    def _batches(self, flushed: Any) -> Iterable[Any]:
        if flushed is None:
            return ()
        if isinstance(flushed, pa.RecordBatch):
            return (flushed,)
        try:
            return list(flushed)
        except TypeError:
            raise StageError(Code.INTERNAL, "flush must return an iterable of pyarrow.RecordBatch") from None

    def _no_snapshot(self, proc: Any) -> str:
        return (
            f"stage {self.manifest.name!r} is stateful and the exchange is {PROTOCOL_V1_1}, so its state is "
            f"committed with each epoch: its Processor ({type(proc).__name__}) must implement snapshot() -> bytes"
        )

    def _snapshot(self, proc: Any) -> str:
        """The processor's state after the exchange, base64, for ``flushed``."""

        def call() -> Any:
            try:
                return proc.snapshot()
            except NotImplementedError:  # the base class's, called by an override
                raise StageError(Code.INTERNAL, self._no_snapshot(proc)) from None

        state = self._call("snapshot", call)
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise StageError(
                Code.INTERNAL,
                f"stage {self.manifest.name!r}: snapshot returned {type(state).__name__}, not bytes",
            )
        return base64.b64encode(state).decode("ascii")

    # --- sending -------------------------------------------------------------

    def _send_batch(self, batch: pa.RecordBatch, in_seq: Optional[int]) -> None:
        for piece in pieces(batch):
            env = Envelope("batch", self.request.epoch, self.seq, in_seq=in_seq, lineage=self.lineage)
            self._io(self.writer.write_with_metadata, piece, encode(env))
            self.seq += 1
            self.rows += piece.num_rows

    def _send_metadata(self, env: Envelope) -> None:
        self._io(self.writer.write_metadata, encode(env))
        self.seq += 1

    def _io(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            if self.context.is_cancelled():
                raise Cancelled() from None
            raise StageError(Code.INTERNAL, f"sending output: {_first_line(e)}") from None

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """Runs a callback of the stage: a StageError keeps its code, any
        other exception is a bug of the stage (INTERNAL), logged with its
        traceback on the stage's stderr, which the engine collects."""
        try:
            return fn(*args)
        except StageError:
            raise
        except Exception as e:
            log.exception("sluice_stage: %s of stage %r raised", what, self.manifest.name)
            raise StageError(Code.INTERNAL, f"{what} raised {type(e).__name__}: {_first_line(e)}") from None

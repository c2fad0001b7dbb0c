"""Helpers of the tests: an in-process stage server, a Flight client that
plays the engine, and a checker of the protocol's rules for a stage's
answer stream."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.flight as flight

from sluice_stage import MAX_MESSAGE_SIZE, PROTOCOL_V1, StageServer
from sluice_stage._envelope import Envelope, decode, encode
from sluice_stage._errors import valid_code

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TESTDATA = os.path.join(ROOT, "testdata", "protocol")
SDK = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def quiet() -> None:
    """Failed exchanges are logged at WARNING; the tests fail many on purpose."""
    logging.getLogger("sluice_stage").setLevel(logging.CRITICAL + 1)


def connect(location: str) -> flight.FlightClient:
    """A client with the engine's 64 MiB receive limit (pyarrow's default
    is unlimited, which would hide a message that is too large)."""
    return flight.connect(location, generic_options=[("grpc.max_receive_message_length", MAX_MESSAGE_SIZE)])


@contextlib.contextmanager
def running(stage: Any, server_class: type = StageServer) -> Iterator[tuple[Any, flight.FlightClient]]:
    server = server_class(stage, "grpc://127.0.0.1:0")
    client = connect(f"grpc://127.0.0.1:{server.port}")
    try:
        yield server, client
    finally:
        client.close()
        server.shutdown()


@dataclass
class Msg:
    env: Envelope
    batch: Optional[pa.RecordBatch]


@dataclass
class Result:
    messages: list[Msg] = field(default_factory=list)
    error: Optional[BaseException] = None
    schema: Optional[pa.Schema] = None


def open_request(
    epoch: int = 1, protocol: str = PROTOCOL_V1, config: Any = None, snapshot: Optional[bytes] = None, **extra: Any
) -> bytes:
    """The open request; ``snapshot`` (the state of a stateful v1.1 stage)
    is sent base64, and left out when None."""
    o = {"protocol": protocol, "stage": "test", "epoch": epoch, "partition": 0, "config": config}
    if snapshot is not None:
        o["snapshot"] = base64.b64encode(snapshot).decode()
    o.update(extra)
    return json.dumps(o).encode()


def flushed_snapshot(res: "Result") -> Optional[bytes]:
    """The decoded snapshot of the exchange's ``flushed``, or None."""
    if not res.messages or res.messages[-1].env.kind != "flushed" or res.messages[-1].env.snapshot is None:
        return None
    return base64.b64decode(res.messages[-1].env.snapshot, validate=True)


def exchange(
    client: flight.FlightClient,
    batches: list[pa.RecordBatch],
    *,
    schema: Optional[pa.Schema] = None,
    epoch: int = 1,
    cmd: Optional[bytes] = None,
    end: bool = True,
    metadata: Optional[list[bytes]] = None,
) -> Result:
    """Plays the engine: the open request and schema, every batch with its
    envelope (or with ``metadata[i]`` instead), then ``end`` unless
    ``end`` is False (an aborted input). Returns what the stage answered,
    and the error the exchange ended with."""
    if schema is None:
        schema = batches[0].schema
    desc = flight.FlightDescriptor.for_command(cmd if cmd is not None else open_request(epoch))
    writer, reader = client.do_exchange(desc)
    res = Result()
    try:
        writer.begin(schema)
        for i, b in enumerate(batches):
            meta = metadata[i] if metadata is not None else encode(Envelope("batch", epoch, i))
            writer.write_with_metadata(b, meta)
        if end:
            writer.write_metadata(encode(Envelope("end", epoch, len(batches))))
        writer.done_writing()
    except Exception as e:  # the stage failed early and closed the stream
        res.error = e
    try:
        while True:
            chunk = reader.read_chunk()
            res.messages.append(Msg(decode(chunk.app_metadata.to_pybytes()), chunk.data))
    except StopIteration:
        pass
    except Exception as e:
        res.error = e
    with contextlib.suppress(Exception):
        res.schema = reader.schema
    with contextlib.suppress(Exception):
        writer.close()  # else pyarrow warns on stderr when it closes a failed call itself
    return res


def batch_of(ids: list[int], text: str = "") -> pa.RecordBatch:
    return pa.record_batch(
        [pa.array(ids, pa.int64()), pa.array([f"{text}{i}" for i in ids], pa.string())],
        names=["id", "s"],
    )


def check_answers(
    res: Result, inputs: list[pa.RecordBatch], epoch: int, snapshot: Optional[bool] = None, unchanged: bool = False
) -> list[str]:
    """The rules of protocol.md sections 3-5 for a complete exchange: every
    envelope of the exchange's epoch with seq 0, 1, ...; each input batch
    answered in order (batches, or one ack alone), at most one row_errors
    per batch right after its answer, naming rows of that batch once each
    with known codes; ``flushed`` last, once, with the number of rows; a
    snapshot on ``flushed`` only, base64, and there exactly when
    ``snapshot`` says (a stateful v1.1 stage; None: not checked).
    ``unchanged``: the exchange offered "unchanged" answers (v1.1); each
    stands for its input batch's rows, without rows, lineage or slot of its
    own, and no row_errors may follow it."""
    p: list[str] = []
    msgs = res.messages
    if res.error is not None:
        p.append(f"error: {res.error}")
    rows = 0
    answered = -1  # the last input batch answered
    errored: set[int] = set()
    acked: set[int] = set()
    batched: set[int] = set()
    whole: set[int] = set()  # answered "unchanged": every row delivered
    last_answer_kind = None
    for i, m in enumerate(msgs):
        e = m.env
        if e.epoch != epoch:
            p.append(f"message {i}: epoch {e.epoch}")
        if e.snapshot is not None and e.kind != "flushed":
            p.append(f"message {i}: a snapshot on {e.kind}")
        if e.seq != i:
            p.append(f"message {i}: seq {e.seq}")
        if e.kind == "flushed":
            if i != len(msgs) - 1:
                p.append(f"message {i}: flushed is not last")
            if answered != len(inputs) - 1:
                p.append(f"flushed after answering {answered + 1} of {len(inputs)} batches")
            if e.rows != rows:
                p.append(f"flushed says {e.rows} rows, {rows} arrived")
            if snapshot is not None and (e.snapshot is not None) != snapshot:
                p.append(f"flushed {'without' if snapshot else 'with'} a snapshot")
            if e.snapshot is not None:
                try:
                    base64.b64decode(e.snapshot, validate=True)
                except (binascii.Error, ValueError):
                    p.append(f"message {i}: the snapshot is not base64")
            continue
        if e.kind == "batch":
            if m.batch is None or m.batch.num_rows == 0:
                p.append(f"message {i}: a batch without rows")
                continue
            if e.lineage is None:
                p.append(f"message {i}: a batch without lineage")
            rows += m.batch.num_rows
            if e.in_seq is None:  # flush output: after every answer
                if answered != len(inputs) - 1:
                    p.append(f"message {i}: flush output before every batch was answered")
                continue
            if e.in_seq in acked:
                p.append(f"message {i}: a batch for acked input {e.in_seq}")
            if e.in_seq in errored:
                p.append(f"message {i}: a batch for input {e.in_seq} after its row_errors")
            batched.add(e.in_seq)
        elif e.kind == "unchanged":
            if not unchanged:
                p.append(f"message {i}: an unchanged answer, which the exchange did not offer")
            if m.batch is not None:
                p.append(f"message {i}: an unchanged with rows")
            if e.lineage is not None or e.shm is not None:
                p.append(f"message {i}: an unchanged with lineage or a slot")
            if e.in_seq is None:
                p.append(f"message {i}: an unchanged without in_seq")
                continue
            if e.in_seq in acked:
                p.append(f"message {i}: an unchanged for acked input {e.in_seq}")
            if e.in_seq in errored:
                p.append(f"message {i}: an unchanged for input {e.in_seq} after its row_errors")
            if 0 <= e.in_seq < len(inputs):
                rows += inputs[e.in_seq].num_rows
            batched.add(e.in_seq)
            whole.add(e.in_seq)
        elif e.kind == "ack":
            if m.batch is not None:
                p.append(f"message {i}: an ack with rows")
            if e.in_seq is None:
                p.append(f"message {i}: an ack without in_seq")
                continue
            if e.in_seq in acked or e.in_seq in batched:
                p.append(f"message {i}: an ack for input {e.in_seq}, which was already answered")
            acked.add(e.in_seq)
        elif e.kind == "row_errors":
            if e.in_seq is None:
                p.append(f"message {i}: row_errors without in_seq")
                continue
            if e.in_seq in errored:
                p.append(f"message {i}: a second row_errors for input {e.in_seq}")
            if e.in_seq in whole:
                p.append(f"message {i}: row_errors for input {e.in_seq}, answered unchanged: delivered and reported")
            if e.in_seq != answered:
                p.append(f"message {i}: row_errors for input {e.in_seq} not right after its answer")
            errored.add(e.in_seq)
            if not e.errors:
                p.append(f"message {i}: row_errors naming no row")
            n = inputs[e.in_seq].num_rows if 0 <= e.in_seq < len(inputs) else 0
            seen = set()
            for r in e.errors or ():
                if not 0 <= r.row < n:
                    p.append(f"message {i}: row {r.row} outside input {e.in_seq} of {n} rows")
                if r.row in seen:
                    p.append(f"message {i}: row {r.row} twice")
                seen.add(r.row)
                if not valid_code(r.code):
                    p.append(f"message {i}: unknown code {r.code}")
            continue
        else:
            p.append(f"message {i}: kind {e.kind} from a stage")
            continue
        # an answer (batch, unchanged or ack) with in_seq
        if e.in_seq is None or not 0 <= e.in_seq < len(inputs):
            p.append(f"message {i}: answers input {e.in_seq}, which was never sent")
        elif e.in_seq < answered or (e.in_seq == answered and last_answer_kind == "ack"):
            p.append(f"message {i}: answers input {e.in_seq} out of order")
        elif e.in_seq > answered + 1:
            p.append(f"message {i}: input {answered + 1} was never answered")
        answered = max(answered, e.in_seq if e.in_seq is not None else answered)
        last_answer_kind = e.kind
    if not msgs or msgs[-1].env.kind != "flushed":
        p.append("the last message is not flushed")
    return p

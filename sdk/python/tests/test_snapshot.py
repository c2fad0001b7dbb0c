"""Stateful stages (protocol v1.1): the state comes in with the open
request's snapshot and goes out with the snapshot of ``flushed``."""

import json
import threading
import unittest

import pyarrow as pa
import pyarrow.flight as flight

from sluice_stage import PROTOCOL_V1, PROTOCOL_V1_1, Code, Manifest, Processor, Stage, StageError

from .support import batch_of, check_answers, exchange, flushed_snapshot, open_request, quiet, running


class Counting(Stage):
    """A stage whose state is the number of rows it has seen, as decimal
    text; it passes its input through."""

    def __init__(self, stateful=True, processor=None, fail=None):
        self.stateful = stateful
        self.processor = processor  # a Processor class other than Counter
        self.fail = fail  # raised by snapshot
        self.lock = threading.Lock()
        self.opened = []  # OpenRequest.snapshot of every exchange
        self.snapshots = 0
        self.closed = 0

    def manifest(self):
        return Manifest(name="counting", version="0.1.0", stateful=self.stateful)

    def open(self, request):
        with self.lock:
            self.opened.append(request.snapshot)
        if self.processor is not None:
            return self.processor(self)
        rows = int(request.snapshot.decode()) if request.snapshot else 0
        return Counter(self, rows)


class Counter(Processor):
    def __init__(self, stage, rows):
        self.stage = stage
        self.rows = rows

    def process(self, batch):
        self.rows += batch.num_rows
        return batch

    def snapshot(self):
        with self.stage.lock:
            self.stage.snapshots += 1
        if self.stage.fail is not None:
            raise self.stage.fail
        return str(self.rows).encode() if self.rows else b""

    def close(self):
        with self.stage.lock:
            self.stage.closed += 1


class WithoutSnapshot(Processor):
    def __init__(self, stage):
        self.stage = stage

    def process(self, batch):
        return batch

    def close(self):
        self.stage.closed += 1


def v11(epoch=1, snapshot=None):
    return open_request(epoch, PROTOCOL_V1_1, snapshot=snapshot)


def raw(epoch, snapshot):
    """A v1.1 open request whose "snapshot" is any JSON value."""
    return json.dumps({"protocol": PROTOCOL_V1_1, "stage": "test", "epoch": epoch, "partition": 0, "config": None,
                       "snapshot": snapshot}).encode()


class Snapshots(unittest.TestCase):
    def setUp(self):
        quiet()

    def test_the_state_is_carried_from_one_exchange_to_the_next(self):
        stage = Counting()
        a, b = batch_of([0, 1, 2]), batch_of([3, 4])
        with running(stage) as (_, client):
            res = exchange(client, [a, b], epoch=1, cmd=v11(1))
            self.assertEqual(check_answers(res, [a, b], 1, snapshot=True), [])
            self.assertEqual(res.messages[-1].env.snapshot, "NQ==")  # base64 of b"5"
            state = flushed_snapshot(res)
            self.assertEqual(state, b"5")

            # the next epoch starts from it
            res = exchange(client, [a], epoch=2, cmd=v11(2, state))
            self.assertEqual(check_answers(res, [a], 2, snapshot=True), [])
            self.assertEqual(flushed_snapshot(res), b"8")

            # a replay starts from the snapshot it is given; "" is an empty
            # state, null none
            for epoch, cmd, want in ((1, v11(1), b"3"), (1, v11(1, b""), b"3"), (1, raw(1, None), b"3"),
                                     (2, v11(2, b"40"), b"43")):
                with self.subTest(cmd=cmd):
                    res = exchange(client, [a], epoch=epoch, cmd=cmd)
                    self.assertEqual(check_answers(res, [a], epoch, snapshot=True), [])
                    self.assertEqual(flushed_snapshot(res), want)
        self.assertEqual(stage.opened, [None, b"5", None, b"", None, b"40"])
        self.assertEqual((stage.snapshots, stage.closed), (6, 6))

    def test_an_empty_state_is_present_and_empty(self):
        stage = Counting()
        schema = batch_of([1]).schema
        with running(stage) as (_, client):
            res = exchange(client, [], schema=schema, epoch=1, cmd=v11(1))
        self.assertEqual(check_answers(res, [], 1, snapshot=True), [])
        self.assertEqual([m.env.kind for m in res.messages], ["flushed"])
        self.assertEqual(res.messages[0].env.snapshot, "")
        self.assertEqual(flushed_snapshot(res), b"")

    def test_no_snapshot_outside_stateful_v1_1(self):
        a = batch_of([0, 1, 2])
        for stateful, protocol in ((True, PROTOCOL_V1), (False, PROTOCOL_V1_1), (False, PROTOCOL_V1)):
            with self.subTest(stateful=stateful, protocol=protocol):
                stage = Counting(stateful=stateful)
                with running(stage) as (_, client):
                    res = exchange(client, [a], epoch=1, cmd=open_request(1, protocol))
                self.assertEqual(check_answers(res, [a], 1, snapshot=False), [])
                self.assertIsNone(flushed_snapshot(res))
                self.assertEqual(stage.snapshots, 0)

    def test_stateful_v1_needs_no_snapshot(self):
        stage = Counting(processor=WithoutSnapshot)
        a = batch_of([0, 1])
        with running(stage) as (_, client):
            res = exchange(client, [a], epoch=1, cmd=open_request(1, PROTOCOL_V1))
        self.assertEqual(check_answers(res, [a], 1, snapshot=False), [])

    def test_a_stateful_v1_1_processor_without_snapshot_is_internal(self):
        class Duck:  # not a Processor subclass, no snapshot at all
            def __init__(self, stage):
                self.stage = stage

            def process(self, batch):
                return batch

            def close(self):
                self.stage.closed += 1

        class CallsSuper(WithoutSnapshot):  # an override that ends in the base class's
            def snapshot(self):
                return super().snapshot()

        a = batch_of([0, 1])
        for processor in (WithoutSnapshot, Duck, CallsSuper):
            with self.subTest(processor=processor.__name__):
                stage = Counting(processor=processor)
                with running(stage) as (_, client):
                    res = exchange(client, [a], epoch=1, cmd=v11(1))
                self.assertIsInstance(res.error, flight.FlightInternalError)
                self.assertTrue(str(res.error).startswith(
                    f"[INTERNAL] stage 'counting' is stateful and the exchange is sluice.stage.v1.1, so its state is "
                    f"committed with each epoch: its Processor ({processor.__name__}) must implement snapshot() -> bytes"),
                    str(res.error))
                self.assertNotIn("flushed", [m.env.kind for m in res.messages])
                self.assertEqual(stage.closed, 1)
                if processor is CallsSuper:  # found at the end, after the answers
                    self.assertEqual([m.env.kind for m in res.messages], ["batch"])
                else:  # found at open, before any work
                    self.assertEqual(res.messages, [])

    def test_a_failing_snapshot_fails_the_exchange(self):
        a = batch_of([0, 1])
        for fail, error, text in (
            (StageError(Code.UNAVAILABLE, "the state store is down"), flight.FlightUnavailableError,
             "[UNAVAILABLE] the state store is down"),
            (ValueError("cannot encode"), flight.FlightInternalError, "[INTERNAL] snapshot raised ValueError: cannot encode"),
        ):
            with self.subTest(text=text):
                stage = Counting(fail=fail)
                with running(stage) as (_, client):
                    res = exchange(client, [a], epoch=1, cmd=v11(1))
                self.assertIsInstance(res.error, error)
                self.assertTrue(str(res.error).startswith(text), str(res.error))
                self.assertEqual([m.env.kind for m in res.messages], ["batch"])
                self.assertEqual(stage.closed, 1)

    def test_a_snapshot_that_is_not_bytes_is_internal(self):
        class Wrong(WithoutSnapshot):
            def snapshot(self):
                return "5"

        stage = Counting(processor=Wrong)
        a = batch_of([0, 1])
        with running(stage) as (_, client):
            res = exchange(client, [a], epoch=1, cmd=v11(1))
        self.assertIsInstance(res.error, flight.FlightInternalError)
        self.assertTrue(str(res.error).startswith("[INTERNAL] stage 'counting': snapshot returned str, not bytes"),
                        str(res.error))

    def test_other_bytes_like_states_are_accepted(self):
        for state in (bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
            class Bytes(WithoutSnapshot):
                def snapshot(self, state=state):
                    return state

            with self.subTest(type=type(state).__name__):
                stage = Counting(processor=Bytes)
                a = batch_of([0])
                with running(stage) as (_, client):
                    res = exchange(client, [a], epoch=1, cmd=v11(1))
                self.assertEqual(check_answers(res, [a], 1, snapshot=True), [])
                self.assertEqual(res.messages[-1].env.snapshot, "AP8=")

    def test_an_aborted_exchange_takes_no_snapshot(self):
        stage = Counting()
        with running(stage) as (_, client):
            res = exchange(client, [batch_of([1])], epoch=1, cmd=v11(1), end=False)
        self.assertIsInstance(res.error, pa.ArrowInvalid)
        self.assertEqual((stage.snapshots, stage.closed), (0, 1))

    def test_a_bad_snapshot_in_the_open_request_is_invalid_argument(self):
        stage = Counting()
        a = batch_of([1])
        with running(stage) as (_, client):
            for snapshot, text in (
                ("not base64!", "[INVALID_ARGUMENT] open request: snapshot: not base64 (standard alphabet, padded): "),
                ("NQ", "[INVALID_ARGUMENT] open request: snapshot: not base64 (standard alphabet, padded): "),
                (5, "[INVALID_ARGUMENT] open request: snapshot is 5; want a base64 string or null"),
                ({}, "[INVALID_ARGUMENT] open request: snapshot is {}; want a base64 string or null"),
            ):
                with self.subTest(snapshot=snapshot):
                    res = exchange(client, [a], epoch=1, cmd=raw(1, snapshot))
                    self.assertIsInstance(res.error, pa.ArrowInvalid)
                    self.assertTrue(str(res.error).startswith(text), str(res.error))
        self.assertEqual(stage.opened, [])


if __name__ == "__main__":
    unittest.main()

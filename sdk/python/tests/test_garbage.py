"""Garbage from the engine side gets a clean Flight error with a sluice
code, never a crash: the server keeps serving."""

import contextlib
import json
import random
import unittest

import pyarrow as pa
import pyarrow.flight as flight

from sluice_stage import Manifest, Processor, Stage
from sluice_stage._envelope import Envelope, EnvelopeError, decode

from .support import batch_of, check_answers, exchange, quiet, running
from .test_envelope import near_envelope, random_json

CODES = ("[INVALID_ARGUMENT] ", "[SCHEMA_MISMATCH] ")


class Echo(Stage):
    def manifest(self):
        return Manifest(name="echo", version="1")

    def open(self, request):
        class P(Processor):
            def process(self, batch):
                return batch

        return P()


def random_bytes(rng):
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))


class Garbage(unittest.TestCase):
    def setUp(self):
        quiet()

    def healthy(self, client):
        self.assertEqual(list(client.do_action(flight.Action("health", b"")))[0].body.to_pybytes(),
                         b'{"status":"ok"}')

    def test_garbage_app_metadata(self):
        rng = random.Random(99)
        b = batch_of([1, 2, 3])
        with running(Echo()) as (_, client):
            for i in range(300):
                meta = [random_bytes, lambda r: json.dumps(random_json(r)).encode(), near_envelope][i % 3](rng)
                try:
                    env = decode(meta)
                except EnvelopeError:
                    env = None
                res = exchange(client, [b], metadata=[meta], epoch=1 if i % 2 else 0)
                with self.subTest(meta=meta):
                    epoch = 1 if i % 2 else 0
                    if env is not None and env.kind == "batch" and env.epoch == epoch:
                        self.assertEqual(check_answers(res, [b], epoch), [])  # valid after all
                    else:
                        self.assertIsInstance(res.error, pa.ArrowInvalid)
                        self.assertTrue(str(res.error).startswith("[INVALID_ARGUMENT] "), str(res.error))
            self.healthy(client)

    def test_garbage_end_messages(self):
        rng = random.Random(5)
        b = batch_of([1])
        with running(Echo()) as (_, client):
            for i in range(100):
                meta = [random_bytes, lambda r: json.dumps(random_json(r)).encode(), near_envelope][i % 3](rng)
                desc = flight.FlightDescriptor.for_command(
                    json.dumps({"protocol": "sluice.stage.v1", "stage": "t", "epoch": 0, "partition": 0}).encode())
                writer, reader = client.do_exchange(desc)
                error = None
                kinds = []
                try:
                    writer.begin(b.schema)
                    writer.write_metadata(meta)
                    writer.done_writing()
                    for chunk in reader:
                        kinds.append(decode(chunk.app_metadata.to_pybytes()).kind)
                except Exception as e:
                    error = e
                with contextlib.suppress(Exception):
                    writer.close()
                try:
                    env = decode(meta)
                except EnvelopeError:
                    env = None
                with self.subTest(meta=meta):
                    if env is not None and env.kind == "end" and env.epoch == 0:
                        self.assertIsNone(error)
                        self.assertEqual(kinds, ["flushed"])
                    else:
                        self.assertIsInstance(error, pa.ArrowInvalid)
                        self.assertTrue(str(error).startswith("[INVALID_ARGUMENT] "), str(error))
            self.healthy(client)

    def test_garbage_open_requests(self):
        rng = random.Random(11)
        b = batch_of([1])
        with running(Echo()) as (_, client):
            for i in range(200):
                cmd = random_bytes(rng) if i % 2 else json.dumps(random_json(rng)).encode()
                if not cmd:
                    continue
                res = exchange(client, [b], cmd=cmd)
                with self.subTest(cmd=cmd):
                    self.assertIsInstance(res.error, pa.ArrowInvalid)
                    self.assertTrue(str(res.error).startswith("[INVALID_ARGUMENT] "), str(res.error))
            # a path descriptor instead of a command
            writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("x"))
            with self.assertRaises(pa.ArrowInvalid):
                writer.begin(b.schema)
                writer.done_writing()
                reader.read_chunk()
            with contextlib.suppress(Exception):
                writer.close()
            self.healthy(client)

    def test_garbage_describe_bodies(self):
        rng = random.Random(3)
        with running(Echo()) as (_, client):
            for i in range(300):
                if i % 3 == 0:
                    body = random_bytes(rng)
                elif i % 3 == 1:
                    body = json.dumps(random_json(rng)).encode()
                else:
                    versions = ["sluice.stage.v1", "sluice.stage.v1.1", "v2", 1, None, ""]
                    body = json.dumps({"protocols": rng.sample(versions, rng.randrange(0, 4))}).encode()
                with self.subTest(body=body):
                    try:
                        m = json.loads(list(client.do_action(flight.Action("describe", body)))[0].body.to_pybytes())
                    except pa.ArrowInvalid as e:
                        self.assertTrue(str(e).startswith("[INVALID_ARGUMENT] "), str(e))
                    else:
                        self.assertIn(m["protocol"], ("sluice.stage.v1", "sluice.stage.v1.1"))
            for action in ("nope", "", "Describe"):
                with self.assertRaises(pa.ArrowInvalid) as cm:
                    list(client.do_action(flight.Action(action, b"")))
                self.assertTrue(str(cm.exception).startswith(
                    f"[INVALID_ARGUMENT] unknown action {action!r}; actions are describe and health"))
            self.healthy(client)


class CheckerCanFail(unittest.TestCase):
    """The answer checker of the tests finds broken streams (else the
    randomized tests would prove nothing)."""

    def test_broken_streams_are_found(self):
        from .support import Msg, Result

        b = batch_of([1, 2])
        out = batch_of([1])

        def res(*msgs):
            return Result(messages=[Msg(Envelope(**kw), batch) for kw, batch in msgs])

        ok = res(({"kind": "batch", "epoch": 1, "seq": 0, "in_seq": 0, "lineage": None}, out),
                 ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 1}, None))
        self.assertEqual(check_answers(ok, [b], 1), ["message 0: a batch without lineage"])
        from sluice_stage._envelope import Lineage
        from sluice_stage._errors import RowError

        lin = Lineage("s", "external", "1", "python")
        broken = {
            "wrong rows": res(({"kind": "batch", "epoch": 1, "seq": 0, "in_seq": 0, "lineage": lin}, out),
                              ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 2}, None)),
            "unanswered": res(({"kind": "flushed", "epoch": 1, "seq": 0, "rows": 0}, None),),
            "no flushed": res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),),
            "bad row": res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                           ({"kind": "row_errors", "epoch": 1, "seq": 1, "in_seq": 0,
                             "errors": (RowError(2, "REJECTED", "x"),)}, None),
                           ({"kind": "flushed", "epoch": 1, "seq": 2, "rows": 0}, None)),
            "ack and batch": res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                                 ({"kind": "batch", "epoch": 1, "seq": 1, "in_seq": 0, "lineage": lin}, out),
                                 ({"kind": "flushed", "epoch": 1, "seq": 2, "rows": 1}, None)),
            "wrong epoch": res(({"kind": "ack", "epoch": 2, "seq": 0, "in_seq": 0}, None),
                               ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0}, None)),
            "snapshot on an ack": res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0, "snapshot": ""}, None),
                                      ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0, "snapshot": ""}, None)),
            "snapshot not base64": res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                                       ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0, "snapshot": "e30"}, None)),
        }
        for what, r in broken.items():
            with self.subTest(what):
                self.assertNotEqual(check_answers(r, [b], 1), [])
        # a snapshot where none belongs, and none where one does
        with_snapshot = res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                            ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0, "snapshot": "e30="}, None))
        without = res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                      ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0}, None))
        self.assertEqual(check_answers(with_snapshot, [b], 1, snapshot=True), [])
        self.assertEqual(check_answers(with_snapshot, [b], 1, snapshot=False), ["flushed with a snapshot"])
        self.assertEqual(check_answers(without, [b], 1, snapshot=False), [])
        self.assertEqual(check_answers(without, [b], 1, snapshot=True), ["flushed without a snapshot"])
        # "unchanged": the input batch's rows, where offered, and nothing after it
        unchanged = res(({"kind": "unchanged", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                        ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 2}, None))
        self.assertEqual(check_answers(unchanged, [b], 1, unchanged=True), [])
        self.assertEqual(check_answers(unchanged, [b], 1),
                         ["message 0: an unchanged answer, which the exchange did not offer"])
        broken = {
            "wrong rows": res(({"kind": "unchanged", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                              ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0}, None)),
            "no in_seq": res(({"kind": "unchanged", "epoch": 1, "seq": 0}, None),
                             ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 0}, None)),
            "with rows": res(({"kind": "unchanged", "epoch": 1, "seq": 0, "in_seq": 0}, out),
                             ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 2}, None)),
            "with lineage": res(({"kind": "unchanged", "epoch": 1, "seq": 0, "in_seq": 0, "lineage": lin}, None),
                                ({"kind": "flushed", "epoch": 1, "seq": 1, "rows": 2}, None)),
            "then row errors": res(({"kind": "unchanged", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                                   ({"kind": "row_errors", "epoch": 1, "seq": 1, "in_seq": 0,
                                     "errors": (RowError(1, "REJECTED", "x"),)}, None),
                                   ({"kind": "flushed", "epoch": 1, "seq": 2, "rows": 2}, None)),
            "after an ack": res(({"kind": "ack", "epoch": 1, "seq": 0, "in_seq": 0}, None),
                                ({"kind": "unchanged", "epoch": 1, "seq": 1, "in_seq": 0}, None),
                                ({"kind": "flushed", "epoch": 1, "seq": 2, "rows": 2}, None)),
        }
        for what, r in broken.items():
            with self.subTest(what):
                self.assertNotEqual(check_answers(r, [b], 1, unchanged=True), [])


if __name__ == "__main__":
    unittest.main()

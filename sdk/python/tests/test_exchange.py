"""Exchanges through a real pyarrow.flight client playing the engine."""

import random
import threading
import unittest

import pyarrow as pa
import pyarrow.flight as flight

from sluice_stage import (
    Code,
    Manifest,
    Processed,
    Processor,
    RowError,
    SchemaDecl,
    Stage,
    StageError,
    StageServer,
)
from sluice_stage._exchange import pieces

from .support import batch_of, check_answers, connect, exchange, quiet, running


class Recording(StageServer):
    """Records the calls of the exchange on its Flight writer, in order."""

    calls: list

    def do_exchange(self, context, descriptor, reader, writer):
        calls = self.calls = []

        class W:
            def begin(self, schema, *a):
                calls.append("begin")
                writer.begin(schema, *a)

            def write_with_metadata(self, batch, meta):
                calls.append("batch")
                writer.write_with_metadata(batch, meta)

            def write_metadata(self, meta):
                calls.append("metadata")
                writer.write_metadata(meta)

        return super().do_exchange(context, descriptor, reader, W())


class Scripted(Stage):
    """A stage whose processor follows a script: for the n-th input batch,
    ``script[n]`` is (rejected rows, keep rows?) and a flush adds rows."""

    def __init__(self, script=(), flush_rows=(), errors="row", fail_at=None):
        self.script = list(script)
        self.flush_rows = list(flush_rows)
        self.errors = errors
        self.fail_at = fail_at
        self.closed = 0
        self.flushed = 0

    def manifest(self):
        return Manifest(name="scripted", version="0.1.0", errors=self.errors, stateful=bool(self.flush_rows))

    def open(self, request):
        return ScriptedRun(self)


class ScriptedRun(Processor):
    def __init__(self, stage):
        self.stage = stage
        self.n = 0

    def process(self, batch):
        n, self.n = self.n, self.n + 1
        if self.stage.fail_at == n:
            raise StageError(Code.UNAVAILABLE, "the lookup service is down")
        rejected, keep = self.stage.script[n] if n < len(self.stage.script) else ((), True)
        errors = [RowError(r, Code.REJECTED, f"row {r} rejected") for r in sorted(rejected)]
        if not keep:
            return Processed(None, errors)
        kept = [i for i in range(batch.num_rows) if i not in rejected]
        return Processed(batch.take(pa.array(kept, pa.int64())), errors)

    def flush(self):
        self.stage.flushed += 1
        if self.stage.flush_rows:
            yield batch_of(self.stage.flush_rows, "flushed-")

    def close(self):
        self.stage.closed += 1


class FullExchange(unittest.TestCase):
    def setUp(self):
        quiet()

    def test_answers_acks_row_errors_and_flushed(self):
        inputs = [batch_of([0, 1, 2, 3]), batch_of([4, 5]), batch_of([6, 7, 8])]
        stage = Scripted(script=[({1, 3}, True), ({0, 1}, True), (set(), False)], flush_rows=[100, 101])
        with running(stage, Recording) as (server, client):
            res = exchange(client, inputs, epoch=7)
            calls = server.calls
        self.assertEqual(check_answers(res, inputs, 7), [])
        got = [(m.env.kind, m.env.in_seq, m.batch.num_rows if m.batch is not None else None) for m in res.messages]
        self.assertEqual(got, [
            ("batch", 0, 2), ("row_errors", 0, None),
            ("ack", 1, None), ("row_errors", 1, None),  # every row failed: an ack, then the errors
            ("ack", 2, None),  # no output, no error
            ("batch", None, 2),  # flush output: no in_seq
            ("flushed", None, None),
        ])
        self.assertEqual(res.messages[0].batch.column("id").to_pylist(), [0, 2])
        self.assertEqual([(e.row, e.code, e.message) for e in res.messages[1].env.errors],
                         [(1, "REJECTED", "row 1 rejected"), (3, "REJECTED", "row 3 rejected")])
        self.assertEqual(res.messages[-1].env.rows, 4)
        lineage = res.messages[0].env.lineage
        self.assertEqual((lineage.stage, lineage.kind, lineage.version, lineage.language),
                         ("scripted", "external", "0.1.0", "python"))
        self.assertEqual(calls[0], "begin")  # the schema message first
        self.assertEqual((stage.flushed, stage.closed), (1, 1))

    def test_an_exchange_without_batches_sends_the_schema_then_flushed(self):
        schema = batch_of([1]).schema
        with running(Scripted(), Recording) as (server, client):
            res = exchange(client, [], schema=schema, epoch=3)
            self.assertEqual(server.calls, ["begin", "metadata"])
        self.assertEqual(check_answers(res, [], 3), [])
        self.assertEqual([m.env.kind for m in res.messages], ["flushed"])
        self.assertEqual(res.messages[0].env.rows, 0)
        self.assertTrue(res.schema.equals(schema))

    def test_an_input_that_ends_without_end_is_aborted(self):
        stage = Scripted(flush_rows=[1])
        with running(stage) as (_, client):
            res = exchange(client, [batch_of([1, 2]), batch_of([3])], end=False)
        self.assertIsInstance(res.error, pa.ArrowInvalid)
        self.assertTrue(str(res.error).startswith('[INVALID_ARGUMENT] the input ended without an "end" message'))
        self.assertNotIn("flushed", [m.env.kind for m in res.messages])
        self.assertEqual((stage.flushed, stage.closed), (0, 1))  # dropped, never flushed

    def test_a_fatal_error_keeps_its_code(self):
        stage = Scripted(fail_at=1)
        with running(stage) as (_, client):
            res = exchange(client, [batch_of([1]), batch_of([2]), batch_of([3])])
        self.assertIsInstance(res.error, flight.FlightUnavailableError)
        self.assertTrue(str(res.error).startswith("[UNAVAILABLE] the lookup service is down"))
        self.assertEqual([m.env.kind for m in res.messages], ["batch"])
        self.assertEqual(stage.closed, 1)

    def test_a_bug_in_the_stage_is_internal_and_the_server_keeps_serving(self):
        class Buggy(Scripted):
            def open(self, request):
                return {}["missing"]

        with running(Buggy()) as (_, client):
            res = exchange(client, [batch_of([1])])
            self.assertIsInstance(res.error, flight.FlightInternalError)
            self.assertTrue(str(res.error).startswith("[INTERNAL] open raised KeyError"))
            self.assertEqual(list(client.do_action(flight.Action("health", b"")))[0].body.to_pybytes(),
                             b'{"status":"ok"}')

    def test_input_checks(self):
        with running(Scripted()) as (_, client):
            b = batch_of([1])
            cases = {
                "wrong epoch": [b'{"v":1,"kind":"batch","epoch":2,"seq":0}'],
                "rows in an end message": [b'{"v":1,"kind":"end","epoch":1,"seq":0}'],
                "no envelope": [b""],
                "rows and a slot": [b'{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"offset":0,"length":64}}'],
            }
            for what, metadata in cases.items():
                with self.subTest(what):
                    res = exchange(client, [b], metadata=metadata)
                    self.assertIsInstance(res.error, pa.ArrowInvalid)
                    self.assertTrue(str(res.error).startswith("[INVALID_ARGUMENT] "), str(res.error))
                    if what == "rows and a slot":
                        self.assertIn("names a slot of shared memory too", str(res.error))
            res = exchange(client, [b], cmd=b'{"protocol":"sluice.stage.v1","stage":"x","epoch":-1,"partition":0}')
            self.assertTrue(str(res.error).startswith('[INVALID_ARGUMENT] open request: "epoch"'), str(res.error))

        class Small(Scripted):
            def manifest(self):
                return Manifest(name="small", version="1", max_batch_rows=2)

        with running(Small()) as (_, client):
            inputs = [batch_of([1, 2]), batch_of([1, 2, 3])]
            res = exchange(client, inputs)
            self.assertTrue(str(res.error).startswith(
                "[INVALID_ARGUMENT] input batch seq 1 has 3 rows, more than max_batch_rows 2"), str(res.error))
            self.assertEqual([m.env.kind for m in res.messages], ["batch"])

    def test_declared_schemas_are_checked(self):
        declared = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("s", pa.string())])
        out_schema = pa.schema([pa.field("id", pa.int64(), nullable=False)])

        class Typed(Stage):
            def __init__(self, produce):
                self.produce = produce

            def manifest(self):
                return Manifest(name="typed", version="1", input_schema=SchemaDecl("in", "1", declared),
                                output_schema=SchemaDecl("out", "1", out_schema))

            def open(self, request):
                stage = self

                class P(Processor):
                    def process(self, batch):
                        return stage.produce(batch)

                return P()

        good = pa.record_batch([pa.array([1, 2], pa.int64()), pa.array(["a", None])], schema=declared)
        # an output built without the not-null flag is stamped with the declared schema
        with running(Typed(lambda b: pa.record_batch([b.column(0)], names=["id"]))) as (_, client):
            res = exchange(client, [good])
            self.assertEqual(check_answers(res, [good], 1), [])
            self.assertTrue(res.schema.equals(out_schema))
            # input that breaks the manifest: SCHEMA_MISMATCH naming the field
            res = exchange(client, [batch_of([1])])
            self.assertTrue(str(res.error).startswith(
                "[SCHEMA_MISMATCH] stage 'typed': input field \"id\": expected not null, got nullable"), str(res.error))
        for produce, why in [
            (lambda b: pa.record_batch([pa.array(["x", "y"])], names=["id"]), 'field "id": expected int64, got string'),
            (lambda b: pa.record_batch([pa.array([1, None], pa.int64())], names=["id"]), "declared not null, has 1 null"),
            (lambda b: b, 'field "s": not declared'),
        ]:
            with running(Typed(produce)) as (_, client):
                res = exchange(client, [good])
                self.assertIsInstance(res.error, pa.ArrowInvalid)
                self.assertTrue(str(res.error).startswith("[SCHEMA_MISMATCH] stage 'typed': output "), str(res.error))
                self.assertIn(why, str(res.error))
                self.assertEqual(res.messages, [])


class InvalidRowErrors(unittest.TestCase):
    """The SDK refuses to send row errors the engine would refuse."""

    def setUp(self):
        quiet()

    def run_with(self, errors, manifest_errors="row"):
        class S(Stage):
            def manifest(self):
                return Manifest(name="liar", version="1", errors=manifest_errors)

            def open(self, request):
                class P(Processor):
                    def process(self, batch):
                        return Processed(batch.slice(0, 1), errors)

                return P()

        with running(S()) as (_, client):
            return exchange(client, [batch_of([0, 1, 2])])

    def test_each_lie_fails_the_exchange_internal_before_its_answer(self):
        cases = {
            "past the end": [RowError(3, "REJECTED", "x")],
            "negative": [RowError(-1, "REJECTED", "x")],
            "twice": [RowError(1, "REJECTED", "x"), RowError(1, "MALFORMED", "y")],
            "unknown code": [RowError(1, "SHRUG", "x")],
            "not an int": [RowError(1.0, "REJECTED", "x")],
            "a bool": [RowError(True, "REJECTED", "x")],
            "not a RowError": [(1, "REJECTED", "x")],
            "message not str": [RowError(1, "REJECTED", None)],
        }
        for what, errors in cases.items():
            with self.subTest(what):
                res = self.run_with(errors)
                self.assertIsInstance(res.error, flight.FlightInternalError)
                self.assertTrue(str(res.error).startswith("[INTERNAL] stage 'liar': "), str(res.error))
                self.assertEqual(res.messages, [])  # neither the answer nor the row errors went out
        res = self.run_with([RowError(1, "REJECTED", "x")], manifest_errors="fatal_only")
        self.assertIn('errors = "fatal_only"', str(res.error))
        res = self.run_with([RowError(2, Code.LATE, "x"), RowError(1, "REJECTED", "y")])
        self.assertEqual([m.env.kind for m in res.messages], ["batch", "row_errors", "flushed"])


class Splitting(unittest.TestCase):
    """An answer larger than the 64 MiB message limit goes as several
    batch messages with the same in_seq."""

    MIB = 1 << 20

    def big(self, rows):
        return pa.record_batch([pa.array(range(rows), pa.int64()),
                                pa.array(["x" * self.MIB] * rows, pa.string())], names=["id", "s"])

    def test_an_answer_over_64_mib_arrives_in_pieces(self):
        big = self.big(70)

        class Expand(Stage):
            def manifest(self):
                return Manifest(name="expand", version="1")

            def open(self, request):
                class P(Processor):
                    def process(self, batch):
                        return big

                return P()

        quiet()
        first = pa.record_batch([pa.array([1], pa.int64()), pa.array(["a"])], names=["id", "s"])
        with running(Expand()) as (_, client):
            res = exchange(client, [first])
        self.assertGreater(pa.ipc.get_record_batch_size(big), 64 * self.MIB)
        self.assertEqual(check_answers(res, [first], 1), [])
        batches = [m for m in res.messages if m.env.kind == "batch"]
        self.assertGreaterEqual(len(batches), 3)
        self.assertTrue(all(m.env.in_seq == 0 for m in batches))
        self.assertTrue(pa.Table.from_batches([m.batch for m in batches]).equals(pa.Table.from_batches([big])))
        self.assertEqual(res.messages[-1].env.rows, 70)

    def test_without_splitting_the_client_would_refuse_it(self):
        # the control: the test client really enforces the engine's limit
        # (the same message goes through a client without the limit)
        big = self.big(70)

        class Raw(flight.FlightServerBase):
            def do_exchange(self, context, descriptor, reader, writer):
                writer.begin(big.schema)
                writer.write_with_metadata(big, b"{}")

        def read(client):
            writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"x"))
            writer.begin(big.schema)
            writer.done_writing()
            try:
                return reader.read_chunk().data.num_rows
            finally:
                try:
                    writer.close()
                except Exception:
                    pass
                client.close()

        server = Raw("grpc://127.0.0.1:0")
        try:
            location = f"grpc://127.0.0.1:{server.port}"
            self.assertEqual(read(flight.connect(location)), 70)
            with self.assertRaises(flight.FlightError):
                read(connect(location))
        finally:
            server.shutdown()

    def test_pieces_keep_every_row_in_order_within_the_budget(self):
        rng = random.Random(7)
        for _ in range(60):
            rows = rng.randrange(0, 300)
            sizes = [rng.choice([0, 1, 10, 100, 5000]) for _ in range(rows)]
            b = pa.record_batch([pa.array(range(rows), pa.int64()), pa.array(["y" * n for n in sizes], pa.string())],
                                names=["id", "s"])
            budget = rng.choice([1000, 20000, 1 << 20])
            ps = pieces(b, budget)
            self.assertEqual(sum(p.num_rows for p in ps), rows)
            if rows:
                self.assertTrue(pa.Table.from_batches(ps).equals(pa.Table.from_batches([b])))
            for p in ps:
                # the budget bounds the body; the IPC header adds a few hundred bytes
                self.assertTrue(p.num_rows == 1 or pa.ipc.get_record_batch_size(p) <= budget + 1024)
            if rows and b.nbytes > 3 * budget:
                self.assertGreater(len(ps), 1)


class RandomExchanges(unittest.TestCase):
    """Property: whatever sequence of batches (empty ones too), output
    choices and rejections a stage makes, the answer stream follows the
    protocol and carries exactly the rows the stage kept."""

    def test_any_script_yields_a_conforming_answer_stream(self):
        quiet()
        rng = random.Random(1234)
        with running(Scripted()) as (server, client):
            for it in range(150):
                n = rng.randrange(0, 7)
                inputs, script, next_id = [], [], 0
                for _ in range(n):
                    rows = rng.choice([0, 1, 2, 5, 17, 100])
                    inputs.append(batch_of(list(range(next_id, next_id + rows))))
                    next_id += rows
                    rejected = {r for r in range(rows) if rng.random() < rng.choice([0, 0.1, 0.5, 1])}
                    script.append((rejected, rng.random() < 0.8))
                flush_rows = list(range(rng.randrange(0, 3)))
                stage = Scripted(script, flush_rows)
                server.stage = stage
                epoch = rng.randrange(0, 2**64)
                res = exchange(client, inputs, schema=batch_of([]).schema, epoch=epoch)
                with self.subTest(iteration=it):
                    self.assertEqual(check_answers(res, inputs, epoch), [])
                    for i, (rejected, keep) in enumerate(script):
                        want = [r for r in range(inputs[i].num_rows) if r not in rejected] if keep else []
                        got = [v for m in res.messages if m.env.kind == "batch" and m.env.in_seq == i
                               for v in m.batch.column("id").to_pylist()]
                        self.assertEqual(got, [inputs[i].column("id")[r].as_py() for r in want])
                        errs = [e.row for m in res.messages if m.env.kind == "row_errors" and m.env.in_seq == i
                                for e in m.env.errors]
                        self.assertEqual(errs, sorted(rejected))
                    self.assertEqual(stage.closed, 1)

    def test_concurrent_exchanges_do_not_mix(self):
        quiet()
        with running(Scripted()) as (_, client):
            results = {}

            def one(k):
                inputs = [batch_of(list(range(k * 1000, k * 1000 + 50)))] * 5
                results[k] = (exchange(client, inputs, epoch=k), inputs)

            threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for k, (res, inputs) in results.items():
                self.assertEqual(check_answers(res, inputs, k), [])
                self.assertEqual(res.messages[-1].env.rows, 250)


if __name__ == "__main__":
    unittest.main()

"""The manifest, and protocol version negotiation through describe."""

import base64
import json
import unittest

import pyarrow as pa
import pyarrow.flight as flight

from sluice_stage import (
    PROTOCOL_V1,
    PROTOCOL_V1_1,
    Manifest,
    Processor,
    SchemaDecl,
    Stage,
    StageServer,
    Timing,
)
from sluice_stage._manifest import negotiate
from sluice_stage._errors import StageError

from .support import check_answers, exchange, open_request, quiet, running

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("s", pa.string())])
V1_KEYS = ["name", "version", "language", "protocol", "input_schema", "output_schema",
           "max_batch_rows", "max_batch_bytes", "stateful", "ordering", "errors"]


class Declared(Stage):
    def __init__(self, **kw):
        self.kw = kw

    def manifest(self):
        return Manifest(name="declared", version="2.0.0", input_schema=SchemaDecl("in", "1", SCHEMA),
                        output_schema=SchemaDecl("out", "3", SCHEMA), **self.kw)

    def open(self, request):
        return Echo()


class Echo(Processor):
    def process(self, batch):
        return batch


def describe(client, body):
    results = list(client.do_action(flight.Action("describe", body)))
    return results[0].body.to_pybytes()


class Negotiation(unittest.TestCase):
    def setUp(self):
        quiet()

    def test_a_v1_engine_gets_a_v1_manifest_without_the_v1_1_fields(self):
        stage = Declared(plain_types=True, timing=Timing(5, 100))
        with running(stage) as (_, client):
            for body in (b"", b" \n", b'{"protocols":["sluice.stage.v1"]}'):
                raw = describe(client, body)
                m = json.loads(raw)
                self.assertEqual(m["protocol"], PROTOCOL_V1)
                self.assertEqual(list(m), V1_KEYS)
                self.assertEqual(m["language"], "python")

    def test_a_v1_1_engine_gets_a_v1_1_manifest_with_them(self):
        stage = Declared(plain_types=True, timing=Timing(5, 100))
        with running(stage) as (_, client):
            for body in (b'{"protocols":["sluice.stage.v1.1","sluice.stage.v1"]}',
                         b'{"protocols":["sluice.stage.v1","sluice.stage.v1.1"]}',
                         b'{"protocols":["sluice.stage.v2","sluice.stage.v1.1"]}'):
                raw = describe(client, body)
                m = json.loads(raw)
                self.assertEqual(m["protocol"], PROTOCOL_V1_1)
                self.assertEqual(list(m), V1_KEYS + ["plain_types", "timing"])
                self.assertIs(m["plain_types"], True)
                self.assertEqual(raw.split(b'"errors":"row"', 1)[1],
                                 b',"plain_types":true,"timing":{"batch_p99_ms":5,"max_answer_ms":100}}')

    def test_v1_1_fields_are_written_only_when_set(self):
        with running(Declared()) as (_, client):
            m = json.loads(describe(client, b'{"protocols":["sluice.stage.v1.1"]}'))
            self.assertEqual(m["protocol"], PROTOCOL_V1_1)
            self.assertEqual(list(m), V1_KEYS)

    def test_no_common_version_is_invalid_argument_naming_both(self):
        with running(Declared()) as (_, client):
            with self.assertRaises(pa.ArrowInvalid) as cm:
                describe(client, b'{"protocols":["sluice.stage.v0","sluice.stage.v2"]}')
            self.assertTrue(str(cm.exception).startswith(
                "[INVALID_ARGUMENT] the engine speaks sluice.stage.v0, sluice.stage.v2; "
                "this stage speaks sluice.stage.v1.1, sluice.stage.v1"), str(cm.exception))

    def test_bodies_that_are_not_the_request_are_invalid_argument(self):
        for body in (b"{}", b"[]", b"null", b'{"protocols":[]}', b'{"protocols":"sluice.stage.v1"}',
                     b'{"protocols":[1]}', b"\xff", b"{"):
            with self.subTest(body=body):
                with self.assertRaises(StageError) as cm:
                    negotiate(body)
                self.assertEqual(cm.exception.code, "INVALID_ARGUMENT")
        # a newer engine may add keys: they are ignored
        self.assertEqual(negotiate(b'{"protocols":["sluice.stage.v1"],"shm":true}'), PROTOCOL_V1)
        with running(Declared()) as (_, client):
            with self.assertRaises(pa.ArrowInvalid) as cm:
                describe(client, b"{")
            self.assertTrue(str(cm.exception).startswith("[INVALID_ARGUMENT] "))

    def test_the_open_request_may_name_either_version_and_nothing_else(self):
        b = pa.record_batch([pa.array([1, 2], pa.int64()), pa.array(["a", None])], schema=SCHEMA)
        with running(Declared()) as (_, client):
            for protocol in (PROTOCOL_V1, PROTOCOL_V1_1):
                res = exchange(client, [b], cmd=open_request(1, protocol))
                self.assertEqual(check_answers(res, [b], 1), [], protocol)
            for protocol in ("sluice.stage.v2", None, 1):
                res = exchange(client, [b], cmd=open_request(1, protocol))
                self.assertIsInstance(res.error, pa.ArrowInvalid, protocol)
                self.assertTrue(str(res.error).startswith(
                    "[INVALID_ARGUMENT] the engine opened the exchange in "), str(res.error))
                self.assertIn("this stage speaks sluice.stage.v1.1, sluice.stage.v1", str(res.error))


class Health(unittest.TestCase):
    def test_health_and_the_action_list(self):
        class Sick(Declared):
            def health(self):
                raise ConnectionError("the lookup table is not loaded")

        with running(Declared()) as (_, client):
            self.assertEqual(list(client.do_action(flight.Action("health", b"")))[0].body.to_pybytes(),
                             b'{"status":"ok"}')
            self.assertEqual([a.type for a in client.list_actions()], ["describe", "health"])
        quiet()
        with running(Sick()) as (_, client):
            with self.assertRaises(flight.FlightUnavailableError) as cm:
                list(client.do_action(flight.Action("health", b"")))
            self.assertTrue(str(cm.exception).startswith(
                "[UNAVAILABLE] ConnectionError: the lookup table is not loaded"), str(cm.exception))


class ManifestJson(unittest.TestCase):
    def test_schemas_travel_as_base64_ipc_and_decode_exactly(self):
        zoo = pa.schema([
            pa.field("id", pa.int64(), nullable=False),
            pa.field("at", pa.timestamp("us", tz="Europe/Oslo")),
            pa.field("price", pa.decimal128(15, 2)),
            pa.field("tags", pa.list_(pa.int32())),
            pa.field("color", pa.dictionary(pa.int32(), pa.string())),
            pa.field("point", pa.struct([pa.field("x", pa.int64(), nullable=False)]), nullable=False),
        ])
        m = Manifest(name="z", version="1", input_schema=SchemaDecl("in", "1", zoo),
                     output_schema=SchemaDecl("out", "1", zoo))
        obj = json.loads(m.to_json(PROTOCOL_V1))
        self.assertEqual(list(obj["input_schema"]), ["name", "version", "ipc"])
        raw = base64.b64decode(obj["input_schema"]["ipc"], validate=True)
        self.assertEqual(raw[:4], b"\xff\xff\xff\xff")  # a continuation-prefixed IPC message
        back = SchemaDecl.from_json(obj["output_schema"])
        self.assertTrue(back.schema.equals(zoo))
        self.assertEqual((back.name, back.version), ("out", "1"))

    def test_defaults(self):
        m = json.loads(Manifest(name="x", version="1").to_json(PROTOCOL_V1))
        self.assertEqual(m, {
            "name": "x", "version": "1", "language": "python", "protocol": "sluice.stage.v1",
            "input_schema": None, "output_schema": None, "max_batch_rows": 65536,
            "max_batch_bytes": 32 << 20, "stateful": False, "ordering": "preserve", "errors": "row",
        })

    def test_invalid_manifests_are_refused_when_the_server_is_built(self):
        decl = SchemaDecl("in", "1", SCHEMA)
        bad = [
            Manifest(name="", version="1"),
            Manifest(name="x", version="1", input_schema=decl),
            Manifest(name="x", version="1", max_batch_bytes=(64 << 20) + 1),
            Manifest(name="x", version="1", max_batch_rows=0),
            Manifest(name="x", version="1", ordering="sorted"),
            Manifest(name="x", version="1", errors="never"),
            Manifest(name="x", version="1", timing=Timing(0, 10)),
            Manifest(name="x", version="1", timing=Timing(20, 10)),
            Manifest(name="x", version="1", plain_types=1),
            Manifest(name="x", version="1", input_schema=SchemaDecl("in", "1", "not a schema"),
                     output_schema=decl),
        ]
        for m in bad:
            with self.subTest(m=m):
                self.assertTrue(m.problems())

                class S(Stage):
                    def manifest(self, m=m):
                        return m

                with self.assertRaises(ValueError):
                    StageServer(S())
        self.assertEqual(Manifest(name="x", version="1", timing=Timing(10, 10)).problems(), [])


if __name__ == "__main__":
    unittest.main()

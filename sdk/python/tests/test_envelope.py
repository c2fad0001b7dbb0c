"""The envelope against the golden vectors every SDK shares."""

import json
import os
import random
import unittest

from sluice_stage._envelope import Envelope, EnvelopeError, Lineage, decode, encode
from sluice_stage._errors import RowError

from .support import TESTDATA


def lines(name):
    with open(os.path.join(TESTDATA, name), encoding="utf-8") as f:
        return [line for line in f.read().split("\n") if line]


class GoldenVectors(unittest.TestCase):
    def test_every_canonical_line_round_trips_byte_for_byte(self):
        vectors = lines("envelopes.jsonl")
        self.assertGreaterEqual(len(vectors), 12)
        for line in vectors:
            with self.subTest(line=line[:60]):
                self.assertEqual(encode(decode(line.encode("utf-8"))), line.encode("utf-8"))

    def test_non_canonical_inputs_decode_to_the_canonical_encoding(self):
        pairs = [json.loads(line) for line in lines("envelopes_decode.jsonl")]
        self.assertGreaterEqual(len(pairs), 5)
        for given, canonical in pairs:
            with self.subTest(given=given[:60]):
                self.assertEqual(encode(decode(given.encode("utf-8"))), canonical.encode("utf-8"))
                # and the canonical form is a fixed point
                self.assertEqual(encode(decode(canonical.encode("utf-8"))), canonical.encode("utf-8"))

    def test_numbers_stay_exact_beyond_float_precision(self):
        e = decode(b'{"v":1,"kind":"batch","epoch":18446744073709551615,"seq":9007199254740993,"in_seq":0}')
        self.assertEqual(e.epoch, 2**64 - 1)
        self.assertEqual(e.seq, 2**53 + 1)
        self.assertEqual(e.in_seq, 0)

    def test_encoding_builds_the_documented_key_order(self):
        e = Envelope(
            "row_errors", 3, 4, in_seq=0, traceparent="00-a-b-01",
            lineage=Lineage("s", "external", "1", "python"),
            errors=(RowError(2, "REJECTED", "<&>é"),), rows=9,
        )
        self.assertEqual(
            encode(e).decode(),
            '{"v":1,"kind":"row_errors","epoch":3,"seq":4,"in_seq":0,"traceparent":"00-a-b-01",'
            '"lineage":{"stage":"s","kind":"external","version":"1","language":"python"},'
            '"errors":[{"row":2,"code":"REJECTED","message":"<&>é"}],"rows":9}',
        )

    def test_the_snapshot_of_a_stateful_stage_is_the_last_key(self):
        line = b'{"v":1,"kind":"flushed","epoch":12,"seq":7,"rows":3,"snapshot":"eyJ0b3RhbHMiOnsiMyI6MTIwfX0="}'
        self.assertIn(line.decode(), lines("envelopes.jsonl"))  # the golden vector
        e = decode(line)
        self.assertEqual((e.kind, e.rows, e.snapshot), ("flushed", 3, "eyJ0b3RhbHMiOnsiMyI6MTIwfX0="))
        self.assertEqual(encode(Envelope("flushed", 12, 7, rows=3, snapshot="eyJ0b3RhbHMiOnsiMyI6MTIwfX0=")), line)
        # another key order and spelling: the same canonical bytes
        other = b'{"snapshot":"eyJ0b3RhbHMiOnsiMyI6MTIwfX0\\u003d","rows":3,"seq":7,"epoch":12,"kind":"flushed","v":1}'
        self.assertEqual(encode(decode(other)), line)
        # "" is an empty state, present; null is none
        self.assertEqual(encode(Envelope("flushed", 1, 0, rows=0, snapshot="")),
                         b'{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":""}')
        self.assertEqual(decode(b'{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":""}').snapshot, "")
        self.assertIsNone(decode(b'{"v":1,"kind":"flushed","epoch":1,"seq":0,"rows":0,"snapshot":null}').snapshot)

    def test_the_unchanged_answer_carries_its_in_seq_alone(self):
        line = b'{"v":1,"kind":"unchanged","epoch":7,"seq":2,"in_seq":0}'
        self.assertIn(line.decode(), lines("envelopes.jsonl"))  # the golden vector
        e = decode(line)
        self.assertEqual((e.kind, e.epoch, e.seq, e.in_seq), ("unchanged", 7, 2, 0))
        self.assertEqual((e.lineage, e.errors, e.rows, e.shm), (None, None, None, None))
        self.assertEqual(encode(Envelope("unchanged", 7, 2, in_seq=0)), line)
        # another spelling and key order, an unknown key: the same canonical bytes
        other = b'{ "in_seq": 0, "seq": 2, "epoch": 7, "kind": "un\\u0063hanged", "v": 1, "later": [1] }'
        self.assertEqual(encode(decode(other)), line)
        # the engine's own batch: no slot of shared memory
        with self.assertRaises(EnvelopeError) as cm:
            decode(b'{"v":1,"kind":"unchanged","epoch":7,"seq":2,"in_seq":0,"shm":{"offset":0,"length":64}}')
        self.assertIn('a "unchanged" names a slot of shared memory', str(cm.exception))

    def test_lone_surrogates_are_written_as_replacement_characters(self):
        e = decode(b'{"v":1,"kind":"row_errors","epoch":0,"seq":0,"in_seq":0,'
                   b'"errors":[{"row":0,"code":"REJECTED","message":"a\\ud800b"}]}')
        out = encode(e)
        self.assertIn("a\ufffdb".encode(), out)
        out.decode("utf-8")  # valid UTF-8


class Refusals(unittest.TestCase):
    BAD = [
        b"", b"  ", b"null", b"[]", b"not json", b"\xff\xfe", b'{"v":1}',
        b'{"v":2,"kind":"end","epoch":0,"seq":0}',
        b'{"v":true,"kind":"end","epoch":0,"seq":0}',
        b'{"v":1,"kind":"nope","epoch":0,"seq":0}',
        b'{"v":1,"kind":"end","epoch":-1,"seq":0}',
        b'{"v":1,"kind":"end","epoch":18446744073709551616,"seq":0}',
        b'{"v":1,"kind":"end","epoch":1.0,"seq":0}',
        b'{"v":1,"kind":"end","epoch":0,"seq":NaN}',
        b'{"v":1,"kind":"end","epoch":0}',
        b'{"v":1,"kind":"end","epoch":0,"seq":0,"in_seq":"1"}',
        b'{"v":1,"kind":"end","epoch":0,"seq":0,"seq":1}',
        b'{"v":1,"kind":"end","epoch":0,"seq":0,"lineage":{"stage":"a"}}',
        b'{"v":1,"kind":"row_errors","epoch":0,"seq":0,"errors":[{"row":-1,"code":"X","message":""}]}',
        b'{"v":1,"kind":"row_errors","epoch":0,"seq":0,"errors":{}}',
        b'{"v":1,"kind":"flushed","epoch":0,"seq":0,"rows":0,"snapshot":5}',
        b'{"v":1,"kind":"flushed","epoch":0,"seq":0,"rows":0,"snapshot":["e30="]}',
        b'{"v":1,"kind":"release","epoch":0,"seq":0}',
        b'{"v":1,"kind":"end","epoch":0,"seq":0,"shm":{"offset":64,"length":64}}',
        b'{"v":1,"kind":"batch","epoch":0,"seq":0,"shm":{"offset":64}}',
        b'{"v":1,"kind":"unchanged","epoch":0,"seq":0,"in_seq":0,"shm":{"offset":64,"length":64}}',
        b'{"v":1,"kind":"Unchanged","epoch":0,"seq":0,"in_seq":0}',
        b"[" * 100000,
        b'{"v":1,"kind":"end","epoch":' + b"9" * 5000 + b',"seq":0}',
    ]

    def test_bad_envelopes_are_refused_with_a_reason(self):
        for data in self.BAD:
            with self.subTest(data=data[:50]):
                with self.assertRaises(EnvelopeError) as cm:
                    decode(data)
                self.assertTrue(str(cm.exception))

    def test_unknown_keys_and_nulls_are_ignored(self):
        e = decode(b'{"v":1,"kind":"ack","epoch":1,"seq":2,"in_seq":null,"future":{"x":[1]}}')
        self.assertEqual(encode(e), b'{"v":1,"kind":"ack","epoch":1,"seq":2}')


def random_json(rng, depth=0):
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1, -1, 2**64 - 1, 2**64, 2**53 + 1, rng.randrange(-10**6, 10**6)])
    if choice == 3:
        return rng.random() * 10 ** rng.randrange(-5, 30)
    if choice in (4, 5):
        alphabet = 'ab"\\\x00\n\u2028é😀<>&v kind epoch seq'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if choice == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["v", "kind", "epoch", "seq", "in_seq", "traceparent", "lineage", "errors", "rows", "row", "code", "message", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def near_envelope(rng):
    """An envelope with some keys dropped or given random values: mostly
    invalid, sometimes valid, never a crash."""
    e = {"v": 1, "kind": rng.choice(["batch", "end", "ack", "row_errors", "flushed", "release", "unchanged"]),
         "epoch": rng.randrange(3), "seq": rng.randrange(3)}
    for key in ["in_seq", "traceparent", "lineage", "errors", "rows", "shm"]:
        if rng.random() < 0.3:
            e[key] = random_json(rng, 2)
    for key in list(e):
        r = rng.random()
        if r < 0.1:
            del e[key]
        elif r < 0.2:
            e[key] = random_json(rng, 2)
    return json.dumps(e, ensure_ascii=rng.random() < 0.5).encode()


class Garbage(unittest.TestCase):
    def test_any_input_decodes_or_is_refused_with_envelope_error(self):
        rng = random.Random(20261204)
        for i in range(4000):
            kind = i % 3
            if kind == 0:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
            elif kind == 1:
                data = json.dumps(random_json(rng)).encode()
            else:
                data = near_envelope(rng)
            try:
                e = decode(data)
            except EnvelopeError:
                continue
            # whatever decodes re-encodes canonically and decodes to the same envelope
            self.assertEqual(decode(encode(e)), e, data)


if __name__ == "__main__":
    unittest.main()

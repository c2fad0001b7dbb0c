"""The error-code table and how fatal errors travel."""

import json
import os
import unittest

import pyarrow as pa
import pyarrow.flight as flight

from sluice_stage import ERROR_CODES, Code, StageError
from sluice_stage._errors import to_flight_error

from .support import TESTDATA


class ErrorCodeTable(unittest.TestCase):
    def test_the_embedded_table_equals_the_golden_file(self):
        with open(os.path.join(TESTDATA, "error_codes.json"), encoding="utf-8") as f:
            golden = json.load(f)
        ours = [{"code": c, "grpc": g, "grpc_number": n, "retried": r} for c, g, n, r in ERROR_CODES]
        self.assertEqual(ours, golden)

    def test_the_enum_has_exactly_the_codes_of_the_table(self):
        self.assertEqual([c.value for c in Code], [row[0] for row in ERROR_CODES])

    def test_each_code_becomes_the_pyarrow_error_of_its_grpc_status(self):
        # pyarrow's Flight server maps ArrowInvalid to INVALID_ARGUMENT and
        # each FlightError subclass to its status (verified against a tonic
        # client in test_kit.GrpcCodes)
        expected = {
            "INVALID_ARGUMENT": pa.ArrowInvalid,
            "DEADLINE_EXCEEDED": flight.FlightTimedOutError,
            "UNAVAILABLE": flight.FlightUnavailableError,
            "INTERNAL": flight.FlightInternalError,
        }
        for code, grpc, _, _ in ERROR_CODES:
            with self.subTest(code=code):
                err = to_flight_error(StageError(code, 'field "id": bad'))
                self.assertIs(type(err), expected[grpc])
                self.assertEqual(str(err), f'[{code}] field "id": bad')

    def test_unknown_codes_are_refused(self):
        with self.assertRaises(ValueError):
            StageError("SHRUG", "no")
        self.assertEqual(StageError("REJECTED", "x").code, Code.REJECTED)


if __name__ == "__main__":
    unittest.main()

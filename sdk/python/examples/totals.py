#!/usr/bin/env python3
"""The ``totals`` example stage (examples/stages/README.md), as in Go and
Rust: per-key running totals, a stateful stage whose state takes part in
the engine's commits (protocol v1.1).

For each row in order: a null ``key`` gives a null ``total``; otherwise
``value`` (0 when null) is added to the key's total, and ``total`` is the
sum so far, this row included. A total that would overflow Int64 fails the
exchange (REJECTED). The state is snapshotted as
``{"totals":{"<key>":<total>,...}}`` (keys as decimal strings, sorted as
strings) and restored from the open request.

    sluice stage check -- python3 sdk/python/examples/totals.py
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pyarrow as pa  # noqa: E402

from sluice_stage import Code, Manifest, Processor, SchemaDecl, Stage, StageError, serve  # noqa: E402

KEYED = pa.schema([pa.field(n, pa.int64()) for n in ("id", "key", "value")])
TOTALS = pa.schema(list(KEYED) + [pa.field("total", pa.int64())])
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


class Totals(Stage):
    def manifest(self):
        return Manifest(
            name="totals",
            version="1.0.0",
            input_schema=SchemaDecl("keyed_values", "1", KEYED),
            output_schema=SchemaDecl("running_totals", "1", TOTALS),
            stateful=True,
            errors="fatal_only",
        )

    def open(self, request):
        totals = {}
        if request.snapshot:  # None (no commit yet) or b"": no totals
            try:
                state = json.loads(request.snapshot)
                totals = {int(k): int(v) for k, v in state["totals"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise StageError(Code.INVALID_ARGUMENT, f"snapshot: {e}") from None
        return Running(totals)


class Running(Processor):
    def __init__(self, totals):
        self.totals = totals

    def process(self, batch):
        # a running total is a scan: each row depends on the one before
        out = []
        for key, value in zip(batch.column("key").to_pylist(), batch.column("value").to_pylist()):
            if key is None:
                out.append(None)
                continue
            t = self.totals.get(key, 0) + (value or 0)
            if not INT64_MIN <= t <= INT64_MAX:
                raise StageError(Code.REJECTED, f"the total of key {key} overflows Int64")
            self.totals[key] = t
            out.append(t)
        return pa.record_batch(batch.columns + [pa.array(out, pa.int64())], schema=TOTALS)

    def snapshot(self):
        totals = {str(k): v for k, v in self.totals.items()}
        return json.dumps({"totals": dict(sorted(totals.items()))}, separators=(",", ":")).encode()


if __name__ == "__main__":
    serve(Totals())

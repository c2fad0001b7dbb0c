#!/usr/bin/env python3
"""The ``validate`` example stage (examples/stages/README.md), as in Go and
Rust: a filter that drops bad rows and reports each as a row error.

    l_quantity > max_quantity  ->  REJECTED  "quantity <q> exceeds <max>"
    l_shipmode == ""           ->  MALFORMED "empty ship mode"
    otherwise                  ->  passed through unchanged

config: ``max_quantity`` (integer, default 45).

    sluice stage check --config '{"max_quantity":45}' -- python3 sdk/python/examples/validate.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pyarrow as pa  # noqa: E402

from sluice_stage import (  # noqa: E402
    Code,
    Manifest,
    Processed,
    Processor,
    RowError,
    SchemaDecl,
    Stage,
    serve,
)

LINES = pa.schema(
    [
        pa.field("l_orderkey", pa.int64(), nullable=False),
        pa.field("l_linenumber", pa.int32(), nullable=False),
        pa.field("l_shipmode", pa.string(), nullable=False),
        pa.field("l_quantity", pa.int64(), nullable=False),
        pa.field("l_extendedprice", pa.float64(), nullable=False),
    ]
)

DEFAULT_MAX_QUANTITY = 45


class Validate(Stage):
    def manifest(self):
        return Manifest(
            name="validate",
            version="1.0.0",
            input_schema=SchemaDecl("lines", "1", LINES),
            output_schema=SchemaDecl("valid_lines", "1", LINES),
            stateful=False,
            ordering="preserve",
            errors="row",
        )

    def open(self, request):
        cfg = request.config_with(max_quantity=DEFAULT_MAX_QUANTITY)
        return Validator(cfg["max_quantity"])


class Validator(Processor):
    """Checks the rows of one exchange; no state between batches."""

    def __init__(self, max_quantity):
        self.max_quantity = max_quantity

    def process(self, batch):
        quantity = batch.column("l_quantity").to_pylist()
        ship_mode = batch.column("l_shipmode").to_pylist()
        errors = []
        keep = []
        for i, (q, mode) in enumerate(zip(quantity, ship_mode)):
            if q > self.max_quantity:  # checked first: a row gets one error
                errors.append(RowError(i, Code.REJECTED, f"quantity {q} exceeds {self.max_quantity}"))
            elif mode == "":
                errors.append(RowError(i, Code.MALFORMED, "empty ship mode"))
            else:
                keep.append(i)
        if len(keep) == batch.num_rows:
            return Processed(batch, errors)
        out = batch.take(pa.array(keep, pa.int64())) if keep else None
        return Processed(out, errors)


if __name__ == "__main__":
    serve(Validate())

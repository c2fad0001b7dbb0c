#!/usr/bin/env python3
"""A Python stage (sdk/python) that cannot take view types, as many pyarrow
kernels cannot: its manifest says ``plain_types`` (protocol v1.1), so the
engine must cast ``Utf8View``/``BinaryView`` before sending. It fails the
exchange with SCHEMA_MISMATCH if a view type arrives anyway, and upper-cases
every string column with a pyarrow kernel (which has no view version).

``PLAIN_TYPES=0`` leaves ``plain_types`` out of the manifest: the control
case, in which the engine sends views and the stage refuses them.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from sluice_stage import Code, Manifest, Processor, Stage, StageError, serve  # noqa: E402


def has_view(t):
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return has_view(t.value_type)
    if pa.types.is_struct(t):
        return any(has_view(t.field(i).type) for i in range(t.num_fields))
    return False


class Plain(Stage):
    def manifest(self):
        plain = os.environ.get("PLAIN_TYPES", "1") != "0"
        return Manifest(name="plain", version="1.0.0", errors="fatal_only", plain_types=plain)

    def open(self, request):
        return Upper()


class Upper(Processor):
    def process(self, batch):
        for f in batch.schema:
            if has_view(f.type):
                raise StageError(Code.SCHEMA_MISMATCH, f"field `{f.name}` arrived as {f.type}: this stage takes plain types only")
        columns = [pc.utf8_upper(c) if pa.types.is_string(c.type) else c for c in batch.columns]
        return pa.record_batch(columns, schema=batch.schema)


if __name__ == "__main__":
    serve(Plain())

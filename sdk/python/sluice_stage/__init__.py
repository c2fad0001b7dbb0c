"""sluice_stage: write a sluice external stage in Python.

A stage is an Arrow Flight server that transforms record batches for a
sluice pipeline (docs/protocol.md). Subclass :class:`Stage` (its manifest,
and ``open`` returning a :class:`Processor` per exchange), then call
:func:`serve`::

    import pyarrow as pa
    from sluice_stage import Manifest, Processor, Stage, serve

    class Upper(Stage):
        def manifest(self):
            return Manifest(name="upper", version="1.0.0")  # any schema in, same out

        def open(self, request):
            return Pass()

    class Pass(Processor):
        def process(self, batch):
            return batch

    if __name__ == "__main__":
        serve(Upper())

The SDK speaks the protocol: the ``describe`` (with version negotiation)
and ``health`` actions, envelopes, acks, row errors, splitting large output,
``flushed`` (with the state of a stateful v1.1 stage: ``OpenRequest.snapshot``
in, ``Processor.snapshot`` out), fatal errors as ``[CODE] message`` statuses, and a graceful
stop on SIGTERM.
"""

from ._errors import ERROR_CODES, Code, RowError, StageError
from ._manifest import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_V1,
    PROTOCOL_V1_1,
    PROTOCOLS,
    Manifest,
    SchemaDecl,
    Timing,
)
from ._server import StageServer, serve
from ._stage import OpenRequest, Processed, Processor, Stage

__all__ = [
    "Code",
    "ERROR_CODES",
    "MAX_MESSAGE_SIZE",
    "Manifest",
    "OpenRequest",
    "PROTOCOLS",
    "PROTOCOL_V1",
    "PROTOCOL_V1_1",
    "Processed",
    "Processor",
    "RowError",
    "SchemaDecl",
    "Stage",
    "StageError",
    "StageServer",
    "Timing",
    "serve",
]

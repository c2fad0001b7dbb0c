#!/usr/bin/env python3
"""The ``identity`` example stage (examples/stages/README.md): any schema
in, every batch answered with itself, unchanged.

    SLUICE_STAGE_SOCKET=/tmp/identity.sock python3 sdk/python/examples/identity.py
    sluice stage check -- python3 sdk/python/examples/identity.py
"""

import os
import sys

# run from a checkout without installing the SDK
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sluice_stage import Manifest, Processor, Stage, serve  # noqa: E402


class Identity(Stage):
    def manifest(self):
        # no schemas: any input, output = input
        return Manifest(name="identity", version="1.0.0", errors="fatal_only")

    def open(self, request):
        return Pass()


class Pass(Processor):
    def process(self, batch):
        # the input itself: when the engine offers "unchanged" answers (v1.1)
        # the SDK names the batch instead of sending its rows back
        return batch


if __name__ == "__main__":
    serve(Identity())

"""A test stage: any schema, every batch answered with itself after
SLOW_SECONDS; serve()'s shutdown timeout from SHUTDOWN_TIMEOUT."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from sluice_stage import Manifest, Processor, Stage, serve  # noqa: E402


class Slow(Stage):
    def manifest(self):
        return Manifest(name="slow", version="1")

    def open(self, request):
        return Sleep()


class Sleep(Processor):
    def process(self, batch):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        return batch


if __name__ == "__main__":
    serve(Slow(), shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "4")))

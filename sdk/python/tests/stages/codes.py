"""A test stage whose describe fails with the pyarrow error the SDK uses
for the sluice code FAIL_AS, but with a message without the [CODE] prefix,
so that a client shows the bare gRPC status code."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from sluice_stage import Manifest, StageError, StageServer  # noqa: E402
from sluice_stage._errors import to_flight_error  # noqa: E402
from sluice_stage._server import listen_location  # noqa: E402


class Codes(StageServer):
    def do_action(self, context, action):
        cls = type(to_flight_error(StageError(os.environ["FAIL_AS"], "x")))
        raise cls("no prefix here")


class Stage:
    def manifest(self):
        return Manifest(name="codes", version="1")


if __name__ == "__main__":
    Codes(Stage(), listen_location()).serve()

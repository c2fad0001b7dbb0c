"""The conformance kit, `sluice stage check`, against the examples (needs
the engine binary: SLUICE_BIN=target/debug/sluice)."""

import os
import signal
import socket
import subprocess
import sys
import time
import unittest

from .support import SDK

BIN = os.environ.get("SLUICE_BIN", "")
SKIP = "set SLUICE_BIN to the sluice binary (target/debug/sluice) to run the conformance kit"


def check(*args, timeout=180):
    r = subprocess.run([BIN, "stage", "check", *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout


@unittest.skipUnless(BIN, SKIP)
class ConformanceKit(unittest.TestCase):
    def assert_passes(self, code, out, must_pass):
        self.assertEqual(code, 0, out)
        self.assertNotIn("FAIL", out)
        self.assertRegex(out, r"\d+ passed, 0 failed, \d+ skipped")
        for name in must_pass:
            # the path column: empty for checks without batches; this SDK
            # takes the Flight path only
            self.assertRegex(out, rf"│ {name}\s+┆ (flight)?\s*┆ pass ", f"{name} did not pass:\n{out}")
        self.assertNotRegex(out, r"┆ shm\s+┆", "the Python SDK does not offer shared memory")

    def test_identity(self):
        code, out = check("--", sys.executable, os.path.join(SDK, "examples", "identity.py"))
        self.assert_passes(code, out, ["describe", "health", "exchange", "types", "empty", "large",
                                       "malformed", "cancel", "backpressure", "concurrent"])

    def test_validate_with_config(self):
        code, out = check("--config", '{"max_quantity":45}', "--",
                          sys.executable, os.path.join(SDK, "examples", "validate.py"))
        # the row_errors check sees rows rejected under this config
        self.assert_passes(code, out, ["describe", "health", "exchange", "empty", "malformed",
                                       "cancel", "backpressure", "concurrent", "row_errors"])

    def test_a_bad_config_fails_the_exchanges_with_invalid_argument(self):
        # the control: the kit does fail a stage, here one refusing its config
        code, out = check("--config", '{"max_qty":45}', "--",
                          sys.executable, os.path.join(SDK, "examples", "validate.py"))
        self.assertEqual(code, 1, out)
        self.assertIn("FAIL", out)
        self.assertIn("unknown key 'max_qty'", out)


@unittest.skipUnless(BIN, SKIP)
class GrpcCodes(unittest.TestCase):
    """The gRPC status each pyarrow error travels as, seen by the engine's
    own (tonic) client: what the SDK's mapping of codes relies on."""

    def test_each_grpc_status(self):
        script = os.path.join(SDK, "tests", "stages", "codes.py")
        for sluice_code, tonic_name in [("INVALID_ARGUMENT", "InvalidArgument"), ("TIMEOUT", "DeadlineExceeded"),
                                        ("UNAVAILABLE", "Unavailable"), ("INTERNAL", "Internal")]:
            with self.subTest(sluice_code):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                env = dict(os.environ, SLUICE_STAGE_ADDR=f"127.0.0.1:{port}", FAIL_AS=sluice_code)
                env.pop("SLUICE_STAGE_SOCKET", None)
                proc = subprocess.Popen([sys.executable, script], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    out = ""
                    for _ in range(100):  # until it listens
                        _, out = check("--url", f"grpc://127.0.0.1:{port}", timeout=30)
                        if "no prefix here" in out:
                            break
                        time.sleep(0.1)
                    self.assertRegex(out, rf"{tonic_name}: no prefix here", out)
                finally:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()


if __name__ == "__main__":
    unittest.main()

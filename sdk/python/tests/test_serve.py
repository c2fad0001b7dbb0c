"""serve(): where it listens, and how it stops (in child processes, as the
engine runs a stage)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import pyarrow.flight as flight

from sluice_stage._envelope import Envelope, decode, encode

from .support import SDK, batch_of, open_request

IDENTITY = os.path.join(SDK, "examples", "identity.py")
SLOW = os.path.join(SDK, "tests", "stages", "slow.py")


def env(**kw):
    e = {k: v for k, v in os.environ.items() if k not in ("SLUICE_STAGE_SOCKET", "SLUICE_STAGE_ADDR")}
    e.update(kw)
    return e


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def child(script, location, **environ):
    proc = subprocess.Popen([sys.executable, script], env=env(**environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = flight.connect(location)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                list(client.do_action(flight.Action("health", b""), flight.FlightCallOptions(timeout=1)))
                break
            except flight.FlightError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the stage did not get healthy: {proc.communicate()}")
                time.sleep(0.05)
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


class Listening(unittest.TestCase):
    def test_nowhere_to_listen_is_a_clear_failure(self):
        r = subprocess.run([sys.executable, IDENTITY], env=env(), capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("nowhere to listen: set SLUICE_STAGE_SOCKET", r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_an_invalid_manifest_is_a_clear_failure(self):
        code = ("import sys; sys.path.insert(0, %r)\n"
                "from sluice_stage import Manifest, Stage, serve\n"
                "class S(Stage):\n"
                "    def manifest(self): return Manifest(name='x', version='1', max_batch_rows=0)\n"
                "serve(S())\n") % SDK
        r = subprocess.run([sys.executable, "-c", code], env=env(SLUICE_STAGE_ADDR="127.0.0.1:0"),
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("sluice_stage: invalid manifest of 'x': max_batch_rows 0 is not a positive int", r.stderr)

    def test_unix_socket_replacing_a_stale_one_then_sigterm_exits_0(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "stage.sock")
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path)  # left behind, as by a crashed process
            stale.close()
            self.assertTrue(os.path.exists(path))
            with child(IDENTITY, f"grpc+unix://{path}", SLUICE_STAGE_SOCKET=path) as (proc, client):
                body = list(client.do_action(flight.Action("describe", b"")))[0].body.to_pybytes()
                self.assertIn(b'"protocol":"sluice.stage.v1"', body)
                proc.send_signal(signal.SIGTERM)
                self.assertEqual(proc.wait(timeout=10), 0)

    def test_tcp_address(self):
        port = free_port()
        with child(IDENTITY, f"grpc://127.0.0.1:{port}", SLUICE_STAGE_ADDR=f"127.0.0.1:{port}") as (proc, client):
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=10), 0)


class Stopping(unittest.TestCase):
    def start_exchange(self, client, epoch=1):
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(open_request(epoch)))
        b = batch_of([1, 2, 3])
        writer.begin(b.schema)
        writer.write_with_metadata(b, encode(Envelope("batch", epoch, 0)))
        return writer, reader

    def test_sigterm_lets_a_running_exchange_finish(self):
        port = free_port()
        with child(SLOW, f"grpc://127.0.0.1:{port}", SLUICE_STAGE_ADDR=f"127.0.0.1:{port}",
                   SLOW_SECONDS="0.5") as (proc, client):
            writer, reader = self.start_exchange(client)
            time.sleep(0.2)  # the batch is being processed
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            writer.write_metadata(encode(Envelope("end", 1, 1)))
            writer.done_writing()
            kinds = [decode(c.app_metadata.to_pybytes()).kind for c in reader]
            self.assertEqual(kinds, ["batch", "flushed"])
            self.assertEqual(proc.wait(timeout=10), 0)
            writer.close()

    def test_an_exchange_that_never_ends_is_cut_off_after_the_timeout(self):
        port = free_port()
        with child(SLOW, f"grpc://127.0.0.1:{port}", SLUICE_STAGE_ADDR=f"127.0.0.1:{port}",
                   SHUTDOWN_TIMEOUT="1") as (proc, client):
            writer, reader = self.start_exchange(client)
            self.assertEqual(decode(reader.read_chunk().app_metadata.to_pybytes()).kind, "batch")
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=10), 0)
            took = time.monotonic() - t
            self.assertGreater(took, 0.9)
            self.assertLess(took, 4)
            with contextlib.suppress(Exception):
                writer.close()


if __name__ == "__main__":
    unittest.main()

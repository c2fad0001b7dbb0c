"""A pyarrow.flight echo stage speaking sluice.stage.v1 (the peer in the stage benchmark).

Serves on the unix socket in SLUICE_STAGE_SOCKET: `describe`, `health`, and
DoExchange answering every input batch with itself, then `flushed`.
"""
import json
import os

import pyarrow.flight as flight


def env(**kv):
    # canonical envelope: keys in protocol order, no whitespace, UTF-8
    return json.dumps(kv, separators=(",", ":"), ensure_ascii=False).encode()


MANIFEST = {
    "name": "pyarrow-echo", "version": "1.0.0", "language": "python", "protocol": "sluice.stage.v1",
    "input_schema": None, "output_schema": None, "max_batch_rows": 1 << 20, "max_batch_bytes": 64 << 20,
    "stateful": False, "ordering": "preserve", "errors": "fatal_only",
}


class Echo(flight.FlightServerBase):
    def do_action(self, context, action):
        if action.type == "describe":
            return [json.dumps(MANIFEST).encode()]
        if action.type == "health":
            return [b'{"status":"ok"}']
        raise flight.FlightServerError(f"[INVALID_ARGUMENT] unknown action {action.type}")

    def do_exchange(self, context, descriptor, reader, writer):
        epoch = json.loads(descriptor.command)["epoch"]
        writer.begin(reader.schema)
        seq = rows = 0
        for chunk in reader:
            meta = json.loads(chunk.app_metadata.to_pybytes()) if chunk.app_metadata else {}
            if chunk.data is not None:
                writer.write_with_metadata(chunk.data, env(v=1, kind="batch", epoch=epoch, seq=seq, in_seq=meta.get("seq", 0)))
                seq += 1
                rows += chunk.data.num_rows
            elif meta.get("kind") == "end":
                break
        writer.write_metadata(env(v=1, kind="flushed", epoch=epoch, seq=seq, rows=rows))


if __name__ == "__main__":
    path = os.environ["SLUICE_STAGE_SOCKET"]
    if os.path.exists(path):
        os.remove(path)
    server = Echo(f"grpc+unix://{path}")
    server.serve()

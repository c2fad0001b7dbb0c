"""A pyarrow.flight stage speaking sluice.stage.v1 whose `row_errors` answers
lie in the way its config's `lie` says, for the engine's tests of stage
answers (tests/cli/stages.rs):

  out_of_range   names a row past the end of the batch
  twice          names row 0 twice
  no_seq         leaves out `in_seq`
  second         sends two `row_errors` messages for one batch
  unknown_code   names row 0, with a code outside the vocabulary (not a lie
                 the engine refuses: it keeps the code in the message)
  empty          a `row_errors` message that names no row
  early_flushed  sends `flushed` after its first answer, before `end`
  wrong_epoch    answers with the envelope of another epoch
  ack_body       a message with rows whose envelope says `ack`
  no_rows_count  a `flushed` without `rows`

Every batch (of at most 10 rows, so an exchange has several) is answered
with its rows but row 0, then the row_errors message.
"""
import json
import os

import pyarrow.flight as flight


def env(**kv):
    return json.dumps(kv, separators=(",", ":"), ensure_ascii=False).encode()


MANIFEST = {
    "name": "liar", "version": "1.0.0", "language": "python", "protocol": "sluice.stage.v1",
    "input_schema": None, "output_schema": None, "max_batch_rows": 10, "max_batch_bytes": 64 << 20,
    "stateful": False, "ordering": "preserve", "errors": "row",
}


class Liar(flight.FlightServerBase):
    def do_action(self, context, action):
        if action.type == "describe":
            # describe lies come from the environment (describe has no config):
            # LIAR_MANIFEST is JSON merged into the manifest
            return [json.dumps({**MANIFEST, **json.loads(os.environ.get("LIAR_MANIFEST", "{}"))}).encode()]
        if action.type == "health":
            return [b'{"status":"ok"}']
        raise flight.FlightServerError(f"[INVALID_ARGUMENT] unknown action {action.type}")

    def do_exchange(self, context, descriptor, reader, writer):
        open_request = json.loads(descriptor.command)
        epoch = open_request["epoch"]
        lie = (open_request.get("config") or {}).get("lie", "")
        writer.begin(reader.schema)
        seq = rows = 0

        def errors(in_seq, n, **extra):
            nonlocal seq
            meta = dict(v=1, kind="row_errors", epoch=epoch, seq=seq)
            if in_seq is not None:
                meta["in_seq"] = in_seq
            meta.update(extra)
            writer.write_metadata(env(**meta))
            seq += 1

        for chunk in reader:
            meta = json.loads(chunk.app_metadata.to_pybytes()) if chunk.app_metadata else {}
            if chunk.data is not None:
                n, in_seq = chunk.data.num_rows, meta.get("seq", 0)
                kept = chunk.data.slice(1)
                kind = "ack" if lie == "ack_body" else "batch"
                at = epoch + 1 if lie == "wrong_epoch" else epoch
                writer.write_with_metadata(kept, env(v=1, kind=kind, epoch=at, seq=seq, in_seq=in_seq))
                seq += 1
                rows += kept.num_rows
                if lie == "early_flushed":
                    writer.write_metadata(env(v=1, kind="flushed", epoch=epoch, seq=seq, rows=rows))
                    return
                row0 = {"row": 0, "code": "REJECTED", "message": "row zero"}
                if lie == "out_of_range":
                    errors(in_seq, n, errors=[{"row": n, "code": "REJECTED", "message": "past the end"}])
                elif lie == "twice":
                    errors(in_seq, n, errors=[row0, row0])
                elif lie == "no_seq":
                    errors(None, n, errors=[row0])
                elif lie == "second":
                    errors(in_seq, n, errors=[row0])
                    errors(in_seq, n, errors=[row0])
                elif lie == "empty":
                    errors(in_seq, n, errors=[])
                else:
                    errors(in_seq, n, errors=[{"row": 0, "code": "SHRUG", "message": "row zero"}])
            elif meta.get("kind") == "end":
                break
        if lie == "no_rows_count":
            writer.write_metadata(env(v=1, kind="flushed", epoch=epoch, seq=seq))
        else:
            writer.write_metadata(env(v=1, kind="flushed", epoch=epoch, seq=seq, rows=rows))


if __name__ == "__main__":
    path = os.environ["SLUICE_STAGE_SOCKET"]
    if os.path.exists(path):
        os.remove(path)
    Liar(f"grpc+unix://{path}").serve()

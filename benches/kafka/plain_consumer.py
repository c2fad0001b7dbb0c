"""The script a user would write instead of sluice: confluent-kafka +
pyarrow, Kafka → filter → Parquet, offsets committed after each file
(at least once). Used by run.py.

  plain_consumer.py BROKERS TOPIC OUT_DIR earliest|latest TOTAL

With `earliest` it stops once it has read TOTAL messages; with `latest` it
runs until SIGTERM.
"""
import json
import os
import signal
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer

brokers, topic, out, start, total = sys.argv[1:6]
total = int(total)
os.makedirs(out, exist_ok=True)
stop = False
signal.signal(signal.SIGTERM, lambda *_: globals().__setitem__("stop", True))
c = Consumer({"bootstrap.servers": brokers, "group.id": f"plain-{time.time_ns()}",
              "auto.offset.reset": start, "enable.auto.commit": False})
c.subscribe([topic])
schema = pa.schema([("id", pa.int64()), ("user_id", pa.string()), ("amount", pa.float64()),
                    ("country", pa.string()), ("ts", pa.timestamp("ms", tz="UTC"))])
read, n = 0, 0
while not stop and (start == "latest" or read < total):
    msgs = c.consume(num_messages=100_000, timeout=1.0)
    if not msgs:
        continue
    rows = []
    for m in msgs:
        if m.error():
            continue
        r = json.loads(m.value())
        r["ts"] = m.timestamp()[1]
        rows.append(r)
    read += len(msgs)
    t = pa.Table.from_pylist(rows, schema=schema)
    t = t.filter(pc.greater(t["amount"], 10))
    t = t.set_column(2, "amount_eur", pc.multiply(t["amount"], 1.1))
    pq.write_table(t, os.path.join(out, f"part-{n:06}.parquet"), compression="zstd")
    n += 1
    c.commit(asynchronous=False)
c.close()

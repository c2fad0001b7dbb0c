"""The Kafka side of the kafka tests, with the confluent-kafka client (an
independent client: librdkafka through Python, not sluice's code).

  kafka_tool.py create BROKERS TOPIC PARTITIONS
  kafka_tool.py produce BROKERS TOPIC FIRST COUNT [--bad N]
      JSON messages {"id": i, "word": "w<i % 13>"} keyed by id, for i in
      FIRST..FIRST+COUNT; with --bad, N malformed messages more (one of
      each kind: broken JSON, a wrong type, a tombstone, ...); with
      --ts-step MS, message i has the timestamp 2023-11-14T22:13:20Z + i*MS.
      Prints the partition and offset of every bad message as JSON.
  kafka_tool.py consume BROKERS TOPIC [--avro REGISTRY_URL]
      every message a read_committed consumer sees, as JSON (with --avro,
      values in the Confluent wire format, decoded by fastavro with the
      writer schema the registry has for their id):
      {"count": n, "ids": {id: times}, "headers": {...first message's},
       "unparsed": messages that are not JSON objects with an id,
       "rows": every JSON message, sorted}
  kafka_tool.py lag BROKERS GROUP TOPIC
      the group's committed offsets per partition, as JSON
  kafka_tool.py registry PORT
      a Confluent-compatible schema registry on 127.0.0.1:PORT serving the
      writer schemas AVRO_SCHEMAS by id (GET /schemas/ids/<id>), and
      registering new ones (POST /subjects/<subject>/versions, ids from
      1000; GET /subjects lists the subjects)
  kafka_tool.py produce-csv BROKERS TOPIC
      CSV messages "<i>,w<i>" for i in 0..99, then one bad message of each
      kind (a wrong type, a field too many, a field too few, an open
      quote, a tombstone, an empty value); prints the partition and offset
      of the bad ones
  kafka_tool.py produce-avro BROKERS TOPIC
      Avro messages in the Confluent wire format: ids 0..99 written with
      schema 1, ids 100..199 with schema 2 (a field more), then one bad
      message of each kind; prints the partition and offset of the bad ones
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BAD = [
    b'{"id": 1, "word": ',          # broken JSON
    b'{"id": "seven", "word": "x"}',  # a wrong type
    None,                            # a tombstone
    b'\xff\xfe not utf-8',          # not UTF-8
    b'[1, 2, 3]',                    # not an object
    b'{"word": "no id"}',            # a required column missing
]


AVRO_SCHEMAS = {
    1: {"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "long"}, {"name": "word", "type": "string"}]},
    2: {"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "long"}, {"name": "word", "type": "string"},
        {"name": "extra", "type": ["null", "double"], "default": None}]},
}


def placing_bad():
    """A delivery callback that notes where each message keyed `bad` went,
    and the list it notes them in."""
    placed = []

    def report(err, msg):
        if err is not None:
            raise RuntimeError(err)
        if msg.key() == b"bad":
            placed.append({"partition": msg.partition(), "offset": msg.offset()})

    return placed, report


def registry(port):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    schemas = {i: json.dumps(v) for i, v in AVRO_SCHEMAS.items()}
    subjects = {}

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit() \
                    and int(parts[2]) in schemas:
                self.answer(200, {"schema": schemas[int(parts[2])]})
            elif parts == ["subjects"]:
                self.answer(200, sorted(subjects))
            else:
                self.answer(404, {"error_code": 40403, "message": "Schema not found"})

        def do_POST(self):
            parts = self.path.strip("/").split("/")
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                return self.answer(404, {"error_code": 404, "message": "not found"})
            try:
                schema = json.loads(body)["schema"]
                import fastavro
                fastavro.parse_schema(json.loads(schema))
            except Exception as e:
                return self.answer(422, {"error_code": 42201, "message": f"invalid schema: {e}"})
            known = [i for i, s in schemas.items() if s == schema]
            sid = known[0] if known else 1000 + len(schemas)
            schemas[sid] = schema
            subjects.setdefault(parts[1], set()).add(sid)
            self.answer(200, {"id": sid})

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


def produce_avro(brokers, topic):
    import io
    import struct
    import fastavro

    def frame(schema_id, record):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(AVRO_SCHEMAS[schema_id]), record)
        return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()

    p = Producer({"bootstrap.servers": brokers})
    placed, report = placing_bad()

    for i in range(100):
        p.produce(topic, key=str(i).encode(), value=frame(1, {"id": i, "word": f"w{i}"}), on_delivery=report)
    for i in range(100, 200):
        p.produce(topic, key=str(i).encode(), value=frame(2, {"id": i, "word": f"w{i}", "extra": i / 2}),
                  on_delivery=report)
    good = frame(1, {"id": 7, "word": "seven"})
    for bad in [b"\x01" + good[1:], b"\x00\x00\x00\x00\x63" + good[5:], good[:-2], good + b"\x02x", b"\x00\x00"]:
        p.produce(topic, key=b"bad", value=bad, on_delivery=report)
    p.flush(60)
    print(json.dumps(sorted(placed, key=lambda x: (x["partition"], x["offset"]))))


def produce_csv(brokers, topic):
    p = Producer({"bootstrap.servers": brokers})
    placed, report = placing_bad()

    for i in range(100):
        p.produce(topic, key=str(i).encode(), value=f"{i},w{i}".encode(), on_delivery=report)
    for bad in [b"seven,x", b"1,a,extra", b"2", b'3,"open quote', None, b""]:
        p.produce(topic, key=b"bad", value=bad, on_delivery=report)
    p.flush(60)
    print(json.dumps(sorted(placed, key=lambda x: (x["partition"], x["offset"]))))


def create(brokers, topic, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    fs = admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)])
    for f in fs.values():
        f.result(30)


def produce(brokers, topic, first, count, bad=0, ts_step=None):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "enable.idempotence": True})
    placed, report = placing_bad()

    for i in range(int(first), int(first) + int(count)):
        extra = {} if ts_step is None else {"timestamp": 1_700_000_000_000 + i * int(ts_step)}
        p.produce(topic, key=str(i).encode(), value=json.dumps({"id": i, "word": f"w{i % 13}"}).encode(),
                  on_delivery=report, **extra)
        p.poll(0)
    for k in range(int(bad)):
        p.produce(topic, key=b"bad", value=BAD[k % len(BAD)], headers=[("bad", b"1")], on_delivery=report)
    if p.flush(60) != 0:
        raise RuntimeError("messages left unsent")
    print(json.dumps(sorted(placed, key=lambda x: (x["partition"], x["offset"]))))


def avro_decoder(registry_url):
    """Decodes Confluent wire format values with the registry's schemas."""
    import io
    import struct
    import urllib.request
    import fastavro

    cache = {}

    def decode(value):
        if value is None or len(value) < 5 or value[0] != 0:
            raise ValueError("not the Confluent wire format")
        sid = struct.unpack(">I", value[1:5])[0]
        if sid not in cache:
            with urllib.request.urlopen(f"{registry_url}/schemas/ids/{sid}") as r:
                cache[sid] = fastavro.parse_schema(json.loads(json.loads(r.read())["schema"]))
        buf = io.BytesIO(value[5:])
        row = fastavro.schemaless_reader(buf, cache[sid])
        if buf.read():
            raise ValueError("bytes left after the Avro body")
        return row

    return decode


def consume(brokers, topic, avro=None):
    decode = avro_decoder(avro) if avro else json.loads
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"check-{time.time_ns()}",
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    meta = c.list_topics(topic, timeout=30)
    parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
    # read up to the last stable offset of every partition
    ends = {}
    for tp in parts:
        lo, hi = c.get_watermark_offsets(tp, timeout=30)
        ends[tp.partition] = hi
    tps = [TopicPartition(topic, p, 0) for p in ends]
    c.assign(tps)
    ids, count, headers, unparsed, rows = {}, 0, None, 0, []
    idle_since = time.time()
    while time.time() - idle_since < 5:
        m = c.poll(0.5)
        if m is None:
            # done when every partition's position reached its end
            pos = c.position(tps)
            if all(tp.offset >= ends[tp.partition] for tp in pos):
                break
            continue
        if m.error():
            raise RuntimeError(m.error())
        idle_since = time.time()
        try:
            row = decode(m.value())
        except Exception:
            unparsed += 1
            continue
        rows.append(row)
        if not isinstance(row, dict) or "id" not in row:
            unparsed += 1
            continue
        ids[str(row["id"])] = ids.get(str(row["id"]), 0) + 1
        count += 1
        if headers is None:
            headers = {k: v.decode() for k, v in (m.headers() or [])}
    c.close()
    print(json.dumps({"count": count, "ids": ids, "headers": headers or {}, "unparsed": unparsed,
                      "rows": sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))}))


def lag(brokers, group, topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    meta = c.list_topics(topic, timeout=30)
    tps = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
    got = c.committed(tps, timeout=30)
    c.close()
    print(json.dumps({str(tp.partition): tp.offset for tp in got}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "create":
        create(*args)
    elif cmd == "produce":
        opts = {}
        for flag, key in (("--bad", "bad"), ("--ts-step", "ts_step")):
            if flag in args:
                i = args.index(flag)
                opts[key] = args[i + 1]
                args = args[:i] + args[i + 2:]
        produce(*args, **opts)
    elif cmd == "consume":
        opts = {}
        if "--avro" in args:
            i = args.index("--avro")
            opts["avro"] = args[i + 1]
            args = args[:i] + args[i + 2:]
        consume(*args, **opts)
    elif cmd == "lag":
        lag(*args)
    elif cmd == "registry":
        registry(*args)
    elif cmd == "produce-avro":
        produce_avro(*args)
    elif cmd == "produce-csv":
        produce_csv(*args)
    else:
        sys.exit(f"unknown command {cmd}")

"""The Kafka side of the kafka tests, with the confluent-kafka client (an
independent client: librdkafka through Python, not sluice's code).

  kafka_tool.py create BROKERS TOPIC PARTITIONS
  kafka_tool.py produce BROKERS TOPIC FIRST COUNT [--bad N]
      JSON messages {"id": i, "word": "w<i % 13>"} keyed by id, for i in
      FIRST..FIRST+COUNT; with --bad, N malformed messages more (one of
      each kind: broken JSON, a wrong type, a tombstone, ...). Prints the
      partition and offset of every bad message as JSON.
  kafka_tool.py consume BROKERS TOPIC
      every message a read_committed consumer sees, as JSON:
      {"count": n, "ids": {id: times}, "headers": {...first message's},
       "unparsed": messages that are not JSON objects with an id}
  kafka_tool.py lag BROKERS GROUP TOPIC
      the group's committed offsets per partition, as JSON
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


def create(brokers, topic, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    fs = admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)])
    for f in fs.values():
        f.result(30)


def produce(brokers, topic, first, count, bad=0):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "enable.idempotence": True})
    placed = []

    def report(err, msg):
        if err is not None:
            raise RuntimeError(err)
        if msg.key() == b"bad":
            placed.append({"partition": msg.partition(), "offset": msg.offset()})

    for i in range(int(first), int(first) + int(count)):
        p.produce(topic, key=str(i).encode(), value=json.dumps({"id": i, "word": f"w{i % 13}"}).encode(), on_delivery=report)
        p.poll(0)
    for k in range(int(bad)):
        p.produce(topic, key=b"bad", value=BAD[k % len(BAD)], headers=[("bad", b"1")], on_delivery=report)
    if p.flush(60) != 0:
        raise RuntimeError("messages left unsent")
    print(json.dumps(sorted(placed, key=lambda x: (x["partition"], x["offset"]))))


def consume(brokers, topic):
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
    ids, count, headers, unparsed = {}, 0, None, 0
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
            row = json.loads(m.value())
            row["id"]
        except Exception:
            unparsed += 1
            continue
        ids[str(row["id"])] = ids.get(str(row["id"]), 0) + 1
        count += 1
        if headers is None:
            headers = {k: v.decode() for k, v in (m.headers() or [])}
    c.close()
    print(json.dumps({"count": count, "ids": ids, "headers": headers or {}, "unparsed": unparsed}))


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
        bad = 0
        if "--bad" in args:
            i = args.index("--bad")
            bad = args[i + 1]
            args = args[:i] + args[i + 2:]
        produce(*args, bad=bad)
    elif cmd == "consume":
        consume(*args)
    elif cmd == "lag":
        lag(*args)
    else:
        sys.exit(f"unknown command {cmd}")

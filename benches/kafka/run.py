"""Kafka → SQL → Parquet, side by side in one run: sluice, Spark Structured
Streaming (pyspark with spark-sql-kafka-0-10, local[2]) and the script a
user would otherwise write (confluent-kafka + pyarrow, tests: none).

All three run the same query over the same topic on the same broker
(Apache Kafka 4.4.0 from scripts/kafka), one after the other:

  SELECT id, user_id, amount * 1.1 AS amount_eur, country, <timestamp>
  FROM orders WHERE amount > 10

- Throughput: each reads a backlog of MESSAGES JSON messages (2 partitions)
  from the beginning to the end and writes Parquet. Reported as events/s
  of wall time and events/s per core (events / CPU seconds of the engine's
  whole process tree, sampled with psutil).
- Latency: each runs live while messages are produced at RATE/s for
  SECONDS s; a row's read-to-commit latency is the time its output became
  visible minus its Kafka timestamp (sluice: the commit record's
  `committed_at`; the script: the file's write time; Spark: the part
  file's modification time, before Spark's own commit, which flatters
  Spark slightly). p50 and p99.

  target/bench/spark-venv/bin/python benches/kafka/run.py [--messages N]
      [--rate R] [--seconds S] [--sluice PATH] [--skip-spark]

Make the venv once (pyspark 4.2.0, confluent-kafka, pyarrow, psutil, from PyPI):

  python3 -m venv target/bench/spark-venv
  target/bench/spark-venv/bin/pip install pyspark==4.2.0 confluent-kafka pyarrow psutil

The connector's jars (benches/kafka/pom.xml, with Maven) are fetched by the
script when missing.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JARS = os.path.join(ROOT, "target/bench/spark-jars")
HERE = os.path.dirname(os.path.abspath(__file__))


def ensure_jars():
    if glob.glob(os.path.join(JARS, "spark-sql-kafka-0-10_2.13-*.jar")):
        return
    subprocess.run(["mvn", "-q", "-B", "-f", os.path.join(HERE, "pom.xml"), "dependency:copy-dependencies",
                    "-DincludeScope=runtime", f"-DoutputDirectory={JARS}"], check=True)


def start_broker():
    d = os.path.join(ROOT, "target/kafka/bench")
    out = subprocess.run([os.path.join(ROOT, "scripts/kafka"), "start", "--dir", d],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip(), d


def create(brokers, topic, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": brokers})  # kept alive until the topic exists
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in fs.values():
        f.result(30)


COUNTRIES = ["DE", "FR", "NL", "US", "JP", "BR", "IN", "ZA"]


def message(i):
    return json.dumps({"id": i, "user_id": f"u{i % 9973}", "amount": (i * 37) % 1000 / 10,
                       "country": COUNTRIES[i % len(COUNTRIES)]}).encode()


def produce(brokers, topic, first, count, rate=None):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10000,
                  "compression.type": "lz4", "queue.buffering.max.messages": 1000000})
    start = time.time()
    for n, i in enumerate(range(first, first + count)):
        while True:
            try:
                p.produce(topic, value=message(i))
                break
            except BufferError:
                p.poll(0.01)
        if rate and n % 1000 == 0:
            ahead = n / rate - (time.time() - start)
            if ahead > 0:
                time.sleep(ahead)
            p.poll(0)
    p.flush(120)


class TreeCpu:
    """CPU seconds of a process and its descendants, sampled until it ends."""

    def __init__(self, proc):
        import psutil
        self.root = psutil.Process(proc.pid)
        self.seen = {}
        self.alive = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self):
        import psutil
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass

    def loop(self):
        while self.alive:
            self.sample()
            time.sleep(0.2)

    def stop(self):
        self.alive = False
        self.thread.join()
        return sum(self.seen.values())


SLUICE_TOML = """
[pipeline]
name = "kafka_bench"
[settings]
commit_interval = "{commit}"
target_partitions = 2
[settings.epoch]
max_rows = {max_rows}
max_latency = "{latency}"
[sources.orders]
kind = "kafka"
brokers = "{brokers}"
topic = "{topic}"
start = "{start}"
format = "json"
columns = [
  {{ name = "id", type = "bigint", nullable = false }},
  {{ name = "user_id", type = "varchar" }},
  {{ name = "amount", type = "double" }},
  {{ name = "country", type = "varchar" }},
]
[stages.q]
kind = "sql"
inputs = ["orders"]
query = "SELECT id, user_id, amount * 1.1 AS amount_eur, country, _timestamp AS ts FROM orders WHERE amount > 10"
[sinks.out]
kind = "parquet"
input = "q"
url = "{out}"
"""


def sluice_cmd(args, brokers, topic, out, live):
    toml = os.path.join(out + ".toml")
    with open(toml, "w") as f:
        f.write(SLUICE_TOML.format(brokers=brokers, topic=topic, out=out,
                                   start="latest" if live else "earliest",
                                   commit="1s" if live else "0s",
                                   max_rows=100000 if live else 500000,
                                   latency="1s" if live else "2s"))
    cmd = [args.sluice, "run", "-q", toml]
    if not live:
        cmd.insert(3, "--exit-when-idle")
    return cmd


def script_cmd(brokers, topic, out, live, total):
    return [sys.executable, os.path.join(HERE, "plain_consumer.py"), brokers, topic, out,
            "latest" if live else "earliest", str(total)]


def spark_cmd(brokers, topic, out, live, total):
    return [sys.executable, os.path.join(HERE, "spark_job.py"), brokers, topic, out,
            "latest" if live else "earliest", str(total), JARS]


def rows_of(out, engine):
    import pyarrow.parquet as pq
    files = [f for f in glob.glob(os.path.join(out, "**/*.parquet"), recursive=True)]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def expected_rows(first, count):
    return sum(1 for i in range(first, first + count) if (i * 37) % 1000 / 10 > 10)


def latencies(out, engine):
    """Per row: visible time - Kafka timestamp, in ms."""
    import pyarrow.parquet as pq
    lat = []
    if engine == "sluice":
        for c in glob.glob(os.path.join(out, "_sluice/commits/*.json")):
            rec = json.load(open(c))
            from datetime import datetime
            at = datetime.fromisoformat(rec["committed_at"].replace("Z", "+00:00")).timestamp() * 1000
            for f in rec["files"]:
                ts = pq.read_table(os.path.join(out, f["path"]), columns=["ts"]).column("ts")
                lat += [at - t.timestamp() * 1000 for t in ts.to_pylist() if t is not None]
    else:
        for f in glob.glob(os.path.join(out, "**/*.parquet"), recursive=True):
            at = os.path.getmtime(f) * 1000
            ts = pq.read_table(f, columns=["ts"]).column("ts")
            lat += [at - t.timestamp() * 1000 for t in ts.to_pylist() if t is not None]
    return lat


def run_engine(cmd, timeout, stop_when=None):
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(proc)
    try:
        if stop_when:
            stop_when()
            proc.terminate()
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    wall = time.time() - t0
    secs = cpu.stop()
    if rc not in (0, -15):
        raise RuntimeError(f"{cmd[0]} exited {rc}: {proc.stderr.read()[-3000:]}")
    return wall, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2_000_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target/release/sluice"))
    ap.add_argument("--skip-spark", action="store_true")
    args = ap.parse_args()
    engines = ["sluice", "script"] + ([] if args.skip_spark else ["spark"])
    if "spark" in engines:
        ensure_jars()
    brokers, broker_dir = start_broker()
    work = tempfile.mkdtemp(prefix="kafka-bench-")
    results = {}
    try:
        topic = f"orders-{int(time.time())}"
        create(brokers, topic, 2)
        t = time.time()
        produce(brokers, topic, 0, args.messages)
        print(f"produced {args.messages} messages in {time.time() - t:.1f}s", file=sys.stderr)
        want = expected_rows(0, args.messages)
        for e in engines:
            out = os.path.join(work, f"{e}-backlog")
            cmd = {"sluice": lambda: sluice_cmd(args, brokers, topic, out, False),
                   "script": lambda: script_cmd(brokers, topic, out, False, args.messages),
                   "spark": lambda: spark_cmd(brokers, topic, out, False, args.messages)}[e]()
            wall, cpu = run_engine(cmd, timeout=3600)
            got = rows_of(out, e)
            if got != want:
                raise RuntimeError(f"{e} wrote {got} rows, expected {want}")
            results.setdefault(e, {}).update(wall=wall, cpu=cpu)
            print(f"{e}: backlog {wall:.1f}s wall, {cpu:.1f}s CPU", file=sys.stderr)
        # live: each engine from `latest`, messages produced at a fixed rate
        live_n = args.rate * args.seconds
        for k, e in enumerate(engines):
            ltopic = f"live-{e}-{int(time.time())}"
            create(brokers, ltopic, 2)
            out = os.path.join(work, f"{e}-live")
            cmd = {"sluice": lambda: sluice_cmd(args, brokers, ltopic, out, True),
                   "script": lambda: script_cmd(brokers, ltopic, out, True, live_n),
                   "spark": lambda: spark_cmd(brokers, ltopic, out, True, live_n)}[e]()

            def feed():
                time.sleep(15 if e == "spark" else 5)  # let it start and position at `latest`
                produce(brokers, ltopic, 0, live_n, rate=args.rate)
                time.sleep(10)  # the last commits

            run_engine(cmd, timeout=600, stop_when=feed)
            lat = latencies(out, e)
            got = len(lat)
            lat.sort()
            results[e].update(p50=lat[len(lat) // 2] if lat else None,
                              p99=lat[int(len(lat) * 0.99)] if lat else None, live_rows=got)
            print(f"{e}: live {got} rows, p50 {results[e]['p50']}", file=sys.stderr)
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/kafka"), "stop", "--dir", broker_dir])
        shutil.rmtree(work, ignore_errors=True)
    base = results["sluice"]
    print(f"\n{args.messages:,} messages, 2 partitions; live: {args.rate:,}/s for {args.seconds}s\n")
    print("| engine | backlog wall (s) | events/s | CPU (s) | events/s per core | vs sluice (per core) | latency p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for e in engines:
        r = results[e]
        per_core = args.messages / r["cpu"]
        print(f"| {e} | {r['wall']:.1f} | {args.messages / r['wall']:,.0f} | {r['cpu']:.1f} | {per_core:,.0f} | "
              f"{per_core / (args.messages / base['cpu']):.2f}× | {r['p50']:.0f} | {r['p99']:.0f} |")


if __name__ == "__main__":
    main()

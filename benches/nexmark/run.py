"""Nexmark benchmark: the queries of benches/nexmark/ over the same
generated events, one after another in the same run. For each query: events
of the Nexmark sequence per second of wall time and per CPU-second, the rows
the query read, and the read-to-commit latency percentiles of its epochs.
Prints a Markdown report.

  cargo build --release && target/pyenv/bin/python benches/nexmark/run.py [--quick] [--events N]

"Events" count the whole Nexmark sequence (persons, auctions and bids), as
the Flink and RisingWave reports do; a query over bids alone reads 92 % of
them. Per-core numbers divide by the CPU time the process used (user +
system), so they do not depend on how many cores the machine has.
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from measure import measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.environ.get("SLUICE", os.path.join(ROOT, "target/release/sluice"))
HERE = os.path.dirname(os.path.abspath(__file__))
QUERIES = ["q0", "q1", "q2", "q5", "q7", "q8", "q11"]
SOURCES = {"q8": ["person", "auction"]}


def run(query, events):
    out = tempfile.mkdtemp(prefix=f"sluice-nexmark-{query}-")
    args = [SLUICE, "run", "--json", os.path.join(HERE, f"{query}.toml")]
    for s in SOURCES.get(query, ["bid"]):
        args += ["--set", f"sources.{s}.events={events}"]
    if query in ("q5", "q7", "q8", "q11"):
        args += ["--set", f'sinks.out.url="{out}"']
    try:
        m = measure(args)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    s = json.loads(m["stdout"])
    read = sum(c["rows_out"] for c in s["components"] if c["name"] in SOURCES.get(query, ["bid"]))
    out_rows = next(c for c in s["components"] if c["name"] == "out")["rows_in"]
    return {"wall": m["wall"], "cpu": m["cpu"], "rss_mb": m["rss_mb"], "read": read, "out": out_rows,
            "lat": s["latency"], "epochs": s["epochs"]}


def main():
    quick = "--quick" in sys.argv
    events = 1_000_000 if quick else 10_000_000
    if "--events" in sys.argv:
        events = int(sys.argv[sys.argv.index("--events") + 1])
    print(f"## Nexmark, {events:,} events, epochs of 1M rows\n")
    print("| query | events/s | events/CPU-s | rows read | rows out | epochs | latency p50 s | p99 s | max s | "
          "peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for q in QUERIES:
        r = run(q, events)
        print(f"| {q} | {events / r['wall'] / 1e3:,.0f}k | {events / r['cpu'] / 1e3:,.0f}k | {r['read']:,} | "
              f"{r['out']:,} | {r['epochs']} | {r['lat']['p50']:.2f} | {r['lat']['p99']:.2f} | "
              f"{r['lat']['max']:.2f} | {r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()

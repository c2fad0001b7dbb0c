"""Streaming benchmark: throughput and read-to-commit latency of the
generator → SQL → Parquet pipeline at 100k rows/s and at full speed, with
1 s and 5 s commit intervals; and peak RSS for 1 GB and 10 GB of generated
input. Prints a Markdown report.

  cargo build --release && target/pyenv/bin/python benches/streaming/run.py [--quick]
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.path.join(ROOT, "target/release/sluice")
PIPELINE = os.path.join(ROOT, "benches/streaming/pipeline.toml")
QUICK = "--quick" in sys.argv
SECONDS = 6 if QUICK else 20


def run(sets, seconds=None):
    out = tempfile.mkdtemp(prefix="sluice-stream-")
    args = ["/usr/bin/time", "-v", SLUICE, "run", "--json", PIPELINE, "--set", f'sinks.out.url="{out}"']
    for s in sets:
        args += ["--set", s]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if seconds:
        time.sleep(seconds)
        p.send_signal(signal.SIGINT)  # /usr/bin/time forwards it; sluice commits and exits 0
    stdout, stderr = p.communicate()
    shutil.rmtree(out, ignore_errors=True)
    s = json.loads(stdout)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    src = next(c for c in s["components"] if c["name"] == "events")
    sink = next(c for c in s["components"] if c["name"] == "out")
    return {"wall": s["wall"], "rows": sink["rows_out"], "in_rows": src["rows_out"], "in_bytes": src["bytes"],
            "lat": s["latency"], "rss_mb": rss / 1024, "epochs": s["epochs"]}


print(f"## Streaming (generator → SQL → zstd Parquet), {SECONDS} s per run\n")
print("| rate | commit interval | rows committed/s | epochs | latency p50 s | p99 s | max s | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|")
for rate, label in ((100_000, "100k rows/s"), (None, "full speed")):
    for interval in ("1s", "5s"):
        sets = [f'settings.commit_interval="{interval}"']
        if rate:
            sets.append(f"sources.events.rows_per_second={rate}")
        r = run(sets, SECONDS)
        print(f"| {label} | {interval} | {r['rows'] / r['wall'] / 1e3:.0f}k | {r['epochs']} | {r['lat']['p50']:.2f} | "
              f"{r['lat']['p99']:.2f} | {r['lat']['max']:.2f} | {r['rss_mb']:.0f} |")
print()
print("## Memory with growing input (full speed, commit every 5 s)\n")
print("| generated input (Arrow) | rows | wall s | rows/s | peak RSS MB |")
print("|---|---|---|---|---|")
probe = run(['settings.commit_interval="5s"', "sources.events.total_rows=200000"])
bytes_per_row = probe["in_bytes"] / probe["in_rows"]
for gb in ((0.2, 1) if QUICK else (1, 10)):
    rows = int(gb * 1e9 / bytes_per_row)
    r = run(['settings.commit_interval="5s"', f"sources.events.total_rows={rows}"])
    print(f"| {r['in_bytes'] / 1e9:.1f} GB | {rows:,} | {r['wall']:.1f} | {r['rows'] / r['wall'] / 1e6:.2f}M | {r['rss_mb']:.0f} |")

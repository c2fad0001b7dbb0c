"""Streaming benchmark: throughput and read-to-commit latency of the
generator → SQL → Parquet pipeline at 100k rows/s and at full speed, with
1 s and 5 s commit intervals; and peak RSS for 1 GB and 10 GB of generated
input; each with 1 and 2 epochs in flight (`settings.epochs_in_flight`),
side by side in the same run. Prints a Markdown report.

  cargo build --release && target/pyenv/bin/python benches/streaming/run.py [--quick]
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from measure import measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.path.join(ROOT, "target/release/sluice")
PIPELINE = os.path.join(ROOT, "benches/streaming/pipeline.toml")


def run(sets, seconds=None, sluice=SLUICE):
    """Runs the pipeline with `--set` overrides, for `seconds` (then SIGINT:
    sluice commits and exits 0) or to the end of a bounded input."""
    out = tempfile.mkdtemp(prefix="sluice-stream-")
    args = [sluice, "run", "--json", PIPELINE, "--set", f'sinks.out.url="{out}"']
    for s in sets:
        args += ["--set", s]
    try:
        m = measure(args, stop_after=seconds)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    s = json.loads(m["stdout"])
    src = next(c for c in s["components"] if c["name"] == "events")
    sink = next(c for c in s["components"] if c["name"] == "out")
    return {"wall": s["wall"], "rows": sink["rows_out"], "in_rows": src["rows_out"], "in_bytes": src["bytes"],
            "lat": s["latency"], "rss_mb": m["rss_mb"], "epochs": s["epochs"]}


def main():
    quick = "--quick" in sys.argv
    seconds = 6 if quick else 20
    print(f"## Streaming (generator → SQL → zstd Parquet), {seconds} s per run\n")
    print("| rate | commit interval | in flight | rows committed/s | epochs | latency p50 s | p99 s | max s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, label in ((100_000, "100k rows/s"), (None, "full speed")):
        for interval in ("1s", "5s"):
            for flight in (1, 2):
                sets = [f'settings.commit_interval="{interval}"', f"settings.epochs_in_flight={flight}"]
                if rate:
                    sets.append(f"sources.events.rows_per_second={rate}")
                r = run(sets, seconds)
                print(f"| {label} | {interval} | {flight} | {r['rows'] / r['wall'] / 1e3:.0f}k | {r['epochs']} | "
                      f"{r['lat']['p50']:.2f} | {r['lat']['p99']:.2f} | {r['lat']['max']:.2f} | {r['rss_mb']:.0f} |")
    print()
    print("## Memory with growing input (full speed, commit every 5 s)\n")
    print("| generated input (Arrow) | in flight | rows | wall s | rows/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    probe = run(['settings.commit_interval="5s"', "sources.events.total_rows=200000"])
    bytes_per_row = probe["in_bytes"] / probe["in_rows"]
    for gb in ((0.2, 1) if quick else (1, 10)):
        rows = int(gb * 1e9 / bytes_per_row)
        for flight in (1, 2):
            r = run(['settings.commit_interval="5s"', f"settings.epochs_in_flight={flight}",
                     f"sources.events.total_rows={rows}"])
            print(f"| {r['in_bytes'] / 1e9:.1f} GB | {flight} | {rows:,} | {r['wall']:.1f} | "
                  f"{r['rows'] / r['wall'] / 1e6:.2f}M | {r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()

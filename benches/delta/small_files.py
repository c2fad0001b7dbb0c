"""Small files of a streaming Delta sink, with and without compaction.

The streaming benchmark's pipeline (benches/streaming/pipeline.toml:
generator → SQL → zstd Parquet) writes a Delta table for MINUTES minutes
(default 10) at RATE rows/s (default 20,000) with a commit every second.
Two tables are written side by side in the same run, by two processes:
one left alone, one compacted by `sluice compact` once a minute while it
is written (and vacuumed at the end with a zero retention, to count what a
vacuum after the retention period would leave). Prints a Markdown table of
file counts and sizes for both, and what it costs a reader: the wall time
of `polars.read_delta(...).height` on each table.

  target/pyenv/bin/python benches/delta/small_files.py [--minutes M] [--rate R] [--sluice PATH]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import deltalake
import polars as pl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINE = os.path.join(ROOT, "benches/streaming/pipeline.toml")


def files_of(table: str) -> list[int]:
    """Sizes of the Parquet files the table's snapshot holds."""
    dt = deltalake.DeltaTable(table)
    adds = dt.get_add_actions(flatten=True)
    return adds.column("size_bytes").to_pylist()


def on_disk(table: str) -> int:
    """Data files in the table's folder (not the log's checkpoint files)."""
    n = 0
    for folder, dirs, names in os.walk(table):
        dirs[:] = [d for d in dirs if d != "_delta_log"]
        n += sum(1 for f in names if f.endswith(".parquet"))
    return n


def read_seconds(table: str) -> tuple[float, int]:
    t = time.perf_counter()
    rows = pl.read_delta(table).height
    return time.perf_counter() - t, rows


def row(label: str, table: str) -> str:
    sizes = files_of(table)
    secs, rows = read_seconds(table)
    kib = [s / 1024 for s in sizes]
    return (f"| {label} | {rows:,} | {len(sizes):,} | {on_disk(table):,} | "
            f"{statistics.median(kib):,.0f} | {statistics.mean(kib):,.0f} | {max(kib):,.0f} | "
            f"{sum(sizes) / 1024 / 1024:,.1f} | {secs:.2f} |")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=int, default=20_000)
    p.add_argument("--sluice", default=os.path.join(ROOT, "target/release/sluice"))
    a = p.parse_args()
    seconds = int(a.minutes * 60)
    tmp = tempfile.mkdtemp(prefix="sluice-delta-small-")
    tables = {name: os.path.join(tmp, name) for name in ("plain", "compacted")}

    def start(table: str) -> subprocess.Popen:
        return subprocess.Popen(
            [a.sluice, "run", "-q", PIPELINE,
             "--set", 'sinks.out.kind="delta"',
             "--set", f'sinks.out.url="{table}"',
             "--set", 'settings.commit_interval="1s"',
             "--set", f"sources.events.rows_per_second={a.rate}",
             "--set", f"sources.events.total_rows={a.rate * seconds}"],
            stdout=subprocess.DEVNULL)

    runs = [start(t) for t in tables.values()]
    compactions = 0
    began = time.monotonic()
    while any(r.poll() is None for r in runs):
        time.sleep(1)
        if time.monotonic() - began > 60 * (compactions + 1) and runs[1].poll() is None:
            subprocess.run([a.sluice, "compact", tables["compacted"]],
                           check=True, stdout=subprocess.DEVNULL)
            compactions += 1
    for r in runs:
        if r.returncode != 0:
            print(f"a run failed with {r.returncode}", file=sys.stderr)
            return 1
    subprocess.run([a.sluice, "compact", tables["compacted"]], check=True, stdout=subprocess.DEVNULL)
    compactions += 1

    print(f"## Delta small files: {a.minutes:g} min at {a.rate:,} rows/s, a commit every second\n")
    print(f"`python benches/delta/small_files.py --minutes {a.minutes:g} --rate {a.rate}`; "
          f"the compacted table had `sluice compact` run {compactions} times (once a minute "
          f"while written, once at the end), then `sluice vacuum --retain 0s --force`.\n")
    print("| table | rows | files in the snapshot | data files on disk | median KiB | mean KiB | "
          "largest KiB | MiB | polars read_delta s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(row("commit every 1 s, no compaction", tables["plain"]))
    print(row("compacted once a minute (before vacuum)", tables["compacted"]))
    subprocess.run([a.sluice, "vacuum", tables["compacted"], "--retain", "0s", "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    print(row("compacted, after vacuum", tables["compacted"]))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

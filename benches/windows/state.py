"""State benchmark: how big the state of a windowed aggregate grows with the
number of keys and with the length of the run. Hourly windows per key over
generated events; for each run, the largest state any commit recorded (rows,
bytes of its Arrow IPC snapshot and of its Arrow buffers in memory, bytes
per key) and the process's peak RSS.
State holds only the open windows, so it follows the keys, not the run
length. Prints a Markdown report.

  cargo build --release && target/pyenv/bin/python benches/windows/state.py [--quick]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from measure import measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.environ.get("SLUICE", os.path.join(ROOT, "target/release/sluice"))
PIPELINE = os.path.join(ROOT, "benches/windows/pipeline.toml")
HOUR_ROWS = 3_600_000  # rows of one hourly window at 1,000 rows/s of event time


def run(keys, rows):
    out = tempfile.mkdtemp(prefix="sluice-state-")
    try:
        m = measure([SLUICE, "run", "--json", PIPELINE,
                     "--set", f'sinks.out.url="{out}"',
                     "--set", f"sources.events.keys={keys}",
                     "--set", f"sources.events.total_rows={rows}"])
        commits = json.loads(subprocess.run([SLUICE, "inspect", "--json", out], check=True,
                                            capture_output=True, text=True).stdout)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    empty = {"rows": 0, "bytes": 0, "memory_bytes": 0}
    states = [c.get("state", {}).get("operators", {}).get("hourly", empty) for c in commits]
    peak = max(states, key=lambda s: s["bytes"])
    return {"rows": peak["rows"], "bytes": peak["bytes"], "memory": peak.get("memory_bytes", 0),
            "rss_mb": m["rss_mb"], "wall": m["wall"],
            "windows": sum(c["rows"] for c in commits), "commits": len(commits)}


def main():
    quick = "--quick" in sys.argv
    key_counts = (1_000, 10_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    hours = (1, 2) if quick else (1, 2, 4)
    print("## State of a windowed aggregate (hourly windows per key, 1,000 rows/s of event time)\n")
    print("| keys | run length | rows in | commits | largest state: rows | on disk | per row | in memory | "
          "per row | peak RSS MB | rows out | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for keys in key_counts:
        for h in hours:
            r = run(keys, h * HOUR_ROWS)
            per = r["bytes"] / r["rows"] if r["rows"] else 0
            mem = r["memory"] / r["rows"] if r["rows"] else 0
            print(f"| {keys:,} | {h} h | {h * HOUR_ROWS:,} | {r['commits']} | {r['rows']:,} | {r['bytes']:,} | "
                  f"{per:.0f} | {r['memory']:,} | {mem:.0f} | {r['rss_mb']:.0f} | {r['windows']:,} | "
                  f"{r['wall']:.1f} |")


if __name__ == "__main__":
    main()

"""Two sluice binaries on the same comparison workload, alternating runs so
both see the same machine: the regression check for a change. Uses the
datasets `benches/compare/run` generated (target/compare/data-sf1-5000000).

  target/pyenv/bin/python benches/compare/ab.py OLD_BINARY NEW_BINARY w1|w2|w3 [runs]

To get OLD_BINARY: check the base commit out in a git worktree, give it the
same [profile.release] and build it with CARGO_TARGET_DIR=target (only the
workspace crates are rebuilt), then copy target/release/sluice aside.
"""
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from measure import measure  # noqa: E402

DATA = os.path.join(HERE, "../../target/compare/data-sf1-5000000")
SETS = {
    "w1": ("w1_csv_to_parquet.toml", {"sources.lineitem.path": "lineitem_csv"}),
    "w2": ("w2_events_enrich.toml", {"sources.events.path": "events_jsonl", "sources.users.path": "users.csv"}),
    "w3": ("w3_q1.toml", {"sources.lineitem.path": "lineitem_parquet"}),
}


def run(binary, workload):
    pipeline, inputs = SETS[workload]
    out = tempfile.mkdtemp(prefix="sluice-ab-")
    args = [binary, "run", "-q", "--json", os.path.join(HERE, "pipelines", pipeline), "--set", f'sinks.out.url="{out}"']
    for key, rel in inputs.items():
        args += ["--set", f'{key}="{os.path.abspath(os.path.join(DATA, rel))}"']
    try:
        return measure(args)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main():
    old, new, workload = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    results = {"old": [], "new": []}
    run(new, workload)  # warm-up
    for _ in range(runs):
        for name, binary in (("old", old), ("new", new)):
            results[name].append(run(binary, workload))
    print(f"| {workload} | wall s (median of {runs}) | CPU s | peak RSS MB | runs |")
    print("|---|---|---|---|---|")
    for name, ms in results.items():
        walls = ", ".join("%.2f" % m["wall"] for m in ms)
        print(f"| {name} | {statistics.median(m['wall'] for m in ms):.2f} | {statistics.median(m['cpu'] for m in ms):.2f} | "
              f"{statistics.median(m['rss_mb'] for m in ms):.0f} | {walls} |")


if __name__ == "__main__":
    main()

"""Identity-stage benchmark: what a stage in Go, in Rust or in pyarrow.flight
costs, in isolation and inside a pipeline.

  target/pyenv/bin/python benches/stages/run.py [--quick] [--repeat N]

Needs release builds: `cargo build --release` and
`./scripts/build-stages --release`. Prints a Markdown report.
"""
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.path.join(ROOT, "target/release/sluice")
BENCH = os.path.join(ROOT, "target/release/examples/exchange_bench")
PY = os.path.join(ROOT, "target/pyenv/bin/python")
QUICK = "--quick" in sys.argv
RUNS = 1 if QUICK else 3
# --repeat N: N more passes of the stage-less pipeline and the shared-memory
# identity stages with `unchanged` answers, 5 runs a point (this machine's
# run-to-run noise is several points: one pass does not settle a ratio)
REPEAT = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 0
# The pipeline runs at two scale factors: a run's wall time holds a fixed
# part (the TPC-H generator builds its 300 MB text pool first, ~0.8 s on one
# core, with or without a stage) that would flatter the stage, so the
# throughput compared is the marginal one, (rows at HI - rows at LO) /
# (wall at HI - wall at LO): what the pipeline sustains once running.
SF, SF_HI = ("0.1", "0.5") if QUICK else ("1", "3")

echo = os.path.join(ROOT, "target/stages/pyecho.sh")
with open(echo, "w") as f:
    f.write(f"#!/bin/sh\nexec {PY} {os.path.join(ROOT, 'benches/stages/echo_server.py')}\n")
os.chmod(echo, 0o755)
STAGES = {
    "rust": os.path.join(ROOT, "target/stages/rust/identity"),
    "go": os.path.join(ROOT, "target/stages/go/identity"),
    "pyarrow": echo,
}
# (stage, path, answers): the Rust and Go SDKs take shared memory as the
# engine's children, and Flight when told to (as to a remote stage);
# pyarrow.flight takes Flight. The SDKs answer an identity's batch
# `unchanged` (its rows cross once) unless the engine does not offer it:
# "rows" makes every answer carry its rows back, as a stage that changes
# them must (the transport's whole cost); the raw pyarrow echo always does.
RUNS_OF = [("rust", "shm", "unchanged"), ("go", "shm", "unchanged"), ("rust", "flight", "unchanged"),
           ("rust", "shm", "rows"), ("go", "shm", "rows"), ("pyarrow", "flight", "rows"),
           ("rust", "flight", "rows"), ("go", "flight", "rows")]


def isolated(stage, path, answers, rows):
    batches = max(20, (200 * 65536 // rows) // (10 if QUICK else 1))
    flags = (["--flight"] if path == "flight" else []) + (["--send-back"] if answers == "rows" else [])
    out = subprocess.run([BENCH, "--rows", str(rows), "--batches", str(batches), *flags, "--", STAGES[stage]],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    # over shm, answers that find the stage's half full (the engine has not
    # yet released enough) go over Flight: "mixed" is the path working
    took = "unchanged" if r["answers_unchanged"] == r["answers"] else "rows"
    if took != answers or (answers == "rows" and (r["answers_in_shm"] > 0) != (path == "shm")):
        raise SystemExit(f"asked for the {path} path with {answers} answers, the answers took {r['path']}: {r}")
    return r


def pipeline(stage, rows, path=None, answers=None):
    """The median run at SF and at SF_HI, and the marginal rate between them."""
    lo, hi = run_pipeline(stage, rows, path, answers, SF), run_pipeline(stage, rows, path, answers, SF_HI)
    extra = hi["wall"] - lo["wall"]
    if extra < 0.1 * hi["wall"]:
        # within the noise of one run: no rate to speak of
        raise SystemExit(f"SF {SF} -> {SF_HI} adds only {extra:.3f} s of {hi['wall']:.3f} s; widen the gap")
    return {**lo, "wall_hi": hi["wall"], "rows_per_s": (hi["rows"] - lo["rows"]) / extra,
            "bytes_per_s": (hi["bytes"] - lo["bytes"]) / extra}


def run_pipeline(stage, rows, path, answers, sf):
    cfg = os.path.join(ROOT, "benches/stages", "baseline.toml" if stage is None else "with_stage.toml")
    args = [SLUICE, "run", "--json", cfg, "--set", f"settings.batch_size={rows}", "--set", f"sources.lineitem.scale_factor={sf}"]
    if stage is not None:
        args += ["--set", f'stages.through.command=["{STAGES[stage]}"]']
        args += ["--set", f"stages.through.shared_memory={'true' if path == 'shm' else 'false'}"]
        args += ["--set", f"stages.through.unchanged_answers={'true' if answers == 'unchanged' else 'false'}"]
    walls, summaries = [], []
    for _ in range(RUNS + 1):  # the first run warms up
        s = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
        walls.append(s["wall"])
        summaries.append(s)
    walls = walls[1:]
    s = summaries[-1]
    rows_total = next(c for c in s["components"] if c["name"] == "lineitem")["rows_out"]
    nbytes = next(c for c in s["components"] if c["name"] == "lineitem")["bytes"]
    st = next((c for c in s["components"] if c["name"] == "through"), None)
    if st is not None and ((st["batches_unchanged"] > 0) != (answers == "unchanged") or
                           (st["input_batches_in_shared_memory"] > 0) != (path == "shm") or
                           (answers == "rows" and (st["batches_in_shared_memory"] > 0) != (path == "shm"))):
        raise SystemExit(f"asked for the {path} path with {answers} answers, the summary says otherwise: {st}")
    return {"wall": statistics.median(walls), "walls": walls, "rows": rows_total, "bytes": nbytes,
            "p50_us": st["batch_latency_p50_us"] if st else None, "p99_us": st["batch_latency_p99_us"] if st else None}


print(f"## Identity stage: Go, Rust and pyarrow.flight (SF {SF} and {SF_HI}, {RUNS} runs, median)\n")
print("### In isolation (`exchange_bench`: one exchange, the same lineitem-like batch sent repeatedly)\n")
print("| stage | path | answers | rows/batch | GB/s | M rows/s | round trip p50 ms | p99 ms | answers in shared memory |")
print("|---|---|---|---|---|---|---|---|---|")
for rows in (8192, 65536):
    for stage, path, answers in RUNS_OF:
        r = isolated(stage, path, answers, rows)
        print(f"| {stage} | {path} | {answers} | {rows} | {r['gb_per_s']:.2f} | {r['rows_per_s'] / 1e6:.2f} | {r['rtt_p50_ms']:.2f} | {r['rtt_p99_ms']:.2f} | {r['answers_in_shm'] / r['answers'] * 100:.0f}% |")
print()
print("### In the pipeline (TPC-H lineitem → [identity stage] → blackhole)\n")
print(f"Throughput is marginal, between SF {SF} and SF {SF_HI} (see the script); the whole run at SF {SF} is shown too.\n")
print(f"| stage | path | answers | rows/batch | wall s SF {SF} | wall s SF {SF_HI} | M rows/s | GB/s through the stage | throughput vs no stage | whole run SF {SF} vs no stage | round trip p50 ms/batch | p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for rows in (8192, 65536):
    base = pipeline(None, rows)
    print(f"| none | – | – | {rows} | {base['wall']:.2f} | {base['wall_hi']:.2f} | {base['rows_per_s'] / 1e6:.2f} | – | 100% | 100% | – | – |")
    for stage, path, answers in RUNS_OF:
        r = pipeline(stage, rows, path, answers)
        print(f"| {stage} | {path} | {answers} | {rows} | {r['wall']:.2f} | {r['wall_hi']:.2f} | {r['rows_per_s'] / 1e6:.2f} | {r['bytes_per_s'] / 1e9:.2f} | "
              f"{r['rows_per_s'] / base['rows_per_s'] * 100:.0f}% | {base['wall'] / r['wall'] * 100:.0f}% | "
              f"{r['p50_us'] / 1e3:.2f} | {r['p99_us'] / 1e3:.2f} |")

if REPEAT:
    RUNS = 5
    print()
    print(f"### Repeated: shared memory, `unchanged` answers ({REPEAT} passes, {RUNS} runs a point)\n")
    print("| rows/batch | pass | no stage M rows/s | rust vs no stage | go vs no stage |")
    print("|---|---|---|---|---|")
    for rows in (8192, 65536):
        for n in range(REPEAT):
            base = pipeline(None, rows)
            ratios = [pipeline(stage, rows, "shm", "unchanged")["rows_per_s"] / base["rows_per_s"] * 100
                      for stage in ("rust", "go")]
            print(f"| {rows} | {n + 1} | {base['rows_per_s'] / 1e6:.2f} | {ratios[0]:.0f}% | {ratios[1]:.0f}% |", flush=True)

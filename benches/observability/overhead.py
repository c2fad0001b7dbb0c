"""What metrics and tracing cost: workload 1 of benches/compare (lineitem CSV
→ filter + projection + derived column → zstd Parquet) with observability
off, then on, in alternation, in one run:

  python benches/observability/overhead.py --sluice target/release/sluice [--runs N] [--write]

"on" serves Prometheus metrics (`--metrics 127.0.0.1:0`) and exports every
span over OTLP/gRPC to a real Jaeger (`--otlp`, target/tools/jaeger, built
by scripts/test), started here with in-memory storage. Runs alternate (off,
on, off, on, ...) so that a drift of the machine hits both alike; the
report gives the median of each and the median of the per-pair ratios.
Both modes must write the same rows. `--write` replaces the section
between the `observability` markers of docs/benchmarks.md.

The data is benches/compare's (made on first use, SF 1 by default).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benches", "compare"))
sys.path.insert(0, os.path.join(ROOT, "benches"))
import compare  # noqa: E402
from measure import measure  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jaeger(tmp):
    """Jaeger with the config the trace test uses; returns (process, ports)."""
    binary = os.path.join(ROOT, "target", "tools", "jaeger")
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} is missing: ./scripts/test builds it (tests/jaeger)")
    ports = {"otlp": free_port(), "query": free_port(), "query_grpc": free_port()}
    config = open(os.path.join(ROOT, "tests", "jaeger", "config.yaml")).read()
    for name in ("otlp", "query_grpc", "query"):
        config = config.replace("{" + name + "}", str(ports[name]))
    path = os.path.join(tmp, "jaeger.yaml")
    open(path, "w").write(config)
    log = open(os.path.join(tmp, "jaeger.log"), "wb")
    p = subprocess.Popen([binary, "--config", path], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports["otlp"]), timeout=1).close()
            return p, ports
        except OSError:
            if p.poll() is not None or time.time() > deadline:
                raise SystemExit("jaeger did not start: " + open(log.name, errors="replace").read())
            time.sleep(0.1)


def traces_in(query_port):
    """The traces of service `sluice` Jaeger holds (exports land a little later)."""
    url = f"http://127.0.0.1:{query_port}/api/traces?service=sluice&limit=10000"
    for _ in range(50):
        try:
            n = len(json.load(urllib.request.urlopen(url, timeout=5)).get("data") or [])
        except OSError:
            n = 0
        if n:
            return n
        time.sleep(0.2)
    return 0


def run_w1(sluice, data, out, observe):
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"sources.lineitem.path={compare.quoted(os.path.join(data, 'lineitem_csv'))}",
            f"sinks.out.url={compare.quoted(out)}", f"settings.target_partitions={compare.THREADS}"]
    cmd = compare.sluice_cmd(sluice, compare.PIPELINES["w1"], sets) + observe
    return measure(cmd)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sluice", required=True)
    p.add_argument("--runs", type=int, default=7, help="timed runs per mode (default 7)")
    p.add_argument("--scale", type=float, default=1.0, help="lineitem scale factor (default 1)")
    p.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = p.parse_args()
    events = 5_000_000 if args.scale == 1.0 else 100_000
    data = os.path.join(ROOT, "target", "compare", f"data-sf{args.scale:g}-{events}")
    compare.make_data(args.sluice, data, args.scale, events)
    with tempfile.TemporaryDirectory() as tmp:
        jaeger, ports = start_jaeger(tmp)
        try:
            otlp = f"http://127.0.0.1:{ports['otlp']}"
            modes = {"off": [], "on": ["--metrics", "127.0.0.1:0", "--otlp", otlp]}
            outs = {m: os.path.join(tmp, f"out-{m}") for m in modes}
            rows = {}
            for m, flags in modes.items():  # warm-up, and the outputs to compare
                run_w1(args.sluice, data, outs[m], flags)
                rows[m] = compare.fingerprint(outs[m])
            diff = compare.differences(rows["off"], rows["on"])
            if diff:
                raise SystemExit("the output with observability on differs: " + "; ".join(diff[:5]))
            walls = {m: [] for m in modes}
            cpus = {m: [] for m in modes}
            for i in range(args.runs):
                for m, flags in modes.items():
                    r = run_w1(args.sluice, data, outs[m], flags)
                    walls[m].append(r["wall"])
                    cpus[m].append(r["cpu"])
                print(f"  run {i + 1}: off {walls['off'][-1]:.2f} s, on {walls['on'][-1]:.2f} s", flush=True)
            traced = traces_in(ports["query"])
            if traced < args.runs + 1:
                raise SystemExit(f"jaeger holds {traced} traces of sluice, not one per run with tracing on")
        finally:
            jaeger.terminate()
            jaeger.wait()
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    pairs = statistics.median(b / a for a, b in zip(walls["off"], walls["on"]))
    cpu_off, cpu_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
    section = "\n".join([
        f"Measured {time.strftime('%Y-%m-%d')} by `python benches/observability/overhead.py --sluice target/release/sluice"
        f" --runs {args.runs} --write` ({compare.machine()}), workload 1 at SF {args.scale:g}"
        f" ({rows['off']['rows']:,} rows out), {args.runs} runs per mode, alternating:",
        "",
        "Every run with observability on exported its trace to Jaeger (checked through its API).",
        "",
        "| observability | median wall | median CPU (user + system) | wall of each run |",
        "|---|---:|---:|---|",
        f"| off | {off:.2f} s | {cpu_off:.2f} s | {', '.join(f'{w:.2f}' for w in walls['off'])} |",
        f"| metrics + traces to Jaeger | {on:.2f} s | {cpu_on:.2f} s | {', '.join(f'{w:.2f}' for w in walls['on'])} |",
        "",
        f"On/off: **{on / off:.3f}** wall (medians), {pairs:.3f} (median of the per-pair ratios),"
        f" {cpu_on / cpu_off:.3f} CPU.",
        "",
    ])
    print(section)
    if args.write:
        compare.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), section, "observability")


if __name__ == "__main__":
    main()

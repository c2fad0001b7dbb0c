"""sluice side by side with plain DataFusion, DuckDB and Polars on the same
work (called by benches/compare/run, which prepares the Python environment
and the sluice binary):

  python compare.py --sluice target/release/sluice [--quick] [--runs N]

1. lineitem CSV → filter + projection + derived column → zstd Parquet
2. JSON-lines events → parse, join a user table, derive a date → hive Parquet
3. lineitem Parquet → TPC-H Q1 → Parquet
4. streaming: the generator at full speed → SQL → Parquet, 1 s commits (sluice only)

Every engine gets 2 threads. Each workload runs once to warm up, then
`--runs` times (median reported). The output of every engine is checked equal
to sluice's (row count and an order-independent checksum of canonicalised
values, or value by value for small outputs) so that no engine is timed doing
less work; a mismatch fails the run.

The full run rewrites the section between the `compare` markers in
docs/benchmarks.md and docs/benchmarks-compare.png; `--quick` (small data, for
CI) writes target/compare/report.md and chart.png instead.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from measure import measure  # noqa: E402

THREADS = 2
PEERS = ["datafusion", "duckdb", "polars"]
WORKLOADS = {
    "w1": "lineitem CSV → filter + projection + derived column → zstd Parquet",
    "w2": "JSON-lines events → parse, join users, derive a date → hive-partitioned zstd Parquet",
    "w3": "lineitem Parquet → TPC-H Q1 → Parquet",
}
PIPELINES = {"w1": "w1_csv_to_parquet.toml", "w2": "w2_events_enrich.toml", "w3": "w3_q1.toml"}


def sluice_cmd(sluice, pipeline, sets):
    cmd = [sluice, "run", "-q", "--json", os.path.join(HERE, "pipelines", pipeline)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def quoted(path):
    return json.dumps(str(path))


# --- datasets ----------------------------------------------------------------


def make_data(sluice, data, scale, events):
    """Generates the datasets once per size (kept under target/compare/)."""
    stamp = os.path.join(data, "done.json")
    want = {"scale": scale, "events": events}
    if os.path.exists(stamp) and json.load(open(stamp)) == want:
        return
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    print(f"generating datasets in {data} (lineitem SF {scale}, {events:,} events)", flush=True)
    measure(sluice_cmd(sluice, "gen_lineitem.toml", [
        f"sources.lineitem.scale_factor={scale}",
        f"sinks.csv.url={quoted(os.path.join(data, 'lineitem_csv'))}",
        f"sinks.parquet.url={quoted(os.path.join(data, 'lineitem_parquet'))}",
    ]))
    measure(sluice_cmd(sluice, "gen_events.toml", [
        f"sources.events.total_rows={events}",
        f"sinks.jsonl.url={quoted(os.path.join(data, 'events_jsonl'))}",
    ]))
    # The dimension table: 90 % of the generator's 10,000 keys (the rest
    # exercise the left join's nulls).
    segments, regions = ["free", "pro", "team", "enterprise"], ["eu", "us", "apac"]
    with open(os.path.join(data, "users.csv"), "w") as f:
        f.write("key,segment,region\n")
        for k in range(10_000):
            if k % 10 != 3:
                f.write(f"user-{k},{segments[k % 4]},{regions[(k * 7) % 3]}\n")
    json.dump(want, open(stamp, "w"))


def input_size(data, workload):
    """(rows, bytes on disk) of a workload's main input."""
    import duckdb

    folder, ext, reader = {
        "w1": ("lineitem_csv", "csv", "read_csv"),
        "w2": ("events_jsonl", "jsonl", "read_json"),
        "w3": ("lineitem_parquet", "parquet", "read_parquet"),
    }[workload]
    path = os.path.join(data, folder)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith("." + ext))
    rows = duckdb.connect().execute(f"SELECT count(*) FROM {reader}('{path}/*.{ext}')").fetchone()[0]
    return rows, size


# --- output checks ---------------------------------------------------------------

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
           "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")


def canonical(name, typ, rounded=True):
    """An expression of a column's value that does not depend on the type an
    engine chose (Decimal or Float64, ms or µs timestamps, Utf8 or LargeUtf8);
    numbers are rounded for hashing, kept whole for comparing with a tolerance."""
    col = '"' + name.replace('"', '""') + '"'
    if typ.startswith("TIMESTAMP"):
        return f"epoch_us(CAST({col} AS TIMESTAMP))"
    if typ.startswith(NUMERIC):
        # row-wise values have at most 6 decimals in every workload
        return f"round(CAST({col} AS DOUBLE), 6)" if rounded else f"CAST({col} AS DOUBLE)"
    return f"CAST({col} AS VARCHAR)"


def fingerprint(out):
    """Row count plus, per column, an order-independent hash sum (large
    outputs) or the sorted rows themselves (small outputs, compared with a
    tolerance: aggregates over Decimal and Float64 differ in the last bits)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = f"read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
    columns = sorted(con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall())
    exprs = [canonical(name, typ) for name, typ, *_ in columns]
    rows = con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]
    names = [c[0] for c in columns]
    if rows <= 100:
        whole = [canonical(name, typ, rounded=False) for name, typ, *_ in columns]
        key = [i for i, (_, typ, *_) in enumerate(columns) if not typ.startswith(NUMERIC)]
        values = sorted(con.execute(f"SELECT {', '.join(whole)} FROM {rel}").fetchall(), key=lambda r: [r[i] for i in key])
        return {"rows": rows, "columns": names, "values": values}
    sums = con.execute(f"SELECT {', '.join(f'sum(hash({e}))' for e in exprs)} FROM {rel}").fetchone()
    return {"rows": rows, "columns": names, "hashes": dict(zip(names, (int(s) for s in sums)))}


def same_values(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def differences(ref, got):
    """What differs between two fingerprints (empty when equal)."""
    if ref["columns"] != got["columns"]:
        return [f"columns {got['columns']} instead of {ref['columns']}"]
    if ref["rows"] != got["rows"]:
        return [f"{got['rows']:,} rows instead of {ref['rows']:,}"]
    if "hashes" in ref:
        return [f"column `{c}` differs" for c in ref["columns"] if ref["hashes"][c] != got["hashes"][c]]
    return [f"row {i}: {g} instead of {r}" for i, (r, g) in enumerate(zip(ref["values"], got["values"]))
            if not all(same_values(x, y) for x, y in zip(r, g))]


# --- runs -------------------------------------------------------------------------


def run_once(engine, workload, args, data, out):
    shutil.rmtree(out, ignore_errors=True)
    if engine == "sluice":
        source = {"w1": "lineitem", "w2": "events", "w3": "lineitem"}[workload]
        folder = {"w1": "lineitem_csv", "w2": "events_jsonl", "w3": "lineitem_parquet"}[workload]
        sets = [f"sources.{source}.path={quoted(os.path.join(data, folder))}",
                f"sinks.out.url={quoted(out)}", f"settings.target_partitions={THREADS}"]
        if workload == "w2":
            sets.append(f"sources.users.path={quoted(os.path.join(data, 'users.csv'))}")
        cmd = sluice_cmd(args.sluice, PIPELINES[workload], sets)
    else:
        cmd = [sys.executable, os.path.join(HERE, "peers.py"), engine, workload, data, out]
    env = dict(os.environ, POLARS_MAX_THREADS=str(THREADS))
    return measure(cmd, env=env)


def bench_workload(workload, args, data, work):
    rows, size = input_size(data, workload)
    results, reference = {}, None
    for engine in ["sluice"] + PEERS:
        out = os.path.join(work, f"{workload}-{engine}")
        run_once(engine, workload, args, data, out)  # warm-up, and the output to check
        fp = fingerprint(out)
        if reference is None:
            reference = fp
        diff = differences(reference, fp)
        if diff:
            raise SystemExit(f"{workload}: {engine}'s output differs from sluice's: " + "; ".join(diff[:5]))
        runs = [run_once(engine, workload, args, data, out) for _ in range(args.runs)]
        results[engine] = {
            "wall": statistics.median(r["wall"] for r in runs),
            "walls": [r["wall"] for r in runs],
            "cpu": statistics.median(r["cpu"] for r in runs),
            "rss_mb": statistics.median(r["rss_mb"] for r in runs),
            "out_rows": fp["rows"],
        }
        print(f"  {workload} {engine:10} {results[engine]['wall']:7.2f} s  CPU {results[engine]['cpu']:6.2f} s"
              f"  {results[engine]['rss_mb']:6.0f} MB"
              f"  (runs: {', '.join(f'{w:.2f}' for w in results[engine]['walls'])})", flush=True)
    return {"rows": rows, "bytes": size, "out_rows": reference["rows"], "engines": results}


def bench_streaming(args):
    """Workload 4 with the streaming benchmark's own pipeline and runner."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("streaming_bench", os.path.join(ROOT, "benches/streaming/run.py"))
    streaming = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(streaming)
    seconds = 5 if args.quick else 20
    r = streaming.run(['settings.commit_interval="1s"'], seconds, sluice=args.sluice)
    return {"seconds": seconds, **r}


# --- report --------------------------------------------------------------------


def versions(sluice):
    import datafusion
    import duckdb
    import polars
    import pyarrow

    own = subprocess.run([sluice, "--version"], capture_output=True, text=True).stdout.strip().removeprefix("sluice ")
    return {"sluice": own, "datafusion (python)": datafusion.__version__, "duckdb": duckdb.__version__,
            "polars": polars.__version__, "pyarrow": pyarrow.__version__, "python": platform.python_version()}


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({model}), {mem / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}"


def report(results, stream, args, scale, events, chart_name):
    lines = [
        f"Measured {datetime.date.today()} by `benches/compare/run{' --quick' if args.quick else ''}` on {machine()}.",
        f"Every engine has {THREADS} threads; warm-up run, then the median of {args.runs} runs. Wall and CPU time and",
        "peak RSS are the kernel's accounting of each run's process (`wait4`); the peers run as a Python process",
        "(interpreter start and imports included, about 0.1–0.3 s). Before timing, every peer's output was",
        "checked equal to sluice's: same columns and rows, same per-column checksums of canonicalised values",
        "(workloads 1–2) or the same values within 1e-9 relative or 1e-6 absolute (workload 3).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions(args.sluice).items()) + ".",
        f"Data: TPC-H lineitem SF {scale} (generated by sluice's `tpch` source), {events:,} generated events.",
        "",
    ]
    for w, r in results.items():
        base = r["engines"]["sluice"]["wall"]
        lines += [
            f"### Workload {w[1]}: {WORKLOADS[w]}",
            "",
            f"Input {r['rows']:,} rows, {r['bytes'] / 1e6:.0f} MB on disk; output {r['out_rows']:,} rows.",
            "",
            "| engine | wall s (median) | CPU s | rows/s | MB/s | peak RSS MB | wall vs sluice |",
            "|---|---|---|---|---|---|---|",
        ]
        for engine, e in r["engines"].items():
            lines.append(
                f"| {engine} | {e['wall']:.2f} | {e['cpu']:.2f} | {r['rows'] / e['wall'] / 1e6:.2f} M | "
                f"{r['bytes'] / e['wall'] / 1e6:.0f} | {e['rss_mb']:.0f} | {e['wall'] / base:.2f}× |"
            )
        lines.append("")
    s = stream
    lines += [
        "### Workload 4: streaming, the generator at full speed → SQL → Parquet, 1 s commits (sluice only)",
        "",
        "| run | rows committed | rows/s | epochs | latency p50 s | p99 s | max s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['seconds']} s, then SIGINT | {s['rows']:,} | {s['rows'] / s['wall'] / 1e6:.2f} M | {s['epochs']} | "
        f"{s['lat']['p50']:.2f} | {s['lat']['p99']:.2f} | {s['lat']['max']:.2f} | {s['rss_mb']:.0f} |",
        "",
        f"![wall time per workload and engine]({chart_name})",
    ]
    return "\n".join(lines) + "\n"


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2))
    for ax, (w, r) in zip(axes, results.items()):
        engines = list(r["engines"])
        walls = [r["engines"][e]["wall"] for e in engines]
        bars = ax.bar(engines, walls, color=["#1f77b4" if e == "sluice" else "#999999" for e in engines])
        ax.bar_label(bars, fmt="%.2f")
        ax.set_title(f"workload {w[1]}")
        ax.set_ylabel("wall s (lower is better)")
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replace_section(path, section, name="compare"):
    text = open(path).read()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: the markers {start} and {end} are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    open(path, "w").write(head + start + "\n" + section + end + tail)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sluice", required=True, help="the sluice binary")
    p.add_argument("--quick", action="store_true", help="small data and one timed run (CI)")
    p.add_argument("--runs", type=int, help="timed runs per engine (default 3, quick 1)")
    p.add_argument("--only", nargs="+", metavar="W", help="only these workloads (w1 w2 w3), printed, docs untouched")
    args = p.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    scale, events = (0.02, 100_000) if args.quick else (1, 5_000_000)
    base = os.path.join(ROOT, "target", "compare")
    data = os.path.join(base, f"data-sf{scale}-{events}")
    work = os.path.join(base, "runs")
    make_data(args.sluice, data, scale, events)
    if args.only:
        # a partial run (to measure one change) prints its numbers and writes no report
        for w in args.only:
            if w not in WORKLOADS:
                raise SystemExit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}")
            bench_workload(w, args, data, work)
        return
    results = {w: bench_workload(w, args, data, work) for w in WORKLOADS}
    stream = bench_streaming(args)
    if args.quick:
        chart_path, report_path = os.path.join(base, "chart.png"), os.path.join(base, "report.md")
        chart(results, chart_path)
        open(report_path, "w").write(report(results, stream, args, scale, events, "chart.png"))
    else:
        chart_path, report_path = os.path.join(ROOT, "docs", "benchmarks-compare.png"), os.path.join(ROOT, "docs", "benchmarks.md")
        chart(results, chart_path)
        replace_section(report_path, report(results, stream, args, scale, events, "benchmarks-compare.png"))
    print(f"report: {report_path}; chart: {chart_path}")


if __name__ == "__main__":
    main()

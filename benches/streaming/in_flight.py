"""Epochs in flight, 1 against 2, side by side in one run: the main job
(TPC-H lineitem SF 1 → two SQL stages → zstd Parquet) cut into epochs of
500,000 rows, each committed, written to local disk and to an
S3-compatible server (moto, started here). Runs alternate between the two
settings so both see the same machine; prints medians as a Markdown table.

  cargo build --release && target/pyenv/bin/python benches/streaming/in_flight.py [runs]
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from measure import measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE = os.path.join(ROOT, "target/release/sluice")
PIPELINE = os.path.join(ROOT, "examples/tpch_revenue/pipeline.toml")


def run(url, flight, env=None):
    args = [SLUICE, "run", "--json", PIPELINE, "--set", f'sinks.out.url="{url}"',
            "--set", "settings.epoch.max_rows=500000", "--set", f"settings.epochs_in_flight={flight}"]
    m = measure(args, env=env)
    s = json.loads(m["stdout"])
    return {"wall": s["wall"], "epochs": s["epochs"], "rss": m["rss_mb"], "p50": s["latency"]["p50"]}


def start_moto():
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("moto did not start")
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    subprocess.run(["curl", "-sS", "-f", "-X", "PUT", f"{endpoint}/bench"], check=True)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true")
    return proc, env


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    moto, s3_env = start_moto()
    results = {}
    try:
        for i in range(runs + 1):  # the first round warms up
            for store in ("local disk", "S3 (moto)"):
                for flight in (1, 2):
                    if store == "local disk":
                        out = tempfile.mkdtemp(prefix="in-flight-")
                        try:
                            r = run(out, flight)
                        finally:
                            shutil.rmtree(out, ignore_errors=True)
                    else:
                        r = run(f"s3://bench/run{i}-{flight}", flight, env=s3_env)
                    if i > 0:
                        results.setdefault((store, flight), []).append(r)
    finally:
        moto.kill()
    print(f"| store | epochs in flight | wall s (median of {runs}) | runs | epochs | latency p50 s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for (store, flight), rs in results.items():
        walls = [r["wall"] for r in rs]
        print(f"| {store} | {flight} | {statistics.median(walls):.2f} | {', '.join(f'{w:.2f}' for w in walls)} | "
              f"{rs[0]['epochs']} | {statistics.median(r['p50'] for r in rs):.2f} | "
              f"{statistics.median(r['rss'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()

"""Independent checks of sluice output with readers sluice did not write.

compare   Runs the same SQL stages with DuckDB on the same input and compares
          the result with what a sluice sink committed, as multisets of rows.
query     Runs SQL over sinks' committed files (each `--sink name=dir` is a
          view `name`) and prints the rows as a JSON list of objects.
metadata  Reads the committed Parquet files of a sink with pyarrow and DuckDB
          and prints their sluice metadata, row counts and a checksum as JSON.

Only files listed in the sink's commit log (_sluice/commits/*.json) are read.
"""
import argparse
import glob
import json
import os
import sys

import duckdb


def committed_files(sink_dir):
    commits = sorted(glob.glob(os.path.join(sink_dir, "_sluice", "commits", "*.json")))
    if not commits:
        sys.exit(f"no commits under {sink_dir}")
    files = []
    for c in commits:
        with open(c) as f:
            files += [os.path.join(sink_dir, x["path"]) for x in json.load(f)["files"]]
    return files


def read_actual(con, sink_dir, fmt):
    files = committed_files(sink_dir)
    if not files:
        return "SELECT * FROM (SELECT 1) WHERE false"
    lst = "[" + ", ".join("'" + f + "'" for f in files) + "]"
    if fmt == "csv":
        return f"SELECT * FROM read_csv({lst}, header=true, hive_partitioning=true)"
    return f"SELECT * FROM read_parquet({lst}, hive_partitioning=true)"


def compare(args):
    con = duckdb.connect()
    variables = dict(v.split("=", 1) for v in args.var)
    for path in args.setup:
        sql = open(path).read()
        for k, v in variables.items():
            sql = sql.replace("{" + k + "}", v)
        con.execute(sql)
    for stage in args.stage:
        name, path = stage.split("=", 1)
        con.execute(f"CREATE VIEW {name} AS {open(path).read()}")
    con.execute(f"CREATE TABLE expected AS {args.query}")
    con.execute(f"CREATE TABLE actual AS {read_actual(con, args.actual, args.format)}")
    cols = [(r[0], r[1]) for r in con.execute("DESCRIBE expected").fetchall()]
    # compare as text so that equal values of different widths (decimal(38,4)
    # vs decimal(18,4), int32 vs int64) compare equal, and nothing else does;
    # the actual side is first read as the expected type (CSV has no types)
    sel = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c, _ in cols)
    sel_actual = ", ".join(f'CAST(CAST("{c}" AS {t}) AS VARCHAR) AS "{c}"' for c, t in cols)
    n_exp = con.execute("SELECT count(*) FROM expected").fetchone()[0]
    n_act = con.execute("SELECT count(*) FROM actual").fetchone()[0]
    missing = con.execute(f"SELECT {sel} FROM expected EXCEPT ALL SELECT {sel_actual} FROM actual").fetchall()
    extra = con.execute(f"SELECT {sel_actual} FROM actual EXCEPT ALL SELECT {sel} FROM expected").fetchall()
    report = {"expected_rows": n_exp, "actual_rows": n_act, "missing": missing[:5], "extra": extra[:5],
              "missing_count": len(missing), "extra_count": len(extra)}
    print(json.dumps(report, default=str))
    if n_exp == 0 or missing or extra or n_exp != n_act:
        sys.exit(1)


def metadata(args):
    import pyarrow.parquet as pq

    files = committed_files(args.sink)
    out = {"files": len(files), "rows": 0, "metadata": None, "kv_metadata": None}
    for f in files:
        pf = pq.ParquetFile(f)
        out["rows"] += pf.metadata.num_rows
        md = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items() if k.decode().startswith("sluice.")}
        out["metadata"] = md
    con = duckdb.connect()
    lst = "[" + ", ".join("'" + f + "'" for f in files) + "]"
    kv = con.execute(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata({lst})").fetchall()
    out["kv_metadata"] = {k: v for k, v in kv if k.startswith("sluice.")}
    out["duckdb_rows"] = con.execute(f"SELECT count(*) FROM read_parquet({lst})").fetchone()[0]
    if args.sum_column:
        out["sum"] = str(con.execute(f'SELECT sum("{args.sum_column}") FROM read_parquet({lst})').fetchone()[0])
    print(json.dumps(out))


def query(args):
    con = duckdb.connect()
    for s in args.sink:
        name, _, sink_dir = s.partition("=")
        con.execute(f'CREATE VIEW "{name}" AS {read_actual(con, sink_dir, "parquet")}')
    cur = con.execute(args.sql)
    cols = [d[0] for d in cur.description]
    print(json.dumps([dict(zip(cols, r)) for r in cur.fetchall()], default=str))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--setup", action="append", default=[])
    c.add_argument("--var", action="append", default=[])
    c.add_argument("--stage", action="append", default=[])
    c.add_argument("--query", required=True)
    c.add_argument("--actual", required=True)
    c.add_argument("--format", default="parquet")
    q = sub.add_parser("query")
    q.add_argument("--sink", action="append", default=[])
    q.add_argument("--sql", required=True)
    m = sub.add_parser("metadata")
    m.add_argument("--sink", required=True)
    m.add_argument("--sum-column")
    args = p.parse_args()
    {"compare": compare, "query": query, "metadata": metadata}[args.cmd](args)


if __name__ == "__main__":
    main()

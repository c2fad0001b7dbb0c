"""One workload in one peer engine, as its own process (so that the harness
measures its wall time, CPU time and peak RSS alone):

  python peers.py <duckdb|polars|datafusion> <w1|w2|w3> <data-dir> <out-dir>

Each peer runs the workload the way a user of that engine would write it: SQL
for DuckDB and DataFusion, lazy expressions for Polars, all with 2 threads
and zstd(3) Parquet output. The SQL text of workloads 1 and 3 is the file
sluice runs too (benches/compare/sql/); DuckDB spells workload 2's struct
and list access its own way.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = 2


def sql(workload):
    with open(os.path.join(HERE, "sql", f"{workload}.sql")) as f:
        return "\n".join(l for l in f.read().splitlines() if not l.startswith("--"))


DUCKDB_W2 = """
SELECT e.event_id,
       CAST(e.event_time AS TIMESTAMP) AS event_time,
       e.key,
       e.value,
       COALESCE(e.category, 'none') AS category,
       e.device.os AS os,
       e.device.version AS os_version,
       len(e.tags) AS tag_count,
       u.segment,
       u.region,
       CAST(CAST(e.event_time AS TIMESTAMP) AS DATE) AS event_date
FROM events e LEFT JOIN users u ON e.key = u.key
"""


def duckdb_run(workload, data, out):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {THREADS}")
    opts = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 3"
    if workload == "w1":
        con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_csv('{data}/lineitem_csv/*.csv')")
        con.execute(f"COPY ({sql('w1')}) TO '{out}/part-0.parquet' ({opts})")
    elif workload == "w2":
        # The JSON reader's own schema detection, as a DuckDB user would
        # write it; the timestamp is parsed by the query, as in the others.
        con.execute(
            f"CREATE VIEW events AS SELECT * FROM read_json('{data}/events_jsonl/*.jsonl', format = 'newline_delimited',"
            " timestampformat = 'none', dateformat = 'none')"
        )
        con.execute(f"CREATE VIEW users AS SELECT * FROM read_csv('{data}/users.csv')")
        con.execute(f"COPY ({DUCKDB_W2}) TO '{out}' ({opts}, PARTITION_BY (event_date))")
    else:
        con.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_parquet('{data}/lineitem_parquet/*.parquet')")
        con.execute(f"COPY ({sql('w3')}) TO '{out}/part-0.parquet' ({opts})")


def datafusion_run(workload, data, out):
    from datafusion import SessionConfig, SessionContext

    ctx = SessionContext(SessionConfig().with_target_partitions(THREADS))
    options = "OPTIONS ('format.compression' 'zstd(3)')"
    if workload == "w1":
        ctx.sql(f"CREATE EXTERNAL TABLE lineitem STORED AS CSV LOCATION '{data}/lineitem_csv/' "
                "OPTIONS ('format.has_header' 'true')").collect()
        ctx.sql(f"COPY ({sql('w1')}) TO '{out}/' STORED AS PARQUET {options}").collect()
    elif workload == "w2":
        ctx.sql(f"CREATE EXTERNAL TABLE events STORED AS JSON LOCATION '{data}/events_jsonl/*.jsonl'").collect()
        ctx.sql(f"CREATE EXTERNAL TABLE users STORED AS CSV LOCATION '{data}/users.csv' "
                "OPTIONS ('format.has_header' 'true')").collect()
        ctx.sql(f"COPY ({sql('w2')}) TO '{out}/' STORED AS PARQUET PARTITIONED BY (event_date) {options}").collect()
    else:
        ctx.sql(f"CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '{data}/lineitem_parquet/'").collect()
        ctx.sql(f"COPY ({sql('w3')}) TO '{out}/' STORED AS PARQUET {options}").collect()


def polars_run(workload, data, out):
    import datetime

    import polars as pl

    c = pl.col
    if workload == "w1":
        (
            pl.scan_csv(f"{data}/lineitem_csv/*.csv", try_parse_dates=True)
            .filter((c.l_shipdate >= datetime.date(1995, 1, 1)) & (c.l_quantity < 40))
            .select(
                "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity", "l_extendedprice",
                "l_discount", "l_tax", "l_returnflag", "l_linestatus", "l_shipdate", "l_shipmode",
                (c.l_extendedprice * (1 - c.l_discount) * (1 + c.l_tax)).alias("charge"),
            )
            .sink_parquet(f"{out}/part-0.parquet", compression="zstd", compression_level=3)
        )
    elif workload == "w2":
        users = pl.scan_csv(f"{data}/users.csv")
        time = c.event_time.str.to_datetime("%Y-%m-%d %H:%M:%S%.3f", time_unit="us")
        (
            pl.scan_ndjson(f"{data}/events_jsonl/*.jsonl", infer_schema_length=10000)
            .join(users, on="key", how="left")
            .select(
                "event_id",
                time.alias("event_time"),
                "key",
                "value",
                c.category.fill_null("none"),
                c.device.struct.field("os").alias("os"),
                c.device.struct.field("version").alias("os_version"),
                c.tags.list.len().alias("tag_count"),
                "segment",
                "region",
                time.dt.date().alias("event_date"),
            )
            .sink_parquet(
                pl.PartitionBy(out, key="event_date", include_key=False),
                compression="zstd",
                compression_level=3,
                mkdir=True,
            )
        )
    else:
        # Polars' Decimal product keeps its inputs' scale (every price × (1 −
        # discount) rounded to cents: sums off by ~0.1), so the money columns
        # are read as Float64, which is what its CSV reader gives anyway.
        money = ["l_quantity", "l_extendedprice", "l_discount", "l_tax"]
        disc = c.l_extendedprice * (1 - c.l_discount)
        (
            pl.scan_parquet(f"{data}/lineitem_parquet/*.parquet")
            .with_columns(pl.col(money).cast(pl.Float64))
            .filter(c.l_shipdate <= datetime.date(1998, 9, 2))
            .group_by("l_returnflag", "l_linestatus")
            .agg(
                c.l_quantity.sum().alias("sum_qty"),
                c.l_extendedprice.sum().alias("sum_base_price"),
                disc.sum().alias("sum_disc_price"),
                (disc * (1 + c.l_tax)).sum().alias("sum_charge"),
                c.l_quantity.mean().alias("avg_qty"),
                c.l_extendedprice.mean().alias("avg_price"),
                c.l_discount.mean().alias("avg_disc"),
                pl.len().alias("count_order"),
            )
            .sort("l_returnflag", "l_linestatus")
            .sink_parquet(f"{out}/part-0.parquet", compression="zstd", compression_level=3)
        )


if __name__ == "__main__":
    engine, workload, data, out = sys.argv[1:5]
    os.makedirs(out, exist_ok=True)
    {"duckdb": duckdb_run, "datafusion": datafusion_run, "polars": polars_run}[engine](workload, data, out)

"""Reads a Delta table with independent readers and prints what they see.

    delta_check.py TABLE [--key COL] [--clean FOLDER] [--storage-option K=V ...]

TABLE is a folder or an s3:// URL. The table is read by delta-rs's Python
package (`deltalake`) and by Polars' `read_delta`. For each reader the JSON
report holds the row count, the count of distinct `--key` values, the key
values seen more than once (at most 20), and the sorted rows' digest. With
`--clean`, the committed rows of a plain Parquet folder (read with pyarrow,
every `*.parquet` under it) get the same report, so the test compares them.
It also lists the table's version, partition columns, and the files its
snapshot holds.
"""

import argparse
import hashlib
import json
import sys

import deltalake
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds


def report(table: pa.Table, key: str | None) -> dict:
    out = {"rows": table.num_rows, "columns": sorted(table.column_names)}
    if key:
        counts = table.group_by(key).aggregate([([], "count_all")])
        dup = counts.filter(pa.compute.greater(counts["count_all"], 1))
        out["distinct"] = counts.num_rows
        out["duplicates"] = dup.column(key).to_pylist()[:20]
    # order-independent digest of the rows, columns by name
    names = sorted(table.column_names)
    rows = sorted(
        json.dumps([str(v) for v in r], sort_keys=True)
        for r in zip(*(table.column(n).to_pylist() for n in names))
    )
    out["digest"] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("--key")
    p.add_argument("--clean")
    p.add_argument("--storage-option", action="append", default=[])
    a = p.parse_args()
    options = dict(o.split("=", 1) for o in a.storage_option) or None

    dt = deltalake.DeltaTable(a.table, storage_options=options)
    by_deltalake = dt.to_pyarrow_table()
    by_polars = pl.read_delta(a.table, storage_options=options).to_arrow()
    # Polars reads strings as its own view type: compare values, not types
    by_polars = by_polars.cast(
        pa.schema([by_deltalake.schema.field(n) for n in by_polars.column_names])
    )
    out = {
        "version": dt.version(),
        "partition_columns": dt.metadata().partition_columns,
        "configuration": dt.metadata().configuration,
        "files": sorted(dt.file_uris()),
        "deltalake": report(by_deltalake, a.key),
        "polars": report(by_polars, a.key),
        "history": [
            {k: h.get(k) for k in ("operation", "sluice")} for h in dt.history()
        ],
    }
    if a.clean:
        clean = ds.dataset(a.clean, format="parquet", exclude_invalid_files=True)
        out["clean"] = report(clean.to_table(), a.key)
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

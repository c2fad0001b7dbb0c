-- lineitem as dumped to Parquet by tests/pipelines/tpch_dump.toml ({DUMP}).
CREATE VIEW lineitem AS SELECT * FROM read_parquet('{DUMP}/*.parquet');

//! End-to-end tests of the `sluice` binary: example pipelines checked against
//! DuckDB, metadata read by pyarrow, crash recovery, validation errors and bad
//! input. DuckDB and pyarrow come from the Python environment `scripts/test`
//! prepares (`SLUICE_PYTHON`).

mod dead_letters;
mod delta;
mod kafka;
mod lineage;
mod metrics;
mod placement;
mod remote;
mod rollout;
mod schemas;
mod stages;
mod streaming;
mod traces;
mod ui;
mod windows;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(root())
        .env_remove("SLUICE_FAILPOINT")
        .output()
        .expect("the sluice binary runs")
}

/// A loopback `host:port` no one listens on (now).
fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "sluice failed:\n{}", text(&o));
    o
}

fn python() -> String {
    let py = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&py)
        .args(["-c", "import duckdb, pyarrow"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{py} cannot import duckdb and pyarrow; run the tests with ./scripts/test (it prepares target/pyenv)"
    );
    py
}

/// Runs the DuckDB checker; returns its JSON report.
fn duckdb_check(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("tests/support/duckdb_check.py"))
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "DuckDB check {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("the checker prints JSON")
}

/// Writes `text` as `dir/pipeline.toml` (its relative URLs land in `dir`).
fn pipeline_in(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn set(key: &str, value: &Path) -> String {
    format!("{key}=\"{}\"", value.display())
}

fn commits(dir: &Path) -> Vec<serde_json::Value> {
    // only `.json`: a running pipeline's store stages each commit as
    // `<name>.json#N` and renames it, so a staged name can vanish between
    // listing and reading
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("_sluice/commits"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("_sluice") {
                    stack.push(p);
                }
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn tpch_revenue_example_matches_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("out");
    ok(sluice(&[
        "run",
        "-q",
        "tests/pipelines/tpch_dump.toml",
        "--set",
        &set("sinks.raw.url", &raw),
    ]));
    let run = ok(sluice(&[
        "run",
        "examples/tpch_revenue/pipeline.toml",
        "--set",
        "sources.lineitem.scale_factor=0.01",
        "--set",
        &set("sinks.out.url", &out),
    ]));
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(summary.contains("stage shipped"), "{summary}");
    let report = duckdb_check(&[
        "compare",
        "--setup",
        "tests/duckdb/tpch_revenue.sql",
        "--var",
        &format!("DUMP={}", raw.display()),
        "--stage",
        "priced=sql/tpch_revenue/priced.sql",
        "--stage",
        "shipped=sql/tpch_revenue/shipped.sql",
        "--query",
        "SELECT * FROM shipped",
        "--actual",
        out.to_str().unwrap(),
    ]);
    assert!(
        report["expected_rows"].as_u64().unwrap() > 30_000,
        "{report}"
    );
}

#[test]
fn orders_enrich_example_matches_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let orders = tmp.path().join("orders");
    let daily = tmp.path().join("daily");
    ok(sluice(&[
        "run",
        "-q",
        "examples/orders_enrich/pipeline.toml",
        "--set",
        &set("sinks.orders_by_country.url", &orders),
        "--set",
        &set("sinks.daily_csv.url", &daily),
    ]));
    let data = format!("DATA={}", root().join("testdata/shop").display());
    let base = [
        "compare",
        "--setup",
        "tests/duckdb/orders_enrich.sql",
        "--var",
        &data,
        "--stage",
        "enriched=sql/orders_enrich/enriched.sql",
    ];
    let r = duckdb_check(
        &[
            &base[..],
            &[
                "--query",
                "SELECT * FROM enriched",
                "--actual",
                orders.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(r["expected_rows"], 2100, "{r}");
    let r = duckdb_check(
        &[
            &base[..],
            &[
                "--stage",
                "daily=sql/orders_enrich/daily.sql",
                "--query",
                "SELECT * FROM daily",
                "--actual",
                daily.to_str().unwrap(),
                "--format",
                "csv",
            ],
        ]
        .concat(),
    );
    assert!(r["expected_rows"].as_u64().unwrap() > 100, "{r}");
    // hive layout: one folder per country, the column is not repeated inside
    assert!(orders.join("country=unknown").is_dir());
}

#[test]
fn metadata_travels_into_parquet_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    ok(sluice(&[
        "run",
        "-q",
        "examples/tpch_revenue/pipeline.toml",
        "--set",
        "sources.lineitem.scale_factor=0.01",
        "--set",
        &set("sinks.out.url", &out),
    ]));
    let r = duckdb_check(&["metadata", "--sink", out.to_str().unwrap()]);
    let committed: u64 = commits(&out)
        .iter()
        .map(|c| c["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(r["rows"].as_u64(), Some(committed), "{r}");
    assert_eq!(r["duckdb_rows"].as_u64(), Some(committed), "{r}");
    for key in ["metadata", "kv_metadata"] {
        let md = &r[key];
        assert_eq!(md["sluice.pipeline"], "tpch_revenue@1.0.0", "{key}: {md}");
        assert_eq!(md["sluice.schema"], "shipped_lines", "{key}: {md}");
        assert_eq!(md["sluice.schema.version"], "1", "{key}: {md}");
        let lineage: Vec<serde_json::Value> =
            serde_json::from_str(md["sluice.lineage"].as_str().unwrap()).unwrap();
        let stages: Vec<&str> = lineage
            .iter()
            .map(|l| l["stage"].as_str().unwrap())
            .collect();
        assert_eq!(
            stages,
            vec!["lineitem", "priced", "shipped", "out"],
            "{key}"
        );
        let prov: serde_json::Value =
            serde_json::from_str(md["sluice.provenance"].as_str().unwrap()).unwrap();
        assert_eq!(
            prov["sources"][0]["parameters"]["scale_factor"], 0.01,
            "{prov}"
        );
    }

    // read it back as a source: the lineage grows, provenance keeps the upstream
    let pipeline = tmp.path().join("again.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"again\"\nversion = \"2\"\n[sources.shipped]\nkind = \"parquet\"\npath = \"{}\"\n\
             [stages.big]\nkind = \"sql\"\ninputs = [\"shipped\"]\nquery = \"SELECT * FROM shipped WHERE l_quantity > 40\"\n\
             [sinks.big_out]\nkind = \"parquet\"\ninput = \"big\"\nurl = \"big\"\n",
            out.display()
        ),
    )
    .unwrap();
    ok(sluice(&["run", "-q", pipeline.to_str().unwrap()]));
    let c = &commits(&tmp.path().join("big"))[0];
    let stages: Vec<&str> = c["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        vec![
            "lineitem", "priced", "shipped", "out", "shipped", "big", "big_out"
        ]
    );
    assert_eq!(
        c["provenance"]["sources"][0]["upstream"]["pipeline"],
        "tpch_revenue@1.0.0"
    );
    assert!(c["rows"].as_u64().unwrap() > 0);
}

#[test]
fn a_crash_between_writing_and_committing_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let crashed = tmp.path().join("crashed");
    let args = |out: &Path| {
        vec![
            "run".to_string(),
            "-q".into(),
            "examples/tpch_revenue/pipeline.toml".into(),
            "--set".into(),
            "sources.lineitem.scale_factor=0.02".into(),
            "--set".into(),
            "sources.lineitem.parts=6".into(),
            "--set".into(),
            "settings.epoch.max_rows=45000".into(),
            "--set".into(),
            set("sinks.out.url", out),
        ]
    };
    let run = |out: &Path, failpoint: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(args(out))
            .current_dir(root())
            .env_remove("SLUICE_FAILPOINT");
        if let Some(f) = failpoint {
            c.env("SLUICE_FAILPOINT", f);
        }
        c.output().unwrap()
    };
    ok(run(&clean, None));
    assert_eq!(
        commits(&clean).len(),
        3,
        "6 parts of 20k rows in epochs of at most 45k rows"
    );

    // the process dies after writing epoch 1's files, before its commit
    let died = run(&crashed, Some("before_commit@1"));
    assert!(!died.status.success(), "the failpoint aborts the process");
    assert!(
        text(&died).contains("failpoint `before_commit` hit at epoch 1"),
        "{}",
        text(&died)
    );
    assert_eq!(commits(&crashed).len(), 1);
    let listed: usize = commits(&crashed)
        .iter()
        .map(|c| c["files"].as_array().unwrap().len())
        .sum();
    assert!(
        data_files(&crashed).len() > listed,
        "epoch 1's files are on disk but not committed"
    );

    // a reader following the commit log sees only epoch 0
    let partial = duckdb_check(&["metadata", "--sink", crashed.to_str().unwrap()]);
    assert_eq!(partial["rows"], commits(&crashed)[0]["rows"]);

    // the rerun deletes the debris and redoes epoch 1 from the recorded offsets
    let rerun = ok(run(&crashed, None));
    let _ = rerun;
    assert_eq!(commits(&crashed).len(), 3);
    let listed: usize = commits(&crashed)
        .iter()
        .map(|c| c["files"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        data_files(&crashed).len(),
        listed,
        "no uncommitted file is left"
    );
    let r = duckdb_check(&[
        "compare",
        "--query",
        &format!(
            "SELECT * FROM read_parquet('{}/*.parquet')",
            clean.display()
        ),
        "--actual",
        crashed.to_str().unwrap(),
    ]);
    assert_eq!(r["missing_count"], 0);
}

#[test]
fn a_crash_between_two_sinks_commits_replays_only_the_missing_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let orders = tmp.path().join("orders");
    let daily = tmp.path().join("daily");
    let args = [
        "run".to_string(),
        "-q".into(),
        "examples/orders_enrich/pipeline.toml".into(),
        "--set".into(),
        set("sinks.orders_by_country.url", &orders),
        "--set".into(),
        set("sinks.daily_csv.url", &daily),
    ];
    let died = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&args)
        .current_dir(root())
        .env("SLUICE_FAILPOINT", "between_commits")
        .output()
        .unwrap();
    assert!(!died.status.success());
    // sinks commit in name order: daily_csv first
    assert_eq!(commits(&daily).len(), 1);
    assert_eq!(commits(&orders).len(), 0);
    let daily_before = commits(&daily)[0].clone();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        commits(&daily),
        vec![daily_before],
        "the committed sink is not written again"
    );
    assert_eq!(commits(&orders).len(), 1);
    let data = format!("DATA={}", root().join("testdata/shop").display());
    let r = duckdb_check(&[
        "compare",
        "--setup",
        "tests/duckdb/orders_enrich.sql",
        "--var",
        &data,
        "--stage",
        "enriched=sql/orders_enrich/enriched.sql",
        "--query",
        "SELECT * FROM enriched",
        "--actual",
        orders.to_str().unwrap(),
    ]);
    assert_eq!(r["expected_rows"], 2100);
}

#[test]
fn validate_refuses_every_invalid_pipeline_with_file_key_and_fix() {
    let dir = root().join("testdata/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text_of_file = std::fs::read_to_string(&path).unwrap();
        let expects: Vec<&str> = text_of_file
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let rel = path.strip_prefix(root()).unwrap();
        let out = sluice(&["validate", rel.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}:\n{}",
            rel.display(),
            text(&out)
        );
        let t = text(&out);
        for e in expects {
            assert!(t.contains(e), "{}: expected {e:?} in:\n{t}", rel.display());
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid pipelines found");
}

#[test]
fn every_example_pipeline_validates() {
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let p = entry.unwrap().path().join("pipeline.toml");
        if p.exists() {
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let out = sluice(&["validate", &rel]);
            assert!(out.status.success(), "{rel}: {}", text(&out));
            assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
        }
    }
}

fn bad_input_run(kind: &str, file: &str, columns: &str) -> (Output, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"bad_input\"\n[sources.input]\nkind = \"{kind}\"\npath = \"{}\"\n{columns}\n\
             [sinks.out]\nkind = \"parquet\"\ninput = \"input\"\nurl = \"out\"\n",
            root().join(file).display()
        ),
    )
    .unwrap();
    let out = sluice(&["run", "-q", pipeline.to_str().unwrap()]);
    let sink = tmp.path().join("out");
    (out, sink, tmp)
}

#[test]
fn bad_rows_fail_the_run_naming_source_file_and_line_and_commit_nothing() {
    let cols = "columns = [{ name = \"id\", type = \"bigint\" }, { name = \"name\", type = \"varchar\" }, { name = \"amount\", type = \"bigint\" }]";
    let jcols =
        "columns = [{ name = \"id\", type = \"bigint\" }, { name = \"name\", type = \"varchar\" }]";
    for (kind, file, columns, line) in [
        ("csv", "testdata/bad/wrong_field_count.csv", "", 4),
        ("csv", "testdata/bad/bad_value.csv", cols, 5),
        ("jsonl", "testdata/bad/bad_line.jsonl", jcols, 3),
        ("jsonl", "testdata/bad/bad_type.jsonl", jcols, 3),
    ] {
        let (out, sink, _tmp) = bad_input_run(kind, file, columns);
        assert_eq!(out.status.code(), Some(1), "{file}: {}", text(&out));
        let t = text(&out);
        assert!(t.contains("source `input`"), "{file}: {t}");
        assert!(t.contains(file), "{file}: {t}");
        assert!(
            t.contains(&format!("line {line}")),
            "{file}: expected line {line} in {t}"
        );
        assert!(commits(&sink).is_empty(), "{file}: nothing is committed");
        assert!(
            data_files(&sink).is_empty(),
            "{file}: no data file is left behind"
        );
    }
}

#[test]
fn explain_shows_one_fused_plan_with_the_filter_below_the_stage_border() {
    let out = ok(sluice(&[
        "explain",
        "examples/tpch_revenue/pipeline.toml",
        "--set",
        "sources.lineitem.scale_factor=0.01",
    ]));
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(t.contains("stage  shipped (sql) <- priced"), "{t}");
    let pos = |needle: &str| {
        t.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in\n{t}"))
    };
    // shipped's WHERE runs inside priced's part of the plan, right above the scan
    assert!(pos("StageExec: stage=shipped") < pos("StageExec: stage=priced"));
    assert!(pos("StageExec: stage=priced") < pos("FilterExec: l_shipdate"));
    assert!(pos("FilterExec: l_shipdate") < pos("GenerateExec: tpch"));
    // and only the columns the stages use are generated
    assert!(!t[pos("GenerateExec: tpch")..].contains("l_comment"), "{t}");
    for fmt in ["dot", "mermaid"] {
        let out = ok(sluice(&[
            "explain",
            "examples/tpch_revenue/pipeline.toml",
            "--format",
            fmt,
        ]));
        let g = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(g.contains("priced") && g.contains("shipped"), "{fmt}: {g}");
    }
}

#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    // `sluice explain … | head`: the reader is gone before the first write.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["explain", "examples/tpch_revenue/pipeline.toml"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}

#[test]
fn a_second_run_reads_nothing_new_and_reset_rebuilds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = [
        "run",
        "examples/tpch_revenue/pipeline.toml",
        "--set",
        "sources.lineitem.scale_factor=0.005",
    ];
    let url = set("sinks.out.url", &out);
    ok(sluice(&[&args[..], &["-q", "--set", &url]].concat()));
    let first = commits(&out);
    let again = ok(sluice(&[&args[..], &["-q", "--set", &url]].concat()));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing new to read"));
    assert_eq!(commits(&out), first);
    ok(sluice(
        &[&args[..], &["-q", "--reset", "--set", &url]].concat(),
    ));
    let rebuilt = commits(&out);
    assert_eq!(rebuilt.len(), 1);
    assert_ne!(rebuilt[0]["run_id"], first[0]["run_id"]);
    assert_eq!(rebuilt[0]["rows"], first[0]["rows"]);
    assert_eq!(
        data_files(&out).len(),
        rebuilt[0]["files"].as_array().unwrap().len()
    );

    let inspect = ok(sluice(&["inspect", out.to_str().unwrap()]));
    let t = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        t.contains("sink `out` of pipeline tpch_revenue@1.0.0"),
        "{t}"
    );
    assert!(t.contains("l_orderkey: Int64"), "{t}");
    assert!(t.contains("3. shipped (sql"), "{t}");
}

/// A generator through `filter` into a Parquet sink at `out`, epochs of
/// 10,000 rows.
fn filtered_events(dir: &Path, filter: &str) -> PathBuf {
    pipeline_in(
        dir,
        &format!(
            r#"[pipeline]
name = "filtered"

[settings]
commit_interval = "0s"

[settings.epoch]
max_rows = 10000

[sources.events]
kind = "generator"
total_rows = 30000

[stages.kept]
kind = "sql"
inputs = ["events"]
query = "SELECT event_id, key, value FROM events WHERE {filter}"

[sinks.out]
kind = "parquet"
input = "kept"
url = "out"
"#
        ),
    )
}

#[test]
fn commits_of_no_rows_leave_one_zero_row_file_that_glob_readers_read() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let p = filtered_events(tmp.path(), "event_id < 0");
    ok(sluice(&["run", "-q", p.to_str().unwrap()]));
    let cs = commits(&out);
    assert!(cs.len() >= 2, "{} commits", cs.len());
    // the first commit lists one file of no rows; later ones need none
    assert_eq!(cs[0]["files"].as_array().unwrap().len(), 1, "{}", cs[0]);
    assert_eq!(cs[0]["files"][0]["rows"], 0);
    for c in &cs[1..] {
        assert!(c["files"].as_array().unwrap().is_empty(), "{c}");
    }
    // a reader that globs the folder finds the columns, and no rows
    let glob = format!("read_parquet('{}/*.parquet')", out.display());
    let r = rollout::one(
        &[],
        &format!(
            "SELECT count(*) AS n, (SELECT string_agg(column_name, ',') FROM (DESCRIBE SELECT * FROM {glob})) AS cols FROM {glob}"
        ),
    );
    assert_eq!(r["n"], 0, "{r}");
    assert_eq!(r["cols"], "event_id,key,value", "{r}");

    // a run that makes rows writes no zero-row file
    let tmp = tempfile::tempdir().unwrap();
    let p = filtered_events(tmp.path(), "true");
    ok(sluice(&["run", "-q", p.to_str().unwrap()]));
    for c in commits(&tmp.path().join("out")) {
        for f in c["files"].as_array().unwrap() {
            assert!(f["rows"].as_u64().unwrap() > 0, "{c}");
        }
    }
}

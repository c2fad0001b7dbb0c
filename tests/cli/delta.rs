//! The delta sink through crashes: the kill pipeline with both sinks made
//! Delta tables, killed with SIGKILL at 20 random points, on local disk and
//! on an S3-compatible server (moto). Every row is read back exactly once by
//! delta-rs's Python package and by Polars' `read_delta`, equal to a clean
//! run's Parquet output; the log holds one version per sluice commit.

use std::path::Path;
use std::process::Command;

use super::streaming::{finish, kill_repeatedly, run_args, start_s3, write_input};
use super::{data_files, ok, python, root, sluice, text};

/// The kill pipeline with both sinks written as Delta tables.
fn delta_args(input: &str, files_out: &str, events_out: &str) -> Vec<String> {
    let mut args = run_args(input, files_out, events_out);
    for sink in ["files_out", "events_out"] {
        args.push("--set".into());
        args.push(format!("sinks.{sink}.kind=\"delta\""));
    }
    args
}

/// What `tests/support/delta_check.py` reports of a table.
fn delta_check(table: &str, key: &str, clean: &Path, options: &[String]) -> serde_json::Value {
    let mut c = Command::new(python());
    c.arg(root().join("tests/support/delta_check.py"))
        .args([table, "--clean"])
        .arg(clean);
    if !key.is_empty() {
        c.args(["--key", key]);
    }
    for o in options {
        c.args(["--storage-option", o]);
    }
    let out = c.output().expect("python runs");
    assert!(out.status.success(), "delta check failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("the checker prints JSON")
}

/// Both readers see the clean run's rows, each key once.
fn same_rows_once(r: &serde_json::Value) {
    same_rows(r);
    for reader in ["deltalake", "polars"] {
        let got = &r[reader];
        assert_eq!(got["duplicates"], serde_json::json!([]), "{reader}: {r}");
        assert_eq!(got["distinct"], r["clean"]["distinct"], "{reader}: {r}");
    }
}

/// Both readers see the clean run's rows (as a multiset).
fn same_rows(r: &serde_json::Value) {
    let clean = &r["clean"];
    for reader in ["deltalake", "polars"] {
        let got = &r[reader];
        assert_eq!(got["rows"], clean["rows"], "{reader}: {r}");
        assert_eq!(got["digest"], clean["digest"], "{reader}: {r}");
    }
}

/// Each version the runs committed is one sluice commit of consecutive
/// epochs (the first version creates the table).
fn one_version_per_commit(r: &serde_json::Value) {
    let history = r["history"].as_array().unwrap();
    let mut epochs: Vec<u64> = history
        .iter()
        .filter_map(|h| h["sluice"]["epoch"].as_u64())
        .collect();
    assert_eq!(
        epochs.len(),
        history.len(),
        "every version is a sluice commit: {history:?}"
    );
    epochs.sort_unstable();
    let before = epochs.len();
    epochs.dedup();
    assert_eq!(before, epochs.len(), "no epoch committed twice: {epochs:?}");
}

#[test]
fn twenty_kills_of_delta_sinks_on_local_disk_leave_every_row_once_for_delta_readers() {
    let tmp = tempfile::tempdir().unwrap();
    write_input(&tmp.path().join("in"), 150);
    let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
    finish(
        &run_args(&p("in"), &p("clean_files"), &p("clean_events")),
        &[],
    );
    let killed = delta_args(&p("in"), &p("files"), &p("events"));
    let runs = kill_repeatedly(&killed, &[], 20, 11);
    finish(&killed, &[]);
    eprintln!("{runs} runs, 20 of them killed with SIGKILL");
    for (table, clean, key) in [
        ("files", "clean_files", "id"),
        ("events", "clean_events", "event_id"),
    ] {
        let r = delta_check(&p(table), key, &tmp.path().join(clean), &[]);
        same_rows_once(&r);
        one_version_per_commit(&r);
        // nothing but the snapshot's files is left of the killed runs
        let mut live: Vec<String> = r["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                f.as_str()
                    .unwrap()
                    .trim_start_matches("file://")
                    .to_string()
            })
            .collect();
        live.sort();
        let mut on_disk: Vec<String> = data_files(&tmp.path().join(table))
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, live, "files the log does not hold were left");
    }
    // a run after the end commits nothing: the table's txn says it is done
    let before = delta_check(
        &p("events"),
        "event_id",
        &tmp.path().join("clean_events"),
        &[],
    );
    finish(&killed, &[]);
    let after = delta_check(
        &p("events"),
        "event_id",
        &tmp.path().join("clean_events"),
        &[],
    );
    assert_eq!(before["version"], after["version"]);
}

#[test]
fn twenty_kills_of_a_delta_sink_on_an_s3_compatible_server_leave_every_row_once() {
    let s3 = start_s3();
    let env = s3.env();
    s3.create_bucket("sluice");
    let tmp = tempfile::tempdir().unwrap();
    write_input(&tmp.path().join("in"), 150);
    let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
    finish(
        &run_args(&p("in"), &p("clean_files"), &p("clean_events")),
        &[],
    );
    // the files stay local (the dir source tails a local folder); the
    // generator's rows go to S3
    let killed = delta_args(&p("in"), &p("files"), "s3://sluice/events");
    let runs = kill_repeatedly(&killed, &env, 20, 5);
    finish(&killed, &env);
    eprintln!("{runs} runs on S3, 20 killed");
    let options = [
        "AWS_ACCESS_KEY_ID=test".to_string(),
        "AWS_SECRET_ACCESS_KEY=test".into(),
        "AWS_REGION=us-east-1".into(),
        format!("AWS_ENDPOINT_URL={}", s3.endpoint),
        "AWS_ALLOW_HTTP=true".into(),
    ];
    let r = delta_check(
        "s3://sluice/events",
        "event_id",
        &tmp.path().join("clean_events"),
        &options,
    );
    same_rows_once(&r);
    one_version_per_commit(&r);
    let r = delta_check(&p("files"), "id", &tmp.path().join("clean_files"), &[]);
    same_rows_once(&r);
}

#[test]
fn inspect_compact_and_vacuum_a_delta_table() {
    let tmp = tempfile::tempdir().unwrap();
    write_input(&tmp.path().join("in"), 30);
    let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
    finish(
        &run_args(&p("in"), &p("clean_files"), &p("clean_events")),
        &[],
    );
    finish(&delta_args(&p("in"), &p("files"), &p("events")), &[]);
    let table = p("events");
    let small = data_files(&tmp.path().join("events")).len();
    assert!(small > 10, "many small commits: {small} files");

    let o = ok(sluice(&["inspect", &table]));
    let shown = text(&o);
    assert!(shown.contains("Delta history"), "{shown}");
    assert!(shown.contains("STREAMING UPDATE"), "{shown}");

    let o = ok(sluice(&["compact", &table, "--json"]));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["files_removed"].as_u64().unwrap() as usize, small, "{c}");
    assert_eq!(c["files_added"], 1, "{c}");
    let r = delta_check(&table, "event_id", &tmp.path().join("clean_events"), &[]);
    same_rows_once(&r);
    assert_eq!(r["files"].as_array().unwrap().len(), 1);
    // again: nothing to do, no version
    let o = ok(sluice(&["compact", &table, "--json"]));
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["version"], serde_json::Value::Null, "{again}");

    // the compacted files are kept for older versions' readers, until a vacuum
    assert_eq!(data_files(&tmp.path().join("events")).len(), small + 1);
    let o = sluice(&["vacuum", &table, "--retain", "0s"]);
    assert!(
        !o.status.success(),
        "a retention under 7 days needs --force"
    );
    ok(sluice(&[
        "vacuum",
        &table,
        "--retain",
        "0s",
        "--force",
        "--dry-run",
    ]));
    assert_eq!(data_files(&tmp.path().join("events")).len(), small + 1);
    ok(sluice(&["vacuum", &table, "--retain", "0s", "--force"]));
    assert_eq!(data_files(&tmp.path().join("events")).len(), 1);
    same_rows_once(&delta_check(
        &table,
        "event_id",
        &tmp.path().join("clean_events"),
        &[],
    ));
}

#[test]
fn the_main_example_as_a_delta_table_reads_as_its_parquet_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (parquet, table) = (tmp.path().join("parquet"), tmp.path().join("table"));
    for (pipeline, key, out) in [
        (
            "examples/tpch_revenue/pipeline.toml",
            "sinks.out.url",
            &parquet,
        ),
        ("examples/tpch_revenue/delta.toml", "sinks.out.url", &table),
    ] {
        ok(sluice(&[
            "run",
            "-q",
            pipeline,
            "--set",
            "sources.lineitem.scale_factor=0.01",
            "--set",
            &super::set(key, out),
        ]));
    }
    let r = delta_check(table.to_str().unwrap(), "", &parquet, &[]);
    same_rows(&r);
    assert_eq!(r["partition_columns"], serde_json::json!(["ship_year"]));
    assert!(r["deltalake"]["rows"].as_u64().unwrap() > 30_000, "{r}");
    // sluice's schema metadata is in the table's properties
    assert_eq!(r["configuration"]["sluice.schema"], "shipped_lines", "{r}");
}

//! External stages end to end: Go and Rust twins, crashes, hangs, broken
//! output, row errors. Needs the stage binaries of `scripts/build-stages`
//! (`scripts/test` builds them first).

use std::path::Path;
use std::process::{Command, Output};

use super::{commits, duckdb_check, ok, root, set, text};

pub(crate) fn stages_built() {
    for s in [
        "go/validate",
        "go/enrich",
        "rust/validate",
        "rust/enrich",
        "rust/faulty",
        "go/parse",
        "go/score",
        "go/scoresvc",
        "rust/parse",
        "rust/score",
    ] {
        let p = root().join("target/stages").join(s);
        assert!(
            p.exists(),
            "{} is missing: run ./scripts/build-stages (./scripts/test does)",
            p.display()
        );
    }
}

fn run(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(root())
        .env_remove("SLUICE_FAILPOINT")
        .output()
        .unwrap()
}

fn mixed(out: &Path, validate: &str, enrich: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--json".into(),
        "examples/mixed_stages/pipeline.toml".into(),
        "--set".into(),
        "sources.lineitem.scale_factor=0.01".into(),
        "--set".into(),
        format!("stages.valid.command=[\"../../target/stages/{validate}\"]"),
        "--set".into(),
        format!("stages.enriched.command=[\"../../target/stages/{enrich}\"]"),
        "--set".into(),
        set("sinks.out.url", out),
    ];
    for e in extra {
        args.push("--set".into());
        args.push(e.to_string());
    }
    run(&args)
}

fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{}", text(o)))
}

fn component<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

#[test]
fn go_and_rust_twins_give_the_same_rows_as_duckdb() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    ok(run(&[
        "run".into(),
        "-q".into(),
        "tests/pipelines/tpch_dump.toml".into(),
        "--set".into(),
        set("sinks.raw.url", &raw),
    ]));
    let expected =
        std::fs::read_to_string(root().join("tests/duckdb/mixed_stages_expected.sql")).unwrap();
    let dump = format!("DUMP={}", raw.display());
    let mut skipped = Vec::new();
    for (validate, enrich) in [
        ("go/validate", "rust/enrich"),
        ("rust/validate", "go/enrich"),
        ("go/validate", "go/enrich"),
        ("rust/validate", "rust/enrich"),
    ] {
        let out = tmp.path().join(format!(
            "{}-{}",
            validate.replace('/', "_"),
            enrich.replace('/', "_")
        ));
        let o = ok(mixed(&out, validate, enrich, &[]));
        let s = summary(&o);
        skipped.push(component(&s, "valid")["rows_skipped"].as_u64().unwrap());
        let r = duckdb_check(&[
            "compare",
            "--setup",
            "tests/duckdb/tpch_revenue.sql",
            "--var",
            &dump,
            "--query",
            &expected,
            "--actual",
            out.to_str().unwrap(),
        ]);
        assert!(
            r["expected_rows"].as_u64().unwrap() > 50_000,
            "{validate}+{enrich}: {r}"
        );
        let lineage: Vec<String> = commits(&out)[0]["lineage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "{}:{}",
                    l["stage"].as_str().unwrap(),
                    l["language"].as_str().unwrap()
                )
            })
            .collect();
        let lang = |p: &str| p.split('/').next().unwrap().to_string();
        assert!(
            lineage.contains(&format!("valid:{}", lang(validate))),
            "{lineage:?}"
        );
        assert!(
            lineage.contains(&format!("enriched:{}", lang(enrich))),
            "{lineage:?}"
        );
    }
    assert!(
        skipped.iter().all(|s| *s == skipped[0] && *s > 0),
        "row errors differ: {skipped:?}"
    );
}

#[test]
fn row_errors_fail_the_epoch_under_on_error_fail() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = mixed(
        &out,
        "go/validate",
        "rust/enrich",
        &["stages.valid.on_error=\"fail\""],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("stage `valid` failed: [REJECTED]"), "{t}");
    assert!(t.contains("exceeds 45"), "{t}");
    assert!(commits(&out).is_empty());
}

#[test]
fn row_errors_of_a_stage_go_to_the_dead_letter_sink_with_the_row() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let (out, dead) = (tmp.path().join("out"), tmp.path().join("dead"));
    let skip = summary(&ok(mixed(
        &tmp.path().join("skip"),
        "go/validate",
        "rust/enrich",
        &[],
    )));
    let skipped = component(&skip, "valid")["rows_skipped"].as_u64().unwrap();
    let o = ok(mixed(
        &out,
        "go/validate",
        "rust/enrich",
        &[
            "stages.valid.on_error=\"dead_letter\"",
            &set("dead_letter.url", &dead),
        ],
    ));
    let s = summary(&o);
    assert_eq!(
        component(&s, "valid")["rows_dead_lettered"].as_u64(),
        Some(skipped),
        "{s}"
    );
    let r = duckdb_check(&["metadata", "--sink", dead.to_str().unwrap()]);
    assert_eq!(r["duckdb_rows"].as_u64(), Some(skipped), "{r}");
    let listed = run(&[
        "dead-letters".into(),
        dead.to_string_lossy().into(),
        "--json".into(),
    ]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            first["role"].as_str(),
            first["component"].as_str(),
            first["code"].as_str()
        ),
        (Some("stage"), Some("valid"), Some("REJECTED"))
    );
    assert!(
        first["message"].as_str().unwrap().contains("exceeds 45"),
        "{first}"
    );
    // the raw input is the row the stage refused, as JSON
    let row: serde_json::Value = serde_json::from_str(first["raw"].as_str().unwrap()).unwrap();
    assert!(
        row["l_quantity"].is_string() || row["l_quantity"].is_number(),
        "{row}"
    );
}

fn faulty(out: &Path, config: &str) -> Output {
    run(&[
        "run".into(),
        "--json".into(),
        "tests/pipelines/faulty.toml".into(),
        "--set".into(),
        format!("stages.f.config={config}"),
        "--set".into(),
        set("sinks.out.url", out),
    ])
}

fn same_rows(a: &Path, b: &Path) {
    let r = duckdb_check(&[
        "compare",
        "--query",
        &format!("SELECT * FROM read_parquet('{}/*.parquet')", a.display()),
        "--actual",
        b.to_str().unwrap(),
    ]);
    assert_eq!(r["missing_count"], 0, "{r}");
}

#[test]
fn a_stage_that_crashes_mid_epoch_is_restarted_and_the_epoch_rerun_without_duplicates() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    ok(faulty(&clean, "{}"));
    let crashed = tmp.path().join("crashed");
    let marker = tmp.path().join("crashed-once");
    let o = ok(faulty(
        &crashed,
        &format!("{{ crash_at_batch = 5, once = \"{}\" }}", marker.display()),
    ));
    assert!(marker.exists(), "the stage did crash once");
    let s = summary(&o);
    assert_eq!(component(&s, "f")["process_starts"], 2, "{s}");
    assert_eq!(commits(&crashed).len(), 1);
    same_rows(&clean, &crashed);
}

#[test]
fn a_hung_stage_hits_its_timeout_and_is_replaced() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    ok(faulty(&clean, "{}"));
    let hung = tmp.path().join("hung");
    let marker = tmp.path().join("hung-once");
    let o = ok(faulty(
        &hung,
        &format!("{{ hang_at_batch = 3, once = \"{}\" }}", marker.display()),
    ));
    let s = summary(&o);
    assert_eq!(component(&s, "f")["process_starts"], 2, "{s}");
    same_rows(&clean, &hung);
}

#[test]
fn output_that_breaks_the_manifest_names_the_stage_and_the_field() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = faulty(&out, "{ bad_output = true }");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("stage `f` failed: [SCHEMA_MISMATCH]"), "{t}");
    assert!(
        t.contains("field `l_orderkey`: expected Int64, got Utf8"),
        "{t}"
    );
    assert!(commits(&out).is_empty());
}

#[test]
fn the_conformance_kit_certifies_every_example_stage_in_both_languages() {
    stages_built();
    for s in [
        "go/identity",
        "rust/identity",
        "go/validate",
        "rust/validate",
        "go/enrich",
        "rust/enrich",
    ] {
        let bin = root().join("target/stages").join(s);
        // the child's socket goes in TMPDIR; the kit removes it at the end
        let tmp = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["stage", "check", "--"])
            .arg(&bin)
            .current_dir(root())
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let t = text(&o);
        assert!(o.status.success(), "{s}:\n{t}");
        assert!(t.contains("0 failed"), "{s}:\n{t}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".sock"))
            .collect();
        assert!(left.is_empty(), "{s}: sockets left behind: {left:?}");
        for check in [
            "describe",
            "health",
            "exchange",
            "empty",
            "malformed",
            "cancel",
            "backpressure",
            "concurrent",
        ] {
            assert!(
                t.lines().any(|l| l.contains(check) && l.contains("pass")),
                "{s}: `{check}` did not pass:\n{t}"
            );
        }
        if s.ends_with("identity") {
            assert!(
                t.lines().any(|l| l.contains("types") && l.contains("pass")),
                "{s}: type fidelity:\n{t}"
            );
            assert!(
                t.lines().any(|l| l.contains("large") && l.contains("pass")),
                "{s}: large batches:\n{t}"
            );
        }
    }
}

#[test]
fn the_conformance_kit_fails_a_stage_that_breaks_the_protocol() {
    stages_built();
    let bin = root().join("target/stages/rust/faulty");
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "stage",
            "check",
            "--config",
            r#"{"bad_output": true}"#,
            "--",
        ])
        .arg(&bin)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.lines()
            .any(|l| l.contains("types") && l.contains("FAIL") && l.contains("SCHEMA_MISMATCH")),
        "{t}"
    );
}

/// Runs a generator of 100 rows through `tests/support/lying_stage.py`
/// (a pyarrow.flight stage) lying as `lie` says, dead-lettering row errors.
fn liar(dir: &Path, lie: &str) -> Output {
    let p = super::pipeline_in(
        dir,
        &format!(
            r#"[pipeline]
name = "liar"

[sources.events]
kind = "generator"
total_rows = 100

[stages.liar]
kind = "external"
inputs = ["events"]
command = ["{python}", "{stage}"]
config = {{ lie = "{lie}" }}
on_error = "dead_letter"
retries = 0

[dead_letter]
url = "dead"

[sinks.out]
kind = "parquet"
input = "liar"
url = "out"
"#,
            python = super::python(),
            stage = root().join("tests/support/lying_stage.py").display(),
        ),
    );
    run(&["run".into(), "-q".into(), p.to_str().unwrap().into()])
}

#[test]
fn row_errors_that_name_rows_wrongly_fail_the_run_as_a_protocol_violation() {
    for (lie, says) in [
        ("out_of_range", "names row"),
        ("twice", "twice"),
        ("no_seq", "no `in_seq`"),
        ("second", "a second `row_errors` message"),
        ("empty", "names no row"),
        ("early_flushed", "`flushed` before"),
        ("wrong_epoch", "of epoch"),
        ("ack_body", "rows in an `ack`"),
        ("no_rows_count", "without `rows`"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let o = liar(tmp.path(), lie);
        let t = text(&o);
        assert!(!o.status.success(), "{lie}: {t}");
        assert!(
            t.contains("stage `liar`") && t.contains("protocol violation") && t.contains(says),
            "{lie}: {t}"
        );
        assert!(commits(&tmp.path().join("out")).is_empty(), "{lie}");
        assert!(commits(&tmp.path().join("dead")).is_empty(), "{lie}");
    }
}

#[test]
fn a_row_error_code_outside_the_vocabulary_is_kept_in_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    ok(liar(tmp.path(), "unknown_code"));
    let dead = duckdb_check(&[
        "query",
        "--sink",
        &format!("dead={}", tmp.path().join("dead").display()),
        "--sql",
        "SELECT count(*) AS n, min(code) AS code, min(message) AS message FROM dead",
    ]);
    let r = &dead[0];
    assert!(r["n"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["code"], "REJECTED", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("`SHRUG` is not in"),
        "{r}"
    );
}

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
    // through shared memory (the default for a child stage), and once over
    // Flight: the same rows either way
    for (validate, enrich, shared) in [
        ("go/validate", "rust/enrich", true),
        ("rust/validate", "go/enrich", true),
        ("go/validate", "go/enrich", true),
        ("rust/validate", "rust/enrich", true),
        ("go/validate", "rust/enrich", false),
    ] {
        let out = tmp.path().join(format!(
            "{}-{}-{shared}",
            validate.replace('/', "_"),
            enrich.replace('/', "_")
        ));
        let flight = [
            "stages.valid.shared_memory=false",
            "stages.enriched.shared_memory=false",
        ];
        let extra: &[&str] = if shared { &[] } else { &flight };
        let o = ok(mixed(&out, validate, enrich, extra));
        let s = summary(&o);
        skipped.push(component(&s, "valid")["rows_skipped"].as_u64().unwrap());
        for stage in ["valid", "enriched"] {
            let in_shm = component(&s, stage)["batches_in_shared_memory"]
                .as_u64()
                .unwrap();
            assert_eq!(in_shm > 0, shared, "{validate}+{enrich}: {stage}: {s}");
        }
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
fn the_conformance_kit_certifies_every_example_stage_in_go_rust_and_python() {
    stages_built();
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let python_example = |name: &str| {
        vec![
            python.clone(),
            root()
                .join("sdk/python/examples")
                .join(name)
                .display()
                .to_string(),
        ]
    };
    let mut stages: Vec<(String, Vec<String>, &str)> = [
        "go/identity",
        "rust/identity",
        "go/validate",
        "rust/validate",
        "go/enrich",
        "rust/enrich",
        "go/totals",
        "rust/totals",
    ]
    .iter()
    .map(|s| {
        let bin = root().join("target/stages").join(s).display().to_string();
        (s.to_string(), vec![bin], "null")
    })
    .collect();
    stages.push((
        "python/identity".into(),
        python_example("identity.py"),
        "null",
    ));
    stages.push(("python/totals".into(), python_example("totals.py"), "null"));
    stages.push((
        "python/validate".into(),
        python_example("validate.py"),
        r#"{"max_quantity":45}"#,
    ));
    for (s, command, config) in &stages {
        // the child's socket goes in TMPDIR; the kit removes it at the end
        let tmp = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["stage", "check", "--config", config, "--"])
            .args(command)
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
        for check in ["describe", "versions", "health"] {
            assert!(
                t.lines().any(|l| l.contains(check) && l.contains("pass")),
                "{s}: `{check}` did not pass:\n{t}"
            );
        }
        // every check with batches, over Flight, and through shared memory
        // for the Go and Rust SDKs (Python takes the Flight path only)
        let paths: &[&str] = if s.starts_with("python") {
            &["flight"]
        } else {
            &["flight", "shm"]
        };
        let passed = |check: &str, path: &str| {
            t.lines().any(|l| {
                let cells: Vec<&str> = l.split(['│', '┆']).map(str::trim).collect();
                cells.get(1) == Some(&check)
                    && cells.get(2) == Some(&path)
                    && cells.get(3) == Some(&"pass")
            })
        };
        let mut checks = vec![
            "exchange",
            "empty",
            "malformed",
            "cancel",
            "backpressure",
            "concurrent",
        ];
        if s.ends_with("totals") {
            // killed mid-epoch, replayed from its snapshot: the same rows
            checks.push("state");
        }
        if s.ends_with("identity") {
            // type fidelity, large batches, view types; answers that are
            // the input go back `unchanged` where the engine offers it
            checks.extend(["types", "large", "views", "unchanged"]);
        }
        for path in paths {
            for check in &checks {
                assert!(passed(check, path), "{s}: `{check}` over {path}:\n{t}");
            }
        }
        assert_eq!(
            passed("exchange", "shm"),
            paths.contains(&"shm"),
            "{s}: the paths checked:\n{t}"
        );
    }
}

#[test]
fn the_conformance_kit_fails_a_stage_that_breaks_the_protocol() {
    stages_built();
    let bin = root().join("target/stages/rust/faulty");
    let kit = |config: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["stage", "check", "--config", config, "--"])
            .arg(&bin)
            .output()
            .unwrap();
        (o.status.code(), text(&o))
    };
    let (code, t) = kit(r#"{"bad_output": true}"#);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.lines()
            .any(|l| l.contains("types") && l.contains("FAIL") && l.contains("SCHEMA_MISMATCH")),
        "{t}"
    );
    // a stage that reports rows and keeps them in its output
    let (code, t) = kit(r#"{"report_kept": 3}"#);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.lines()
            .any(|l| l.contains("row_errors") && l.contains("FAIL")),
        "{t}"
    );
    assert!(t.contains("delivered and dead-lettered"), "{t}");
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

/// A stage answering `describe` in a version the engine does not speak, or
/// with v1.1 keys in a v1 manifest, is refused, naming both versions; the
/// liar itself is a v1 stage (it ignores the describe request), which the
/// other tests run.
#[test]
fn a_manifest_in_a_version_the_engine_does_not_speak_is_refused_naming_both() {
    let keys = format!(
        "command = [{:?}, {:?}]",
        super::python(),
        root()
            .join("tests/support/lying_stage.py")
            .display()
            .to_string()
    );
    for (manifest, says) in [
        (
            r#"{"protocol":"sluice.stage.v2"}"#,
            "the stage speaks sluice.stage.v2; this engine speaks sluice.stage.v1.1, sluice.stage.v1",
        ),
        (
            r#"{"timing":{"batch_p99_ms":5,"max_answer_ms":50}}"#,
            "a sluice.stage.v1 manifest carries `plain_types`, `timing` or `shared_memory`",
        ),
        (
            r#"{"protocol":"sluice.stage.v1.1","timing":{"batch_p99_ms":500,"max_answer_ms":50}}"#,
            "the p99 at most the maximum",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let o = orders_through(&keys, 8192, &[("LIAR_MANIFEST", manifest)], tmp.path());
        let t = text(&o);
        assert!(!o.status.success(), "{manifest}: {t}");
        assert!(t.contains(says), "{manifest}: {t}");
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

/// Runs TPC-H `orders` (scale factor 0.01: 15,000 rows, `batch_size` rows
/// per batch) through one external stage, `[stages.through]` with
/// `stage_keys` (TOML lines), into JSON lines under `out`; `env` is added to
/// the engine's environment (and so its child stages').
pub(crate) fn orders_through(
    stage_keys: &str,
    batch_size: usize,
    env: &[(&str, &str)],
    out: &Path,
) -> Output {
    orders_through_with(stage_keys, batch_size, env, out, "-q")
}

/// [`orders_through`], run with `flag` (`-q`, or `--json` for the summary).
fn orders_through_with(
    stage_keys: &str,
    batch_size: usize,
    env: &[(&str, &str)],
    out: &Path,
    flag: &str,
) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "through"

[settings]
batch_size = {batch_size}

[sources.orders]
kind = "tpch"
table = "orders"
scale_factor = 0.01

[stages.through]
kind = "external"
inputs = ["orders"]
{stage_keys}

[sinks.out]
kind = "jsonl"
input = "through"
url = "{out}"
"#,
            out = out.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["run", flag])
        .arg(&pipeline)
        .current_dir(root())
        .env_remove("SLUICE_FAILPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Every line of the JSON-lines files under `out`, sorted.
pub(crate) fn jsonl_rows(out: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for f in std::fs::read_dir(out).unwrap().filter_map(|e| e.ok()) {
        if f.path().extension().is_some_and(|e| e == "jsonl") {
            rows.extend(
                std::fs::read_to_string(f.path())
                    .unwrap()
                    .lines()
                    .map(String::from),
            );
        }
    }
    rows.sort();
    rows
}

fn command_of(program: &Path, args: &[&str]) -> String {
    let mut parts = vec![format!("{:?}", program.display().to_string())];
    parts.extend(args.iter().map(|a| format!("{a:?}")));
    format!("command = [{}]", parts.join(", "))
}

/// An identity stage of each SDK answers every batch `unchanged` (its rows
/// cross once), its input through shared memory (counted: no answer
/// carries rows to show it) and over Flight, and the output is
/// row for row what it is when the rows travel back
/// (`unchanged_answers = false`).
#[test]
fn identity_stages_answer_unchanged_and_deliver_the_same_rows() {
    stages_built();
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let python_identity = root().join("sdk/python/examples/identity.py");
    let stages = [
        command_of(&root().join("target/stages/rust/identity"), &[]),
        command_of(&root().join("target/stages/go/identity"), &[]),
        command_of(Path::new(&python), &[python_identity.to_str().unwrap()]),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, stage) in stages.iter().enumerate() {
        let mut outputs = Vec::new();
        for (shared_memory, unchanged) in [(true, true), (false, true), (true, false)] {
            let out = tmp.path().join(format!("{i}-{shared_memory}-{unchanged}"));
            let keys = format!(
                "{stage}
shared_memory = {shared_memory}
unchanged_answers = {unchanged}"
            );
            let o = orders_through_with(&keys, 1000, &[], &out, "--json");
            let s = summary(&o);
            let through = component(&s, "through");
            let batches = through["batches_unchanged"].as_u64().unwrap();
            let what = format!("{stage}, shm {shared_memory}, unchanged {unchanged}: {s}");
            // 15 batches of 1,000 rows (the split may cut more)
            if unchanged {
                assert!(batches >= 15, "{what}");
            } else {
                assert_eq!(batches, 0, "{what}");
            }
            assert_eq!(through["rows_out"].as_u64(), Some(15_000), "{what}");
            // the input's path: shared memory for the Rust and Go SDKs as
            // the engine's children (the Python SDK takes Flight)
            let sent_in_shm = through["input_batches_in_shared_memory"].as_u64().unwrap();
            assert_eq!(sent_in_shm > 0, shared_memory && i < 2, "{what}");
            outputs.push(jsonl_rows(&out));
        }
        assert_eq!(outputs[0].len(), 15_000, "{stage}");
        assert!(
            outputs.iter().all(|o| *o == outputs[0]),
            "{stage}: the outputs differ"
        );
    }
}

/// The engine under a stage whose timing varies (the kit's jittery stage,
/// `sluice stage jitter`): random delays, answers in bursts, and two stalls
/// past the timeout, after which the engine replaces the stage and retries
/// the epoch. The output is the identity stage's, row for row.
#[test]
fn a_jittery_stage_leaves_the_output_as_a_well_behaved_one_does() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let (calm, jittery) = (tmp.path().join("calm"), tmp.path().join("jittery"));
    let o = orders_through(
        &command_of(&root().join("target/stages/rust/identity"), &[]),
        500,
        &[],
        &calm,
    );
    assert!(o.status.success(), "{}", text(&o));
    let stalls = tmp.path().join("stalls");
    let keys = format!(
        "{}\ntimeout = \"1s\"\nmax_in_flight = 4\nconfig = {{ seed = 11, max_delay_ms = 4, burst_every = 6, burst_ms = 150, stalls = 2, stall_ms = 3000, stall_after = 8, stall_file = {:?} }}",
        command_of(
            Path::new(env!("CARGO_BIN_EXE_sluice")),
            &["stage", "jitter"]
        ),
        stalls.display().to_string()
    );
    let o = orders_through(&keys, 500, &[], &jittery);
    assert!(o.status.success(), "{}", text(&o));
    // the stalls happened: the engine timed out twice and went on
    let stalled = std::fs::read_to_string(&stalls).unwrap_or_default();
    assert_eq!(stalled.lines().count(), 2, "{stalled}\n{}", text(&o));
    let (want, got) = (jsonl_rows(&calm), jsonl_rows(&jittery));
    assert_eq!(want.len(), 15_000);
    assert!(
        want == got,
        "{} rows through the jittery stage, {} through identity",
        got.len(),
        want.len()
    );
}

/// A stage's timing promise (manifest `timing`, v1.1): with no `timeout` in
/// the pipeline, `max_answer_ms` is the timeout (a stall past it replaces
/// the stage, and the run still delivers every row); a p99 the stage does
/// not keep is reported at the end of the run.
#[test]
fn a_stage_is_held_to_its_timing_promise() {
    let tmp = tempfile::tempdir().unwrap();
    let stalls = tmp.path().join("stalls");
    let sluice = Path::new(env!("CARGO_BIN_EXE_sluice"));
    let keys = format!(
        "{}\nconfig = {{ seed = 5, max_delay_ms = 30, stalls = 1, stall_ms = 5000, stall_after = 3, stall_file = {:?} }}",
        command_of(
            sluice,
            &[
                "stage",
                "jitter",
                "--promise-p99-ms",
                "1",
                "--promise-max-ms",
                "800"
            ]
        ),
        stalls.display().to_string()
    );
    let out = tmp.path().join("out");
    let o = orders_through(&keys, 1000, &[("SLUICE_LOG", "warn")], &out);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(jsonl_rows(&out).len(), 15_000);
    // the stall outlasted max_answer_ms (800 ms, not the default 30 s):
    // the engine gave up on the answer, replaced the stage and retried
    assert_eq!(std::fs::read_to_string(&stalls).unwrap().lines().count(), 1);
    assert!(t.contains("no answer to a batch within 800ms"), "{t}");
    // delays up to 30 ms against a promised p99 of 1 ms
    assert!(t.contains("promises a batch p99 of 1 ms"), "{t}");
    assert!(
        t.contains("longer than the stage's manifest promises"),
        "{t}"
    );
}

/// A manifest with `plain_types` (v1.1) gets no view types: the tpch
/// source's `Utf8View` columns arrive as `Utf8` at a Python stage whose
/// kernel has no view version; without it, the same stage refuses them.
#[test]
fn a_stage_asking_for_plain_types_never_sees_a_view() {
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let keys = command_of(
        Path::new(&python),
        &[&root()
            .join("tests/support/plain_stage.py")
            .display()
            .to_string()],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain");
    let o = orders_through(&keys, 4000, &[], &out);
    assert!(o.status.success(), "{}", text(&o));
    let rows = jsonl_rows(&out);
    assert_eq!(rows.len(), 15_000);
    // the stage upper-cased the strings: "1-URGENT", "o" status became "O"
    let first: serde_json::Value = serde_json::from_str(&rows[0]).unwrap();
    let comment = first["o_comment"].as_str().unwrap();
    assert_eq!(comment, comment.to_uppercase(), "{first}");
    let o = orders_through(
        &keys,
        4000,
        &[("PLAIN_TYPES", "0")],
        &tmp.path().join("views"),
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("takes plain types only"), "{t}");
}

/// A stateful stage (manifest `stateful`, protocol v1.1) keeps its state
/// across epochs and crashes through the engine's commits: per-key running
/// totals over ten epochs, the engine aborted once right after a commit and
/// once right before one, then run to the end. DuckDB finds every row once
/// and every total equal to the running sum it computes itself, in Go, Rust
/// and Python.
#[test]
fn a_stateful_stage_keeps_its_totals_exactly_once_across_epochs_and_crashes() {
    stages_built();
    let python = super::python();
    let script = root().join("sdk/python/examples/totals.py");
    for lang in ["rust", "go", "python"] {
        let command = match lang {
            "python" => command_of(Path::new(&python), &[&script.display().to_string()]),
            _ => command_of(&root().join("target/stages").join(lang).join("totals"), &[]),
        };
        let tmp = tempfile::tempdir().unwrap();
        let p = super::pipeline_in(
            tmp.path(),
            &format!(
                r#"[pipeline]
name = "totals"

[settings]
target_partitions = 1
epoch.max_rows = 2000

[sources.events]
kind = "generator"
total_rows = 20000
keys = 50

[stages.keyed]
kind = "sql"
inputs = ["events"]
query = "SELECT CAST(event_id AS BIGINT) AS id, CAST(split_part(key, '-', 2) AS BIGINT) AS key, CAST(value * 100 AS BIGINT) % 1000 AS value FROM events"

[stages.totals]
kind = "external"
inputs = ["keyed"]
{command}

[sinks.out]
kind = "parquet"
input = "totals"
url = "out"
"#,
            ),
        );
        let run = |failpoint: Option<&str>| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
            c.args(["run", "-q"]).arg(&p).current_dir(root());
            match failpoint {
                Some(f) => c.env("SLUICE_FAILPOINT", f),
                None => c.env_remove("SLUICE_FAILPOINT"),
            };
            c.output().unwrap()
        };
        for crash in ["after_commit@3", "before_commit@6"] {
            let o = run(Some(crash));
            assert!(
                !o.status.success() && text(&o).contains("failpoint"),
                "{lang}: {crash} did not stop the run:\n{}",
                text(&o)
            );
        }
        ok(run(None));
        let out = tmp.path().join("out");
        assert!(
            commits(&out).len() >= 10,
            "{lang}: {} commits",
            commits(&out).len()
        );
        let r = &duckdb_check(&[
            "query",
            "--sink",
            &format!("out={}", out.display()),
            "--sql",
            "SELECT count(*) AS n, count(DISTINCT id) AS ids, \
             count(*) FILTER (WHERE total IS DISTINCT FROM want) AS wrong \
             FROM (SELECT id, total, sum(value) OVER (PARTITION BY key ORDER BY id) AS want FROM out)",
        ])[0];
        assert_eq!(r["n"], 20000, "{lang}: {r}");
        assert_eq!(r["ids"], 20000, "{lang}: {r}");
        assert_eq!(r["wrong"], 0, "{lang}: {r}");
    }
}

//! Stage rollouts end to end: a Go and a Rust variant in shadow over TPC-H,
//! a wrong variant found row by row and rolled back by the guard, a canary
//! through a SIGKILL, and a flag switched while a stream runs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::stages::stages_built;
use super::{commits, duckdb_check, ok, python, root, set, sluice, text};

/// Rows of `sql` over the committed files of the named sinks, by DuckDB.
fn duck(sinks: &[(&str, &Path)], sql: &str) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/support/duckdb_check.py"))
        .arg("query");
    for (name, dir) in sinks {
        cmd.arg("--sink").arg(format!("{name}={}", dir.display()));
    }
    let out = cmd.arg("--sql").arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

pub(crate) fn one(sinks: &[(&str, &Path)], sql: &str) -> serde_json::Value {
    duck(sinks, sql).remove(0)
}

/// Every commit of the sink at `dir` ran `stage` in shadow against its
/// Rust variant and found no difference; the rows compared.
pub(crate) fn no_shadow_difference(dir: &Path, stage: &str) -> u64 {
    let cs = commits(dir);
    assert!(!cs.is_empty(), "no commits at {}", dir.display());
    let mut compared = 0;
    for c in &cs {
        let r = &c["rollout"][stage];
        assert_eq!(
            (r["mode"].as_str(), r["variant"].as_str()),
            (Some("shadow"), Some("rust")),
            "{c}"
        );
        let d = &r["diff"];
        assert_eq!(
            (
                d["missing"].as_u64(),
                d["extra"].as_u64(),
                d["changed"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{stage}: {d}"
        );
        assert_eq!(d["variant_rows"], d["primary_rows"], "{stage}: {d}");
        compared += d["primary_rows"].as_u64().unwrap();
    }
    compared
}

#[test]
fn a_go_and_a_rust_variant_in_shadow_do_not_differ_over_tpch_sf_0_1() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let (out, diff) = (tmp.path().join("out"), tmp.path().join("diff"));
    ok(sluice(&[
        "run",
        "-q",
        "examples/rollout/pipeline.toml",
        "--set",
        &set("sinks.out.url", &out),
        "--set",
        &set("stages.enriched.rollout.diff", &diff),
        // this test is about the diff: a loaded machine's p99 must not roll back
        "--set",
        "stages.enriched.rollout.guard.max_p99_ms=600000",
    ]));
    let cs = commits(&out);
    assert!(!cs.is_empty());
    let status = std::fs::read_to_string(out.join("_sluice/rollout-status.json")).unwrap();
    assert!(
        no_shadow_difference(&out, "enriched") > 0,
        "status: {status}"
    );
    let mut rows = 0;
    for c in &cs {
        let r = &c["rollout"]["enriched"];
        let d = &r["diff"];
        // both sides saw the whole epoch, and only the primary was delivered
        assert_eq!(d["primary_rows"], c["rows"]);
        assert_eq!(d["variant_rows"], c["rows"]);
        assert_eq!(r["rows"]["primary"], c["rows"]);
        rows += c["rows"].as_u64().unwrap();
    }
    let lineitem = one(&[("out", &out)], "SELECT count(*) AS n FROM out");
    assert_eq!(lineitem["n"].as_u64(), Some(rows));
    assert!(rows > 600_000, "SF 0.1 has 600k line items, got {rows}");
    assert_eq!(
        one(&[("diff", &diff)], "SELECT count(*) AS n FROM diff")["n"],
        0
    );
}

#[test]
fn a_wrong_variant_is_found_row_by_row_and_rolled_back_by_the_guard() {
    stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let (out, diff) = (tmp.path().join("out"), tmp.path().join("diff"));
    ok(sluice(&[
        "run",
        "-q",
        "tests/pipelines/rollout_wrong.toml",
        "--set",
        &set("sinks.out.url", &out),
        "--set",
        &set("stages.enriched.rollout.diff", &diff),
    ]));
    let cs = commits(&out);
    assert!(cs.len() >= 2, "{} commits", cs.len());
    // the guard (max_diff_rate = 0, min_epochs = 3) breaks on the first shadow epoch
    let first = &cs[0]["rollout"]["enriched"];
    assert_eq!(first["mode"], "shadow");
    for c in &cs[1..] {
        assert_eq!(c["rollout"]["enriched"]["mode"], "off", "{c}");
        assert!(c["rollout"]["enriched"].get("diff").is_none());
    }
    // exactly the FOB rows of that epoch differ, in ship_class only
    let files: Vec<String> = cs[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("'{}'", out.join(f["path"].as_str().unwrap()).display()))
        .collect();
    let fob = one(
        &[],
        &format!(
            "SELECT count(*) AS n FROM read_parquet([{}]) WHERE l_shipmode = 'FOB'",
            files.join(",")
        ),
    );
    let d = &first["diff"];
    assert!(fob["n"].as_u64().unwrap() > 0);
    assert_eq!(d["changed"], fob["n"], "{d}");
    assert_eq!(
        (d["missing"].as_u64(), d["extra"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(d["columns"], serde_json::json!({"ship_class": fob["n"]}));
    let sample = one(
        &[("diff", &diff)],
        "SELECT count(*) AS n, count(*) FILTER (WHERE kind = 'changed' AND columns = 'ship_class' \
         AND primary_row LIKE '%\"ship_class\":\"ground\"%' AND variant_row LIKE '%\"ship_class\":\"sea\"%' \
         AND primary_row LIKE '%\"l_shipmode\":\"FOB\"%') AS fob, min(epoch) AS e0, max(epoch) AS e1 FROM diff",
    );
    assert_eq!(sample["n"], fob["n"], "{sample}");
    assert_eq!(sample["fob"], fob["n"]);
    assert_eq!(
        (sample["e0"].as_u64(), sample["e1"].as_u64()),
        (Some(0), Some(0))
    );

    // the rollback is in the flags file, so the next run keeps the primary
    let flags: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_sluice/rollout.json")).unwrap()).unwrap();
    let f = &flags["stages"]["enriched"];
    assert_eq!(
        (f["mode"].as_str(), f["set_by"].as_str()),
        (Some("off"), Some("guard"))
    );
    assert!(
        f["reason"].as_str().unwrap().contains("max_diff_rate"),
        "{f}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_sluice/rollout-status.json")).unwrap())
            .unwrap();
    let s = &status["stages"]["enriched"];
    assert!(
        s["verdict"]
            .as_str()
            .unwrap()
            .starts_with("rolled back at epoch 0"),
        "{s}"
    );
    assert_eq!(s["rollbacks"].as_array().unwrap().len(), 1);
}

/// A pipeline file in `dir` (relative URLs land there, and `sluice rollout`
/// finds the same flags file): a generator through one SQL stage with an
/// SQL variant, canary-split by key.
fn canary_pipeline(dir: &Path, mode: &str, rows: u64, rate: Option<u64>) -> std::path::PathBuf {
    let rate = rate
        .map(|r| format!("rows_per_second = {r}\n"))
        .unwrap_or_default();
    let text = format!(
        r#"[pipeline]
name = "canary"

[settings]
commit_interval = "0s"

[settings.epoch]
max_rows = 50000
max_latency = "200ms"

[sources.events]
kind = "generator"
seed = 11
total_rows = {rows}
keys = 100000
key_skew = 0
{rate}
[stages.scored]
kind = "sql"
inputs = ["events"]
query = "SELECT event_id, key, value * 2 AS doubled FROM events"

[stages.scored.variants.v2]
kind = "sql"
query = "SELECT event_id, key, value + value AS doubled FROM events"

[stages.scored.rollout]
mode = "{mode}"
percent = 10
by = ["key"]
variant_column = "served_by"

[sinks.out]
kind = "parquet"
input = "scored"
url = "out"
"#
    );
    super::pipeline_in(dir, &text)
}

fn spawn_run(pipeline: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-q", pipeline.to_str().unwrap()])
        .env_remove("SLUICE_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_commits(out: &Path, n: usize, child: &mut Child) {
    let t = Instant::now();
    while commits(out).len() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {n} commits"
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no {n} commits in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exactly_once(out: &Path, rows: u64) {
    let r = one(
        &[("out", out)],
        "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, min(event_id) AS lo, max(event_id) AS hi FROM out",
    );
    assert_eq!(r["n"].as_u64(), Some(rows), "{r}");
    assert_eq!(r["ids"].as_u64(), Some(rows), "{r}");
}

#[test]
fn a_canary_sends_ten_percent_of_keys_through_the_variant_exactly_once_through_a_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = 1_000_000;
    let pipeline = canary_pipeline(tmp.path(), "canary", rows, None);
    let out = tmp.path().join("out");
    let mut child = spawn_run(&pipeline);
    wait_for_commits(&out, 3, &mut child);
    child.kill().unwrap(); // SIGKILL, mid-canary
    child.wait().unwrap();
    let killed_at = commits(&out).len();
    ok(sluice(&["run", "-q", pipeline.to_str().unwrap()]));
    let cs = commits(&out);
    assert!(cs.len() > killed_at, "the second run committed nothing");
    exactly_once(&out, rows);
    let share = one(
        &[("out", &out)],
        "SELECT avg(CASE WHEN served_by = 'v2' THEN 1.0 ELSE 0.0 END) AS share, \
         count(*) FILTER (WHERE served_by NOT IN ('primary', 'v2')) AS other FROM out",
    );
    let s = share["share"].as_f64().unwrap();
    assert!((0.09..=0.11).contains(&s), "variant share {s}");
    assert_eq!(share["other"], 0);
    let split = one(
        &[("out", &out)],
        "SELECT count(*) AS both_ways FROM (SELECT key FROM out GROUP BY key HAVING count(DISTINCT served_by) > 1)",
    );
    assert_eq!(split["both_ways"], 0, "some keys went both ways");
    // the lineage of the commits and of the files names both branches
    let stages = |lineage: &serde_json::Value| -> Vec<String> {
        lineage
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["stage"].as_str().unwrap().to_string())
            .collect()
    };
    let both = ["events", "scored", "scored@v2", "out"]
        .map(String::from)
        .to_vec();
    let md = duckdb_check(&["metadata", "--sink", out.to_str().unwrap()]);
    let file_lineage: serde_json::Value =
        serde_json::from_str(md["kv_metadata"]["sluice.lineage"].as_str().unwrap()).unwrap();
    assert_eq!(stages(&file_lineage), both, "{md}");
    // every commit says how many rows each branch delivered
    for c in &cs {
        assert_eq!(stages(&c["lineage"]), both, "{c}");
        let r = &c["rollout"]["scored"];
        assert_eq!(r["mode"], "canary");
        let sum: u64 = r["rows"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(Some(sum), c["rows"].as_u64(), "{c}");
    }
}

#[test]
fn a_flag_set_while_a_stream_runs_takes_effect_at_the_next_epoch_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = 120_000;
    let pipeline = canary_pipeline(tmp.path(), "off", rows, Some(15_000));
    let out = tmp.path().join("out");
    let mut child = spawn_run(&pipeline);
    wait_for_commits(&out, 2, &mut child);
    let set = ok(sluice(&[
        "rollout",
        "set",
        pipeline.to_str().unwrap(),
        "scored",
        "mode=canary",
        "percent=50",
    ]));
    assert!(text(&set).contains("canary v2 at 50%"), "{}", text(&set));
    let switched_after = commits(&out).len();
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let cs = commits(&out);
    let modes: Vec<&str> = cs
        .iter()
        .map(|c| c["rollout"]["scored"]["mode"].as_str().unwrap())
        .collect();
    let first_canary = modes
        .iter()
        .position(|m| *m == "canary")
        .expect("the flag took effect");
    // off until the flag, canary from the epoch after it on, never back
    assert!(first_canary >= switched_after.min(2), "{modes:?}");
    assert!(
        modes[..first_canary].iter().all(|m| *m == "off"),
        "{modes:?}"
    );
    assert!(
        modes[first_canary..].iter().all(|m| *m == "canary"),
        "{modes:?}"
    );
    let names_v2 = |c: &serde_json::Value| {
        c["lineage"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["stage"] == "scored@v2")
    };
    for c in &cs[..first_canary] {
        assert!(!names_v2(c), "{c}");
    }
    for c in &cs[first_canary..] {
        let r = &c["rollout"]["scored"];
        assert_eq!(r["percent"], 50.0);
        assert!(names_v2(c), "{c}");
    }
    exactly_once(&out, rows);
    // `sluice inspect` shows the switch: one line per run of equal choices
    let inspect = text(&ok(sluice(&["inspect", out.to_str().unwrap()])));
    let last = cs.last().unwrap()["epoch"].as_u64().unwrap();
    let off_until = cs[first_canary - 1]["epoch"].as_u64().unwrap();
    assert!(
        inspect.contains(&format!("epochs 0..={off_until}: off v2; rows: primary ")),
        "{inspect}"
    );
    assert!(
        inspect.contains(&format!("..={last}: canary v2 50%; rows: primary ")),
        "{inspect}"
    );
    let v2 = one(
        &[("out", &out)],
        "SELECT count(*) FILTER (WHERE served_by = 'v2') AS n FROM out",
    );
    assert!(v2["n"].as_u64().unwrap() > 0);
    let st = ok(sluice(&["rollout", "status", pipeline.to_str().unwrap()]));
    assert!(
        text(&st).contains("stage `scored`: canary v2 50%"),
        "{}",
        text(&st)
    );
}

#[test]
fn stage_bench_runs_every_variant_on_the_same_sample_at_each_batch_size() {
    stages_built();
    let o = ok(sluice(&[
        "stage",
        "bench",
        "examples/rollout/pipeline.toml",
        "enriched",
        "--rows",
        "20000",
        "--batch-sizes",
        "1000,8192",
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["input_rows"], 20000, "{r}");
    let rows = r["rows"].as_array().unwrap();
    let seen: Vec<(String, u64)> = rows
        .iter()
        .map(|x| {
            (
                x["variant"].as_str().unwrap().to_string(),
                x["batch_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("primary".to_string(), 1000),
            ("primary".to_string(), 8192),
            ("rust".to_string(), 1000),
            ("rust".to_string(), 8192)
        ]
    );
    for x in rows {
        // enrich keeps every row; both implementations saw the same sample
        assert_eq!(x["rows_out"], 20000, "{x}");
        assert!(x["rows_per_second"].as_f64().unwrap() > 0.0);
        assert!(x["cpu_s_per_m_rows"].as_f64().unwrap() >= 0.0);
        assert!(x["peak_rss_bytes"].as_u64().unwrap() > 0, "{x}");
        assert!(x["p99_ms"].as_f64().unwrap() >= x["p50_ms"].as_f64().unwrap());
    }
    assert!(["primary", "rust"].contains(&r["cheapest"].as_str().unwrap()));
    assert!(rows[0]["implementation"].as_str().unwrap().contains("(go)"));
    assert!(
        rows[2]["implementation"]
            .as_str()
            .unwrap()
            .contains("(rust)")
    );
}

#[test]
fn stage_bench_runs_an_sql_variant_in_process() {
    stages_built();
    let o = ok(sluice(&[
        "stage",
        "bench",
        "tests/pipelines/rollout_wrong.toml",
        "enriched",
        "--rows",
        "5000",
        "--batch-sizes",
        "2048",
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sql = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["variant"] == "sql")
        .unwrap()
        .clone();
    assert_eq!(sql["implementation"], "sql");
    assert_eq!(sql["rows_out"], 5000);
    assert!(sql["peak_rss_bytes"].is_null() && sql["p50_ms"].is_null());
}

#[test]
fn a_shadow_read_only_in_part_by_a_limit_downstream_is_not_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = super::pipeline_in(
        tmp.path(),
        r#"[pipeline]
name = "limited"

[settings.epoch]
max_rows = 50000

[sources.events]
kind = "generator"
seed = 3
total_rows = 150000
keys = 1000

[stages.scored]
kind = "sql"
inputs = ["events"]
query = "SELECT event_id, key, value * 2 AS doubled FROM events"

[stages.scored.variants.v2]
kind = "sql"
query = "SELECT event_id, key, value + value AS doubled FROM events"

[stages.scored.rollout]
mode = "shadow"
variant = "v2"
guard = { max_diff_rate = 0.0, min_epochs = 1 }

[stages.first]
kind = "sql"
inputs = ["scored"]
query = "SELECT * FROM scored LIMIT 10"

[sinks.out]
kind = "parquet"
input = "first"
url = "out"
"#,
    );
    ok(sluice(&["run", "-q", pipeline.to_str().unwrap()]));
    let out = tmp.path().join("out");
    let cs = commits(&out);
    assert!(!cs.is_empty());
    for c in &cs {
        // the LIMIT stopped reading both branches mid-way: no diff to make,
        // and the identical variant is not rolled back for it
        let r = &c["rollout"]["scored"];
        assert_eq!(r["mode"], "shadow", "{c}");
        assert!(r.get("diff").is_none(), "{c}");
        assert_eq!(c["rows"], 10, "{c}");
    }
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_sluice/rollout-status.json")).unwrap())
            .unwrap();
    let s = &status["stages"]["scored"];
    assert_eq!(s["rollbacks"].as_array().unwrap().len(), 0, "{s}");
}

//! The CPU-bound and I/O-bound example stages of "Go or Rust?"
//! (docs/stages.md), as `benches/stages/placement.toml` runs them: the Go
//! primary and the Rust variant in shadow give the same rows, and DuckDB,
//! which parses with its own RE2 and computes the score itself, agrees with
//! every row.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::rollout::{no_shadow_difference, one};
use super::stages::stages_built;
use super::{commits, ok, root, set, sluice};

/// The access log format of the `parse` stages, as a DuckDB string literal.
const ACCESS_LINE: &str =
    r#"'^(\S+) \S+ \S+ \[([^\]]+)\] "([A-Z]+) (\S+) HTTP/[0-9.]+" ([0-9]{3}) ([0-9]+|-)$'"#;

/// `scoresvc` on a free loopback port; killed when dropped.
struct ScoreService {
    child: Child,
    url: String,
}

impl ScoreService {
    fn start(latency: &str) -> Self {
        let mut child = Command::new(root().join("target/stages/go/scoresvc"))
            .args(["-addr", "127.0.0.1:0", "-latency", latency])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("scoresvc said {line:?}"))
            .to_string();
        Self { child, url }
    }
}

impl Drop for ScoreService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_cpu_and_io_bound_example_stages_agree_in_go_rust_and_duckdb() {
    stages_built();
    let service = ScoreService::start("2ms");
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| tmp.path().join(n);
    let mut args: Vec<String> = vec![
        "run".into(),
        "-q".into(),
        "benches/stages/placement.toml".into(),
    ];
    let mut sets = vec![
        "sources.lineitem.scale_factor=0.01".to_string(),
        "stages.parsed.rollout.mode=shadow".into(),
        "stages.parsed.on_error=dead_letter".into(),
        "stages.scored.rollout.mode=shadow".into(),
        format!("stages.scored.config.url={}", service.url),
        format!("stages.scored.variants.rust.config.url={}", service.url),
        set("dead_letter.url", &dir("dead")),
        // the log lines themselves, for DuckDB to parse
        "sinks.logs_out.input=logs".into(),
    ];
    for sink in ["parsed_out", "scored_out", "logs_out"] {
        sets.push(format!("sinks.{sink}.kind=parquet"));
        sets.push(set(&format!("sinks.{sink}.url"), &dir(sink)));
    }
    for s in sets {
        args.extend(["--set".into(), s]);
    }
    ok(sluice(&args.iter().map(String::as_str).collect::<Vec<_>>()));

    // parse: Go and Rust agree, and both agree with DuckDB's RE2
    let parsed = no_shadow_difference(&dir("parsed_out"), "parsed");
    let p = ACCESS_LINE;
    let g = |n: u32| format!("regexp_extract(line, {p}, {n})");
    let check = one(
        &[("logs", &dir("logs_out")), ("parsed", &dir("parsed_out")), ("dead", &dir("dead"))],
        &format!(
            "WITH want AS (
               SELECT id, {ip} AS ip, {time} AS time, {method} AS method, {path} AS path,
                      CAST({status} AS INTEGER) AS status,
                      CASE WHEN {bytes} = '-' THEN NULL ELSE CAST({bytes} AS BIGINT) END AS bytes
               FROM logs WHERE regexp_matches(line, {p}))
             SELECT (SELECT count(*) FROM want) AS want,
                    (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM parsed)) AS missing,
                    (SELECT count(*) FROM (SELECT * FROM parsed EXCEPT ALL SELECT * FROM want)) AS extra,
                    (SELECT count(*) FROM logs WHERE NOT regexp_matches(line, {p})) AS bad,
                    (SELECT count(*) FROM dead WHERE component = 'parsed' AND code = 'MALFORMED') AS dead,
                    (SELECT count(*) FROM parsed WHERE bytes IS NULL) AS no_bytes",
            ip = g(1),
            time = g(2),
            method = g(3),
            path = g(4),
            status = g(5),
            bytes = g(6),
        ),
    );
    let want = check["want"].as_u64().unwrap();
    assert!(want > 50_000, "{check}");
    assert_eq!(
        (check["missing"].as_u64(), check["extra"].as_u64()),
        (Some(0), Some(0)),
        "{check}"
    );
    assert_eq!(parsed, want, "{check}");
    // the sample holds lines that are not log lines, and each is a dead letter
    assert!(check["bad"].as_u64().unwrap() > 100, "{check}");
    assert_eq!(check["dead"], check["bad"], "{check}");
    assert!(check["no_bytes"].as_u64().unwrap() > 0, "{check}");

    // score: Go and Rust agree, and every row holds the service's score
    let scored = no_shadow_difference(&dir("scored_out"), "scored");
    let check = one(
        &[("scored", &dir("scored_out"))],
        "SELECT count(*) AS n,
                count(*) FILTER (WHERE risk <> ((l_orderkey * 2654435761) % 4294967296) % 100) AS wrong
         FROM scored",
    );
    assert_eq!(check["n"].as_u64(), Some(scored), "{check}");
    assert!(scored > 50_000, "{check}");
    assert_eq!(check["wrong"], 0, "{check}");
}

#[test]
fn a_score_stage_whose_service_is_gone_fails_the_run_naming_the_service() {
    stages_built();
    let url = {
        let service = ScoreService::start("1ms");
        service.url.clone()
    }; // stopped: nothing listens there now
    let tmp = tempfile::tempdir().unwrap();
    let o = sluice(&[
        "run",
        "-q",
        "benches/stages/placement.toml",
        "--set",
        "sources.lineitem.scale_factor=0.001",
        "--set",
        &format!("stages.scored.config.url={url}"),
        "--set",
        "sinks.scored_out.kind=parquet",
        "--set",
        &set("sinks.scored_out.url", &tmp.path().join("scored")),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("score service") && err.contains(&url), "{err}");
    assert!(commits(&tmp.path().join("scored")).is_empty());
}

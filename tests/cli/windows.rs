//! Windows through crashes: a tailed folder of events aggregated in
//! event-time windows and sessions, killed with SIGKILL at random points
//! while files keep arriving, then stopped gracefully. Every window and
//! session the watermark closed is committed exactly once and whole, as
//! DuckDB computes it over the same files (`time_bucket`, and sessions with
//! `lag`).

use std::path::Path;

use super::streaming::{Lcg, finish, kill_repeatedly};
use super::{duckdb_check, ok, sluice, text};

const FILES: usize = 800;
const ROWS_PER_FILE: usize = 40;
/// Event time between rows, in ms (before jitter).
const STEP_MS: usize = 50;

/// Files `from..to`: rows timed `STEP_MS` apart, out of order by up to
/// 400 ms (within the 2 s watermark bound, so no row is late), with a
/// pause of 3 s every 200 rows that ends every key's session.
fn write_files(dir: &Path, from: usize, to: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for f in from..to {
        let body: String = (0..ROWS_PER_FILE)
            .map(|i| {
                let n = f * ROWS_PER_FILE + i;
                let jitter = [0i64, -400, 300, -100][i % 4];
                // within the first hour of 2024-01-01 (the run spans ~35 min)
                let ms = 10_000 + (n * STEP_MS) as i64 + (n / 200) as i64 * 3_000 + jitter;
                let ts = format!(
                    "2024-01-01T00:{:02}:{:02}.{:03}Z",
                    ms / 60_000,
                    ms / 1000 % 60,
                    ms % 1000
                );
                format!("{{\"ts\": \"{ts}\", \"k\": \"k{}\", \"v\": {n}}}\n", n % 5)
            })
            .collect();
        // written whole, then renamed: the source never sees half a file
        let tmp = dir.join(format!(".part-{f:04}.jsonl"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(format!("part-{f:04}.jsonl"))).unwrap();
    }
}

const PIPELINE: &str = r#"
[pipeline]
name = "windows_killed"

[settings]
commit_interval = "0s"

[settings.epoch]
max_bytes = "3KiB"
max_latency = "100ms"

[sources.events]
kind = "dir"
path = "in"
format = "jsonl"
columns = [
  { name = "ts", type = "timestamp", nullable = false },
  { name = "k", type = "varchar", nullable = false },
  { name = "v", type = "bigint", nullable = false },
]
event_time = "ts"
watermark = "2s"

[stages.per_key]
kind = "sql"
inputs = ["events"]
query = """
SELECT date_bin(INTERVAL '30 seconds', ts) AS w, k, count(*) AS n, sum(v) AS total
FROM events
GROUP BY date_bin(INTERVAL '30 seconds', ts), k
"""

[stages.sessions]
kind = "sql"
inputs = ["events"]
query = """
SELECT k, session(ts, INTERVAL '2 seconds') AS s, count(*) AS n, sum(v) AS total
FROM events
GROUP BY k, session(ts, INTERVAL '2 seconds')
"""

[sinks.out]
kind = "parquet"
input = "per_key"
url = "out"

[sinks.sessions_out]
kind = "parquet"
input = "sessions"
url = "sessions"
"#;

#[test]
fn ten_kills_of_a_tailed_folder_emit_every_closed_window_and_session_once_and_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = super::pipeline_in(tmp.path(), PIPELINE);
    let input = tmp.path().join("in");
    let args: Vec<String> = vec![
        "run".into(),
        "-q".into(),
        "--exit-when-idle".into(),
        pipeline.to_string_lossy().into_owned(),
    ];
    // half the files, five kills; the other half arrives, five more kills
    write_files(&input, 0, FILES / 2);
    let mut runs = kill_repeatedly(&args, &[], 5, 11);
    write_files(&input, FILES / 2, FILES);
    runs += kill_repeatedly(&args, &[], 5, 12);
    finish(&args, &[]);
    eprintln!("{runs} runs, 10 of them killed with SIGKILL");

    // the windows whose end the final watermark (largest event time - 2 s)
    // passed, from the same files, by DuckDB
    let setup = tmp.path().join("utc.sql");
    std::fs::write(&setup, "SET TimeZone = 'UTC';").unwrap();
    let files = format!("{}/*.jsonl", input.display());
    let expected = format!(
        "WITH e AS (SELECT CAST(ts AS TIMESTAMPTZ) AS ts, k, v \
                    FROM read_json('{files}', columns = {{ts: 'VARCHAR', k: 'VARCHAR', v: 'BIGINT'}})) \
         SELECT time_bucket(INTERVAL '30 seconds', ts) AS w, k, count(*) AS n, sum(v) AS total \
         FROM e GROUP BY ALL \
         HAVING time_bucket(INTERVAL '30 seconds', ts) + INTERVAL '30 seconds' \
                <= (SELECT max(ts) FROM e) - INTERVAL '2 seconds'"
    );
    let report = duckdb_check(&[
        "compare",
        "--setup",
        setup.to_str().unwrap(),
        "--query",
        &expected,
        "--actual",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(report["missing_count"], 0, "{report}");
    assert_eq!(report["extra_count"], 0, "{report}");

    // the sessions (a key's rows less than 2 s apart) whose end, 2 s after
    // their last row, the final watermark passed
    let sessions = format!(
        "WITH e AS (SELECT CAST(ts AS TIMESTAMPTZ) AS ts, k, v \
                    FROM read_json('{files}', columns = {{ts: 'VARCHAR', k: 'VARCHAR', v: 'BIGINT'}})), \
         marked AS (SELECT k, ts, v, CASE WHEN ts < lag(ts) OVER (PARTITION BY k ORDER BY ts) + INTERVAL '2 seconds' \
                                          THEN 0 ELSE 1 END AS starts FROM e), \
         numbered AS (SELECT k, ts, v, sum(starts) OVER (PARTITION BY k ORDER BY ts RANGE UNBOUNDED PRECEDING) AS session \
                      FROM marked) \
         SELECT k, min(ts) AS s, count(*) AS n, sum(v) AS total FROM numbered GROUP BY k, session \
         HAVING max(ts) + INTERVAL '2 seconds' <= (SELECT max(ts) FROM e) - INTERVAL '2 seconds'"
    );
    let report = duckdb_check(&[
        "compare",
        "--setup",
        setup.to_str().unwrap(),
        "--query",
        &sessions,
        "--actual",
        tmp.path().join("sessions").to_str().unwrap(),
    ]);
    assert!(
        report["expected_rows"].as_u64().unwrap_or(0) > 100,
        "{report}"
    );
    assert_eq!(report["missing_count"], 0, "{report}");
    assert_eq!(report["extra_count"], 0, "{report}");

    // the windows still open are the state of the last commit
    let out = tmp.path().join("out");
    let shown = ok(sluice(&["inspect", out.to_str().unwrap()]));
    let shown = text(&shown);
    assert!(shown.contains("state at the last commit"), "{shown}");
    assert!(shown.contains("per_key"), "{shown}");
    assert!(
        shown.contains("events: largest event time 2024-01-01T00:34:"),
        "{shown}"
    );
}

/// The same windows and sessions at random epoch sizes, the process
/// aborted at random points of the commit protocol (the failpoints: before
/// the commits, between the two sinks' commits, after them) at random
/// epochs, then run until the folder is read: every window and session the
/// watermark closed, once, as DuckDB computes them.
#[test]
fn windows_and_sessions_survive_random_crash_points_of_the_commit() {
    for seed in 1..=5u64 {
        let mut rng = Lcg(seed);
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        write_files(&input, 0, rng.next_ms(20, 40) as usize);
        let max_bytes = rng.next_ms(2, 7);
        let text_of_pipeline = PIPELINE.replace(
            "max_bytes = \"3KiB\"",
            &format!("max_bytes = \"{max_bytes}KiB\""),
        );
        let pipeline = super::pipeline_in(tmp.path(), &text_of_pipeline);
        let args = ["run", "-q", "--exit-when-idle", pipeline.to_str().unwrap()];
        // up to three crash points at later and later epochs; a run that
        // reads the folder before its crash point ends the series
        let mut at = rng.next_ms(0, 3);
        let mut crashes = Vec::new();
        for _ in 0..3 {
            let point =
                ["before_commit", "between_commits", "after_commit"][rng.next_ms(0, 3) as usize];
            let failpoint = format!("{point}@{at}");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args)
                .env("SLUICE_FAILPOINT", &failpoint)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                text(&out).contains("failpoint"),
                "{failpoint}: {}",
                text(&out)
            );
            crashes.push(failpoint);
            at += rng.next_ms(1, 5);
        }
        assert!(
            !crashes.is_empty(),
            "seed {seed}: epoch {at} was never reached"
        );
        ok(sluice(&args));

        let setup = tmp.path().join("utc.sql");
        std::fs::write(&setup, "SET TimeZone = 'UTC';").unwrap();
        let files = format!("{}/*.jsonl", input.display());
        let events = format!(
            "WITH e AS (SELECT CAST(ts AS TIMESTAMPTZ) AS ts, k, v \
                        FROM read_json('{files}', columns = {{ts: 'VARCHAR', k: 'VARCHAR', v: 'BIGINT'}}))"
        );
        let watermark = "(SELECT max(ts) FROM e) - INTERVAL '2 seconds'";
        let checks = [
            (
                "out",
                format!(
                    "{events} SELECT time_bucket(INTERVAL '30 seconds', ts) AS w, k, count(*) AS n, sum(v) AS total \
                     FROM e GROUP BY ALL HAVING time_bucket(INTERVAL '30 seconds', ts) + INTERVAL '30 seconds' <= {watermark}"
                ),
            ),
            (
                "sessions",
                format!(
                    "{events}, marked AS (SELECT k, ts, v, CASE WHEN ts < lag(ts) OVER (PARTITION BY k ORDER BY ts) \
                                                   + INTERVAL '2 seconds' THEN 0 ELSE 1 END AS starts FROM e), \
                     numbered AS (SELECT k, ts, v, sum(starts) OVER (PARTITION BY k ORDER BY ts RANGE UNBOUNDED PRECEDING) AS session \
                                  FROM marked) \
                     SELECT k, min(ts) AS s, count(*) AS n, sum(v) AS total FROM numbered GROUP BY k, session \
                     HAVING max(ts) + INTERVAL '2 seconds' <= {watermark}"
                ),
            ),
        ];
        for (sink, expected) in checks {
            let report = duckdb_check(&[
                "compare",
                "--setup",
                setup.to_str().unwrap(),
                "--query",
                &expected,
                "--actual",
                tmp.path().join(sink).to_str().unwrap(),
            ]);
            let context = format!(
                "seed {seed}, max_bytes {max_bytes}KiB, crashes {crashes:?}, {sink}: {report}"
            );
            assert!(
                report["expected_rows"].as_u64().unwrap_or(0) > 0,
                "{context}"
            );
            assert_eq!(report["missing_count"], 0, "{context}");
            assert_eq!(report["extra_count"], 0, "{context}");
        }
    }
}

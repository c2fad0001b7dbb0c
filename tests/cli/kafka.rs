//! Kafka through crashes, against a real broker: Apache Kafka 4.4.0 started
//! by `scripts/kafka` (or the one `SLUICE_TEST_KAFKA` names), checked with
//! an independent client (confluent-kafka, `tests/support/kafka_tool.py`)
//! and DuckDB.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::streaming::{finish, kill_repeatedly};
use super::{duckdb_check, ok, python, root, sluice, text};

/// The broker's bootstrap address: `SLUICE_TEST_KAFKA`, or a broker this
/// test binary starts once and that stops when it exits.
fn broker() -> String {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            if let Ok(b) = std::env::var("SLUICE_TEST_KAFKA") {
                return b;
            }
            let dir =
                std::env::temp_dir().join(format!("sluice-test-kafka-{}", std::process::id()));
            let out = Command::new(root().join("scripts/kafka"))
                .args(["start", "--dir", dir.to_str().unwrap(), "--until-exit"])
                .arg(std::process::id().to_string())
                .output()
                .expect("scripts/kafka runs");
            assert!(
                out.status.success(),
                "the Kafka broker did not start:\n{}",
                text(&out)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .clone()
}

/// Runs `kafka_tool.py`; returns its stdout.
fn kafka_tool(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/support/kafka_tool.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "kafka_tool {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A topic name no other test uses.
fn topic(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{base}-{}-{nanos}", std::process::id())
}

fn kill_args(b: &str, input: &str, output: &str, dir: &Path) -> Vec<String> {
    let p = |d: &str| dir.join(d).to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "run".into(),
        "-q".into(),
        "--exit-when-idle".into(),
        "tests/pipelines/kafka.toml".into(),
    ];
    for s in [
        format!("sources.orders.brokers=\"{b}\""),
        format!("sources.orders.topic=\"{input}\""),
        format!("sinks.topic.brokers=\"{b}\""),
        format!("sinks.topic.topic=\"{output}\""),
        format!("sinks.topic.commit_topic=\"{output}.commits\""),
        format!("sinks.files.url=\"{}\"", p("files")),
        format!("dead_letter.url=\"{}\"", p("dead")),
    ] {
        args.push("--set".into());
        args.push(s);
    }
    args
}

/// Every id of `0..n` exactly once in the parquet sink and in the topic.
fn every_id_once(dir: &Path, b: &str, output: &str, n: u64) {
    let r = duckdb_check(&[
        "query",
        "--sink",
        &format!("files={}", dir.join("files").display()),
        "--sql",
        "SELECT count(*) AS rows, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi FROM files",
    ]);
    let row = &r[0];
    assert_eq!(row["rows"], n, "parquet: {r}");
    assert_eq!(row["ids"], n, "parquet: {r}");
    assert_eq!(row["lo"], 0, "parquet: {r}");
    assert_eq!(row["hi"], n - 1, "parquet: {r}");

    let seen: serde_json::Value =
        serde_json::from_str(&kafka_tool(&["consume", b, output])).unwrap();
    assert_eq!(seen["count"], n, "topic {output}: {}", seen["count"]);
    let ids = seen["ids"].as_object().unwrap();
    assert_eq!(ids.len() as u64, n, "topic {output}: distinct ids");
    assert!(
        ids.values().all(|v| v == 1),
        "an id read twice from {output}"
    );
    assert!(
        (0..n).all(|i| ids.contains_key(&i.to_string())),
        "an id missing from {output}"
    );
    // the headers carry the schema, the lineage and the trace
    let headers = seen["headers"].as_object().unwrap();
    for h in ["sluice.lineage", "sluice.schema"] {
        assert!(headers.contains_key(h), "header {h} missing: {headers:?}");
    }
}

#[test]
fn twenty_kills_of_kafka_to_parquet_and_kafka_deliver_every_message_once() {
    let b = broker();
    let (input, output) = (topic("orders"), topic("shouted"));
    kafka_tool(&["create", &b, &input, "3"]);
    kafka_tool(&["create", &b, &output, "3"]);
    // half the messages, and the bad ones, before the first run; the rest
    // while the runs are being killed
    let bad: serde_json::Value = serde_json::from_str(&kafka_tool(&[
        "produce", &b, &input, "0", "6000", "--bad", "6",
    ]))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let args = kill_args(&b, &input, &output, tmp.path());
    let producer = {
        let (b, input) = (b.clone(), input.clone());
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(3));
            kafka_tool(&["produce", &b, &input, "6000", "6000"]);
        })
    };
    let runs = kill_repeatedly(&args, &[], 20, 17);
    producer.join().unwrap();
    finish(&args, &[]);
    eprintln!("{runs} runs, 20 of them killed with SIGKILL");
    every_id_once(tmp.path(), &b, &output, 12_000);

    // each malformed message is one dead letter, with its partition and offset
    let r = duckdb_check(&[
        "query",
        "--sink",
        &format!("dead={}", tmp.path().join("dead").display()),
        "--sql",
        "SELECT file, \"offset\", code FROM dead ORDER BY file, \"offset\"",
    ]);
    let got: Vec<(String, u64)> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap().to_string(),
                d["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = bad
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("kafka://{input}/{}", m["partition"]),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "dead letters: {r}");

    // a rerun finds nothing new and commits nothing twice
    finish(&args, &[]);
    every_id_once(tmp.path(), &b, &output, 12_000);
}

#[test]
fn offsets_reach_the_consumer_group_and_a_missing_topic_is_named() {
    let b = broker();
    let input = topic("lag");
    kafka_tool(&["create", &b, &input, "2"]);
    kafka_tool(&["produce", &b, &input, "0", "500"]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "lag"
[sources.in]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
group = "lag-group"
format = "json"
columns = [{{ name = "id", type = "bigint" }}, {{ name = "word", type = "varchar" }}]
[sinks.out]
kind = "parquet"
input = "in"
url = "{}"
"#,
            out.display()
        ),
    )
    .unwrap();
    ok(sluice(&[
        "run",
        "-q",
        "--exit-when-idle",
        pipeline.to_str().unwrap(),
    ]));
    let lag: serde_json::Value =
        serde_json::from_str(&kafka_tool(&["lag", &b, "lag-group", &input])).unwrap();
    let committed: i64 = lag
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(committed, 500, "the group's committed offsets: {lag}");

    let o = sluice(&[
        "run",
        "-q",
        "--exit-when-idle",
        pipeline.to_str().unwrap(),
        "--set",
        "sources.in.topic=\"no-such-topic\"",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("no-such-topic") && t.contains("does not exist"),
        "{t}"
    );
}

/// A run of the same pipeline as a paused one takes its Kafka sink over:
/// the paused run (a zombie, SIGSTOP then SIGCONT) is fenced at its next
/// commit and stops, naming the takeover; every message is in the output
/// topic once.
#[test]
fn a_paused_run_taken_over_is_fenced_and_commits_nothing() {
    let b = broker();
    let (input, output) = (topic("zin"), topic("zout"));
    kafka_tool(&["create", &b, &input, "2"]);
    kafka_tool(&["create", &b, &output, "2"]);
    kafka_tool(&["produce", &b, &input, "0", "4000"]);
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("zombie.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "zombie"
[settings]
commit_interval = "0s"
[settings.epoch]
max_rows = 100
max_latency = "200ms"
[sources.in]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
format = "json"
columns = [{{ name = "id", type = "bigint", nullable = false }}, {{ name = "word", type = "varchar" }}]
[sinks.out]
kind = "kafka"
input = "in"
brokers = "{b}"
topic = "{output}"
commit_topic = "{output}.commits"
key = "id"
"#
        ),
    )
    .unwrap();
    let p = pipeline.to_str().unwrap();
    let zombie = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-q", p])
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // paused once it has committed something, mid-run
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let seen: serde_json::Value =
            serde_json::from_str(&kafka_tool(&["consume", &b, &output])).unwrap();
        if seen["count"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first run committed nothing in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = zombie.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    kafka_tool(&["produce", &b, &input, "4000", "2000"]);
    // the second run takes over and reads everything
    ok(sluice(&["run", "-q", "--exit-when-idle", p]));
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = zombie.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the zombie kept running: {stderr}");
    assert!(stderr.contains("took over"), "the zombie's error: {stderr}");
    let seen: serde_json::Value =
        serde_json::from_str(&kafka_tool(&["consume", &b, &output])).unwrap();
    assert_eq!(seen["count"], 6000, "{}", seen["count"]);
    assert_eq!(seen["ids"].as_object().unwrap().len(), 6000);
}

/// Avro in the Confluent wire format, with writer schemas from a
/// Confluent-compatible registry (a local HTTP server speaking its API):
/// two writer schemas read as the declared columns, and every bad message
/// (wrong magic byte, unknown schema id, a body cut short or too long, too
/// short for a header) dead-lettered with its partition and offset.
#[test]
fn avro_messages_read_through_a_schema_registry() {
    let b = broker();
    let input = topic("avro");
    kafka_tool(&["create", &b, &input, "2"]);
    let bad: serde_json::Value =
        serde_json::from_str(&kafka_tool(&["produce-avro", &b, &input])).unwrap();
    let port = super::free_port().to_string();
    let mut registry = Command::new(python())
        .arg(root().join("tests/support/kafka_tool.py"))
        .args(["registry", &port])
        .spawn()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("avro.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "avro"
[sources.orders]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
format = "avro"
schema_registry = "http://127.0.0.1:{port}"
columns = [
  {{ name = "id", type = "bigint", nullable = false }},
  {{ name = "word", type = "varchar" }},
  {{ name = "extra", type = "double" }},
]
on_error = "dead_letter"
[sinks.out]
kind = "parquet"
input = "orders"
url = "{out}"
[dead_letter]
url = "{dead}"
"#,
            out = tmp.path().join("out").display(),
            dead = tmp.path().join("dead").display(),
        ),
    )
    .unwrap();
    // the registry answers once it listens
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the registry did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = sluice(&["run", "-q", "--exit-when-idle", pipeline.to_str().unwrap()]);
    registry.kill().unwrap();
    registry.wait().unwrap();
    ok(o);
    let r = duckdb_check(&[
        "query",
        "--sink",
        &format!("out={}", tmp.path().join("out").display()),
        "--sql",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi, \
         count(extra) AS extras, sum(CASE WHEN id >= 100 AND extra = id / 2 THEN 1 ELSE 0 END) AS right_extras, \
         sum(CASE WHEN word = 'w' || id THEN 1 ELSE 0 END) AS right_words FROM out",
    ]);
    let row = &r[0];
    assert_eq!(row["n"], 200, "{r}");
    assert_eq!(row["ids"], 200, "{r}");
    assert_eq!(
        (row["lo"].as_i64(), row["hi"].as_i64()),
        (Some(0), Some(199)),
        "{r}"
    );
    assert_eq!(row["extras"], 100, "{r}");
    assert_eq!(
        row["right_extras"].to_string().trim_matches('"'),
        "100",
        "{r}"
    );
    assert_eq!(
        row["right_words"].to_string().trim_matches('"'),
        "200",
        "{r}"
    );
    let dead = duckdb_check(&[
        "query",
        "--sink",
        &format!("dead={}", tmp.path().join("dead").display()),
        "--sql",
        "SELECT file, \"offset\", message FROM dead ORDER BY file, \"offset\"",
    ]);
    let got: Vec<(String, u64)> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap().to_string(),
                d["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = bad
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("kafka://{input}/{}", m["partition"]),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "dead letters: {dead}");
    let messages = dead.to_string();
    for m in [
        "Confluent wire format",
        "schema id 99",
        "too long or cut short",
    ] {
        assert!(
            messages.contains(m),
            "no dead letter says {m:?}: {messages}"
        );
    }
}

/// Windows on Kafka: timed by the messages' timestamps (a `watermark` and no
/// `event_time`), into a Kafka sink that keeps its windows' state in
/// `state_url`. Killed runs emit the same windows, with the same counts, as
/// a clean run.
#[test]
fn windows_over_kafka_timestamps_survive_kills_with_their_state() {
    let b = broker();
    let (input, clean, killed) = (topic("win"), topic("win-clean"), topic("win-killed"));
    kafka_tool(&["create", &b, &input, "1"]);
    kafka_tool(&["create", &b, &clean, "1"]);
    kafka_tool(&["create", &b, &killed, "1"]);
    // 6,000 messages 10 ms apart: 60 one-second windows
    kafka_tool(&["produce", &b, &input, "0", "6000", "--ts-step", "10"]);
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("windows.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "kafka_windows"
[settings]
commit_interval = "0s"
[settings.epoch]
max_rows = 100
max_latency = "200ms"
[sources.orders]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
format = "json"
columns = [{{ name = "id", type = "bigint", nullable = false }}, {{ name = "word", type = "varchar" }}]
watermark = "1s"
[stages.per_second]
kind = "sql"
inputs = ["orders"]
query = "SELECT date_bin(INTERVAL '1 second', _timestamp) AS second, count(*) AS n, sum(id) AS ids FROM orders GROUP BY date_bin(INTERVAL '1 second', _timestamp)"
[sinks.out]
kind = "kafka"
input = "per_second"
brokers = "{b}"
topic = "unset"
"#
        ),
    )
    .unwrap();
    let args = |out: &str, state: &str| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "-q".into(),
            "--exit-when-idle".into(),
            pipeline.to_string_lossy().into_owned(),
        ];
        for s in [
            format!("sinks.out.topic=\"{out}\""),
            format!("sinks.out.commit_topic=\"{out}.commits\""),
            format!(
                "sinks.out.state_url=\"{}\"",
                tmp.path().join(state).display()
            ),
        ] {
            a.push("--set".into());
            a.push(s);
        }
        a
    };
    finish(&args(&clean, "clean_state"), &[]);
    let killed_args = args(&killed, "killed_state");
    let runs = kill_repeatedly(&killed_args, &[], 10, 23);
    finish(&killed_args, &[]);
    eprintln!("{runs} runs, 10 of them killed with SIGKILL");
    let rows = |t: &str| -> serde_json::Value {
        let seen: serde_json::Value =
            serde_json::from_str(&kafka_tool(&["consume", &b, t])).unwrap();
        seen["rows"].clone()
    };
    let (want, got) = (rows(&clean), rows(&killed));
    // the last window is still open (the topic does not end): 59 closed
    assert!(want.as_array().unwrap().len() >= 58, "clean run: {want}");
    assert_eq!(
        got, want,
        "windows of the killed runs differ from the clean run's"
    );
}

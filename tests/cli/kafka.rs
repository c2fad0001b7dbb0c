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

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

/// The dead letters `dead` (rows with `file` and `offset`) are the bad
/// messages `bad` (`kafka_tool.py`'s partitions and offsets) of `topic`.
fn same_places(dead: &serde_json::Value, topic: &str, bad: &serde_json::Value) {
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
                format!("kafka://{topic}/{}", m["partition"]),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "dead letters: {dead}");
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
    same_places(&r, &input, &bad);

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
    let (mut registry, url) = start_registry();
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
schema_registry = "{url}"
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
    same_places(&dead, &input, &bad);
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

/// A worker of the scale-out test: `sluice run` of `pipeline`, its log
/// (`SLUICE_LOG=info`) in `log`.
fn worker(pipeline: &Path, log: &Path, env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(["run", "-q", pipeline.to_str().unwrap()])
        .current_dir(root())
        .env("SLUICE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Kills the workers still running when a test ends (a failed assertion
/// must not leave them consuming).
#[derive(Default)]
struct Reaper(Vec<u32>);

impl Reaper {
    fn watch(&mut self, child: std::process::Child) -> std::process::Child {
        self.0.push(child.id());
        child
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Rows the parquet sink `dir` has committed (0 before its first commit).
fn committed_rows(dir: &Path) -> u64 {
    let commits = dir.join("_sluice/commits");
    let Ok(entries) = std::fs::read_dir(&commits) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|c| c["rows"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits up to `secs` for `cond`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// How many partitions the newest assignment in a worker's log holds.
fn partitions_held(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rfind(|l| l.contains("the consumer group assigned partitions"))
        .map_or(0, |l| l.matches("(\"").count())
}

/// Scale-out: workers of one consumer group share a topic's six partitions
/// and commit into one Parquet sink, while messages keep coming.
///
/// - **The zombie.** Worker z stops itself (SIGSTOP, the
///   `stop_before_commit` failpoint) with its first epoch sealed and not
///   committed. Its session times out, worker b takes all six partitions
///   and commits them past z's epoch. Then z is resumed, and commits: the
///   shared log must refuse it (z rewinds, and says so).
/// - **Kills and a new worker.** Worker a is killed (SIGKILL) and restarted
///   six times; worker c joins after the second kill.
///
/// Every message is committed exactly once over the union (DuckDB reads
/// the committed files).
#[test]
fn workers_of_a_consumer_group_share_the_partitions_exactly_once() {
    let b = broker();
    let input = topic("shared");
    kafka_tool(&["create", &b, &input, "6"]);
    kafka_tool(&["produce", &b, &input, "0", "10000"]);
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    let pipeline = tmp.path().join("group.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "scaleout"
[settings]
commit_interval = "0s"
[settings.epoch]
max_rows = 200
max_latency = "200ms"
[sources.orders]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
group = "{input}.workers"
assignment = "group"
format = "json"
columns = [{{ name = "id", type = "bigint", nullable = false }}, {{ name = "word", type = "varchar" }}]
options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[stages.tagged]
kind = "sql"
inputs = ["orders"]
query = "SELECT id, word, _partition, _offset FROM orders"
[sinks.files]
kind = "parquet"
input = "tagged"
url = "{}"
"#,
            files.display()
        ),
    )
    .unwrap();
    let log = |name: &str| tmp.path().join(format!("{name}.log"));
    let pause = |ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms));
    // 30,000 more messages while the workers run
    let producer = {
        let (b, input) = (b.clone(), input.clone());
        std::thread::spawn(move || {
            for i in 0..30u64 {
                std::thread::sleep(std::time::Duration::from_millis(700));
                kafka_tool(&[
                    "produce",
                    &b,
                    &input,
                    &(10_000 + i * 1_000).to_string(),
                    "1000",
                ]);
            }
        })
    };

    let mut reaper = Reaper::default();
    // the zombie
    let wb = reaper.watch(worker(&pipeline, &log("b"), &[]));
    wait_for(60, "worker b commits", || committed_rows(&files) > 0);
    let zombie = reaper.watch(worker(
        &pipeline,
        &log("zombie"),
        &[("SLUICE_FAILPOINT", "stop_before_commit")],
    ));
    wait_for(
        60,
        "the zombie stops itself before its first commit",
        || {
            std::fs::read_to_string(format!("/proc/{}/stat", zombie.id())).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('T'))
            })
        },
    );
    wait_for(60, "worker b takes the zombie's partitions", || {
        partitions_held(&log("b")) == 6
    });
    let before = committed_rows(&files);
    wait_for(30, "worker b commits the zombie's partitions", || {
        committed_rows(&files) > before + 1000
    });
    signal(&zombie, "-CONT");

    // kills, and a worker more
    let mut a = reaper.watch(worker(&pipeline, &log("a0"), &[]));
    let mut c = None;
    let mut rng = 0x5eed_u64;
    for round in 1..=6 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        pause(1000 + (rng >> 33) % 2000);
        a.kill().unwrap(); // SIGKILL
        a.wait().unwrap();
        a = reaper.watch(worker(&pipeline, &log(&format!("a{round}")), &[]));
        if round == 2 {
            c = Some(reaper.watch(worker(&pipeline, &log("c"), &[])));
        }
    }
    producer.join().unwrap();
    let n = 40_000;
    wait_for(180, "every message committed", || {
        committed_rows(&files) >= n
    });
    // (a worker restarted a moment ago may not handle SIGTERM yet)
    pause(3000);
    let mut workers = vec![("a6", a), ("b", wb), ("zombie", zombie)];
    workers.extend(c.map(|c| ("c", c)));
    for (_, w) in &workers {
        signal(w, "-TERM");
    }
    for (name, w) in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {name} failed to stop ({:?}):\n{}",
            out.status,
            std::fs::read_to_string(log(name)).unwrap_or_default()
        );
    }

    let r = duckdb_check(&[
        "query",
        "--sink",
        &format!("files={}", files.display()),
        "--sql",
        "SELECT count(*) AS rows, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi, \
         count(DISTINCT (_partition, _offset)) AS positions FROM files",
    ]);
    let row = &r[0];
    assert_eq!(row["rows"], n, "{r}");
    assert_eq!(row["ids"], n, "{r}");
    assert_eq!(row["positions"], n, "{r}");
    assert_eq!(row["lo"], 0, "{r}");
    assert_eq!(row["hi"], n - 1, "{r}");
    // the zombie's epoch was refused by the log, and it went on from there
    let zombie_log = std::fs::read_to_string(log("zombie")).unwrap();
    assert!(
        zombie_log.contains("another worker committed")
            && zombie_log.contains("rewinding to the shared log"),
        "the zombie's commit was not refused:\n{zombie_log}"
    );
}

/// Starts `kafka_tool.py registry` on a free port; returns it and its URL
/// once it answers.
fn start_registry() -> (std::process::Child, String) {
    let port = super::free_port().to_string();
    let registry = Command::new(python())
        .arg(root().join("tests/support/kafka_tool.py"))
        .args(["registry", &port])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the registry did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (registry, format!("http://127.0.0.1:{port}"))
}

/// The sink's Avro: rows written in the Confluent wire format with a writer
/// schema sluice registers, read back by fastavro (an independent reader)
/// with the registry's schema, and by sluice's own Avro source.
#[test]
fn a_kafka_sink_writes_avro_with_a_registered_schema() {
    let b = broker();
    let (input, output) = (topic("to-avro"), topic("avro-out"));
    kafka_tool(&["create", &b, &input, "2"]);
    kafka_tool(&["create", &b, &output, "2"]);
    kafka_tool(&["produce", &b, &input, "0", "3000"]);
    let (mut registry, url) = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let write = tmp.path().join("write.toml");
    std::fs::write(
        &write,
        format!(
            r#"[pipeline]
name = "avro_sink"
[sources.orders]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
format = "json"
columns = [{{ name = "id", type = "bigint", nullable = false }}, {{ name = "word", type = "varchar" }}]
[stages.shouted]
kind = "sql"
inputs = ["orders"]
query = "SELECT id, upper(word) AS word, _partition AS part FROM orders"
[sinks.out]
kind = "kafka"
input = "shouted"
brokers = "{b}"
topic = "{output}"
commit_topic = "{output}.commits"
key = "id"
format = "avro"
schema_registry = "{url}"
"#
        ),
    )
    .unwrap();
    let read = tmp.path().join("read.toml");
    std::fs::write(
        &read,
        format!(
            r#"[pipeline]
name = "avro_back"
[sources.shouted]
kind = "kafka"
brokers = "{b}"
topic = "{output}"
format = "avro"
schema_registry = "{url}"
columns = [{{ name = "id", type = "bigint", nullable = false }}, {{ name = "word", type = "varchar" }}, {{ name = "part", type = "int" }}]
[sinks.files]
kind = "parquet"
input = "shouted"
url = "{}"
"#,
            tmp.path().join("files").display()
        ),
    )
    .unwrap();
    let wrote = sluice(&["run", "-q", "--exit-when-idle", write.to_str().unwrap()]);
    let seen = Command::new(python())
        .arg(root().join("tests/support/kafka_tool.py"))
        .args(["consume", &b, &output, "--avro", &url])
        .output()
        .unwrap();
    let back = sluice(&["run", "-q", "--exit-when-idle", read.to_str().unwrap()]);
    let subjects = Command::new(python())
        .args([
            "-c",
            &format!("import urllib.request; print(urllib.request.urlopen('{url}/subjects').read().decode())"),
        ])
        .output()
        .unwrap();
    registry.kill().unwrap();
    registry.wait().unwrap();
    ok(wrote);
    ok(back);
    assert!(seen.status.success(), "{}", text(&seen));
    let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert_eq!(seen["count"], 3000, "{}", seen["count"]);
    assert_eq!(seen["unparsed"], 0);
    let rows = seen["rows"].as_array().unwrap();
    for r in rows {
        let id = r["id"].as_u64().unwrap();
        assert_eq!(r["word"], format!("W{}", id % 13), "{r}");
        assert!(r["part"].as_u64().unwrap() < 2, "{r}");
    }
    assert_eq!(seen["ids"].as_object().unwrap().len(), 3000);
    assert!(
        String::from_utf8_lossy(&subjects.stdout).contains(&format!("{output}-value")),
        "the writer schema is registered under <topic>-value: {}",
        text(&subjects)
    );
    let r = duckdb_check(&[
        "query",
        "--sink",
        &format!("files={}", tmp.path().join("files").display()),
        "--sql",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, \
         sum(CASE WHEN word = 'W' || (id % 13) THEN 1 ELSE 0 END) AS right_words FROM files",
    ]);
    assert_eq!(r[0]["n"], 3000, "{r}");
    assert_eq!(r[0]["ids"], 3000, "{r}");
    assert_eq!(
        r[0]["right_words"].to_string().trim_matches('"'),
        "3000",
        "{r}"
    );
}

/// CSV messages, one record each: every malformed one (a wrong type, a
/// field too many or too few, an open quote, a tombstone, an empty value)
/// is dead-lettered with its partition and offset; the good ones are rows.
#[test]
fn malformed_csv_messages_are_dead_lettered_with_partition_and_offset() {
    let b = broker();
    let input = topic("csv");
    kafka_tool(&["create", &b, &input, "2"]);
    let bad: serde_json::Value =
        serde_json::from_str(&kafka_tool(&["produce-csv", &b, &input])).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("csv.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[pipeline]
name = "csv"
[sources.orders]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
format = "csv"
columns = [{{ name = "id", type = "bigint", nullable = false }}, {{ name = "word", type = "varchar" }}]
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
    ok(sluice(&[
        "run",
        "-q",
        "--exit-when-idle",
        pipeline.to_str().unwrap(),
    ]));
    let r = duckdb_check(&[
        "query",
        "--sink",
        &format!("out={}", tmp.path().join("out").display()),
        "--sql",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, \
         sum(CASE WHEN word = 'w' || id THEN 1 ELSE 0 END) AS right_words FROM out",
    ]);
    assert_eq!(r[0]["n"], 100, "{r}");
    assert_eq!(r[0]["ids"], 100, "{r}");
    assert_eq!(
        r[0]["right_words"].to_string().trim_matches('"'),
        "100",
        "{r}"
    );
    let dead = duckdb_check(&[
        "query",
        "--sink",
        &format!("dead={}", tmp.path().join("dead").display()),
        "--sql",
        "SELECT file, \"offset\" FROM dead ORDER BY file, \"offset\"",
    ]);
    same_places(&dead, &input, &bad);
}

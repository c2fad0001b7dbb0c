//! Prometheus metrics of a live run, scraped over HTTP and read with the
//! official client's parser (`prometheus_client`, from PyPI): the numbers
//! move while the run goes, and after the last commit they equal the run
//! summary's.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{commits, free_addr, python, root, set, text};

/// One sample: its name, its labels, its value.
type Sample = (String, serde_json::Map<String, Value>, f64);

/// `GET /metrics` at `addr`, or `None` while nothing listens there.
fn scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Some(body.to_string())
}

/// The exposition, parsed by prometheus_client: (sample name, labels) → value.
fn parse(exposition: &str) -> Vec<Sample> {
    let mut c = Command::new(python())
        .arg(root().join("tests/support/prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "prometheus_client refused it: {}",
        text(&o)
    );
    let families: Value = serde_json::from_slice(&o.stdout).unwrap();
    families
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap().clone())
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["labels"].as_object().unwrap().clone(),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of `name` for the series whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn a_live_run_serves_metrics_that_end_equal_to_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--json",
            "--metrics",
            &addr,
            "tests/pipelines/metrics.toml",
            "--set",
            "observability.metrics_linger=\"20s\"",
            "--set",
            &set("sinks.out.url", &out),
            "--set",
            &set("sinks.rows_out.url", &tmp.path().join("rows")),
        ])
        .current_dir(root())
        .env_remove("SLUICE_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // stdout is the summary, printed when the run ends (the endpoint lingers)
    let stdout = Arc::new(Mutex::new(String::new()));
    let reader = {
        let stdout = Arc::clone(&stdout);
        let mut pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stdout
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let summary = || serde_json::from_str::<Value>(&stdout.lock().unwrap()).ok();

    // while it runs, the rows committed grow
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut live = None;
    while summary().is_none() {
        assert!(Instant::now() < deadline, "the run did not end");
        if let Some(body) = scrape(&addr) {
            let rows = value(
                &parse(&body),
                "sluice_rows_out_total",
                &[("component", "out")],
            );
            if let Some(r) = rows.filter(|r| *r > 0.0) {
                live.get_or_insert(r);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let summary = summary().unwrap();
    let body = scrape(&addr).expect("the endpoint lingers after the run");
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let samples = parse(&body);

    let live = live.expect("a scrape during the run saw committed rows");
    let total = summary["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "out")
        .unwrap()["rows_out"]
        .as_f64()
        .unwrap();
    assert!(
        live < total,
        "the live scrape ({live}) came before the end ({total})"
    );

    // every component's numbers equal the summary's
    for c in summary["components"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let kind = c["kind"].as_str().unwrap();
        let labels = [
            ("component", name),
            ("kind", kind),
            ("pipeline", "metrics@0.1.0"),
        ];
        for (metric, field) in [
            ("sluice_rows_in_total", "rows_in"),
            ("sluice_rows_out_total", "rows_out"),
            ("sluice_bytes_out_total", "bytes"),
            ("sluice_batches_out_total", "batches"),
            ("sluice_rows_skipped_total", "rows_skipped"),
            ("sluice_rows_dead_lettered_total", "rows_dead_lettered"),
        ] {
            assert_eq!(
                value(&samples, metric, &labels),
                c[field].as_f64(),
                "{metric} of {name}"
            );
        }
    }
    // rows given up on, by code: the CSV's short row
    let skipped = value(
        &samples,
        "sluice_row_errors_total",
        &[("component", "rows"), ("code", "MALFORMED")],
    );
    assert_eq!(skipped, Some(1.0), "{body}");
    // commits: as many as the sink's log holds, the last one's epoch
    let log = commits(Path::new(&out));
    assert_eq!(
        value(&samples, "sluice_commits_total", &[]),
        Some(log.len() as f64)
    );
    let last = log.last().unwrap()["epoch"].as_f64();
    assert_eq!(value(&samples, "sluice_last_committed_epoch", &[]), last);
    // one latency sample per epoch, one duration per epoch and commit
    assert_eq!(
        value(&samples, "sluice_read_to_commit_seconds_count", &[]),
        summary["latency"]["epochs"].as_f64()
    );
    assert_eq!(
        value(&samples, "sluice_epoch_duration_seconds_count", &[]),
        summary["epochs"].as_f64()
    );
    assert_eq!(
        value(&samples, "sluice_commit_duration_seconds_count", &[]),
        Some(log.len() as f64)
    );
}

/// Runs `sluice run --json --metrics` with `args` to the end and scrapes
/// the lingering endpoint: (summary, samples).
fn run_and_scrape(args: &[String]) -> (Value, Vec<Sample>) {
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-q", "--json", "--metrics", &addr])
        .args(args)
        .args(["--set", "observability.metrics_linger=\"30s\""])
        .current_dir(root())
        .env_remove("SLUICE_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let mut stdout = String::new();
    let mut buf = [0u8; 4096];
    let summary = loop {
        let n = pipe.read(&mut buf).unwrap();
        assert!(n > 0, "the run ended without a summary: {stdout}");
        stdout.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Ok(v) = serde_json::from_str::<Value>(&stdout) {
            break v;
        }
    };
    let body = scrape(&addr).expect("the endpoint lingers after the run");
    let _ = child.kill();
    let _ = child.wait();
    (summary, parse(&body))
}

#[test]
fn external_stages_report_round_trips_and_process_starts() {
    super::stages::stages_built();
    let tmp = tempfile::tempdir().unwrap();
    let (summary, samples) = run_and_scrape(&[
        "examples/mixed_stages/pipeline.toml".into(),
        "--set".into(),
        "sources.lineitem.scale_factor=0.01".into(),
        "--set".into(),
        set("sinks.out.url", &tmp.path().join("out")),
    ]);
    for stage in ["valid", "enriched"] {
        let c = summary["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == stage)
            .unwrap();
        let labels = [("component", stage), ("kind", "external")];
        assert_eq!(
            value(&samples, "sluice_stage_process_starts_total", &labels),
            c["process_starts"].as_f64(),
            "{stage}"
        );
        let trips = value(
            &samples,
            "sluice_stage_batch_round_trip_seconds_count",
            &labels,
        );
        assert!(trips.is_some_and(|n| n >= 1.0), "{stage}: {trips:?}");
    }
    // the Go stage's refused rows, by the code it gave them
    let skipped: f64 = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "sluice_row_errors_total"
                && l.get("component").and_then(Value::as_str) == Some("valid")
        })
        .map(|(_, _, v)| v)
        .sum();
    let expected = summary["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "valid")
        .unwrap()["rows_skipped"]
        .as_f64()
        .unwrap();
    assert!(expected > 0.0);
    assert_eq!(skipped, expected);
}

#[test]
fn metrics_on_an_address_in_use_fail_the_run_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = super::sluice(&["run", "--metrics", &addr, "tests/pipelines/metrics.toml"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("observability.metrics"), "{t}");
    assert!(
        t.contains(&format!("cannot serve metrics on {addr}")),
        "{t}"
    );
}

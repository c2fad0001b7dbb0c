//! Traces against a real backend: Jaeger, built from its Go module by
//! `scripts/test` (tests/jaeger), started here with its OTLP receiver on
//! loopback. `examples/mixed_stages` (a Go stage feeding a Rust stage) runs
//! with `--otlp` pointed at it; Jaeger's HTTP API must then hold ONE trace
//! with spans of the engine and of both stages, each stage's span a child
//! of the engine's exchange span for that stage, under the epoch's span.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, root, text};

struct Jaeger {
    child: Child,
    otlp: u16,
    query: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_jaeger() -> Jaeger {
    let bin = root().join("target/tools/jaeger");
    assert!(
        bin.exists(),
        "{} is missing: ./scripts/test builds it from tests/jaeger",
        bin.display()
    );
    let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(root().join("tests/jaeger/config.yaml"))
        .unwrap()
        .replace("{otlp}", &otlp.to_string())
        .replace("{query_grpc}", &query_grpc.to_string())
        .replace("{query}", &query.to_string());
    let path = dir.path().join("jaeger.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("jaeger.log")).unwrap();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut jaeger = Jaeger {
        child,
        otlp,
        query,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in [otlp, query] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = jaeger.child.try_wait() {
                let log = std::fs::read_to_string(jaeger._dir.path().join("jaeger.log"));
                panic!("jaeger exited ({status}): {}", log.unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "jaeger did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    jaeger
}

impl Jaeger {
    /// `GET /api/<path>` of the query service, as JSON.
    fn api(&self, path: &str) -> Value {
        let o = Command::new("curl")
            .args(["-sS", "-f"])
            .arg(format!("http://127.0.0.1:{}/api/{path}", self.query))
            .output()
            .unwrap();
        assert!(o.status.success(), "jaeger {path}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The traces holding spans of `service`, once all `services` have
    /// reported some (exports are batched: they land a little later).
    fn traces_once_all_report(&self, service: &str, services: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let known = self.api("services");
            let known: Vec<&str> = known["data"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if services.iter().all(|s| known.contains(s)) {
                let traces = self.api(&format!("traces?service={service}&limit=100"));
                return traces["data"].as_array().cloned().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "services seen by jaeger: {known:?}, want {services:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// One span of a Jaeger trace, with its service and parent.
#[derive(Debug)]
struct Span {
    name: String,
    service: String,
    parent: Option<String>,
    tags: BTreeMap<String, Value>,
}

fn spans_of(trace: &Value) -> BTreeMap<String, Span> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let service = processes[s["processID"].as_str().unwrap()]["serviceName"]
                .as_str()
                .unwrap()
                .to_string();
            let parent = s["references"].as_array().and_then(|refs| {
                refs.iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .map(|r| r["spanID"].as_str().unwrap().to_string())
            });
            let tags = s["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .map(|t| (t["key"].as_str().unwrap().to_string(), t["value"].clone()))
                        .collect()
                })
                .unwrap_or_default();
            let span = Span {
                name: s["operationName"].as_str().unwrap().to_string(),
                service,
                parent,
                tags,
            };
            (s["spanID"].as_str().unwrap().to_string(), span)
        })
        .collect()
}

#[test]
fn one_trace_holds_the_engine_a_go_stage_and_a_rust_stage_correctly_nested() {
    let jaeger = start_jaeger();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(root())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        // JSON logs, with the stages' exchange lines (at debug)
        .env("SLUICE_LOG_FORMAT", "json")
        .env("SLUICE_LOG", "warn,sluice=debug,sluice_flight=debug")
        .args(["run", "examples/mixed_stages/pipeline.toml", "--quiet"])
        .args(["--otlp", &format!("http://127.0.0.1:{}", jaeger.otlp)])
        .args(["--set", "sources.lineitem.scale_factor=0.002"])
        .args([
            "--set",
            &format!("sinks.out.url=\"{}\"", out.path().display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "sluice failed:\n{}", text(&o));

    let services = ["sluice", "validate-go", "enrich-rust"];
    let traces = jaeger.traces_once_all_report("sluice", &services);
    assert_eq!(traces.len(), 1, "one run, one trace: {traces:#?}");
    let spans = spans_of(&traces[0]);
    let by_service =
        |service: &str| -> Vec<&Span> { spans.values().filter(|x| x.service == service).collect() };
    let (engine, go, rust) = (
        by_service("sluice"),
        by_service("validate-go"),
        by_service("enrich-rust"),
    );
    assert!(!go.is_empty() && !rust.is_empty(), "{spans:#?}");
    for name in [
        "run",
        "epoch",
        "source read",
        "exchange",
        "sink write",
        "commit",
    ] {
        assert!(
            engine.iter().any(|s| s.name == name),
            "no engine span `{name}`: {engine:#?}"
        );
    }
    let parent_of = |s: &Span| s.parent.as_ref().and_then(|p| spans.get(p));

    // each stage span: a child of the engine's exchange span of that stage,
    // which is a child of an epoch span, which is a child of the run
    for (stage_spans, stage) in [(&go, "valid"), (&rust, "enriched")] {
        for s in stage_spans {
            assert_eq!(s.name, format!("exchange {stage}"));
            let exchange =
                parent_of(s).unwrap_or_else(|| panic!("{s:?} has no parent in the trace"));
            assert_eq!(
                (exchange.service.as_str(), exchange.name.as_str()),
                ("sluice", "exchange"),
                "{s:?}"
            );
            assert_eq!(
                exchange.tags.get("sluice.component"),
                Some(&Value::from(stage))
            );
            let epoch = parent_of(exchange).expect("the exchange has a parent");
            assert_eq!(epoch.name, "epoch");
            assert_eq!(
                s.tags.get("sluice.epoch"),
                epoch.tags.get("sluice.epoch"),
                "a stage span's epoch is its engine epoch's"
            );
            assert_eq!(parent_of(epoch).map(|r| r.name.as_str()), Some("run"));
        }
    }
    // every engine span but the run has its parent in the trace
    for s in &engine {
        if s.name != "run" {
            assert!(parent_of(s).is_some(), "{s:?} is an orphan");
        }
    }

    // the log names the trace: the engine's lines, and the stages' lines it
    // read from their stderr, each with the span it was logged in
    let trace_id = traces[0]["traceID"].as_str().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let id = |v: &Value| v.as_str().map(|s| s.trim_start_matches('0').to_string());
    let in_trace =
        |l: &&Value| id(&l["trace_id"]) == Some(trace_id.trim_start_matches('0').to_string());
    let span_service = |l: &Value| {
        spans
            .iter()
            .find(|(k, _)| Some(k.trim_start_matches('0').to_string()) == id(&l["span_id"]))
            .map(|(_, s)| s.service.clone())
    };
    assert!(
        lines
            .iter()
            .filter(in_trace)
            .any(|l| l["message"] == "committed" && span_service(l).as_deref() == Some("sluice")),
        "no engine line in the trace: {lines:#?}"
    );
    for (stage, service) in [("valid", "validate-go"), ("enriched", "enrich-rust")] {
        let line = lines.iter().filter(in_trace).find(|l| {
            l["stage"] == stage
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("exchange flushed"))
        });
        let line =
            line.unwrap_or_else(|| panic!("no line of stage {stage} in the trace: {lines:#?}"));
        assert_eq!(span_service(line).as_deref(), Some(service), "{line}");
    }
}

//! OpenLineage run events: START, RUNNING per commit, COMPLETE or FAIL, with
//! schema and column-lineage facets, to a file and to an HTTP endpoint,
//! checked against the spec's model in the official Python client.

use std::io::{BufRead, BufReader, Read, Write};

use super::*;

fn check_events(file: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("tests/support/openlineage_check.py"))
        .arg(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "OpenLineage check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn events(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_run_emits_start_running_complete_with_column_lineage() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lineage.jsonl");
    ok(sluice(&[
        "run",
        "-q",
        "examples/tpch_revenue/pipeline.toml",
        "--set",
        "sources.lineitem.scale_factor=0.005",
        "--set",
        &set("sinks.out.url", &tmp.path().join("out")),
        "--set",
        &set("lineage.file", &file),
    ]));
    let summary = check_events(&file);
    assert_eq!(
        summary["events"],
        serde_json::json!(["START", "RUNNING", "COMPLETE"]),
        "{summary}"
    );
    let evs = events(&file);
    assert!(
        evs.iter()
            .all(|e| e["run"]["runId"] == evs[0]["run"]["runId"]
                && e["job"]["name"] == "tpch_revenue")
    );
    let out = &evs[2]["outputs"][0];
    assert_eq!(out["namespace"], "file");
    assert!(out["name"].as_str().unwrap().ends_with("/out"), "{out}");
    // revenue = l_extendedprice * (1 - l_discount), through two fused stages
    let from = |col: &str| -> Vec<String> {
        out["facets"]["columnLineage"]["fields"][col]["inputFields"]
            .as_array()
            .unwrap_or_else(|| panic!("no lineage for {col}: {out}"))
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(from("revenue"), ["l_discount", "l_extendedprice"]);
    assert_eq!(from("charge"), ["l_discount", "l_extendedprice", "l_tax"]);
    assert_eq!(from("ship_year"), ["l_shipdate"]);
    let fields: Vec<&str> = out["facets"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"ship_year") && fields.contains(&"revenue"),
        "{fields:?}"
    );
    let input = &evs[0]["inputs"][0];
    assert!(
        input["facets"]["schema"]["fields"]
            .as_array()
            .unwrap()
            .len()
            >= 16,
        "{input}"
    );
}

#[test]
fn a_failed_run_emits_fail_with_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lineage.jsonl");
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"bad\"\n[sources.input]\nkind = \"csv\"\npath = \"{}\"\n\
             columns = [{{ name = \"id\", type = \"bigint\" }}, {{ name = \"name\", type = \"varchar\" }}, {{ name = \"amount\", type = \"bigint\" }}]\n\
             [sinks.out]\nkind = \"parquet\"\ninput = \"input\"\nurl = \"out\"\n[lineage]\nfile = \"lineage.jsonl\"\n",
            root().join("testdata/bad/bad_value.csv").display()
        ),
    )
    .unwrap();
    let o = sluice(&["run", "-q", pipeline.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary = check_events(&file);
    assert_eq!(
        summary["events"],
        serde_json::json!(["START", "FAIL"]),
        "{summary}"
    );
    let fail = &events(&file)[1];
    assert!(
        fail["run"]["facets"]["errorMessage"]["message"]
            .as_str()
            .unwrap()
            .contains("bad_value.csv, line 5"),
        "{fail}"
    );
}

#[test]
fn events_are_posted_to_an_http_endpoint() {
    // a plain HTTP server on loopback that records each POST body and answers 200
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    ok(sluice(&[
        "run",
        "-q",
        "examples/tpch_revenue/pipeline.toml",
        "--set",
        "sources.lineitem.scale_factor=0.002",
        "--set",
        &set("sinks.out.url", &tmp.path().join("out")),
        "--set",
        &format!("lineage.url=\"http://127.0.0.1:{port}/api/v1/lineage\""),
    ]));
    let bodies: Vec<String> = rx.try_iter().collect();
    let file = tmp.path().join("posted.jsonl");
    std::fs::write(&file, bodies.join("\n")).unwrap();
    let summary = check_events(&file);
    assert_eq!(
        summary["events"],
        serde_json::json!(["START", "RUNNING", "COMPLETE"]),
        "{summary}"
    );
}

//! The live pipeline page in a real browser: Debian's chromium, headless,
//! driven through Playwright (tests/support/page_check.py). The page is
//! loaded while `examples/mixed_stages` runs in 300 small epochs; its
//! numbers must move while the run goes, its graph must show every
//! component with its edges, and at the end its counts must equal the run
//! summary's.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{free_addr, python, root, text};

/// A JSON array of strings, as a set.
fn strings(v: &Value) -> BTreeSet<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn the_live_page_shows_the_graph_moving_numbers_and_the_summarys_counts() {
    let addr = free_addr();
    let out = tempfile::tempdir().unwrap();
    // SLUICE_UI_SCREENSHOT=docs/ui.png keeps a picture (the README's)
    let screenshot = std::env::var("SLUICE_UI_SCREENSHOT").ok();
    let mut page = Command::new(python());
    page.arg(root().join("tests/support/page_check.py"))
        .arg(format!("http://{addr}/"));
    if let Some(s) = &screenshot {
        page.args(["--screenshot", s]);
    }
    let mut page = page
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(page.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(ready.as_deref(), Some("ready"), "the browser did not start");

    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(root())
        .args(["run", "examples/mixed_stages/pipeline.toml", "--json"])
        .args(["--ui", &addr])
        // 900k rows in 300 epochs of one part each: long enough to watch
        .args(["--set", "sources.lineitem.scale_factor=0.15"])
        .args(["--set", "sources.lineitem.parts=300"])
        .args(["--set", "settings.epoch.max_rows=3000"])
        .args(["--set", "settings.epochs_in_flight=1"])
        .args(["--set", "observability.metrics_linger=\"10s\""])
        .args([
            "--set",
            &format!("sinks.out.url=\"{}\"", out.path().display()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let report = lines.next().and_then(Result::ok).unwrap_or_default();
    let page_ok = page.wait().unwrap().success();
    let run = run.wait_with_output().unwrap();
    assert!(run.status.success(), "sluice failed:\n{}", text(&run));
    assert!(page_ok, "page_check failed: {report}");
    let page: Value = serde_json::from_str(&report).unwrap();
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(page["status"], "finished");

    // the graph: every component of the summary, and the pipeline's edges
    let components = summary["components"].as_array().unwrap();
    let names: BTreeSet<&str> = components
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let drawn = strings(&page["graph"]["nodes"]);
    assert_eq!(drawn, names, "the graph's nodes");
    let edges = strings(&page["graph"]["edges"]);
    let want: BTreeSet<&str> = [
        "lineitem>lines",
        "lines>valid",
        "valid>enriched",
        "enriched>out",
    ]
    .into_iter()
    .collect();
    assert_eq!(edges, want, "the graph's edges");

    // the numbers moved while the run went: two different row counts seen
    let running: Vec<u64> = page["running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let seen: BTreeSet<u64> = running.iter().copied().collect();
    assert!(
        seen.len() >= 2 && running.windows(2).all(|w| w[0] <= w[1]),
        "rows out while running: {running:?}"
    );

    // at the end, the page's counts are the summary's
    for c in components {
        let name = c["name"].as_str().unwrap();
        for f in ["rows_in", "rows_out", "rows_skipped", "rows_dead_lettered"] {
            assert_eq!(
                page["components"][name][f], c[f],
                "{name} {f}: the page shows {}, the summary {}",
                page["components"][name][f], c[f]
            );
        }
    }
    assert!(
        summary["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["rows_skipped"].as_u64() > Some(0)),
        "the Go stage skips rows: some count besides rows must show"
    );
    // one commit per epoch, newest first
    let commits: Vec<u64> = page["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        commits.len() as u64,
        summary["epochs"].as_u64().unwrap().min(50)
    );
    assert!(commits.windows(2).all(|w| w[0] > w[1]), "{commits:?}");
    // the rows the Go stage gave up on are listed, newest first
    let letters = page["dead_letters"].as_array().unwrap();
    assert!(!letters.is_empty() && letters.len() <= 20, "{letters:?}");
    for l in letters {
        assert_eq!(l[1], "valid", "{l}");
        assert!(l[2].as_str().unwrap().ends_with("(skipped)"), "{l}");
    }
}

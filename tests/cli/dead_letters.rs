//! Dead letters: malformed rows of every kind go to the dead-letter sink with
//! their raw input, code, file and line; the rest flows on; `dead-letters`
//! lists and exports them and `replay` feeds corrected rows back exactly once.

use super::*;

/// Copies testdata/dead_letters to a temp folder (its outputs go there).
fn workdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["pipeline.toml", "orders.csv", "events.jsonl"] {
        std::fs::copy(
            root().join("testdata/dead_letters").join(f),
            tmp.path().join(f),
        )
        .unwrap();
    }
    tmp
}

fn in_dir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn committed_ids(dir: &Path) -> Vec<i64> {
    let r = duckdb_check(&[
        "metadata",
        "--sink",
        dir.to_str().unwrap(),
        "--sum-column",
        "id",
    ]);
    vec![
        r["duckdb_rows"].as_i64().unwrap(),
        r["sum"].as_str().unwrap().parse().unwrap(),
    ]
}

#[test]
fn bad_rows_go_to_the_dead_letter_sink_and_the_rest_flows_on() {
    let tmp = workdir();
    let d = tmp.path();
    let o = ok(in_dir(d, &["run", "--json", "pipeline.toml"]));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = |n: &str| {
        s["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()
            .clone()
    };
    // rows read = rows passed on + rows dead-lettered
    assert_eq!(
        (
            c("orders")["rows_in"].as_u64(),
            c("orders")["rows_out"].as_u64(),
            c("orders")["rows_dead_lettered"].as_u64()
        ),
        (Some(9), Some(3), Some(6))
    );
    assert_eq!(
        (
            c("events")["rows_in"].as_u64(),
            c("events")["rows_out"].as_u64(),
            c("events")["rows_dead_lettered"].as_u64()
        ),
        (Some(7), Some(3), Some(4))
    );
    assert_eq!(committed_ids(&d.join("out/orders")), [3, 1 + 2 + 7]);
    assert_eq!(committed_ids(&d.join("out/events")), [3, 1 + 2 + 6]);

    let letters = json_lines(&ok(in_dir(d, &["dead-letters", "out/dead", "--json"])));
    assert_eq!(letters.len(), 10);
    let find = |comp: &str, line: &str| {
        letters
            .iter()
            .find(|l| l["component"] == comp && l["line"] == line)
            .unwrap_or_else(|| panic!("{comp}:{line} in {letters:?}"))
    };
    let (missing, bad_value, utf8, extra) = (
        find("orders", "4"),
        find("orders", "5"),
        find("orders", "6"),
        find("orders", "7"),
    );
    assert_eq!(
        (missing["code"].as_str(), missing["raw"].as_str()),
        (Some("MALFORMED"), Some("3,gamma"))
    );
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("2 fields where the schema has 3 columns"),
        "{missing}"
    );
    assert_eq!(
        (bad_value["code"].as_str(), bad_value["raw"].as_str()),
        (Some("TYPE_MISMATCH"), Some("4,delta,forty"))
    );
    assert_eq!(utf8["code"], "MALFORMED");
    assert!(
        utf8["message"].as_str().unwrap().contains("UTF-8"),
        "{utf8}"
    );
    assert_eq!(extra["raw"], "6,zeta,60,extra");
    assert!(missing["file"].as_str().unwrap().ends_with("orders.csv"));
    assert_eq!(find("events", "3")["code"], "TYPE_MISMATCH");
    // a null where the columns say not null breaks the contract
    assert_eq!(find("orders", "10")["code"], "CONSTRAINT_VIOLATION");
    assert_eq!(find("events", "7")["code"], "CONSTRAINT_VIOLATION");
    // a row that breaks a declared check: the decoded row, as JSON
    let check = letters
        .iter()
        .find(|l| l["message"] == "check `amount >= 0` failed")
        .expect("the check's dead letter");
    assert_eq!(check["code"], "CONSTRAINT_VIOLATION");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(check["raw"].as_str().unwrap()).unwrap()["amount"],
        -5
    );
    let cut = find("events", "5");
    assert_eq!(cut["code"], "MALFORMED");
    assert!(
        cut["message"]
            .as_str()
            .unwrap()
            .starts_with("the record ends where a value belongs"),
        "{cut}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l["epoch"] == "0" && l["role"] == "source")
    );
    // the summary shows it: 9 read = 3 passed + 6 dead-lettered
    let t = text(&ok(in_dir(d, &["dead-letters", "out/dead"])));
    assert!(t.contains("10 dead letter(s)"), "{t}");
    // the dead-letter sink commits like any sink
    assert_eq!(commits(&d.join("out/dead")).len(), 1);
    // another sink is refused with a message, not a panic
    let o = in_dir(d, &["dead-letters", "out/orders"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not a dead-letter sink (no column `epoch`)"),
        "{}",
        text(&o)
    );
}

#[test]
fn exported_lines_fixed_and_replayed_land_exactly_once() {
    let tmp = workdir();
    let d = tmp.path();
    ok(in_dir(d, &["run", "-q", "pipeline.toml"]));
    let o = ok(in_dir(
        d,
        &[
            "dead-letters",
            "out/dead",
            "--source",
            "orders",
            "--export",
            "fixed.csv",
        ],
    ));
    assert!(
        text(&o).contains("wrote 5 raw line(s) of `orders`"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("1 row(s) failed a check"), "{}", text(&o));
    let exported = std::fs::read_to_string(d.join("fixed.csv")).unwrap();
    assert!(
        exported.starts_with("3,gamma\n4,delta,forty\n"),
        "{exported}"
    );
    std::fs::write(
        d.join("fixed.csv"),
        "3,gamma,30\n4,delta,40\n5,epsilon,50\n6,zeta,60\n",
    )
    .unwrap();
    for _ in 0..2 {
        // the second replay finds nothing new: the file is in the committed offsets
        ok(in_dir(
            d,
            &[
                "replay",
                "pipeline.toml",
                "--source",
                "orders",
                "--input",
                "fixed.csv",
                "-q",
            ],
        ));
    }
    assert_eq!(
        committed_ids(&d.join("out/orders")),
        [7, (1..=7).sum::<i64>()]
    );
}

#[test]
fn skip_counts_bad_rows_and_dead_letter_needs_a_sink() {
    let tmp = workdir();
    let d = tmp.path();
    let o = ok(in_dir(
        d,
        &[
            "run",
            "--json",
            "pipeline.toml",
            "--set",
            "sources.orders.on_error=\"skip\"",
            "--set",
            "sources.events.on_error=\"skip\"",
        ],
    ));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let orders = s["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "orders")
        .unwrap();
    assert_eq!(
        (
            orders["rows_skipped"].as_u64(),
            orders["rows_dead_lettered"].as_u64()
        ),
        (Some(6), Some(0))
    );
    assert!(json_lines(&ok(in_dir(d, &["dead-letters", "out/dead", "--json"]))).is_empty());

    let o = in_dir(
        d,
        &[
            "validate",
            "pipeline.toml",
            "--set",
            "sources.orders.checks=[\"amount + 1\"]",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(
            "`sources.orders.checks[0]`: `amount + 1` is Int64, a check must be true or false"
        ),
        "{}",
        text(&o)
    );

    let bare = std::fs::read_to_string(d.join("pipeline.toml"))
        .unwrap()
        .replace("[dead_letter]\nurl = \"out/dead\"\n", "");
    std::fs::write(d.join("bare.toml"), bare).unwrap();
    let o = in_dir(d, &["validate", "bare.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(
            "`sources.events.on_error`: `on_error = \"dead_letter\"` needs a dead-letter sink"
        ),
        "{}",
        text(&o)
    );
}

/// Runs `pipeline.toml` in `dir` with `input` on standard input.
fn run_with_stdin(dir: &Path, input: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--json", "pipeline.toml"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn stdin_takes_on_error_and_a_failed_run_says_its_lines_are_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pipeline = |on_error: &str| {
        format!(
            r#"[pipeline]
name = "stdin_errors"

[sources.lines]
kind = "stdin"
format = "jsonl"
columns = [{{ name = "id", type = "bigint" }}]
on_error = "{on_error}"

[sinks.out]
kind = "parquet"
input = "lines"
url = "out"
"#
        )
    };
    let input = "{\"id\": 1}\n{\"id\": 7.5}\n\n{\"id\": 3}\n";
    std::fs::write(d.join("pipeline.toml"), pipeline("skip")).unwrap();
    let o = ok(run_with_stdin(d, input));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = s["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lines")
        .unwrap()
        .clone();
    assert_eq!(
        (c["rows_out"].as_u64(), c["rows_skipped"].as_u64()),
        (Some(2), Some(1)),
        "{c}"
    );

    std::fs::write(d.join("pipeline.toml"), pipeline("fail")).unwrap();
    std::fs::remove_dir_all(d.join("out")).unwrap();
    let o = run_with_stdin(d, input);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("line 2"), "{t}");
    assert!(t.contains("TYPE_MISMATCH"), "{t}");
    assert!(t.contains("standard input cannot be read again"), "{t}");
    assert!(!t.contains("redoes it"), "{t}");
}

#[test]
fn a_run_failed_by_a_bad_file_says_the_next_run_fails_the_same_way() {
    let tmp = workdir();
    let d = tmp.path();
    let o = in_dir(
        d,
        &[
            "run",
            "pipeline.toml",
            "--set",
            "sources.orders.on_error=\"fail\"",
        ],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("orders.csv, line 4"), "{t}");
    assert!(t.contains("fails the same way until it is fixed"), "{t}");
    assert!(!t.contains("redoes it"), "{t}");
}

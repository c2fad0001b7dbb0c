//! The schema registry: `sluice schema check`, stage contracts checked by
//! `validate`, and Parquet written at three versions read as the latest.

use super::*;

#[test]
fn schema_check_accepts_compatible_versions_and_explains_breaking_ones() {
    let o = ok(sluice(&[
        "schema",
        "check",
        "--registry",
        "testdata/evolution/schemas",
    ]));
    let t = text(&o);
    assert!(t.contains("every change is compatible"), "{t}");
    assert_eq!(
        t.matches("compatible").count(),
        3,
        "v1→v2, v2→v3 and the summary:\n{t}"
    );

    // old readers cannot read the widened amount (int → bigint)
    let o = sluice(&[
        "schema",
        "check",
        "--registry",
        "testdata/evolution/schemas",
        "--mode",
        "forward",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("`amount`: type Int64 in the data, Int32 for the reader"),
        "{t}"
    );
    assert!(
        t.contains("readers of v1 reading data written at v2"),
        "{t}"
    );

    let o = sluice(&[
        "schema",
        "check",
        "--registry",
        "testdata/evolution/breaking",
        "--mode",
        "full",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("BREAKING"), "{t}");
    assert!(
        t.contains("`shop`: required (not null) but absent from the data"),
        "{t}"
    );
    assert!(
        t.contains("`amount`: renamed to `total` (field id 2)"),
        "{t}"
    );
    assert!(
        t.contains("`order_id`: type Int64 in the data, Int32 for the reader"),
        "{t}"
    );
}

#[test]
fn a_stage_that_does_not_produce_its_declared_schema_is_refused() {
    let o = sluice(&[
        "validate",
        "testdata/evolution/write.toml",
        "--set",
        r#"stages.events.query="SELECT id, amount FROM raw""#,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("`stages.events.schema`"), "{t}");
    assert!(
        t.contains("stage `events` does not produce events@1"),
        "{t}"
    );
    assert!(
        t.contains("`at`: required (not null) but absent from the data"),
        "{t}"
    );
    ok(sluice(&["validate", "testdata/evolution/write.toml"]));

    // a sink's contract is checked the same way
    let o = sluice(&[
        "validate",
        "testdata/evolution/write.toml",
        "--set",
        r#"stages.events.query="SELECT id, amount FROM raw""#,
        "--set",
        r#"stages.events.schema="trimmed@1""#,
        "--set",
        r#"sinks.out.schema="events@1""#,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("`sinks.out.schema`: sink `out`'s input does not produce events@1"),
        "{t}"
    );
    assert!(
        !t.contains("stages.events.schema"),
        "a label without a registry entry is not checked: {t}"
    );
}

#[test]
fn parquet_written_at_three_versions_reads_as_the_latest() {
    let tmp = tempfile::tempdir().unwrap();
    for v in 1..=3 {
        ok(sluice(&[
            "run",
            "-q",
            "testdata/evolution/write.toml",
            "--set",
            &format!(r#"sources.raw.path="v{v}.jsonl""#),
            "--set",
            &format!(r#"sources.raw.schema="events@{v}""#),
            "--set",
            &format!(r#"stages.events.schema="events@{v}""#),
            "--set",
            &set("sinks.out.url", &tmp.path().join(format!("v{v}"))),
        ]));
    }
    let latest = tmp.path().join("latest");
    ok(sluice(&[
        "run",
        "-q",
        "testdata/evolution/read_latest.toml",
        "--set",
        &format!(
            r#"sources.events.path="{}/v*/*.parquet""#,
            tmp.path().display()
        ),
        "--set",
        &set("sinks.out.url", &latest),
    ]));
    let r = duckdb_check(&[
        "compare",
        "--query",
        "SELECT * FROM (VALUES
            (1, 120, NULL, 'linux', NULL, NULL), (2, NULL, NULL, 'ios', NULL, NULL), (3, 75, NULL, NULL, NULL, NULL), (4, 9, NULL, NULL, NULL, NULL),
            (1, 120, 'first', 'linux', NULL, NULL), (2, NULL, NULL, 'ios', NULL, NULL), (3, 75, NULL, NULL, NULL, NULL), (4, 9, 'big spender', NULL, NULL, NULL),
            (1, 120, 'first', 'linux', 6, 2), (2, NULL, NULL, 'ios', 17, 0), (3, 75, NULL, NULL, NULL, NULL), (4, 9, 'big spender', NULL, NULL, 1)
        ) AS t(id, amount, note, os, os_version, n_tags)",
        "--actual",
        latest.to_str().unwrap(),
    ]);
    assert_eq!(r["missing_count"], 0, "{r}");
    // the versions the data was written at stay in the provenance
    let c = &commits(&latest)[0];
    let params = &c["provenance"]["sources"][0]["parameters"];
    assert_eq!(params["read_as"], "events@3", "{c}");
    assert_eq!(
        params["written_as"],
        serde_json::json!(["events@1", "events@2", "events@3"]),
        "{c}"
    );
}

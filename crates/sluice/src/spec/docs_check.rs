//! `docs/pipeline.md` lists every key of every table a pipeline file may
//! have; this test fails when a config struct has a key the page does not
//! document, or the page documents a key no struct has.

use std::collections::{BTreeMap, BTreeSet};

use super::keys::fields_of;
use super::{EpochSettings, PipelineMeta, S3Settings, Settings};
use crate::dead_letter::DeadLetterConfig;
use crate::observe::ObservabilityConfig;
use crate::openlineage::LineageConfig;
use crate::stages::{ExternalStageConfig, SqlStageConfig};

/// The keys of the first `| key | ...` table under each heading, by table:
/// `pipeline`, `settings`, `sources.csv`, `sinks.parquet`, `dead_letter`, ...
fn documented(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = "";
    let mut current: Option<String> = None;
    let mut in_table = false;
    for line in page.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = if h.starts_with("Sources") {
                "sources"
            } else if h.starts_with("Stages") {
                "stages"
            } else if h.starts_with("Sinks") {
                "sinks"
            } else {
                ""
            };
            // `[pipeline]`, `[settings]`, `[dead_letter]`, `[lineage]`
            current = between(h, "`[", "]`")
                .filter(|t| !t.contains('.'))
                .map(str::to_string);
            in_table = false;
        } else if let Some(h) = line.strip_prefix("### ") {
            current = if h.starts_with("Event time") {
                // the keys every source kind takes
                Some(format!("{section}.event_time"))
            } else {
                between(h, "kind = \"", "\"").map(|k| format!("{section}.{k}"))
            };
            in_table = false;
        } else if line.starts_with("| key |") {
            in_table = current.as_ref().is_some_and(|c| !out.contains_key(c));
            if let (true, Some(c)) = (in_table, &current) {
                out.insert(c.clone(), BTreeSet::new());
            }
        } else if in_table && line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            let cell = line.trim_start_matches('|').split('|').next().unwrap_or("");
            if let (Some(key), Some(c)) = (between(cell, "`", "`"), &current) {
                out.entry(c.clone()).or_default().insert(key.to_string());
            }
        } else {
            in_table = false;
        }
    }
    out
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let rest = &text[text.find(open)? + open.len()..];
    Some(&rest[..rest.find(close)?])
}

fn set(keys: impl IntoIterator<Item = impl Into<String>>) -> BTreeSet<String> {
    keys.into_iter().map(Into::into).collect()
}

/// Every table's keys, from the config structs.
fn from_the_structs() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    out.insert(
        "pipeline".into(),
        set(fields_of::<PipelineMeta>().iter().copied()),
    );
    let mut settings = BTreeSet::new();
    for f in fields_of::<Settings>() {
        match *f {
            "epoch" => settings.extend(
                fields_of::<EpochSettings>()
                    .iter()
                    .map(|k| format!("epoch.{k}")),
            ),
            "s3" => settings.extend(fields_of::<S3Settings>().iter().map(|k| format!("s3.{k}"))),
            other => {
                settings.insert(other.to_string());
            }
        }
    }
    out.insert("settings".into(), settings);
    // the event-time keys every kind takes have one table of their own
    let event_time = crate::sources::EVENT_TIME;
    for k in crate::sources::KINDS {
        let keys = k.all_keys().into_iter().filter(|k| !event_time.contains(k));
        out.insert(format!("sources.{}", k.name), set(keys));
    }
    out.insert("sources.event_time".into(), set(event_time));
    out.insert(
        "stages.sql".into(),
        set(fields_of::<SqlStageConfig>().iter().copied()),
    );
    out.insert(
        "stages.external".into(),
        set(fields_of::<ExternalStageConfig>().iter().copied()),
    );
    // the operator's own options are the rest of the table, documented per operator
    out.insert(
        "stages.operator".into(),
        set(["inputs", "operator", "description"]),
    );
    for k in crate::sinks::KINDS {
        out.insert(format!("sinks.{}", k.name), set(k.all_keys()));
    }
    out.insert(
        "dead_letter".into(),
        set(fields_of::<DeadLetterConfig>().iter().copied()),
    );
    out.insert(
        "lineage".into(),
        set(fields_of::<LineageConfig>().iter().copied()),
    );
    out.insert(
        "observability".into(),
        set(fields_of::<ObservabilityConfig>().iter().copied()),
    );
    out
}

#[test]
fn the_pipeline_reference_documents_exactly_the_keys_there_are() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/pipeline.md");
    let page = std::fs::read_to_string(path).expect("docs/pipeline.md is readable");
    let documented = documented(&page);
    let actual = from_the_structs();
    let mut problems = Vec::new();
    for (table, keys) in &actual {
        let Some(docs) = documented.get(table) else {
            problems.push(format!("`{table}` has no key table in docs/pipeline.md"));
            continue;
        };
        for k in keys.difference(docs) {
            problems.push(format!("`{table}.{k}` exists and is not documented"));
        }
        for k in docs.difference(keys) {
            problems.push(format!(
                "docs/pipeline.md documents `{table}.{k}`, which does not exist"
            ));
        }
    }
    for table in documented.keys().filter(|t| !actual.contains_key(*t)) {
        problems.push(format!(
            "docs/pipeline.md documents `{table}`, which is no table or kind"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_key_tables_are_parsed() {
    let page = "## `[settings]`\n\n| key | x |\n|---|---|\n| `a.b` | 1 |\n| `c` | 2 |\n\n\
                ## Sinks: `[sinks.<name>]`\n\n### `kind = \"csv\"`\n\n| key |\n|---|\n| `input` |\n";
    let d = documented(page);
    assert_eq!(d["settings"], set(["a.b", "c"]));
    assert_eq!(d["sinks.csv"], set(["input"]));
    assert_eq!(d.len(), 2);
}

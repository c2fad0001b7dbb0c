//! The ledger of a log that several workers share (a `kafka` source with
//! `assignment = "group"`): where every partition is, and whether a commit
//! may follow the log.
//!
//! A shared source's offsets are a tree of positions (`{"topics": {"t":
//! {"0": 17}}}`), one leaf per partition. Each commit holds the `start` and
//! `end` of the partitions its worker read. A partition's position is the
//! `end` of the newest commit that holds it ([`positions`]). A commit may
//! follow the log only if every partition it holds starts where the log
//! has it ([`conflict`]); the log's create-if-absent commit files then make
//! each partition's offsets a chain in which no range is committed twice.
//! A zombie (a worker paused past its session, whose partitions moved on)
//! or a worker behind a rebalance fails that check, and rewinds.

use serde_json::{Map, Value};

/// The positions after `ends`, oldest first: each leaf as the newest tree
/// that has it says.
pub(crate) fn positions<'a>(ends: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut merged = Value::Object(Map::new());
    for end in ends {
        overlay(&mut merged, end);
    }
    merged
}

fn overlay(into: &mut Value, newer: &Value) {
    match (into, newer) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// The first partition where `start` disagrees with `log` (the log's
/// [`positions`]), as `(path, ours, the log's)`. A partition the log has
/// never seen may start anywhere (the source's `start` decides).
pub(crate) fn conflict(log: &Value, start: &Value) -> Option<(String, Value, Value)> {
    let mut path = Vec::new();
    first_difference(log, start, &mut path)
}

fn first_difference<'a>(
    log: &Value,
    ours: &'a Value,
    path: &mut Vec<&'a str>,
) -> Option<(String, Value, Value)> {
    match (log, ours) {
        (Value::Object(l), Value::Object(o)) => {
            for (k, v) in o {
                let Some(theirs) = l.get(k) else { continue };
                path.push(k);
                let found = first_difference(theirs, v, path);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (l, o) if l == o => None,
        (l, o) => Some((path.join("/"), o.clone(), l.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn at(parts: &[(i32, i64)]) -> Value {
        let m: BTreeMap<String, i64> = parts.iter().map(|(p, o)| (p.to_string(), *o)).collect();
        json!({ "topics": { "t": m } })
    }

    #[test]
    fn the_newest_commit_holding_a_partition_rules() {
        let log = positions([&at(&[(0, 10), (1, 5)]), &at(&[(1, 9)]), &at(&[(2, 3)])]);
        assert_eq!(log, at(&[(0, 10), (1, 9), (2, 3)]));
    }

    #[test]
    fn a_start_behind_the_log_conflicts() {
        let log = at(&[(0, 10), (1, 9)]);
        assert_eq!(conflict(&log, &at(&[(0, 10)])), None);
        assert_eq!(conflict(&log, &at(&[(7, 0)])), None, "new partition");
        let (path, ours, theirs) = conflict(&log, &at(&[(0, 10), (1, 5)])).unwrap();
        assert_eq!(
            (path.as_str(), ours, theirs),
            ("topics/t/1", json!(5), json!(9))
        );
    }

    /// Workers that each hold a (possibly stale) view of the log commit
    /// ranges in any interleaving, a commit landing only when [`conflict`]
    /// finds nothing (as the commit log does, slot by slot): every offset
    /// of every partition is then committed exactly once, with no gap.
    #[derive(Debug, Clone)]
    struct Attempt {
        worker: usize,
        partition: i32,
        rows: i64,
        refresh: bool,
    }

    fn attempts() -> impl Strategy<Value = Vec<Attempt>> {
        prop::collection::vec(
            (0..3usize, 0..4i32, 1..20i64, any::<bool>()).prop_map(
                |(worker, partition, rows, refresh)| Attempt {
                    worker,
                    partition,
                    rows,
                    refresh,
                },
            ),
            1..60,
        )
    }

    /// Any JSON at all, as a hand-edited or foreign commit log may hold.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c0-2]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the commits hold, the rule neither panics nor lets a
        /// commit through that contradicts the log: a start the log's own
        /// positions give never conflicts, and one that changes a leaf the
        /// log has always does.
        #[test]
        fn any_json_in_a_log_is_judged_without_panic(ends in prop::collection::vec(any_json(), 0..5), start in any_json()) {
            let log = positions(ends.iter());
            prop_assert!(conflict(&log, &log).is_none());
            if let Some((path, ours, theirs)) = conflict(&log, &start) {
                prop_assert_ne!(ours, theirs, "a conflict at {} of equal values", path);
            }
            if let Value::Object(m) = &log
                && let Some((k, v)) = m.iter().find(|(_, v)| !v.is_object())
            {
                let changed = serde_json::json!({ k.clone(): [v.clone()] });
                prop_assert!(conflict(&log, &changed).is_some());
            }
        }

        #[test]
        fn committed_ranges_never_overlap(attempts in attempts()) {
            let mut log: Vec<(Value, Value)> = Vec::new();
            // each worker's view of where every partition is
            let mut views = vec![at(&[]); 3];
            for a in attempts {
                if a.refresh {
                    views[a.worker] = positions(log.iter().map(|(_, e)| e));
                }
                let view = &views[a.worker];
                let s = view["topics"]["t"][a.partition.to_string()].as_i64().unwrap_or(0);
                let (start, end) = (at(&[(a.partition, s)]), at(&[(a.partition, s + a.rows)]));
                let now = positions(log.iter().map(|(_, e)| e));
                if conflict(&now, &start).is_none() {
                    log.push((start, end.clone()));
                    overlay(&mut views[a.worker], &end);
                }
            }
            for p in 0..4 {
                let key = p.to_string();
                let mut next = 0;
                for (s, e) in &log {
                    let (Some(s), Some(e)) = (s["topics"]["t"][&key].as_i64(), e["topics"]["t"][&key].as_i64()) else { continue };
                    prop_assert_eq!(s, next, "partition {} starts where the last range ended", p);
                    next = e;
                }
            }
        }
    }
}

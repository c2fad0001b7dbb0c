//! Recovery: from what the sinks' commit logs hold to where a run resumes.
//!
//! [`plan`] is a pure function of the logs, so every case of
//! `docs/exactly-once.md` is a unit test below, not a process to kill:
//!
//! - nothing committed: start at epoch 0 at the sources' beginning;
//! - every sink at the same epoch: resume after it, at the offsets it recorded;
//! - some sinks behind: replay the commits they lack, from the offsets the
//!   sinks ahead recorded, to them only, one commit each; then resume;
//! - a commit covering a range of epochs is replayed as that range, whole;
//! - offsets are opaque: a file source's per-file byte offsets come back
//!   exactly as committed.
//!
//! Files that no commit lists (a run died before its commit) are found by
//! [`debris`], also pure; the sink deletes them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::commit_log::{SourceOffsets, is_data_file_name, is_staged_upload_name};

/// The epochs one commit covers and the source offsets over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommittedRange {
    /// First epoch covered.
    pub first: u64,
    /// Last epoch covered (the commit's number).
    pub last: u64,
    /// Offsets per source: the first epoch's start, the last epoch's end.
    pub offsets: BTreeMap<String, SourceOffsets>,
    /// The rollout choice of every rolled-out stage over the range.
    pub rollout: BTreeMap<String, crate::rollout::Choice>,
    /// The state at the end of the range.
    pub state: crate::state::StateCommit,
}

/// What a sink's log holds, as [`crate::sinks::Sink::recover`] reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkLog {
    /// Whether the sink keeps a commit log at all (`stdout` does not).
    pub durable: bool,
    /// Its commits, in any order.
    pub commits: Vec<CommittedRange>,
}

impl SinkLog {
    /// A sink without a log: delivers rows as they are written.
    pub fn not_durable() -> Self {
        Self::default()
    }

    /// A durable sink holding `commits`.
    pub fn durable(commits: Vec<CommittedRange>) -> Self {
        Self {
            durable: true,
            commits,
        }
    }

    fn last(&self) -> Option<&CommittedRange> {
        self.commits.iter().max_by_key(|c| c.last)
    }
}

/// Commits some sinks hold and others lack: written again to those only.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Replay {
    /// The range, with the offsets recorded by a sink that committed it.
    pub range: CommittedRange,
    /// The durable sinks that lack it.
    pub sinks: BTreeSet<String>,
}

/// Where a run resumes; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResumePlan {
    /// Ranges to write again, oldest first, each to the sinks that lack it.
    pub replays: Vec<Replay>,
    /// The first new epoch.
    pub next_epoch: u64,
    /// Where each source resumes once the replays are done: the end offsets
    /// of the newest commit. A source missing here starts at its beginning.
    pub resume_at: BTreeMap<String, Value>,
    /// The newest committed epoch of each durable sink.
    pub last_committed: BTreeMap<String, Option<u64>>,
}

/// Why the logs cannot be resumed from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecoveryError {
    /// A sink lacks epochs no sink recorded the offsets of.
    #[error(
        "sink `{sink}` lacks epoch {epoch}, and no sink's commit log starts a commit there; the logs do not fit together (were commit files deleted by hand?)"
    )]
    Missing {
        /// The sink.
        sink: String,
        /// The first epoch it lacks.
        epoch: u64,
    },
    /// A sink's log ends inside another sink's commit: replaying the commit
    /// whole would write rows twice.
    #[error(
        "sink `{behind}` is committed up to epoch {at}, inside the commit of epochs {first}..={last} of sink `{ahead}`; a replay of part of a commit is impossible"
    )]
    Misaligned {
        /// The sink behind.
        behind: String,
        /// Its newest epoch.
        at: u64,
        /// The sink holding the range.
        ahead: String,
        /// The range's first epoch.
        first: u64,
        /// The range's last epoch.
        last: u64,
    },
    /// A commit's epoch is the largest number there is: no epoch can follow it.
    #[error(
        "sink `{sink}` has a commit of epoch {epoch}, after which no epoch can be numbered; the commit log was edited"
    )]
    LastEpoch {
        /// The sink.
        sink: String,
        /// The epoch.
        epoch: u64,
    },
    /// Two sinks committed the same epoch as different ranges.
    #[error(
        "sinks `{a}` and `{b}` both commit epoch {last}, over different ranges ({a_first}..={last} and {b_first}..={last})"
    )]
    Disagree {
        /// One sink.
        a: String,
        /// Its range's first epoch.
        a_first: u64,
        /// The other sink.
        b: String,
        /// Its range's first epoch.
        b_first: u64,
        /// The commit's epoch.
        last: u64,
    },
}

/// The resume plan of the logs of every sink, by sink name.
pub(crate) fn plan(logs: &BTreeMap<String, SinkLog>) -> Result<ResumePlan, RecoveryError> {
    let durable: BTreeMap<&String, &SinkLog> = logs.iter().filter(|(_, l)| l.durable).collect();
    let last_committed: BTreeMap<String, Option<u64>> = durable
        .iter()
        .map(|(n, l)| ((*n).clone(), l.last().map(|c| c.last)))
        .collect();
    // every range by its last epoch, checking sinks agree on it
    let mut ranges: BTreeMap<u64, (&String, &CommittedRange)> = BTreeMap::new();
    for (name, log) in &durable {
        for c in &log.commits {
            if c.last == u64::MAX {
                return Err(RecoveryError::LastEpoch {
                    sink: (*name).clone(),
                    epoch: c.last,
                });
            }
            match ranges.get(&c.last) {
                Some((other, r)) if r.first != c.first => {
                    return Err(RecoveryError::Disagree {
                        a: (*other).clone(),
                        a_first: r.first,
                        b: (*name).clone(),
                        b_first: c.first,
                        last: c.last,
                    });
                }
                Some(_) => {}
                None => {
                    ranges.insert(c.last, (name, c));
                }
            }
        }
    }
    let Some(max) = last_committed.values().flatten().max().copied() else {
        return Ok(ResumePlan {
            replays: Vec::new(),
            next_epoch: 0,
            resume_at: BTreeMap::new(),
            last_committed,
        });
    };
    let resume_at = ranges
        .get(&max)
        .map(|(_, r)| {
            r.offsets
                .iter()
                .map(|(s, o)| (s.clone(), o.end.clone()))
                .collect()
        })
        .unwrap_or_default();

    let mut replays: Vec<Replay> = Vec::new();
    let behind: Vec<(&String, Option<u64>)> = last_committed
        .iter()
        .filter(|(_, l)| l.is_none_or(|l| l < max))
        .map(|(n, l)| (n, *l))
        .collect();
    for (sink, at) in behind {
        let mut epoch = at.map_or(0, |l| l + 1);
        while epoch <= max {
            // the first commit ending at or after `epoch`: it must start there
            let Some((ahead, range)) = ranges.range(epoch..).next().map(|(_, v)| *v) else {
                return Err(RecoveryError::Missing {
                    sink: sink.clone(),
                    epoch,
                });
            };
            if range.first != epoch {
                return Err(if range.first < epoch {
                    RecoveryError::Misaligned {
                        behind: sink.clone(),
                        at: epoch - 1,
                        ahead: ahead.clone(),
                        first: range.first,
                        last: range.last,
                    }
                } else {
                    RecoveryError::Missing {
                        sink: sink.clone(),
                        epoch,
                    }
                });
            }
            match replays.iter_mut().find(|r| r.range.last == range.last) {
                Some(r) => {
                    r.sinks.insert(sink.clone());
                }
                None => replays.push(Replay {
                    range: range.clone(),
                    sinks: BTreeSet::from([sink.clone()]),
                }),
            }
            epoch = range.last + 1;
        }
    }
    replays.sort_by_key(|r| r.range.last);
    Ok(ResumePlan {
        replays,
        next_epoch: max + 1,
        resume_at,
        last_committed,
    })
}

/// The files under a sink that are left over from runs that died before
/// their commit: sluice data files no commit lists, and uploads of sluice's
/// files still in progress. Anything else (files the user put there) is
/// never debris. Paths are relative to the sink's root.
pub(crate) fn debris<'a>(
    committed: &BTreeSet<String>,
    listed: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    listed
        .into_iter()
        .filter(|rel| !rel.starts_with("_sluice/") || is_staged_upload_name(file_name(rel)))
        .filter(|rel| !committed.contains(*rel))
        .filter(|rel| {
            let name = file_name(rel);
            is_data_file_name(name) || is_staged_upload_name(name)
        })
        .collect()
}

/// Where each of `shared` (sources whose partitions several workers
/// share) is, after every commit of the logs: a partition is where the
/// newest commit holding it left it ([`crate::epoch::ledger::positions`]).
/// A source no commit holds is left out (it starts at its beginning).
pub(crate) fn shared_positions(
    logs: &BTreeMap<String, SinkLog>,
    shared: &BTreeSet<String>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for log in logs.values() {
        let mut commits: Vec<&CommittedRange> = log.commits.iter().collect();
        commits.sort_by_key(|c| c.last);
        for name in shared {
            let ends: Vec<&Value> = commits
                .iter()
                .filter_map(|c| c.offsets.get(name).map(|o| &o.end))
                .collect();
            if !ends.is_empty() {
                out.insert(name.clone(), crate::epoch::ledger::positions(ends));
            }
        }
    }
    out
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit_log::data_file_name;
    use serde_json::json;

    fn offsets(pairs: &[(&str, Value, Value)]) -> BTreeMap<String, SourceOffsets> {
        pairs
            .iter()
            .map(|(s, a, b)| {
                (
                    s.to_string(),
                    SourceOffsets {
                        start: a.clone(),
                        end: b.clone(),
                    },
                )
            })
            .collect()
    }

    /// A commit of epochs `first..=last` of a generator source at `next`.
    fn range(first: u64, last: u64) -> CommittedRange {
        CommittedRange {
            first,
            last,
            offsets: offsets(&[(
                "gen",
                json!({"next": first * 10}),
                json!({"next": (last + 1) * 10}),
            )]),
            ..Default::default()
        }
    }

    fn logs(entries: &[(&str, SinkLog)]) -> BTreeMap<String, SinkLog> {
        entries
            .iter()
            .map(|(n, l)| (n.to_string(), l.clone()))
            .collect()
    }

    #[test]
    fn nothing_committed_starts_at_epoch_zero_from_the_beginning() {
        let p = plan(&logs(&[
            ("a", SinkLog::durable(vec![])),
            ("b", SinkLog::not_durable()),
        ]))
        .unwrap();
        assert_eq!(p.next_epoch, 0);
        assert!(p.replays.is_empty());
        assert!(p.resume_at.is_empty());
        assert_eq!(p.last_committed, BTreeMap::from([("a".to_string(), None)]));
        assert_eq!(plan(&BTreeMap::new()).unwrap().next_epoch, 0);
    }

    #[test]
    fn sinks_at_the_same_epoch_resume_after_it() {
        let log = SinkLog::durable(vec![range(0, 0), range(1, 1), range(2, 2)]);
        let p = plan(&logs(&[("a", log.clone()), ("b", log)])).unwrap();
        assert_eq!(p.next_epoch, 3);
        assert!(p.replays.is_empty());
        assert_eq!(
            p.resume_at,
            BTreeMap::from([("gen".to_string(), json!({"next": 30}))])
        );
    }

    #[test]
    fn a_sink_behind_gets_exactly_the_commits_it_lacks() {
        let ahead = SinkLog::durable(vec![range(0, 0), range(1, 1), range(2, 2)]);
        let behind = SinkLog::durable(vec![range(0, 0)]);
        let p = plan(&logs(&[
            ("a", ahead),
            ("b", behind),
            ("print", SinkLog::not_durable()),
        ]))
        .unwrap();
        assert_eq!(p.next_epoch, 3);
        assert_eq!(
            p.replays,
            vec![
                Replay {
                    range: range(1, 1),
                    sinks: BTreeSet::from(["b".to_string()])
                },
                Replay {
                    range: range(2, 2),
                    sinks: BTreeSet::from(["b".to_string()])
                },
            ]
        );
        assert_eq!(p.resume_at["gen"], json!({"next": 30}));
    }

    #[test]
    fn a_new_sink_gets_the_whole_history_and_two_sinks_behind_share_replays() {
        let ahead = SinkLog::durable(vec![range(0, 1), range(2, 4)]);
        let new = SinkLog::durable(vec![]);
        let half = SinkLog::durable(vec![range(0, 1)]);
        let p = plan(&logs(&[("a", ahead), ("new", new), ("half", half)])).unwrap();
        assert_eq!(p.next_epoch, 5);
        let got: Vec<(u64, u64, Vec<&str>)> = p
            .replays
            .iter()
            .map(|r| {
                (
                    r.range.first,
                    r.range.last,
                    r.sinks.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(got, vec![(0, 1, vec!["new"]), (2, 4, vec!["half", "new"])]);
    }

    #[test]
    fn a_range_of_epochs_in_one_commit_is_replayed_whole_with_its_offsets() {
        let ahead = SinkLog::durable(vec![range(0, 3), range(4, 9)]);
        let behind = SinkLog::durable(vec![range(0, 3)]);
        let p = plan(&logs(&[("a", ahead), ("b", behind)])).unwrap();
        assert_eq!(p.replays.len(), 1);
        assert_eq!(p.replays[0].range, range(4, 9));
        assert_eq!(p.replays[0].range.offsets["gen"].start, json!({"next": 40}));
        assert_eq!(p.replays[0].range.offsets["gen"].end, json!({"next": 100}));
        assert_eq!(p.next_epoch, 10);
    }

    #[test]
    fn per_file_byte_offsets_come_back_exactly_as_committed() {
        let files = |done: &[&str], partial: Option<(&str, u64)>| {
            let mut o = json!({ "files": done });
            if let Some((f, b)) = partial {
                o["partial"] = json!({ f: b });
            }
            o
        };
        let first = CommittedRange {
            first: 0,
            last: 0,
            offsets: offsets(&[(
                "in",
                files(&[], None),
                files(&[], Some(("big.csv", 1_048_577))),
            )]),
            ..Default::default()
        };
        let second = CommittedRange {
            first: 1,
            last: 1,
            offsets: offsets(&[(
                "in",
                files(&[], Some(("big.csv", 1_048_577))),
                files(&["big.csv"], None),
            )]),
            ..Default::default()
        };
        let p = plan(&logs(&[
            ("a", SinkLog::durable(vec![first.clone(), second.clone()])),
            ("b", SinkLog::durable(vec![first])),
        ]))
        .unwrap();
        assert_eq!(p.replays[0].range, second);
        assert_eq!(
            p.replays[0].range.offsets["in"].start,
            json!({"files": [], "partial": {"big.csv": 1_048_577}})
        );
        assert_eq!(p.resume_at["in"], json!({"files": ["big.csv"]}));
    }

    #[test]
    fn a_sink_ending_inside_another_sinks_commit_is_refused() {
        let ahead = SinkLog::durable(vec![range(0, 5)]);
        let behind = SinkLog::durable(vec![range(0, 2)]);
        let err = plan(&logs(&[("a", ahead), ("b", behind)])).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Misaligned { ref behind, at: 2, first: 0, last: 5, .. } if behind == "b"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_history_is_refused_not_guessed() {
        let ahead = SinkLog::durable(vec![range(3, 5)]);
        let behind = SinkLog::durable(vec![]);
        let err = plan(&logs(&[("a", ahead), ("b", behind)])).unwrap_err();
        assert_eq!(
            err,
            RecoveryError::Missing {
                sink: "b".into(),
                epoch: 0
            }
        );
    }

    #[test]
    fn a_commit_of_the_last_epoch_there_is_is_refused() {
        let log = SinkLog::durable(vec![CommittedRange {
            first: u64::MAX - 1,
            last: u64::MAX,
            offsets: BTreeMap::new(),
            ..Default::default()
        }]);
        assert!(matches!(
            plan(&logs(&[("a", log)])),
            Err(RecoveryError::LastEpoch { .. })
        ));
    }

    #[test]
    fn sinks_disagreeing_on_a_commits_range_are_refused() {
        let a = SinkLog::durable(vec![range(0, 3)]);
        let b = SinkLog::durable(vec![range(0, 1), range(2, 3)]);
        assert!(matches!(
            plan(&logs(&[("a", a), ("b", b)])),
            Err(RecoveryError::Disagree { last: 3, .. })
        ));
    }

    #[test]
    fn debris_is_uncommitted_sluice_files_and_staged_uploads_only() {
        let kept = data_file_name(0, "0123abcd", 0, 0, "parquet");
        let orphan = format!("k=1/{}", data_file_name(1, "0123abcd", 0, 0, "parquet"));
        let staged = format!("{kept}#1");
        let commit_staged = "_sluice/commits/00000000000000000001.json#2".to_string();
        let listed = [
            kept.clone(),
            orphan.clone(),
            staged.clone(),
            commit_staged.clone(),
            "_sluice/commits/00000000000000000000.json".to_string(),
            "README.md".to_string(),
            "part-1.parquet".to_string(),
        ];
        let committed = BTreeSet::from([kept]);
        let found = debris(&committed, listed.iter().map(String::as_str));
        assert_eq!(
            found,
            vec![orphan.as_str(), staged.as_str(), commit_staged.as_str()]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A history of commits: consecutive ranges from epoch 0 (lengths 1..4).
        fn history() -> impl Strategy<Value = Vec<CommittedRange>> {
            prop::collection::vec(1u64..4, 1..12).prop_map(|lengths| {
                let mut first = 0;
                lengths
                    .into_iter()
                    .map(|n| {
                        let r = range(first, first + n - 1);
                        first += n;
                        r
                    })
                    .collect()
            })
        }

        proptest! {
            /// Sinks that each got some way through the same history: every
            /// sink behind gets exactly the commits it lacks, each once, in
            /// order, and the run resumes after the newest commit.
            #[test]
            fn sinks_behind_get_exactly_what_they_lack(
                history in history(),
                reached in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
                empty in prop::collection::vec(any::<bool>(), 1..5),
            ) {
                let mut logs = BTreeMap::new();
                for (i, (r, e)) in reached.iter().zip(empty.iter().cycle()).enumerate() {
                    let n = if *e { 0 } else { r.index(history.len()) + 1 };
                    logs.insert(format!("s{i}"), SinkLog::durable(history[..n].to_vec()));
                }
                let p = plan(&logs).unwrap();
                let newest = logs.values().filter_map(|l| l.last()).map(|c| c.last).max();
                prop_assert_eq!(p.next_epoch, newest.map_or(0, |m| m + 1));
                for (name, log) in &logs {
                    let got: Vec<&CommittedRange> = p
                        .replays
                        .iter()
                        .filter(|r| r.sinks.contains(name))
                        .map(|r| &r.range)
                        .collect();
                    let lacks: Vec<&CommittedRange> = history
                        .iter()
                        .filter(|c| newest.is_some_and(|m| c.last <= m))
                        .skip(log.commits.len())
                        .collect();
                    prop_assert_eq!(got, lacks);
                }
                if let Some(m) = newest {
                    let last = history.iter().find(|c| c.last == m).unwrap();
                    prop_assert_eq!(&p.resume_at["gen"], &last.offsets["gen"].end);
                }
            }

            /// Logs nobody wrote, with any epochs at all: a plan or an
            /// error, never a panic; a plan never replays a range twice to
            /// one sink nor anything a sink already holds.
            #[test]
            fn any_logs_give_a_plan_or_an_error(
                logs in prop::collection::btree_map(
                    "[a-c]",
                    prop::collection::vec((any::<u64>(), 0u64..5), 0..6),
                    1..4,
                )
            ) {
                let logs: BTreeMap<String, SinkLog> = logs
                    .into_iter()
                    .map(|(n, cs)| {
                        let commits = cs
                            .into_iter()
                            .map(|(first, len)| CommittedRange {
                                first,
                                last: first.saturating_add(len),
                                offsets: BTreeMap::new(),
                                ..Default::default()
                            })
                            .collect();
                        (n, SinkLog::durable(commits))
                    })
                    .collect();
                if let Ok(p) = plan(&logs) {
                    for r in &p.replays {
                        for s in &r.sinks {
                            let held = logs[s].last().map(|c| c.last);
                            prop_assert!(held.is_none_or(|h| h < r.range.first));
                        }
                    }
                    let mut ends: Vec<u64> = p.replays.iter().map(|r| r.range.last).collect();
                    ends.dedup();
                    prop_assert_eq!(ends.len(), p.replays.len());
                }
            }
        }
    }
}

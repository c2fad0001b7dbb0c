//! Checks a stage's `row_errors` answers against what was sent to it: the
//! engine checks every exchange with it, the conformance kit every stage.
//!
//! A stage is a peer process: its answers are input, and a wrong one must not
//! dead-letter rows that do not exist, or a row twice. `docs/protocol.md`
//! (section 4) says what a `row_errors` message may name: one input batch
//! that was sent (`in_seq`), rows inside it, each once, in one message per
//! batch. An answer that breaks this is a protocol violation: the exchange
//! fails with `INTERNAL` naming what is wrong (the stage has a bug; a retry
//! would meet it again).

use std::collections::{HashSet, VecDeque};

use crate::RowErrorEntry;

/// How many sent batches are remembered: answers come in input order, so a
/// `row_errors` naming a batch older than this breaks the order anyway.
pub(crate) const REMEMBERED: usize = 4096;

/// The input batches sent to one exchange, newest last.
#[derive(Debug, Default)]
pub struct SentBatches {
    /// `(seq, rows, row errors reported)`.
    batches: VecDeque<(u64, u64, bool)>,
}

impl SentBatches {
    /// Batch `seq` of `rows` rows was sent.
    pub fn sent(&mut self, seq: u64, rows: u64) {
        self.batches.push_back((seq, rows, false));
        while self.batches.len() > REMEMBERED {
            self.batches.pop_front();
        }
    }

    /// Accepts one `row_errors` message, or says how it breaks the protocol.
    pub fn accept(&mut self, in_seq: Option<u64>, errors: &[RowErrorEntry]) -> Result<(), String> {
        let Some(seq) = in_seq else {
            return Err(
                "a `row_errors` message has no `in_seq`: it must name the input batch whose rows failed"
                    .into(),
            );
        };
        let Some((_, rows, reported)) = self.batches.iter_mut().find(|(s, _, _)| *s == seq) else {
            let newest = self.batches.back().map(|(s, _, _)| *s);
            return Err(match newest {
                Some(n) if seq < n => format!(
                    "`row_errors` for input batch {seq}, answered long before (batch {n} was sent since)"
                ),
                _ => format!("`row_errors` for input batch {seq}, which was never sent"),
            });
        };
        if *reported {
            return Err(format!(
                "a second `row_errors` message for input batch {seq}: one per batch"
            ));
        }
        if errors.is_empty() {
            return Err(format!(
                "a `row_errors` message for input batch {seq} names no row: send none when no row failed"
            ));
        }
        let mut seen = HashSet::with_capacity(errors.len());
        for e in errors {
            if e.row >= *rows {
                return Err(format!(
                    "`row_errors` names row {} of input batch {seq}, which has {rows} rows",
                    e.row
                ));
            }
            if !seen.insert(e.row) {
                return Err(format!(
                    "`row_errors` names row {} of input batch {seq} twice",
                    e.row
                ));
            }
        }
        *reported = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(row: u64) -> RowErrorEntry {
        RowErrorEntry {
            row,
            code: "REJECTED".into(),
            message: "no".into(),
        }
    }

    #[test]
    fn every_way_to_name_rows_wrongly_is_refused() {
        let mut s = SentBatches::default();
        s.sent(0, 3);
        s.sent(1, 2);
        assert!(
            s.accept(None, &[err(0)])
                .unwrap_err()
                .contains("no `in_seq`")
        );
        assert!(
            s.accept(Some(7), &[err(0)])
                .unwrap_err()
                .contains("never sent")
        );
        assert!(
            s.accept(Some(1), &[err(2)])
                .unwrap_err()
                .contains("which has 2 rows")
        );
        assert!(
            s.accept(Some(0), &[err(1), err(1)])
                .unwrap_err()
                .contains("twice")
        );
        assert_eq!(s.accept(Some(0), &[err(0), err(2)]), Ok(()));
        assert!(s.accept(Some(0), &[err(1)]).unwrap_err().contains("second"));
        assert!(s.accept(Some(1), &[]).unwrap_err().contains("names no row"));
        assert_eq!(s.accept(Some(1), &[err(0)]), Ok(()));
        for seq in 2..(REMEMBERED as u64 + 10) {
            s.sent(seq, 1);
        }
        assert!(
            s.accept(Some(2), &[err(0)])
                .unwrap_err()
                .contains("long before")
        );
    }

    proptest! {
        /// Whatever a stage answers, it is accepted exactly when it names
        /// rows, every one a distinct row of a batch that was sent, once per
        /// batch.
        #[test]
        fn accepted_exactly_when_it_names_real_rows_once(
            sizes in proptest::collection::vec(0u64..6, 1..6),
            answers in proptest::collection::vec((proptest::option::of(0u64..8), proptest::collection::vec(0u64..7, 0..5)), 0..8),
        ) {
            let mut s = SentBatches::default();
            for (seq, n) in sizes.iter().enumerate() {
                s.sent(seq as u64, *n);
            }
            let mut reported = HashSet::new();
            for (seq, rows) in answers {
                let errors: Vec<_> = rows.iter().map(|r| err(*r)).collect();
                let distinct = rows.iter().collect::<HashSet<_>>().len() == rows.len();
                let ok = match seq {
                    Some(q) => (q as usize) < sizes.len()
                        && !reported.contains(&q)
                        && distinct
                        && !rows.is_empty()
                        && rows.iter().all(|r| *r < sizes[q as usize]),
                    None => false,
                };
                prop_assert_eq!(s.accept(seq, &errors).is_ok(), ok);
                if ok {
                    reported.insert(seq.unwrap());
                }
            }
        }
    }
}

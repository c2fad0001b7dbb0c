//! `unchanged` answers (v1.1, protocol.md section 3): a stage whose output
//! for an input batch is that batch, as sent, says so in one small message
//! instead of sending the rows back, and the engine reuses the batch it
//! holds. An identity stage, a filter that kept every row or a tap that
//! only looks then costs one copy (into the stage) instead of three.
//!
//! The engine holds each batch it sent until an answer for a later batch
//! comes: answers come in input order, so no `unchanged` can name an
//! earlier one. At most `max_in_flight` batches (and the one answered last)
//! are held, and they are `Arc`s of what the plan produced: no copy.

use std::collections::VecDeque;

use arrow_array::RecordBatch;

/// The batches sent in an exchange that a stage may still answer
/// `unchanged`.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// From the last batch answered on, in order of `seq`; with whether the
    /// batch was answered `unchanged`.
    batches: VecDeque<(u64, RecordBatch, bool)>,
    /// Batches sent so far: the next batch's `seq`.
    sent: u64,
}

impl Held {
    /// Holds the batch about to be sent as `seq`.
    pub(crate) fn hold(&mut self, seq: u64, batch: RecordBatch) {
        self.batches.push_back((seq, batch, false));
        self.sent = seq + 1;
    }

    /// An answer for input batch `in_seq` came: every batch before it is
    /// answered for good and let go.
    pub(crate) fn answered(&mut self, in_seq: u64) {
        while self.batches.front().is_some_and(|(s, _, _)| *s < in_seq) {
            self.batches.pop_front();
        }
    }

    /// The batch an `unchanged` answer for `in_seq` stands for; the error
    /// says why there is none (a protocol violation of the stage).
    pub(crate) fn unchanged(&mut self, in_seq: u64) -> Result<RecordBatch, String> {
        if in_seq >= self.sent {
            return Err(format!(
                "an `unchanged` answer for input batch {in_seq}, which was never sent ({} sent)",
                self.sent
            ));
        }
        self.answered(in_seq);
        match self.batches.front_mut() {
            Some((seq, batch, unchanged)) if *seq == in_seq => {
                *unchanged = true;
                Ok(batch.clone())
            }
            _ => Err(format!(
                "an `unchanged` answer for input batch {in_seq} after an answer for a later batch: answers come in input order"
            )),
        }
    }

    /// Row errors for `in_seq` came: refused when the batch was answered
    /// `unchanged`, whose rows were all delivered (a stage must leave the
    /// rows it reports out of its output, section 5).
    pub(crate) fn row_errors(&mut self, in_seq: u64) -> Result<(), String> {
        self.answered(in_seq);
        match self.batches.front() {
            Some((seq, _, true)) if *seq == in_seq => Err(format!(
                "row errors for input batch {in_seq}, which the stage answered `unchanged`: its rows would be delivered and reported"
            )),
            _ => Ok(()),
        }
    }

    /// How many batches are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array};
    use proptest::prelude::*;

    use super::*;

    fn batch(seq: u64) -> RecordBatch {
        let col: ArrayRef = Arc::new(Int64Array::from(vec![seq as i64]));
        RecordBatch::try_from_iter([("seq", col)]).unwrap()
    }

    #[test]
    fn an_unchanged_answer_is_the_batch_sent_while_no_later_one_was_answered() {
        let mut h = Held::default();
        for s in 0..3 {
            h.hold(s, batch(s));
        }
        let b = h.unchanged(1).unwrap();
        assert!(Arc::ptr_eq(b.column(0), batch_col(&h, 1)));
        assert_eq!(h.len(), 2, "batch 0 is answered by the answer for 1");
        // twice for one batch: its rows twice, as two `batch` answers would
        assert!(h.unchanged(1).is_ok());
        assert!(h.unchanged(0).unwrap_err().contains("later batch"));
        assert!(h.unchanged(3).unwrap_err().contains("never sent (3 sent)"));
        assert!(
            h.row_errors(1)
                .unwrap_err()
                .contains("answered `unchanged`")
        );
        assert!(h.row_errors(2).is_ok());
    }

    fn batch_col(h: &Held, seq: u64) -> &ArrayRef {
        h.batches
            .iter()
            .find(|(s, _, _)| *s == seq)
            .map(|(_, b, _)| b.column(0))
            .unwrap()
    }

    /// What the engine sends and a stage may answer, as the exchange meets
    /// it (`Answer` and `RowErrors` name a batch sent, modulo).
    #[derive(Debug, Clone)]
    enum Step {
        Send,
        Answer(u64),
        Unchanged(u64),
        RowErrors(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Send),
            (0u64..12).prop_map(Step::Answer),
            (0u64..12).prop_map(Step::Unchanged),
            (0u64..12).prop_map(Step::RowErrors),
        ]
    }

    proptest! {
        /// Any sequence of sends and answers: an `unchanged` gives exactly
        /// the batch sent as its `in_seq` when no later batch was answered
        /// and it was sent, and a refusal otherwise; row errors are refused
        /// exactly for a batch answered `unchanged`; nothing answered for
        /// good stays held.
        #[test]
        fn held_batches_follow_the_answers(steps in prop::collection::vec(step(), 0..40)) {
            let mut h = Held::default();
            let (mut sent, mut latest, mut whole) = (0u64, None::<u64>, std::collections::HashSet::new());
            for s in steps {
                match s {
                    Step::Send => { h.hold(sent, batch(sent)); sent += 1; }
                    // the engine refuses an answer for a batch never sent
                    // before it gets here: answers name sent batches
                    Step::Answer(_) | Step::RowErrors(_) if sent == 0 => {}
                    Step::Answer(k) => {
                        let i = k % sent;
                        h.answered(i);
                        latest = latest.max(Some(i));
                    }
                    Step::Unchanged(i) => {
                        let ok = i < sent && latest.is_none_or(|l| i >= l);
                        match h.unchanged(i) {
                            Ok(b) => {
                                prop_assert!(ok);
                                let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
                                prop_assert_eq!(v, i as i64);
                                latest = latest.max(Some(i));
                                whole.insert(i);
                            }
                            Err(_) => prop_assert!(!ok),
                        }
                    }
                    Step::RowErrors(k) => {
                        let i = k % sent;
                        let refused = h.row_errors(i).is_err();
                        let current = latest.is_none_or(|l| i >= l);
                        prop_assert_eq!(refused, whole.contains(&i) && current);
                        latest = latest.max(Some(i));
                    }
                }
                let before = latest.unwrap_or(0);
                prop_assert!(h.batches.iter().all(|(s, _, _)| *s >= before));
            }
        }
    }
}

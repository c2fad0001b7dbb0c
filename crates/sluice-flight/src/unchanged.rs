//! `unchanged` answers (v1.1, protocol.md section 3): a stage whose output
//! for an input batch is that batch, as sent, says so in one small message
//! instead of sending the rows back, and the engine reuses the batch it
//! holds. An identity stage, a filter that returns its input when it kept
//! every row, or a tap that only looks then costs one copy (into the stage)
//! instead of three.
//!
//! The exchange holds each batch it sent until an answer for a later batch
//! comes: answers come in input order, so no `unchanged` can name an
//! earlier one. The engine sends at most `max_in_flight` unanswered
//! batches, so it holds at most that many and the one answered last; they
//! are `Arc`s of what the plan produced: no copy.
//!
//! What each batch was answered with is remembered longer (as long as
//! [`crate::row_errors`] remembers batches), so that an `unchanged` batch
//! can get no other answer and no row errors, in any order: its rows would
//! be delivered twice, or delivered and dead-lettered.

use std::collections::VecDeque;

use arrow_array::RecordBatch;

use crate::row_errors::REMEMBERED;

/// What a sent batch was answered with so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    Not,
    /// `batch` messages (one or several) or an `ack`.
    Rows,
    Unchanged,
}

#[derive(Debug)]
struct Sent {
    /// Until a later batch is answered.
    batch: Option<RecordBatch>,
    answered: Answered,
    /// `row_errors` came for it.
    reported: bool,
}

/// The batches sent in an exchange that offered `unchanged` answers, and
/// what the stage answered each with.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Batches `first..first + len`, oldest first.
    sent: VecDeque<Sent>,
    first: u64,
    /// Batches before this one were let go.
    held_from: u64,
}

impl Held {
    /// Batches sent so far: the next batch's `seq`.
    fn next(&self) -> u64 {
        self.first + self.sent.len() as u64
    }

    /// Holds the batch about to be sent as the next `seq`.
    pub(crate) fn hold(&mut self, batch: RecordBatch) {
        self.sent.push_back(Sent {
            batch: Some(batch),
            answered: Answered::Not,
            reported: false,
        });
        while self.sent.len() > REMEMBERED {
            self.sent.pop_front();
            self.first += 1;
        }
        self.held_from = self.held_from.max(self.first);
    }

    fn get(&mut self, seq: u64) -> Option<&mut Sent> {
        let i = seq.checked_sub(self.first)?;
        self.sent.get_mut(usize::try_from(i).ok()?)
    }

    /// An answer for `in_seq` came: every batch before it is answered for
    /// good and let go.
    fn let_go_before(&mut self, in_seq: u64) {
        let until = in_seq.min(self.next());
        for seq in self.held_from..until {
            if let Some(s) = self.get(seq) {
                s.batch = None;
            }
        }
        self.held_from = self.held_from.max(until);
    }

    /// A `batch` or an `ack` answering `in_seq`.
    pub(crate) fn rows(&mut self, in_seq: u64) -> Result<(), String> {
        self.let_go_before(in_seq);
        match self.get(in_seq) {
            Some(s) if s.answered == Answered::Unchanged => Err(format!(
                "an answer for input batch {in_seq}, which the stage answered `unchanged`: an `unchanged` answer is the batch's only one"
            )),
            Some(s) => {
                s.answered = Answered::Rows;
                Ok(())
            }
            // never sent, or long ago: the engine's own checks say so
            None => Ok(()),
        }
    }

    /// The batch an `unchanged` answer for `in_seq` stands for; the error
    /// says why there is none (a protocol violation of the stage).
    pub(crate) fn unchanged(&mut self, in_seq: u64) -> Result<RecordBatch, String> {
        if in_seq >= self.next() {
            return Err(format!(
                "an `unchanged` answer for input batch {in_seq}, which was never sent ({} sent)",
                self.next()
            ));
        }
        self.let_go_before(in_seq);
        let Some((s, batch)) = self
            .get(in_seq)
            .and_then(|s| s.batch.clone().map(|b| (s, b)))
        else {
            return Err(format!(
                "an `unchanged` answer for input batch {in_seq} after an answer for a later batch: answers come in input order"
            ));
        };
        if s.reported {
            return Err(format!(
                "an `unchanged` answer for input batch {in_seq} after `row_errors` for it: its rows would be delivered and reported"
            ));
        }
        if s.answered != Answered::Not {
            return Err(format!(
                "an `unchanged` answer for input batch {in_seq}, which was answered already: an `unchanged` answer is the batch's only one"
            ));
        }
        s.answered = Answered::Unchanged;
        Ok(batch)
    }

    /// `row_errors` for `in_seq` came: refused for a batch answered
    /// `unchanged`, whose rows were all delivered (a stage must leave the
    /// rows it reports out of its output, section 5).
    pub(crate) fn row_errors(&mut self, in_seq: u64) -> Result<(), String> {
        self.let_go_before(in_seq);
        match self.get(in_seq) {
            Some(s) if s.answered == Answered::Unchanged => Err(format!(
                "row errors for input batch {in_seq}, which the stage answered `unchanged`: its rows would be delivered and reported"
            )),
            Some(s) => {
                s.reported = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// How many batches are held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.sent.iter().filter(|s| s.batch.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array};
    use proptest::prelude::*;

    use super::*;

    fn batch(seq: u64) -> RecordBatch {
        let col: ArrayRef = Arc::new(Int64Array::from(vec![seq as i64]));
        RecordBatch::try_from_iter([("seq", col)]).unwrap()
    }

    fn held(n: u64) -> (Held, Vec<RecordBatch>) {
        let mut h = Held::default();
        let sent: Vec<RecordBatch> = (0..n).map(batch).collect();
        for b in &sent {
            h.hold(b.clone());
        }
        (h, sent)
    }

    #[test]
    fn an_unchanged_answer_is_the_batch_sent_and_its_only_answer() {
        let (mut h, sent) = held(4);
        let b = h.unchanged(1).unwrap();
        assert!(Arc::ptr_eq(b.column(0), sent[1].column(0)), "no copy");
        assert_eq!(h.held(), 3, "batch 0 is answered by the answer for 1");
        for refused in [
            h.unchanged(1).unwrap_err(),
            h.rows(1).unwrap_err(),
            h.row_errors(1).unwrap_err(),
            h.unchanged(0).unwrap_err(),
            h.unchanged(9).unwrap_err(),
        ] {
            assert!(refused.contains("input batch"), "{refused}");
        }
        assert!(
            h.row_errors(2).is_ok() && h.unchanged(2).is_err(),
            "reported first"
        );
        assert!(
            h.rows(3).is_ok() && h.unchanged(3).is_err(),
            "answered first"
        );
        // after a later answer, row errors for the unchanged batch are still refused
        assert!(h.row_errors(1).is_err());
        assert_eq!(h.held(), 1, "only the batch answered last");
    }

    /// What the engine sends and a stage may answer, as the exchange meets
    /// it (answers name a batch sent, modulo, or any number for
    /// `unchanged`).
    #[derive(Debug, Clone)]
    enum Step {
        Send,
        Rows(u64),
        Unchanged(u64),
        RowErrors(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => Just(Step::Send),
            1 => (0u64..12).prop_map(Step::Rows),
            1 => (0u64..12).prop_map(Step::Unchanged),
            1 => (0u64..12).prop_map(Step::RowErrors),
        ]
    }

    proptest! {
        /// Any sequence of sends and answers, against a model that keeps
        /// every batch's answers: an `unchanged` gives exactly the batch
        /// sent as its `in_seq` when it was sent, no later batch was
        /// answered and the batch had no answer and no row errors yet;
        /// nothing else answers or reports a batch answered `unchanged`;
        /// only batches from the one answered last on are held.
        #[test]
        fn held_batches_follow_the_answers(steps in prop::collection::vec(step(), 0..60)) {
            let mut h = Held::default();
            let mut sent = 0u64;
            // the model: the latest batch answered, and per batch what came
            let mut latest = None::<u64>;
            let mut got: HashMap<u64, Vec<&'static str>> = HashMap::new();
            for s in steps {
                match s {
                    Step::Send => { h.hold(batch(sent)); sent += 1; }
                    // the engine refuses an answer for a batch never sent
                    // before it gets here
                    Step::Rows(_) | Step::RowErrors(_) if sent == 0 => {}
                    Step::Rows(k) | Step::RowErrors(k) => {
                        let i = k % sent;
                        let (answer, what) = match s {
                            Step::Rows(_) => (h.rows(i), "rows"),
                            _ => (h.row_errors(i), "row_errors"),
                        };
                        let ok = !got.get(&i).is_some_and(|g| g.contains(&"unchanged"));
                        prop_assert_eq!(answer.is_ok(), ok);
                        got.entry(i).or_default().push(what);
                        latest = latest.max(Some(i));
                    }
                    Step::Unchanged(i) => {
                        let ok = i < sent
                            && latest.is_none_or(|l| i >= l)
                            && got.get(&i).is_none_or(|g| g.is_empty());
                        match h.unchanged(i) {
                            Ok(b) => {
                                prop_assert!(ok);
                                let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
                                prop_assert_eq!(v, i as i64);
                                got.entry(i).or_default().push("unchanged");
                            }
                            Err(_) => prop_assert!(!ok),
                        }
                        if i < sent {
                            latest = latest.max(Some(i));
                        }
                    }
                }
                let from = latest.unwrap_or(0).min(sent);
                prop_assert_eq!(h.held() as u64, sent - from);
            }
        }
    }
}

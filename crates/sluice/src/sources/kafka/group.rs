//! `assignment = "group"`: which partitions this worker reads, as the
//! consumer group decides.
//!
//! A member of the group joins it with `subscribe()` and never reads a
//! message: it pauses every partition it is given, and only keeps its
//! place in the group (a thread polls it, which serves heartbeats and
//! rebalances). The source reads the partitions the member holds with its
//! own `assign()`-ed consumer, from where the sink's shared log has them,
//! so the group's committed offsets never decide where reading starts. Each
//! rebalance bumps a generation; the source fails its next read with
//! [`crate::RetryHint::Rewind`], and the engine resumes it at the log's
//! positions of its new partitions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;

/// The partitions a member holds, and how many rebalances it has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Assignment {
    /// Bumped by every rebalance.
    pub generation: u64,
    /// `(topic, partition)`, sorted.
    pub partitions: Vec<(String, i32)>,
}

struct MemberContext {
    assignment: Arc<Mutex<Assignment>>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        a.generation += 1;
        match rebalance {
            Rebalance::Assign(tpl) => {
                // the member only holds them: the source's consumer reads
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!("cannot pause the partitions of the group member: {e}");
                }
                let mut ps: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                ps.sort();
                a.partitions = ps;
            }
            Rebalance::Revoke(_) => a.partitions.clear(),
            Rebalance::Error(e) => tracing::warn!("the consumer group's rebalance failed: {e}"),
        }
        tracing::info!(
            generation = a.generation,
            partitions = ?a.partitions,
            "the consumer group assigned partitions"
        );
    }
}

/// This worker's place in the consumer group.
pub(super) struct Membership {
    consumer: Arc<BaseConsumer<MemberContext>>,
    assignment: Arc<Mutex<Assignment>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("assignment", &self.assignment())
            .finish()
    }
}

/// How often the member is polled (heartbeats, rebalances).
const POLL: Duration = Duration::from_millis(100);

impl Membership {
    /// Joins the group of `config` (`group.id`) for `topics`.
    pub(super) fn join(config: &ClientConfig, topics: &[String]) -> KafkaResult<Self> {
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let consumer: BaseConsumer<MemberContext> = config.create_with_context(MemberContext {
            assignment: Arc::clone(&assignment),
        })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (consumer, stop) = (Arc::clone(&consumer), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("sluice-kafka-group".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // paused partitions give no messages; errors are
                        // the group's (a rebalance under way), logged by it
                        if let Some(Err(e)) = consumer.poll(POLL) {
                            tracing::debug!("group member: {e}");
                        }
                    }
                })
                .map_err(|e| {
                    rdkafka::error::KafkaError::ClientCreation(format!(
                        "cannot start the group member's thread: {e}"
                    ))
                })?
        };
        Ok(Self {
            consumer,
            assignment,
            stop,
            poller: Some(poller),
        })
    }

    /// The partitions held now.
    pub(super) fn assignment(&self) -> Assignment {
        self.assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reports offsets to the group (for its lag only); the broker refuses
    /// them from a member that is no longer in the group's generation.
    pub(super) fn report(&self, offsets: &TopicPartitionList) -> KafkaResult<()> {
        self.consumer.commit(offsets, CommitMode::Async)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // leave the group now, so that the partitions move at once rather
        // than after the session times out
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

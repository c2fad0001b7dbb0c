//! What the `kafka` source and sink share: the client settings, and
//! librdkafka's blocking calls kept off the async threads.
//!
//! librdkafka is the client (through `rdkafka`, built from the source it
//! bundles and linked statically). Its network calls that wait for an
//! answer (metadata, watermarks, transactions) block the calling thread, so
//! they run on tokio's blocking pool; message delivery and fetching are
//! asynchronous already.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::error::{RetryHint, SluiceError};

/// How long a metadata or watermark request may take before the run fails.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client config for `brokers`, with the user's own librdkafka settings
/// (`options`, e.g. `security.protocol`) applied last, so they win.
pub(crate) fn client_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "sluice");
    for (k, v) in options {
        config.set(k, v);
    }
    config
}

/// Runs a blocking librdkafka call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(KafkaError::Canceled).inspect_err(|_| {
            tracing::error!("a Kafka client call panicked or was cancelled: {e}");
        }),
    }
}

/// The partitions of `topic`, in order; an error when the topic does not
/// exist (sluice never creates a topic it reads).
pub(crate) async fn partitions_of<C>(
    consumer: std::sync::Arc<C>,
    topic: &str,
) -> std::result::Result<Vec<i32>, String>
where
    C: Consumer + Send + Sync + 'static,
{
    let name = topic.to_string();
    let metadata = blocking(move || consumer.fetch_metadata(Some(&name), REQUEST_TIMEOUT))
        .await
        .map_err(|e| format!("cannot read the metadata of topic `{topic}`: {e}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("topic `{topic}` does not exist"));
    };
    if let Some(e) = t.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(e);
        if code == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
            return Err(format!("topic `{topic}` does not exist"));
        }
        return Err(format!("topic `{topic}`: {code}"));
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(format!("topic `{topic}` does not exist"));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// A plain consumer for one-off reads (metadata, a commit log topic).
pub(crate) fn plain_consumer(
    config: &ClientConfig,
) -> std::result::Result<BaseConsumer, KafkaError> {
    let mut config = config.clone();
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    if config.get("group.id").is_none() {
        config.set("group.id", "sluice");
    }
    config.create()
}

/// The retry hint of a Kafka client error: transport and broker errors that
/// a retry can outlast are transient; the rest are not.
pub(crate) fn retry_hint(e: &KafkaError) -> RetryHint {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::QueueFull
            | C::MessageTimedOut,
        ) => RetryHint::WithBackoff,
        _ => RetryHint::Never,
    }
}

/// A source error of the Kafka client.
pub(crate) fn source_error(
    source: &str,
    topic: Option<&str>,
    what: &str,
    e: KafkaError,
) -> SluiceError {
    SluiceError::Source {
        source_name: source.to_string(),
        file: topic.map(|t| format!("kafka topic {t}")),
        line: None,
        message: format!("{what}: {e}"),
        retry: retry_hint(&e),
        cause: None,
    }
}

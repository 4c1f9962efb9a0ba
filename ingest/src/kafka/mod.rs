//! Kafka: topic names, client configuration, and the source that feeds the dataflows from the
//! `machine-telemetry` log (see [`source`]).

pub mod source;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// Envelopes as machines sent them, keyed by machine id.
pub const TELEMETRY_TOPIC: &str = "machine-telemetry";
/// Envelopes the bridge refused, with the reason.
pub const REJECTED_TOPIC: &str = "telemetry-rejected";

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("creating topic {topic} on {brokers}: {message}")]
    CreateTopic {
        brokers: String,
        topic: String,
        message: String,
    },
}

/// Settings every vendflow Kafka client shares.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "vendflow")
        // Quick reconnects with a ceiling: a broker restart costs seconds, not minutes.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000");
    config
}

/// Creates `topics` (name, partitions) unless they exist.
pub fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers)
            .create()
            .map_err(|source| KafkaError::Client {
                brokers: brokers.to_owned(),
                source,
            })?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaError::CreateTopic {
            brokers: brokers.to_owned(),
            topic: String::new(),
            message: e.to_string(),
        })?;
    let results = runtime
        .block_on(admin.create_topics(&new, &options))
        .map_err(|source| KafkaError::Client {
            brokers: brokers.to_owned(),
            source,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    brokers: brokers.to_owned(),
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

//! Kafka: the four topic names (defined here only), client configuration, and the source that
//! feeds the dataflows from the `machine-telemetry` log (see [`source`]).

pub mod pause;
mod send;
pub mod source;

pub use send::{CommandOptions, CommandOptionsError};

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// Envelopes as machines sent them, keyed by machine id.
pub const TELEMETRY_TOPIC: &str = "machine-telemetry";
/// Commands to machines, keyed by machine id (one [`vendflow_protocol::Command`] per message).
pub const COMMANDS_TOPIC: &str = "machine-commands";
/// Envelopes the bridge refused, with the reason (one [`Rejection`] per message).
pub const REJECTED_TOPIC: &str = "telemetry-rejected";
/// Registry changes (machines, locations, leases), one JSON record per message.
pub const FLEET_COMMANDS_TOPIC: &str = "fleet-commands";

/// How much of a refused payload a [`Rejection`] keeps.
pub const REJECTED_PAYLOAD_LIMIT: usize = 16 * 1024;

/// A record of `telemetry-rejected`: what was refused, where it came from, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// The receiver's clock, epoch ms.
    pub received_at: i64,
    /// Set when it came over MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_topic: Option<String>,
    /// Set when it came over HTTP (the `X-Machine-Id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_machine_id: Option<String>,
    /// Machine-readable: `machine_mismatch`, `bad_signature`, `too_large`, …
    pub code: String,
    pub reason: String,
    /// The payload as received (lossy UTF-8), cut at [`REJECTED_PAYLOAD_LIMIT`] bytes.
    pub payload: String,
    /// The payload's full length.
    #[serde(default)]
    pub payload_bytes: usize,
}

impl Rejection {
    pub fn new(received_at: i64, code: &str, reason: String, payload: &[u8]) -> Rejection {
        let kept = &payload[..payload.len().min(REJECTED_PAYLOAD_LIMIT)];
        Rejection {
            received_at,
            mqtt_topic: None,
            http_machine_id: None,
            code: code.to_owned(),
            reason,
            payload: String::from_utf8_lossy(kept).into_owned(),
            payload_bytes: payload.len(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Where it came from, as the engine's error records name sources.
    pub fn source(&self) -> String {
        match (&self.mqtt_topic, &self.http_machine_id) {
            (Some(topic), _) => format!("mqtt:{topic}"),
            (None, Some(machine)) => format!("http:{machine}"),
            (None, None) => "bridge".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot start the kafka client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("creating topic {topic} on {brokers}: {message}")]
    CreateTopic {
        brokers: String,
        topic: String,
        message: String,
    },
}

impl KafkaError {
    /// Wraps an rdkafka error of a client of `brokers` (for `map_err`).
    pub fn client(brokers: &str) -> impl Fn(rdkafka::error::KafkaError) -> KafkaError + Copy + '_ {
        move |source| KafkaError::Client {
            brokers: brokers.to_owned(),
            source,
        }
    }
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
    // librdkafka's own debug contexts (e.g. `msg,eos,broker`), logged through `tracing`: for a
    // post-mortem of a produce that never completes.
    if let Ok(contexts) = std::env::var("VENDFLOW_KAFKA_DEBUG") {
        config.set("debug", contexts);
    }
    config
}

/// Produces registry records (one JSON object per line of `text`, each checked first) to
/// `fleet-commands`, keyed by what they describe ([`vendflow_protocol::RegistryRecord::key`]: a later record with the
/// same key replaces the earlier one); returns how many. A file with any
/// invalid line is refused as a whole, with every line's reason, before anything is sent.
pub fn load_registry(brokers: &str, text: &str) -> Result<usize, RegistryLoadError> {
    use vendflow_protocol::decode::decode_registry;
    let mut records = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match decode_registry(line.as_bytes()) {
            Ok(r) => {
                records.push((r.key(), line));
            }
            Err(e) => problems.push(format!("line {}: {e}", i + 1)),
        }
    }
    if !problems.is_empty() {
        return Err(RegistryLoadError::Invalid(problems.join("\n")));
    }
    ensure_topics(brokers, &[KafkaTopic::new(FLEET_COMMANDS_TOPIC, 1)])?;
    produce_all(brokers, FLEET_COMMANDS_TOPIC, &records)?;
    Ok(records.len())
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("nothing was sent; invalid registry records:\n{0}")]
    Invalid(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// `vendflow registry …`: the registry on Kafka, from the command line.
#[derive(clap::Subcommand)]
pub enum RegistryCommand {
    /// Produce a registry file (JSON Lines of location / machine / lease records, as
    /// `publish --registry-out` writes) to `fleet-commands`, where the engine reads it. Every
    /// line is checked first; a file with an invalid line is refused whole, nothing sent.
    Load {
        file: std::path::PathBuf,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
    },
}

impl RegistryCommand {
    /// Runs the command; says what it sent.
    pub fn run(&self) -> Result<String, RegistryLoadError> {
        match self {
            RegistryCommand::Load { file, kafka } => {
                let text =
                    std::fs::read_to_string(file).map_err(|source| RegistryLoadError::Read {
                        path: file.display().to_string(),
                        source,
                    })?;
                let sent = load_registry(kafka, &text)?;
                Ok(format!(
                    "sent {sent} registry record(s) from {} to fleet-commands on {kafka}",
                    file.display()
                ))
            }
        }
    }
}

/// Produces `command` to `machine-commands` (keyed by machine id, created if missing) and
/// waits until Kafka has it; returns its (partition, offset).
pub fn send_command(
    brokers: &str,
    command: &vendflow_protocol::Command,
) -> Result<(i32, i64), KafkaError> {
    ensure_topics(brokers, &[KafkaTopic::new(COMMANDS_TOPIC, 1)])?;
    let payload = command.to_json();
    let delivered = produce_all(
        brokers,
        COMMANDS_TOPIC,
        &[(command.machine_id.as_str().to_owned(), payload.as_str())],
    )?;
    Ok(delivered.first().copied().unwrap_or((0, -1)))
}

/// Produces `records` (key, payload) to `topic` with a producer of its own (the CLI's one-shot
/// commands); see [`Producer::send_all`].
fn produce_all(
    brokers: &str,
    topic: &str,
    records: &[(String, &str)],
) -> Result<Vec<(i32, i64)>, KafkaError> {
    Producer::new(brokers)?.send_all(topic, records)
}

/// An idempotent producer with the runtime it waits on, made once and kept for a process's
/// lifetime (a running service's registry writes go through one).
pub struct Producer {
    brokers: String,
    producer: rdkafka::producer::FutureProducer,
    runtime: tokio::runtime::Runtime,
}

impl Producer {
    pub fn new(brokers: &str) -> Result<Producer, KafkaError> {
        let producer = client_config(brokers)
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "15000")
            .create()
            .map_err(KafkaError::client(brokers))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(KafkaError::Runtime)?;
        Ok(Producer {
            brokers: brokers.to_owned(),
            producer,
            runtime,
        })
    }

    /// Produces `records` (key, payload) to `topic`, all in flight at once, and waits for every
    /// delivery: a failure is reported, never lost. Returns each record's (partition, offset).
    pub fn send_all(
        &self,
        topic: &str,
        records: &[(String, &str)],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let records: Vec<(String, Option<&str>)> =
            records.iter().map(|(k, p)| (k.clone(), Some(*p))).collect();
        self.send_keyed(topic, &records)
    }

    /// [`Producer::send_all`] where a record may have no payload: a tombstone, which deletes
    /// its key from an upsert log such as `fleet-commands`.
    pub fn send_keyed(
        &self,
        topic: &str,
        records: &[(String, Option<&str>)],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        use rdkafka::error::KafkaError as RdError;
        use rdkafka::producer::FutureRecord;
        use rdkafka::types::RDKafkaErrorCode;
        let (brokers, producer) = (self.brokers.as_str(), &self.producer);
        self.runtime.block_on(async {
            let mut deliveries = Vec::new();
            for (key, payload) in records {
                let mut record = FutureRecord::to(topic).key(key.as_str());
                if let Some(payload) = payload {
                    record = record.payload(*payload);
                }
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            deliveries.push(delivery);
                            break;
                        }
                        Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err((e, _)) => return Err(KafkaError::client(brokers)(e)),
                    }
                }
            }
            let mut delivered = Vec::new();
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(d)) => delivered.push((d.partition, d.offset)),
                    Ok(Err((e, _))) => return Err(KafkaError::client(brokers)(e)),
                    Err(_) => return Err(KafkaError::client(brokers)(RdError::Canceled)),
                }
            }
            Ok(delivered)
        })
    }
}

/// A topic the platform creates when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KafkaTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
    /// Its `retention.ms` (with `cleanup.policy=delete`); None: the broker's default.
    pub retention: Option<Duration>,
}

impl<'a> KafkaTopic<'a> {
    pub const fn new(name: &'a str, partitions: i32) -> KafkaTopic<'a> {
        KafkaTopic {
            name,
            partitions,
            retention: None,
        }
    }

    pub fn with_retention(self, retention: Option<Duration>) -> KafkaTopic<'a> {
        KafkaTopic { retention, ..self }
    }
}

/// Creates `topics` unless they exist (an existing topic keeps its settings).
pub fn ensure_topics(brokers: &str, topics: &[KafkaTopic<'_>]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(KafkaError::client(brokers))?;
    let retention: Vec<Option<String>> = topics
        .iter()
        .map(|t| t.retention.map(|r| r.as_millis().to_string()))
        .collect();
    let new: Vec<NewTopic> = topics
        .iter()
        .zip(&retention)
        .map(|(topic, retention)| {
            let new = NewTopic::new(topic.name, topic.partitions, TopicReplication::Fixed(1));
            match retention {
                Some(ms) => new.set("cleanup.policy", "delete").set("retention.ms", ms),
                None => new,
            }
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .operation_timeout(Some(Duration::from_secs(5)));
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
        .map_err(KafkaError::client(brokers))?;
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

/// [`ensure_topics`], retried with backoff (100 ms doubling to 5 s) while Kafka is unreachable,
/// until `stop`. Returns false if stopped first.
pub fn ensure_topics_retrying(
    brokers: &str,
    topics: &[KafkaTopic<'_>],
    stop: &std::sync::atomic::AtomicBool,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match ensure_topics(brokers, topics) {
            Ok(()) => return true,
            Err(e) => tracing::warn!(
                "kafka {brokers} unavailable ({e}); retrying in {} ms",
                backoff.as_millis()
            ),
        }
        let until = std::time::Instant::now() + backoff;
        while std::time::Instant::now() < until {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

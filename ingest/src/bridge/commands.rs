//! Commands back to machines: Kafka `machine-commands` → MQTT `machines/{id}/commands` (QoS 1).
//!
//! The bridge publishes the commands from its consumer group's committed offset on, and commits
//! an offset only once the MQTT broker has acknowledged every command before it, so a bridge
//! killed at any moment sends each command at least once (machines apply a command id once and
//! answer it again when it comes again). It reads the topic from the beginning, though: every
//! command of the last [`PENDING_FOR_MS`] is also kept per machine, bounded, for the machines
//! that poll over HTTP (`POST /api/telemetry` returns them until the machine answers), so a
//! restarted bridge still offers them; a machine that had answered before the restart answers
//! again and the command is no longer offered.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use rumqttc::{Client, QoS};
use vendflow_protocol::command::decode_command;
use vendflow_protocol::topics::Topic;
use vendflow_protocol::{Command, Timestamp};

use crate::gateway::{BridgeStats, PENDING_FOR_MS, PendingCommands};
use crate::kafka::{COMMANDS_TOPIC, KafkaError, client_config};

/// Reads `machine-commands` and hands each command to the MQTT client.
pub struct Downlink {
    consumer: BaseConsumer,
    /// Read, not yet taken by the MQTT client: (offset, command or `None` if refused).
    outbox: VecDeque<(i64, Option<Command>)>,
    /// Handed to the MQTT client, not yet acknowledged by the broker.
    unacknowledged: u64,
    /// The last offset handed over (or refused).
    handled: Option<i64>,
    committed: Option<i64>,
    /// When reading the topic last failed loudly (at most one warning every 10 s).
    warned: Option<std::time::Instant>,
    /// Below this offset, commands were delivered by an earlier bridge: offered over HTTP only.
    resume_at: i64,
}

impl Downlink {
    pub fn new(brokers: &str) -> Result<Downlink, KafkaError> {
        let client_error = KafkaError::client(brokers);
        let consumer: BaseConsumer = client_config(brokers)
            .set("group.id", "vendflow-bridge-commands")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(client_error)?;
        let mut partition = TopicPartitionList::new();
        partition
            .add_partition_offset(COMMANDS_TOPIC, 0, Offset::Invalid)
            .map_err(client_error)?;
        // Where the previous bridge stopped delivering; nothing committed (or a broker that
        // cannot say): deliver everything again, at least once.
        let resume_at = match consumer.committed_offsets(partition, Duration::from_secs(10)) {
            Ok(committed) => committed
                .find_partition(COMMANDS_TOPIC, 0)
                .and_then(|p| match p.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                })
                .unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "no committed offset for {COMMANDS_TOPIC}; delivering every command again");
                0
            }
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(COMMANDS_TOPIC, 0, Offset::Beginning)
            .map_err(client_error)?;
        consumer.assign(&assignment).map_err(client_error)?;
        Ok(Downlink {
            consumer,
            outbox: VecDeque::new(),
            unacknowledged: 0,
            handled: None,
            committed: None,
            warned: None,
            resume_at,
        })
    }

    /// Reads what is new, hands the MQTT client what it takes, commits what the broker has.
    pub fn pump(&mut self, client: &Client, pending: &PendingCommands, stats: &BridgeStats) {
        while self.outbox.len() < 1024 {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    let offset = message.offset();
                    match decode_command(message.payload().unwrap_or(&[])) {
                        Ok(command) => {
                            let fresh = Timestamp::now().0
                                < command.issued_at.0.saturating_add(PENDING_FOR_MS);
                            if fresh {
                                pending.add(command.clone());
                            }
                            if offset >= self.resume_at {
                                self.outbox.push_back((offset, Some(command)));
                            }
                        }
                        Err(e) if offset >= self.resume_at => {
                            stats.commands_refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(offset, error = %e, "refused a command in {COMMANDS_TOPIC}");
                            self.outbox.push_back((offset, None));
                        }
                        Err(_) => {} // refused (and counted) by an earlier bridge
                    }
                }
                Some(Err(e)) => {
                    if self
                        .warned
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                    {
                        self.warned = Some(std::time::Instant::now());
                        tracing::warn!(error = %e, "reading {COMMANDS_TOPIC}; retrying");
                    }
                    break;
                }
                None => break,
            }
        }
        while let Some((offset, command)) = self.outbox.front() {
            if let Some(c) = command {
                let topic = Topic::Commands.of(c.machine_id.as_str());
                if client
                    .try_publish(topic, QoS::AtLeastOnce, false, c.to_json())
                    .is_err()
                {
                    break; // the client's queue is full: next turn
                }
                self.unacknowledged += 1;
                stats.commands_sent.fetch_add(1, Ordering::Relaxed);
                stats
                    .commands_unacknowledged
                    .store(self.unacknowledged, Ordering::Relaxed);
            }
            self.handled = Some(*offset);
            self.outbox.pop_front();
        }
        if self.outbox.is_empty()
            && self.unacknowledged == 0
            && let Some(handled) = self.handled
            && self.committed < Some(handled)
        {
            let mut offsets = TopicPartitionList::new();
            if offsets
                .add_partition_offset(COMMANDS_TOPIC, 0, Offset::Offset(handled + 1))
                .is_ok()
            {
                match self.consumer.commit(&offsets, CommitMode::Async) {
                    Ok(()) => self.committed = Some(handled),
                    Err(e) => tracing::warn!(error = %e, "committing {COMMANDS_TOPIC}"),
                }
            }
        }
    }

    /// The broker acknowledged a command.
    pub fn acknowledged(&mut self, stats: &BridgeStats) {
        self.unacknowledged = self.unacknowledged.saturating_sub(1);
        stats
            .commands_unacknowledged
            .store(self.unacknowledged, Ordering::Relaxed);
    }
}

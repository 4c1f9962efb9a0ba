//! What the bridge's two doors into Kafka share: MQTT (`bridge`) and HTTP (`http`) take
//! telemetry from machines, count it in one [`BridgeStats`], and offer each machine the
//! commands it has not answered yet ([`PendingCommands`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use vendflow_protocol::decode::decode_envelope;
use vendflow_protocol::{Command, EventKind};

/// Unanswered commands kept per machine for HTTP; older ones are dropped (and logged).
pub(crate) const PENDING_PER_MACHINE: usize = 64;
/// A pending command older than this (by `issuedAt`) is no longer offered.
pub(crate) const PENDING_FOR_MS: i64 = 7 * 24 * 3_600_000;

/// Commands sent and not yet answered, per machine.
#[derive(Default)]
pub struct PendingCommands {
    by_machine: Mutex<HashMap<String, VecDeque<Command>>>,
}

impl PendingCommands {
    pub fn add(&self, command: Command) {
        let mut map = self.by_machine.lock().unwrap_or_else(|p| p.into_inner());
        let queue = map
            .entry(command.machine_id.as_str().to_owned())
            .or_default();
        if queue.iter().any(|c| c.command_id == command.command_id) {
            return;
        }
        queue.push_back(command);
        if queue.len() > PENDING_PER_MACHINE
            && let Some(dropped) = queue.pop_front()
        {
            tracing::warn!(
                machine = %dropped.machine_id,
                command = %dropped.command_id,
                "more than {PENDING_PER_MACHINE} unanswered commands; no longer offering the oldest"
            );
        }
    }

    /// Forgets the commands `machine` answered in `envelope` (if it answers any).
    pub fn answered(&self, machine: &str, envelope: &[u8]) {
        let ids = answered_commands(envelope);
        if ids.is_empty() {
            return;
        }
        let mut map = self.by_machine.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = map.get_mut(machine) {
            queue.retain(|c| !ids.contains(&c.command_id));
            if queue.is_empty() {
                map.remove(machine);
            }
        }
    }

    /// What `machine` has not answered yet, as wire JSON, oldest first.
    pub fn for_machine(&self, machine: &str, now_ms: i64) -> Vec<serde_json::Value> {
        let map = self.by_machine.lock().unwrap_or_else(|p| p.into_inner());
        map.get(machine)
            .into_iter()
            .flatten()
            .filter(|c| now_ms < c.issued_at.0.saturating_add(PENDING_FOR_MS))
            .filter_map(|c| serde_json::from_str(&c.to_json()).ok())
            .collect()
    }
}

/// The command ids a (verified) envelope answers with `command_ack` events.
pub fn answered_commands(envelope: &[u8]) -> Vec<String> {
    if !envelope.windows(11).any(|w| w == b"command_ack") {
        return Vec::new();
    }
    let Ok(events) = decode_envelope(envelope) else {
        return Vec::new();
    };
    events
        .into_iter()
        .filter_map(|e| match e.ok()?.kind {
            EventKind::CommandAck(a) => Some(a.command_id),
            _ => None,
        })
        .collect()
}

/// Counters, readable while the bridge runs.
#[derive(Default, Debug)]
pub struct BridgeStats {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub rejected: AtomicU64,
    /// Broker redeliveries (MQTT DUP) of envelopes already in Kafka: acknowledged, not
    /// produced again.
    pub redelivered: AtomicU64,
    /// Envelopes a machine sent again (no delivery receipt reached it) that are already in
    /// Kafka: acknowledged and receipted, not produced again.
    pub retransmitted: AtomicU64,
    pub kafka_retries: AtomicU64,
    pub mqtt_reconnects: AtomicU64,
    /// Messages produced but not yet acknowledged by Kafka (the bridge's lag).
    pub inflight: AtomicU64,
    /// Commands handed to MQTT (`machines/{id}/commands`).
    pub commands_sent: AtomicU64,
    /// Records of `machine-commands` that are not valid commands.
    pub commands_refused: AtomicU64,
    /// Commands handed to MQTT that the broker has not acknowledged yet.
    pub commands_unacknowledged: AtomicU64,
    /// Messages in Kafka whose MQTT acknowledgement waits for the client.
    pub acks_waiting: AtomicU64,
    /// Nonces the verifier holds for its skew window, and the bytes of their tables' slots.
    pub nonces: AtomicU64,
    pub nonce_bytes: AtomicU64,
}

impl BridgeStats {
    /// The counters in Prometheus' text format (`GET /metrics`).
    pub fn prometheus(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let metrics: [(&str, &str, &str, u64); 14] = [
            (
                "received_total",
                "counter",
                "MQTT messages received",
                g(&self.received),
            ),
            (
                "forwarded_total",
                "counter",
                "envelopes Kafka acknowledged in machine-telemetry",
                g(&self.forwarded),
            ),
            (
                "rejected_total",
                "counter",
                "envelopes refused (to telemetry-rejected)",
                g(&self.rejected),
            ),
            (
                "redelivered_total",
                "counter",
                "broker redeliveries of envelopes already in Kafka",
                g(&self.redelivered),
            ),
            (
                "retransmitted_total",
                "counter",
                "machines' retransmissions of envelopes already in Kafka",
                g(&self.retransmitted),
            ),
            (
                "kafka_retries_total",
                "counter",
                "produce attempts Kafka refused and the bridge retried",
                g(&self.kafka_retries),
            ),
            (
                "mqtt_reconnects_total",
                "counter",
                "MQTT connection losses",
                g(&self.mqtt_reconnects),
            ),
            (
                "commands_sent_total",
                "counter",
                "commands published on machines/{id}/commands",
                g(&self.commands_sent),
            ),
            (
                "commands_refused_total",
                "counter",
                "machine-commands records that are not valid commands",
                g(&self.commands_refused),
            ),
            (
                "inflight",
                "gauge",
                "messages waiting for Kafka (the bridge's lag)",
                g(&self.inflight),
            ),
            (
                "acks_waiting",
                "gauge",
                "messages in Kafka whose MQTT acknowledgement is not sent yet",
                g(&self.acks_waiting),
            ),
            (
                "nonces",
                "gauge",
                "envelope nonces held to recognise a redelivery within the skew window",
                g(&self.nonces),
            ),
            (
                "nonce_bytes",
                "gauge",
                "bytes of the nonce window's table slots",
                g(&self.nonce_bytes),
            ),
            (
                "commands_unacknowledged",
                "gauge",
                "commands the MQTT broker has not acknowledged yet",
                g(&self.commands_unacknowledged),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in metrics {
            out.push_str(&format!(
                "# HELP vendflow_bridge_{name} {help}\n# TYPE vendflow_bridge_{name} {kind}\nvendflow_bridge_{name} {value}\n"
            ));
        }
        out
    }

    pub fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "received {} forwarded {} rejected {} redelivered {} retransmitted {} inflight {} acks_waiting {} kafka_retries {} mqtt_reconnects {} commands_sent {} commands_refused {}",
            g(&self.received),
            g(&self.forwarded),
            g(&self.rejected),
            g(&self.redelivered),
            g(&self.retransmitted),
            g(&self.inflight),
            g(&self.acks_waiting),
            g(&self.kafka_retries),
            g(&self.mqtt_reconnects),
            g(&self.commands_sent),
            g(&self.commands_refused)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendflow_protocol::{Action, MachineId, Timestamp};

    fn command(machine: &str, id: &str) -> Command {
        Command {
            command_id: id.into(),
            machine_id: MachineId::parse(machine).unwrap_or_else(|e| panic!("{e}")),
            issued_at: Timestamp(1_000),
            action: Action::Reboot,
        }
    }

    #[test]
    fn pending_commands_are_offered_until_answered() {
        let pending = PendingCommands::default();
        pending.add(command("mach_00001", "c1"));
        pending.add(command("mach_00001", "c1"));
        pending.add(command("mach_00001", "c2"));
        assert_eq!(pending.for_machine("mach_00001", 2_000).len(), 2);
        assert!(pending.for_machine("mach_00002", 2_000).is_empty());
        let ack = br#"{"machineId":"mach_00001","events":[{"type":"command_ack","timestamp":1700000000000,"payload":{"commandId":"c1","status":"applied"}}]}"#;
        pending.answered("mach_00001", ack);
        let left = pending.for_machine("mach_00001", 2_000);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["commandId"], "c2");
        assert!(
            pending
                .for_machine("mach_00001", PENDING_FOR_MS + 1_000)
                .is_empty()
        );
        for i in 0..100 {
            pending.add(command("mach_00003", &format!("x{i}")));
        }
        assert_eq!(
            pending.for_machine("mach_00003", 2_000).len(),
            PENDING_PER_MACHINE
        );
    }
}

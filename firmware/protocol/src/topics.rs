//! The MQTT topics between a machine and the platform, defined once: a machine publishes its
//! telemetry on `machines/{id}/telemetry` and its answers to commands on `machines/{id}/acks`,
//! and receives commands on `machines/{id}/commands`.

/// One of a machine's MQTT topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Telemetry,
    Acks,
    Commands,
    /// Delivery receipts for a machine (`vendflow bridge` → machine): one per message the
    /// platform has made durable in Kafka (or refused there with its reason), carrying
    /// [`receipt`] of that message's payload. A machine's outbox lets a message go on its
    /// receipt, not on the broker's PUBACK: a broker acknowledges before it has written the
    /// message down, so a `kill -9` of the broker can lose what it had acknowledged.
    Delivered,
}

/// The receipt of an MQTT payload: the first 8 bytes of its SHA-256, in hex. The bridge sends
/// it on [`Topic::Delivered`] once the payload is durable; the machine matches it against what
/// it sent.
pub fn receipt(payload: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(payload)[..8])
}

impl Topic {
    /// The last level of the topic (`telemetry`, `acks`, `commands`).
    pub const fn leaf(self) -> &'static str {
        match self {
            Topic::Telemetry => "telemetry",
            Topic::Acks => "acks",
            Topic::Commands => "commands",
            Topic::Delivered => "delivered",
        }
    }

    /// The subscription filter for this topic of every machine (`machines/+/telemetry`).
    pub const fn filter(self) -> &'static str {
        match self {
            Topic::Telemetry => "machines/+/telemetry",
            Topic::Acks => "machines/+/acks",
            Topic::Commands => "machines/+/commands",
            Topic::Delivered => "machines/+/delivered",
        }
    }

    /// This topic of `machine`.
    pub fn of(self, machine: &str) -> String {
        format!("machines/{machine}/{}", self.leaf())
    }

    /// The machine id in `topic` when `topic` is this topic of some machine.
    pub fn machine(self, topic: &str) -> Option<&str> {
        let mut parts = topic.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("machines"), Some(id), Some(leaf), None)
                if leaf == self.leaf() && !id.is_empty() =>
            {
                Some(id)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_and_parse_one_machine() {
        for topic in [
            Topic::Telemetry,
            Topic::Acks,
            Topic::Commands,
            Topic::Delivered,
        ] {
            let name = topic.of("mach_00001");
            assert_eq!(topic.machine(&name), Some("mach_00001"));
            assert_eq!(topic.filter().replace('+', "mach_00001"), name);
        }
        assert_eq!(Topic::Telemetry.machine("machines//telemetry"), None);
        assert_eq!(Topic::Telemetry.machine("machines/m1/acks"), None);
        assert_eq!(Topic::Telemetry.machine("machines/m1/telemetry/x"), None);
        assert_eq!(Topic::Telemetry.machine("devices/m1/telemetry"), None);
    }

    #[test]
    fn a_receipt_names_one_payload() {
        assert_eq!(receipt(b"{}").len(), 16);
        assert_eq!(receipt(b"{}"), receipt(b"{}"));
        assert_ne!(receipt(b"{}"), receipt(b"{ }"));
    }
}

//! The MQTT topics between a machine and the platform, defined once: a machine publishes its
//! telemetry on `machines/{id}/telemetry` and its answers to commands on `machines/{id}/acks`,
//! and receives commands on `machines/{id}/commands`.

/// One of a machine's MQTT topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Telemetry,
    Acks,
    Commands,
}

impl Topic {
    /// The last level of the topic (`telemetry`, `acks`, `commands`).
    pub const fn leaf(self) -> &'static str {
        match self {
            Topic::Telemetry => "telemetry",
            Topic::Acks => "acks",
            Topic::Commands => "commands",
        }
    }

    /// The subscription filter for this topic of every machine (`machines/+/telemetry`).
    pub const fn filter(self) -> &'static str {
        match self {
            Topic::Telemetry => "machines/+/telemetry",
            Topic::Acks => "machines/+/acks",
            Topic::Commands => "machines/+/commands",
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
        for topic in [Topic::Telemetry, Topic::Acks, Topic::Commands] {
            let name = topic.of("mach_00001");
            assert_eq!(topic.machine(&name), Some("mach_00001"));
            assert_eq!(topic.filter().replace('+', "mach_00001"), name);
        }
        assert_eq!(Topic::Telemetry.machine("machines//telemetry"), None);
        assert_eq!(Topic::Telemetry.machine("machines/m1/acks"), None);
        assert_eq!(Topic::Telemetry.machine("machines/m1/telemetry/x"), None);
        assert_eq!(Topic::Telemetry.machine("devices/m1/telemetry"), None);
    }
}

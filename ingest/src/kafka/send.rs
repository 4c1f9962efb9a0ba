//! `vendflow command`: a command for one machine, built from the command line and checked by
//! the same decoder the bridge and the engine use.

use vendflow_protocol::command::decode_command;
use vendflow_protocol::{Command, DecodeError, Timestamp};

/// The options of `vendflow command`.
#[derive(clap::Args, Clone, Debug)]
pub struct CommandOptions {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// The machine, e.g. mach_00042.
    #[arg(long)]
    pub machine: String,
    /// UPDATE_PRICE (needs --slot and --price) or REBOOT.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    #[arg(long)]
    pub slot: Option<u32>,
    /// New price, e.g. 2.75.
    #[arg(long)]
    pub price: Option<String>,
    /// Command id (default: a new unique one).
    #[arg(long)]
    pub id: Option<String>,
}

/// Why the options are not a command (bad input).
#[derive(Debug, thiserror::Error)]
pub enum CommandOptionsError {
    #[error("--price {0:?} is not a number")]
    Price(String),
    #[error("not a valid command: {0}")]
    Invalid(#[from] DecodeError),
}

impl CommandOptions {
    /// The command, issued at `now` (its id, unless given, made of `now` and this process).
    /// Built as wire JSON and decoded, so the command line accepts exactly what the bridge and
    /// the engine do.
    pub fn command(&self, now: Timestamp) -> Result<Command, CommandOptionsError> {
        let now = now.0;
        let command_id = self.id.clone().unwrap_or_else(|| {
            format!(
                "cmd_{now:x}_{:x}",
                std::process::id() ^ (now as u32).rotate_left(7)
            )
        });
        let mut wire = serde_json::json!({
            "commandId": command_id, "machineId": self.machine, "issuedAt": now, "type": self.kind,
        });
        if let Some(map) = wire.as_object_mut() {
            if let Some(slot) = self.slot {
                map.insert("slotNumber".into(), slot.into());
            }
            if let Some(price) = &self.price {
                let price: serde_json::Value = serde_json::from_str(price)
                    .ok()
                    .filter(serde_json::Value::is_number)
                    .ok_or_else(|| CommandOptionsError::Price(price.clone()))?;
                map.insert("newPrice".into(), price);
            }
        }
        Ok(decode_command(wire.to_string().as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kind: &str, slot: Option<u32>, price: Option<&str>) -> CommandOptions {
        CommandOptions {
            kafka: "k:9092".into(),
            machine: "mach_00042".into(),
            kind: kind.into(),
            slot,
            price: price.map(str::to_owned),
            id: Some("cmd_1".into()),
        }
    }

    #[test]
    fn a_price_update_is_checked_like_one_from_the_wire() {
        let now = Timestamp(1_705_305_600_000);
        let command = options("UPDATE_PRICE", Some(3), Some("2.75"))
            .command(now)
            .expect("a command");
        assert_eq!(command.command_id, "cmd_1");
        assert_eq!(command.machine_id.as_str(), "mach_00042");
        let wire: serde_json::Value = serde_json::from_str(&command.to_json()).expect("json");
        assert_eq!(wire["slotNumber"], 3);
        assert!(matches!(
            options("UPDATE_PRICE", Some(3), Some("cheap")).command(now),
            Err(CommandOptionsError::Price(p)) if p == "cheap"
        ));
        assert!(matches!(
            options("UPDATE_PRICE", None, None).command(now),
            Err(CommandOptionsError::Invalid(_))
        ));
        assert!(options("REBOOT", None, None).command(now).is_ok());
    }
}

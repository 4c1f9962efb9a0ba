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
    /// UPDATE_PRICE (--slot, --price), REBOOT, SET_PLANOGRAM (--planogram), DISPENSE
    /// (--order, --slot, --quantity) or UPDATE_FIRMWARE (--version, --url, --sha256).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    #[arg(long)]
    pub slot: Option<u32>,
    /// New price, e.g. 2.75.
    #[arg(long)]
    pub price: Option<String>,
    /// The whole planogram, SLOT:PRODUCT:PRICE,… e.g. `1:cola:2.50,2:chips:1.75`.
    #[arg(long)]
    pub planogram: Option<String>,
    /// DISPENSE: the order paid elsewhere (an app's order id).
    #[arg(long)]
    pub order: Option<String>,
    /// DISPENSE: units of the slot (default 1).
    #[arg(long)]
    pub quantity: Option<u32>,
    /// UPDATE_FIRMWARE: the version, the image's URL and its SHA-256 (64 hex digits).
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long)]
    pub sha256: Option<String>,
    /// Command id (default: a new unique one).
    #[arg(long)]
    pub id: Option<String>,
}

/// Why the options are not a command (bad input).
#[derive(Debug, thiserror::Error)]
pub enum CommandOptionsError {
    #[error("--price {0:?} is not a number")]
    Price(String),
    #[error("--planogram {0:?}: each slot is SLOT:PRODUCT:PRICE, e.g. 1:cola:2.50")]
    Planogram(String),
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
            if let Some(plan) = &self.planogram {
                map.insert("planogram".into(), planogram_json(plan)?);
            }
            for (field, value) in [
                ("orderId", &self.order),
                ("version", &self.version),
                ("url", &self.url),
                ("sha256", &self.sha256),
            ] {
                if let Some(v) = value {
                    map.insert(field.into(), v.as_str().into());
                }
            }
            if let Some(q) = self.quantity {
                map.insert("quantity".into(), q.into());
            }
        }
        Ok(decode_command(wire.to_string().as_bytes())?)
    }
}

/// `SLOT:PRODUCT:PRICE,…` as the wire's `planogram` array.
fn planogram_json(text: &str) -> Result<serde_json::Value, CommandOptionsError> {
    let bad = || CommandOptionsError::Planogram(text.to_owned());
    let mut slots = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut fields = part.splitn(3, ':');
        let (Some(slot), Some(product), Some(price)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let slot: u32 = slot.trim().parse().map_err(|_| bad())?;
        let price: serde_json::Value = serde_json::from_str(price.trim())
            .ok()
            .filter(serde_json::Value::is_number)
            .ok_or_else(bad)?;
        slots.push(
            serde_json::json!({"slotNumber": slot, "productId": product.trim(), "price": price}),
        );
    }
    Ok(slots.into())
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
            planogram: None,
            order: None,
            quantity: None,
            version: None,
            url: None,
            sha256: None,
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

    #[test]
    fn planograms_orders_and_firmware_are_built_and_checked() {
        let now = Timestamp(1_705_305_600_000);
        let mut plan = options("SET_PLANOGRAM", None, None);
        plan.planogram = Some("1:cola:2.50, 148:chips:1.75".into());
        let wire: serde_json::Value =
            serde_json::from_str(&plan.command(now).expect("a planogram").to_json()).expect("json");
        assert_eq!(wire["planogram"][1]["slotNumber"], 148);
        plan.planogram = Some("1:cola".into());
        assert!(matches!(
            plan.command(now),
            Err(CommandOptionsError::Planogram(_))
        ));
        let mut order = options("DISPENSE", Some(3), None);
        order.order = Some("ord_9".into());
        order.quantity = Some(2);
        assert!(order.command(now).is_ok());
        order.quantity = Some(50);
        assert!(matches!(
            order.command(now),
            Err(CommandOptionsError::Invalid(_))
        ));
        let mut update = options("UPDATE_FIRMWARE", None, None);
        update.version = Some("3.1.0".into());
        update.url = Some("https://u.example/3.1.0.bin".into());
        update.sha256 = Some("ab".repeat(32));
        assert!(update.command(now).is_ok());
        update.sha256 = Some("ab".into());
        assert!(matches!(
            update.command(now),
            Err(CommandOptionsError::Invalid(_))
        ));
    }
}

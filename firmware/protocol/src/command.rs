//! Commands to machines (Kafka `machine-commands` → MQTT `machines/{id}/commands`) and the
//! machines' acknowledgements.
//!
//! A command on the wire, flat, keyed by machine id in Kafka:
//! ```json
//! {"commandId":"cmd_1a2b","machineId":"mach_00001","issuedAt":1700000000000,"type":"UPDATE_PRICE","slotNumber":1,"newPrice":2.75}
//! {"commandId":"cmd_1a2c","machineId":"mach_00001","issuedAt":1700000000000,"type":"REBOOT"}
//! ```
//! A machine acknowledges with a `command_ack` event in a signed envelope, published on
//! `machines/{id}/acks` (or sent with its telemetry over HTTP):
//! ```json
//! {"type":"command_ack","timestamp":1700000001000,"payload":{"commandId":"cmd_1a2b","status":"applied"}}
//! {"type":"command_ack","timestamp":1700000001000,"payload":{"commandId":"cmd_1a2c","status":"rejected","reason":"no slot 99"}}
//! ```
//! Delivery is at least once: a machine applies a command id once and acknowledges it again
//! whenever it sees it again.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{DecodeError, ErrorKind};
use crate::units::{Cents, MachineId, Timestamp};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Command {
    pub command_id: String,
    pub machine_id: MachineId,
    pub issued_at: Timestamp,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Sell the product in `slot_number` at `new_price` from now on.
    UpdatePrice {
        slot_number: u32,
        new_price: Cents,
    },
    Reboot,
}

impl Action {
    /// The `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Action::UpdatePrice { .. } => "UPDATE_PRICE",
            Action::Reboot => "REBOOT",
        }
    }
}

impl Command {
    pub fn to_json(&self) -> String {
        let mut obj = serde_json::json!({
            "commandId": self.command_id,
            "machineId": self.machine_id.as_str(),
            "issuedAt": self.issued_at.0,
            "type": self.action.type_name(),
        });
        if let (
            Action::UpdatePrice {
                slot_number,
                new_price,
            },
            serde_json::Value::Object(map),
        ) = (&self.action, &mut obj)
        {
            map.insert("slotNumber".into(), (*slot_number).into());
            let price = serde_json::from_str(&new_price.to_string()).unwrap_or_default();
            map.insert("newPrice".into(), price);
        }
        obj.to_string()
    }
}

/// The highest price a command may set. Far above any vending price, and low enough that the
/// price survives JSON's numbers (an `f64` in most readers) to the cent: a fuzzed
/// `newPrice` of 25555555555555556 came back from its own wire form as a different amount.
pub const MAX_PRICE: Cents = Cents(100_000_000);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCommand<'a> {
    command_id: String,
    machine_id: &'a str,
    issued_at: i64,
    #[serde(rename = "type")]
    kind: &'a str,
    slot_number: Option<u32>,
    #[serde(borrow)]
    new_price: Option<&'a RawValue>,
}

/// Decodes a command, strictly: unknown types and missing or malformed parameters are refused.
pub fn decode_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    let raw: RawCommand = serde_json::from_slice(bytes).map_err(DecodeError::json)?;
    let machine_id =
        MachineId::parse(raw.machine_id).map_err(|m| DecodeError::new(ErrorKind::MachineId, m))?;
    if raw.command_id.is_empty() {
        return Err(DecodeError::new(ErrorKind::Schema, "commandId is empty"));
    }
    let action = match raw.kind {
        "UPDATE_PRICE" => {
            let slot_number = raw.slot_number.ok_or_else(|| {
                DecodeError::new(ErrorKind::Schema, "UPDATE_PRICE needs slotNumber")
            })?;
            let price = raw.new_price.ok_or_else(|| {
                DecodeError::new(ErrorKind::Schema, "UPDATE_PRICE needs newPrice")
            })?;
            let new_price = Cents::parse(price.get())
                .map_err(|m| DecodeError::new(ErrorKind::Number, format!("newPrice: {m}")))?;
            if new_price.0 <= 0 || new_price > MAX_PRICE {
                return Err(DecodeError::new(
                    ErrorKind::Number,
                    format!("newPrice: {new_price} is not between 0.01 and {MAX_PRICE}"),
                ));
            }
            Action::UpdatePrice {
                slot_number,
                new_price,
            }
        }
        "REBOOT" => Action::Reboot,
        other => {
            return Err(DecodeError::new(
                ErrorKind::UnknownType,
                format!("unknown command type {other:?}; expected UPDATE_PRICE or REBOOT"),
            ));
        }
    };
    Ok(Command {
        command_id: raw.command_id,
        machine_id,
        issued_at: Timestamp(raw.issued_at),
        action,
    })
}

/// A machine's answer to a command (the payload of a `command_ack` event).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandAck {
    pub command_id: String,
    pub status: AckStatus,
    /// Why a command was rejected.
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AckStatus {
    Applied,
    Rejected,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Applied => "applied",
            AckStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<AckStatus> {
        match s {
            "applied" => Some(AckStatus::Applied),
            "rejected" => Some(AckStatus::Rejected),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_bad_ones_say_why() {
        let line = r#"{"commandId":"c1","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_PRICE","slotNumber":1,"newPrice":2.75}"#;
        let c = decode_command(line.as_bytes()).expect("valid");
        assert_eq!(
            c.action,
            Action::UpdatePrice {
                slot_number: 1,
                new_price: Cents(275)
            }
        );
        assert_eq!(decode_command(c.to_json().as_bytes()), Ok(c));
        let dearest = Command {
            action: Action::UpdatePrice {
                slot_number: 1,
                new_price: Cents(MAX_PRICE.0 - 1),
            },
            ..decode_command(line.as_bytes()).expect("valid")
        };
        assert_eq!(decode_command(dearest.to_json().as_bytes()), Ok(dearest));
        let reboot = r#"{"commandId":"c2","machineId":"mach_00001","issuedAt":5,"type":"REBOOT"}"#;
        assert_eq!(
            decode_command(reboot.as_bytes()).map(|c| c.action),
            Ok(Action::Reboot)
        );
        for (bad, kind) in [
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_PRICE","slotNumber":1}"#,
                ErrorKind::Schema,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_PRICE","slotNumber":1,"newPrice":2.755}"#,
                ErrorKind::Number,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_PRICE","slotNumber":1,"newPrice":-1}"#,
                ErrorKind::Number,
            ),
            (
                // Found by the `command` fuzz target: it read back as a different amount.
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_PRICE","slotNumber":1,"newPrice":25555555555555556}"#,
                ErrorKind::Number,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"SELF_DESTRUCT"}"#,
                ErrorKind::UnknownType,
            ),
            (
                r#"{"commandId":"","machineId":"mach_00001","issuedAt":5,"type":"REBOOT"}"#,
                ErrorKind::Schema,
            ),
            (r#"{"commandId":"c""#, ErrorKind::Syntax),
        ] {
            assert_eq!(
                decode_command(bad.as_bytes()).map_err(|e| e.kind),
                Err(kind),
                "{bad}"
            );
        }
    }
}

//! Commands to machines (Kafka `machine-commands` → MQTT `machines/{id}/commands`) and the
//! machines' acknowledgements.
//!
//! A command on the wire, flat, keyed by machine id in Kafka:
//! ```json
//! {"commandId":"cmd_1a2b","machineId":"mach_00001","issuedAt":1700000000000,"type":"UPDATE_PRICE","slotNumber":1,"newPrice":2.75}
//! {"commandId":"cmd_1a2c","machineId":"mach_00001","issuedAt":1700000000000,"type":"REBOOT"}
//! {"commandId":"cmd_1a2d","machineId":"mach_00001","issuedAt":1700000000000,"type":"SET_PLANOGRAM","planogram":[{"slotNumber":1,"productId":"cola","price":2.5}]}
//! {"commandId":"cmd_1a2e","machineId":"mach_00001","issuedAt":1700000000000,"type":"DISPENSE","orderId":"ord_77","slotNumber":3,"quantity":2}
//! {"commandId":"cmd_1a2f","machineId":"mach_00001","issuedAt":1700000000000,"type":"UPDATE_FIRMWARE","version":"3.1.0","url":"https://updates.example/3.1.0.bin","sha256":"<64 hex digits>"}
//! ```
//! `SET_PLANOGRAM` replaces the whole planogram (a slot keeping its product keeps its stock);
//! `DISPENSE` delivers an order paid elsewhere (an app), answered with what dropped;
//! `UPDATE_FIRMWARE` is fetched, its SHA-256 checked (a mismatch is refused) and installed when
//! the machine is next idle, and answered by the boot that runs it.
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
    /// The machine's whole planogram.
    SetPlanogram {
        slots: Vec<PlanogramSlot>,
    },
    /// An order paid elsewhere: `quantity` units of `slot_number`.
    Dispense {
        order_id: String,
        slot_number: u32,
        quantity: u32,
    },
    UpdateFirmware {
        version: String,
        url: String,
        sha256: [u8; 32],
    },
}

/// One slot of a `SET_PLANOGRAM` command.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlanogramSlot {
    pub slot_number: u32,
    pub product_id: String,
    pub price: Cents,
}

/// Slots a planogram may have at most.
pub const MAX_PLANOGRAM_SLOTS: usize = 200;
/// Units one `DISPENSE` may ask for at most (a machine's cart holds no more).
pub const MAX_DISPENSE_UNITS: u32 = 10;
/// The longest id, product, version or URL a command may carry.
const MAX_TEXT: usize = 512;

impl Action {
    /// The `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Action::UpdatePrice { .. } => "UPDATE_PRICE",
            Action::Reboot => "REBOOT",
            Action::SetPlanogram { .. } => "SET_PLANOGRAM",
            Action::Dispense { .. } => "DISPENSE",
            Action::UpdateFirmware { .. } => "UPDATE_FIRMWARE",
        }
    }
}

/// `price` as a JSON number (it survives as one to the cent below [`MAX_PRICE`]).
fn price_json(price: Cents) -> serde_json::Value {
    serde_json::from_str(&price.to_string()).unwrap_or_default()
}

impl Command {
    pub fn to_json(&self) -> String {
        let mut obj = serde_json::json!({
            "commandId": self.command_id,
            "machineId": self.machine_id.as_str(),
            "issuedAt": self.issued_at.0,
            "type": self.action.type_name(),
        });
        let serde_json::Value::Object(map) = &mut obj else {
            return obj.to_string();
        };
        match &self.action {
            Action::UpdatePrice {
                slot_number,
                new_price,
            } => {
                map.insert("slotNumber".into(), (*slot_number).into());
                map.insert("newPrice".into(), price_json(*new_price));
            }
            Action::Reboot => {}
            Action::SetPlanogram { slots } => {
                let slots: Vec<serde_json::Value> = slots
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "slotNumber": s.slot_number,
                            "productId": s.product_id,
                            "price": price_json(s.price),
                        })
                    })
                    .collect();
                map.insert("planogram".into(), slots.into());
            }
            Action::Dispense {
                order_id,
                slot_number,
                quantity,
            } => {
                map.insert("orderId".into(), order_id.as_str().into());
                map.insert("slotNumber".into(), (*slot_number).into());
                map.insert("quantity".into(), (*quantity).into());
            }
            Action::UpdateFirmware {
                version,
                url,
                sha256,
            } => {
                map.insert("version".into(), version.as_str().into());
                map.insert("url".into(), url.as_str().into());
                let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
                map.insert("sha256".into(), hex.into());
            }
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
    #[serde(borrow, default)]
    planogram: Option<Vec<RawPlanogramSlot<'a>>>,
    order_id: Option<String>,
    quantity: Option<u32>,
    version: Option<String>,
    url: Option<String>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPlanogramSlot<'a> {
    slot_number: u32,
    product_id: String,
    #[serde(borrow)]
    price: &'a RawValue,
}

/// A price between 0.01 and [`MAX_PRICE`].
fn price_of(field: &str, raw: &RawValue) -> Result<Cents, DecodeError> {
    let price = Cents::parse(raw.get())
        .map_err(|m| DecodeError::new(ErrorKind::Number, format!("{field}: {m}")))?;
    if price.0 <= 0 || price > MAX_PRICE {
        return Err(DecodeError::new(
            ErrorKind::Number,
            format!("{field}: {price} is not between 0.01 and {MAX_PRICE}"),
        ));
    }
    Ok(price)
}

/// A required text field, not empty and at most [`MAX_TEXT`] bytes.
fn text_of(kind: &str, field: &str, value: Option<String>) -> Result<String, DecodeError> {
    let value = value
        .ok_or_else(|| DecodeError::new(ErrorKind::Schema, format!("{kind} needs {field}")))?;
    if value.is_empty() || value.len() > MAX_TEXT {
        return Err(DecodeError::new(
            ErrorKind::Schema,
            format!("{kind}: {field} must be 1 to {MAX_TEXT} bytes"),
        ));
    }
    Ok(value)
}

/// 64 hexadecimal digits.
fn sha256_of(text: &str) -> Result<[u8; 32], DecodeError> {
    let bad = || {
        DecodeError::new(
            ErrorKind::Schema,
            "UPDATE_FIRMWARE: sha256 must be 64 hexadecimal digits",
        )
    };
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
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
            Action::UpdatePrice {
                slot_number,
                new_price: price_of("newPrice", price)?,
            }
        }
        "REBOOT" => Action::Reboot,
        "SET_PLANOGRAM" => {
            let raw_slots = raw.planogram.ok_or_else(|| {
                DecodeError::new(ErrorKind::Schema, "SET_PLANOGRAM needs planogram")
            })?;
            if raw_slots.is_empty() || raw_slots.len() > MAX_PLANOGRAM_SLOTS {
                return Err(DecodeError::new(
                    ErrorKind::Schema,
                    format!("SET_PLANOGRAM: 1 to {MAX_PLANOGRAM_SLOTS} slots"),
                ));
            }
            let mut slots = Vec::with_capacity(raw_slots.len());
            for s in raw_slots {
                if slots
                    .iter()
                    .any(|p: &PlanogramSlot| p.slot_number == s.slot_number)
                {
                    return Err(DecodeError::new(
                        ErrorKind::Schema,
                        format!("SET_PLANOGRAM: slot {} twice", s.slot_number),
                    ));
                }
                slots.push(PlanogramSlot {
                    slot_number: s.slot_number,
                    product_id: text_of("SET_PLANOGRAM", "productId", Some(s.product_id))?,
                    price: price_of("price", s.price)?,
                });
            }
            Action::SetPlanogram { slots }
        }
        "DISPENSE" => {
            let slot_number = raw
                .slot_number
                .ok_or_else(|| DecodeError::new(ErrorKind::Schema, "DISPENSE needs slotNumber"))?;
            let quantity = raw.quantity.unwrap_or(1);
            if !(1..=MAX_DISPENSE_UNITS).contains(&quantity) {
                return Err(DecodeError::new(
                    ErrorKind::Number,
                    format!(
                        "DISPENSE: quantity {quantity} is not between 1 and {MAX_DISPENSE_UNITS}"
                    ),
                ));
            }
            Action::Dispense {
                order_id: text_of("DISPENSE", "orderId", raw.order_id)?,
                slot_number,
                quantity,
            }
        }
        "UPDATE_FIRMWARE" => {
            let url = text_of("UPDATE_FIRMWARE", "url", raw.url)?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(DecodeError::new(
                    ErrorKind::Schema,
                    "UPDATE_FIRMWARE: url must be http:// or https://",
                ));
            }
            Action::UpdateFirmware {
                version: text_of("UPDATE_FIRMWARE", "version", raw.version)?,
                url,
                sha256: sha256_of(&text_of("UPDATE_FIRMWARE", "sha256", raw.sha256)?)?,
            }
        }
        other => {
            return Err(DecodeError::new(
                ErrorKind::UnknownType,
                format!(
                    "unknown command type {other:?}; expected UPDATE_PRICE, REBOOT, SET_PLANOGRAM, DISPENSE or UPDATE_FIRMWARE"
                ),
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
        for line in [
            r#"{"commandId":"c3","machineId":"mach_00001","issuedAt":5,"type":"SET_PLANOGRAM","planogram":[{"slotNumber":1,"productId":"cola","price":2.5},{"slotNumber":148,"productId":"chips","price":1.75}]}"#,
            r#"{"commandId":"c4","machineId":"mach_00001","issuedAt":5,"type":"DISPENSE","orderId":"ord_7","slotNumber":3,"quantity":2}"#,
            r#"{"commandId":"c5","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_FIRMWARE","version":"3.1.0","url":"https://u.example/3.1.0.bin","sha256":"00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff"}"#,
        ] {
            let c = decode_command(line.as_bytes()).expect(line);
            assert_eq!(decode_command(c.to_json().as_bytes()), Ok(c), "{line}");
        }
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
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"SET_PLANOGRAM","planogram":[{"slotNumber":1,"productId":"a","price":1},{"slotNumber":1,"productId":"b","price":1}]}"#,
                ErrorKind::Schema,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"SET_PLANOGRAM","planogram":[]}"#,
                ErrorKind::Schema,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"DISPENSE","orderId":"o","slotNumber":1,"quantity":11}"#,
                ErrorKind::Number,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"DISPENSE","slotNumber":1}"#,
                ErrorKind::Schema,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_FIRMWARE","version":"3","url":"ftp://x","sha256":"00"}"#,
                ErrorKind::Schema,
            ),
            (
                r#"{"commandId":"c","machineId":"mach_00001","issuedAt":5,"type":"UPDATE_FIRMWARE","version":"3","url":"https://x","sha256":"zz"}"#,
                ErrorKind::Schema,
            ),
        ] {
            assert_eq!(
                decode_command(bad.as_bytes()).map_err(|e| e.kind),
                Err(kind),
                "{bad}"
            );
        }
    }
}

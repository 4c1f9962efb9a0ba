//! Telemetry events and the envelope a machine sends.
//!
//! On the wire (JSON, camelCase):
//! ```json
//! {"machineId":"mach_xyz789","events":[{"type":"sale","timestamp":"2024-01-15T10:28:15Z","seq":41,
//!  "payload":{"slotNumber":1,"productId":"prod_cola","amount":2.50,"paymentMethod":"contactless",
//!  "transactionId":"txn_local_12345"}}]}
//! ```
//! or, in JSON Lines, one event per line carrying its own `machineId`.

use serde::{Deserialize, Serialize};

use crate::command::CommandAck;
use crate::dex::DexAudit;
use crate::units::{Cents, MachineId, Milli, Text, Timestamp};

/// One telemetry event of one machine, decoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    pub machine_id: MachineId,
    /// The machine's own clock: event time.
    pub timestamp: Timestamp,
    /// The machine's per-event sequence number, when its firmware numbers events.
    pub seq: Option<u64>,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Heartbeat(Heartbeat),
    Sale(Sale),
    Restock(Restock),
    Error(ErrorEvent),
    Door(DoorStatus),
    /// The machine's answer to a command (see [`crate::command`]).
    CommandAck(CommandAck),
    /// An EVA-DTS / DEX audit the machine read and sent (see [`crate::dex`]); the event's
    /// timestamp is when it was read.
    Dex(Box<DexAudit>),
    /// A payment processor's verdict on a card transaction (a line of its settlement file); the
    /// event's timestamp is the transaction's time, its machine the terminal's machine.
    Settlement(Settlement),
    /// Money the machine gave back (see [`Refund`]).
    Refund(Refund),
    /// Events the machine gave up on (see [`Dropped`]).
    Dropped(Dropped),
}

impl EventKind {
    /// The `type` string on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Heartbeat(_) => "heartbeat",
            EventKind::Sale(_) => "sale",
            EventKind::Restock(_) => "restock",
            EventKind::Error(_) => "error",
            EventKind::Door(_) => "door",
            EventKind::CommandAck(_) => "command_ack",
            EventKind::Dex(_) => "dex",
            EventKind::Settlement(_) => "settlement",
            EventKind::Refund(_) => "refund",
            EventKind::Dropped(_) => "dropped",
        }
    }
}

/// Periodic sensor readings (every 30 s). Every field is optional: a bare heartbeat still proves
/// the machine is alive.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Cabinet temperature in m°C.
    pub temperature: Option<Milli>,
    pub door_status: Option<DoorStatus>,
    /// `ok`, `error`, `offline`, … as the payment module reports it.
    pub payment_module_status: Option<String>,
    /// Signal strength in m-dBm (`-75` dBm is `Milli(-75000)`).
    pub network_signal: Option<Milli>,
    /// Vend motor current in mA.
    pub motor_current: Option<Milli>,
    /// The controller's firmware version and uptime, when it says (boxed: the event stays as
    /// small as a heartbeat without them).
    pub controller: Option<Box<ControllerStatus>>,
}

/// What a controller's heartbeat says of the controller itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// `firmwareVersion`.
    pub firmware_version: Option<Text>,
    /// `uptimeSecs`: seconds since the controller booted.
    pub uptime_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DoorStatus {
    Open,
    Closed,
}

impl DoorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DoorStatus::Open => "open",
            DoorStatus::Closed => "closed",
        }
    }
}

/// One line of a transaction. A cart has several lines (different slots) under one
/// `transaction_id`; a line's identity is `(machine_id, transaction_id, slot_number)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sale {
    /// The machine's own selection / coil code (e.g. 1–30 or 101–148), not an index.
    pub slot_number: u32,
    pub product_id: Text,
    /// Line total.
    pub amount: Cents,
    /// Units vended by this line (default 1).
    pub quantity: u32,
    pub payment_method: Text,
    pub transaction_id: Text,
    /// Authorised by the machine alone while offline (store-and-forward, under the card
    /// terminal's floor limit); the processor may still decline it later.
    pub offline: bool,
}

impl Sale {
    /// Whether the payment went through the card reader (for its error rate).
    pub fn is_card(&self) -> bool {
        matches!(
            self.payment_method.as_str(),
            "card" | "contactless" | "credit" | "debit" | "mobile"
        )
    }
}

/// Money a machine gave back: units of a cart line that were paid for and did not drop (a
/// jam, a power cut mid-cart), or a card approval that came after the customer was told it
/// timed out (voided: `slot_number` is None and `quantity` 0). Its identity is
/// `(machine_id, transaction_id, slot_number, reason)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Refund {
    pub transaction_id: Text,
    pub slot_number: Option<u32>,
    pub amount: Cents,
    pub quantity: u32,
    /// `jam`, `power_loss`, `late_approval`, or the machine's own word.
    pub reason: Text,
}

/// Events a machine removed from its outbox without the platform's acknowledgement: numbers
/// `first_seq..=last_seq` will never arrive. A controller keeps 24 hours of events while it cannot
/// reach the platform; older ones make room, and this declaration (an event of its own, with its
/// own `seq`) says so, so the platform's `sequence_gaps` shows the loss as declared, not unknown.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dropped {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Why, in the machine's words (e.g. `kept_24h`).
    pub reason: Text,
}

/// One line of a payment processor's settlement file: what became of a card transaction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Settlement {
    pub transaction_id: Text,
    /// The amount the processor settled (or declined, or reversed).
    pub amount: Cents,
    pub status: SettlementStatus,
}

/// The processor's verdict on a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SettlementStatus {
    /// Paid to the operator.
    Settled,
    /// Refused by the issuer: the money never came (an offline sale's risk).
    Declined,
    /// Paid, then taken back (a refund or a chargeback).
    Reversed,
}

impl SettlementStatus {
    /// Reads the words processors' files use: `settled`, `approved`, `captured`, `paid`;
    /// `declined`, `failed`, `rejected`, `denied`; `refunded`, `reversed`, `chargeback`.
    pub fn parse(text: &str) -> Option<SettlementStatus> {
        let t = text.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        match t.as_str() {
            "settled" | "approved" | "captured" | "paid" | "success" | "succeeded" => {
                Some(SettlementStatus::Settled)
            }
            "declined" | "failed" | "rejected" | "denied" | "decline" => {
                Some(SettlementStatus::Declined)
            }
            "refunded" | "reversed" | "chargeback" | "charge_back" | "charged_back" | "refund"
            | "reversal" => Some(SettlementStatus::Reversed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SettlementStatus::Settled => "settled",
            SettlementStatus::Declined => "declined",
            SettlementStatus::Reversed => "reversed",
        }
    }
}

/// Units loaded into a slot by a restock visit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Restock {
    pub slot_number: u32,
    pub quantity: u32,
    pub product_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub code: ErrorCode,
    pub message: String,
}

/// Fault codes the firmware reports. Codes this version does not know are kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    CardReadFailure,
    DispenseFailure,
    MotorJam,
    CoolingFailure,
    Other(String),
}

impl ErrorCode {
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "CARD_READ_FAILURE" | "CARD_READER_ERROR" | "PAYMENT_ERROR" => {
                ErrorCode::CardReadFailure
            }
            "DISPENSE_FAILURE" => ErrorCode::DispenseFailure,
            "MOTOR_JAM" | "JAM" => ErrorCode::MotorJam,
            "COOLING_FAILURE" => ErrorCode::CoolingFailure,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::CardReadFailure => "CARD_READ_FAILURE",
            ErrorCode::DispenseFailure => "DISPENSE_FAILURE",
            ErrorCode::MotorJam => "MOTOR_JAM",
            ErrorCode::CoolingFailure => "COOLING_FAILURE",
            ErrorCode::Other(s) => s,
        }
    }
}

/// What a machine sends in one message: its id and a batch of events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub machine_id: MachineId,
    pub events: Vec<Event>,
}

impl Event {
    /// The event's wire form, as one JSON object with its `machineId` (a JSON Lines line).
    pub fn to_json_line(&self) -> String {
        let mut obj = self.body_json();
        if let serde_json::Value::Object(map) = &mut obj {
            map.insert("machineId".into(), self.machine_id.as_str().into());
        }
        obj.to_string()
    }

    /// The event's wire form inside an envelope (no `machineId`).
    pub fn body_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let decimal =
            |m: Milli| -> Value { serde_json::from_str(&m.to_string()).unwrap_or(Value::Null) };
        let payload = match &self.kind {
            EventKind::Heartbeat(h) => {
                let mut p = Map::new();
                if let Some(t) = h.temperature {
                    p.insert("temperature".into(), decimal(t));
                }
                if let Some(d) = h.door_status {
                    p.insert("doorStatus".into(), d.as_str().into());
                }
                if let Some(s) = &h.payment_module_status {
                    p.insert("paymentModuleStatus".into(), s.as_str().into());
                }
                if let Some(s) = h.network_signal {
                    p.insert("networkSignal".into(), decimal(s));
                }
                if let Some(c) = h.motor_current {
                    p.insert("motorCurrent".into(), decimal(c));
                }
                if let Some(c) = &h.controller {
                    if let Some(v) = &c.firmware_version {
                        p.insert("firmwareVersion".into(), v.as_str().into());
                    }
                    if let Some(u) = c.uptime_secs {
                        p.insert("uptimeSecs".into(), u.into());
                    }
                }
                Value::Object(p)
            }
            EventKind::Sale(s) => {
                let mut p = json!({
                    "slotNumber": s.slot_number,
                    "productId": s.product_id,
                    "amount": serde_json::from_str::<Value>(&s.amount.to_string()).unwrap_or(Value::Null),
                    "quantity": s.quantity,
                    "paymentMethod": s.payment_method,
                    "transactionId": s.transaction_id,
                });
                if let (true, Value::Object(map)) = (s.offline, &mut p) {
                    map.insert("offline".into(), true.into());
                }
                p
            }
            EventKind::Settlement(s) => json!({
                "transactionId": s.transaction_id,
                "amount": serde_json::from_str::<Value>(&s.amount.to_string()).unwrap_or(Value::Null),
                "status": s.status.as_str(),
            }),
            EventKind::Refund(r) => {
                let mut p = json!({
                    "transactionId": r.transaction_id,
                    "amount": serde_json::from_str::<Value>(&r.amount.to_string()).unwrap_or(Value::Null),
                    "quantity": r.quantity,
                    "reason": r.reason,
                });
                if let (Some(slot), Value::Object(map)) = (r.slot_number, &mut p) {
                    map.insert("slotNumber".into(), slot.into());
                }
                p
            }
            EventKind::Dropped(d) => json!({
                "firstSeq": d.first_seq,
                "lastSeq": d.last_seq,
                "reason": d.reason,
            }),
            EventKind::Restock(r) => {
                let mut p = json!({"slotNumber": r.slot_number, "quantity": r.quantity});
                if let (Some(id), Value::Object(map)) = (&r.product_id, &mut p) {
                    map.insert("productId".into(), id.as_str().into());
                }
                p
            }
            EventKind::Error(e) => json!({"code": e.code.as_str(), "message": e.message}),
            EventKind::Door(d) => json!({"status": d.as_str()}),
            EventKind::CommandAck(a) => {
                let mut p = json!({"commandId": a.command_id, "status": a.status.as_str()});
                if let (Some(reason), Value::Object(map)) = (&a.reason, &mut p) {
                    map.insert("reason".into(), reason.as_str().into());
                }
                p
            }
            EventKind::Dex(d) => json!({"audit": d.raw}),
        };
        let mut obj = json!({
            "type": self.kind.type_name(),
            "timestamp": self.timestamp.0,
            "payload": payload,
        });
        if let (Some(seq), Value::Object(map)) = (self.seq, &mut obj) {
            map.insert("seq".into(), seq.into());
        }
        obj
    }
}

impl Envelope {
    /// The envelope's wire form.
    pub fn to_json(&self) -> String {
        let events: Vec<serde_json::Value> = self.events.iter().map(Event::body_json).collect();
        serde_json::json!({"machineId": self.machine_id.as_str(), "events": events}).to_string()
    }
}

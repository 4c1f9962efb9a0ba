//! vendflow's wire protocol, defined once.
//!
//! Everything a machine sends and everything the platform knows about the fleet (the registry) is
//! described here, together with the strict decoders that turn bytes into typed values. The firmware
//! encodes with these types and the platform decodes with them; no other crate declares an event
//! struct or parses payload JSON.
//!
//! # Layout
//! - [`units`]: ids, money (integer cents), time (UTC epoch milliseconds) and exact decimals.
//! - [`event`]: telemetry events (heartbeat, sale, restock, error, door) and their envelope.
//! - [`registry`]: machines with their planogram, locations and leases, as registry records.
//! - [`command`]: commands to machines and their acknowledgements.
//! - [`topics`]: the MQTT topics of a machine (telemetry, acks, commands).
//! - [`auth`]: device credentials: envelope signatures (HMAC-SHA256) and token hashes.
//! - [`error`]: why a record was refused ([`DecodeError`], [`ErrorKind`]).
//! - [`decode`]: strict decoding of the envelope, of JSON Lines and of registry files, with a typed
//!   reason for every failure.

pub mod auth;
pub mod command;
pub mod decode;
pub mod dex;
pub mod error;
pub mod event;
pub mod provision;
pub mod registry;
pub mod topics;
pub mod units;

pub use command::{AckStatus, Action, Command, CommandAck, PlanogramSlot};
pub use error::{DecodeError, ErrorKind};
pub use event::{
    ControllerStatus, DoorStatus, Dropped, Envelope, ErrorCode, ErrorEvent, Event, EventKind,
    Heartbeat, Refund, Restock, Sale, Settlement, SettlementStatus,
};
pub use registry::{
    Lease, LeaseEvent, LeaseEventKind, LeaseStatus, Location, LocationType, Machine, MachineStatus,
    RegistryRecord, Slot,
};
pub use units::{Cents, MachineId, Micro, Milli, Text, Timestamp};

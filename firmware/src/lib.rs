//! The machine side of vendflow.
//!
//! The fleet simulator, and its MQTT publisher: seeded, deterministic virtual machines that produce the
//! telemetry a real fleet sends, in the wire protocol of [`vendflow_protocol`], on a simulated
//! clock that can run faster than real time.
//!
//! # Layout
//! - [`fleet`]: the registry of a simulated fleet and the machines' behaviour over time.
//! - [`mqtt`]: simulated machines publishing signed envelopes over real MQTT.

pub mod fleet;
pub mod mqtt;

pub use fleet::{Fault, Fleet, FleetConfig};

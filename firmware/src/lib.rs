//! The machine side of vendflow.
//!
//! For now this is the fleet simulator: seeded, deterministic virtual machines that produce the
//! telemetry a real fleet sends, in the wire protocol of [`vendflow_protocol`], on a simulated
//! clock that can run faster than real time.
//!
//! # Layout
//! - [`fleet`]: the registry of a simulated fleet and the machines' behaviour over time.

pub mod fleet;

pub use fleet::{Fault, Fleet, FleetConfig};

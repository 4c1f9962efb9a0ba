//! The machine side of vendflow.
//!
//! The fleet simulator, and its MQTT publisher: seeded, deterministic virtual machines that produce the
//! telemetry a real fleet sends, in the wire protocol of [`vendflow_protocol`], on a simulated
//! clock that can run faster than real time.
//!
//! # Layout
//! - [`controlled`]: a fleet of controllers: each simulated machine runs the real controller
//!   core and outbox; customers, payments, sensors, outages and power cuts are simulated.
//! - [`fleet`]: the registry of a simulated fleet and the machines' behaviour over time.
//! - [`machine`]: one machine on the host: the controller's core (`vendflow-controller`) with
//!   its outbox in a file, speaking the wire protocol.
//! - [`mqtt`]: simulated machines publishing signed envelopes over real MQTT.
//! - [`publish`]: `vendflow publish`, a fleet publishing its span up to now over MQTT.
//! - [`simulate`]: `vendflow simulate`, a fleet's registry and events written to files.

pub mod controlled;
pub mod device;
pub mod fleet;
pub mod machine;
pub mod mqtt;
pub mod publish;
pub mod simulate;

pub use fleet::{Failure, Fault, Fleet, FleetConfig, Wear};

//! vendflow's sources: where events come from and how they enter the engine.
//!
//! A source reads bytes, decodes them with the protocol crate, splits the results into events and
//! error records (nothing is dropped), picks the ingestion time from its own clock, and hands
//! batches to the engine's feeders.
//!
//! # Layout
//! - [`file`]: JSON Lines files (replay of recorded telemetry) and registry fixture files.
//! - [`auth`]: device credentials file, signature and replay checks (bridge and HTTPS), and
//!   `vendflow device register|revoke`.
//! - [`bridge`]: MQTT → Kafka, acknowledged to MQTT only once Kafka has the message (and the
//!   options of `vendflow bridge`).
//! - [`gateway`]: what the bridge's MQTT and HTTP doors share (counters, pending commands).
//! - [`http`]: `POST /api/telemetry` (axum), into the same topics as the bridge.
//! - [`import`]: operators' sales exports (CSV with a column mapping) into sale events (and the
//!   options of `vendflow import`).
//! - `intake`: what every source does with a message once read: split into events and
//!   counted error records, and shown to the archive's tap at its position.
//! - [`kafka`]: topics, client settings, the Kafka source of the dataflows, and the options of
//!   `vendflow command` and `vendflow registry load`.
//! - [`maintenance`]: `vendflow maintenance train`: a simulated history with known failures
//!   through the engine, the failure model of `maintenance_candidates` fitted and scored.
//! - [`mqtt`]: the MQTT source (embedded mode, no Kafka) and the embedded broker of the demo.
//! - [`registry`]: the registry log (upserts by key), on Kafka or straight into the engine.
//! - [`server`]: a network server on a runtime of its own, stopped and joined on request.

pub mod auth;
pub mod bridge;
pub mod file;
pub mod gateway;
pub mod http;
pub mod import;
mod intake;
pub mod kafka;
pub mod maintenance;
pub mod mqtt;
pub mod registry;
pub mod server;

/// Where a record was read: its stream (a Kafka topic partition, one run of an MQTT source) and
/// its position in it, with the ingestion time it was given.
#[derive(Clone, Copy, Debug)]
pub struct Position<'a> {
    pub stream: &'a str,
    pub offset: i64,
    pub received_at: vendflow_protocol::Timestamp,
}

/// Sees every record a source reads, with its position, the events it carried and what was
/// refused in it: how the Parquet archive receives raw events exactly once per position. Called
/// on the source's thread, in order per stream; it may block (backpressure).
pub type Tap = std::sync::Arc<
    dyn Fn(Position<'_>, &[vendflow_protocol::Event], &[vendflow_dataflows::ErrorRecord])
        + Send
        + Sync,
>;

/// What a source has taken in, under the same names on every source: messages read, events
/// decoded from them, and records refused (each one became an error record).
#[derive(Default, Debug)]
pub struct Counters {
    pub messages: std::sync::atomic::AtomicU64,
    pub events: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub fn read(&self) -> Counts {
        use std::sync::atomic::Ordering::Relaxed;
        Counts {
            messages: self.messages.load(Relaxed),
            events: self.events.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// [`Counters`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    pub events: u64,
    pub refused: u64,
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the engine stopped before the source finished")]
    EngineStopped(#[from] vendflow_dataflows::EngineError),
    #[error("a reader thread failed: {0}")]
    Thread(String),
}

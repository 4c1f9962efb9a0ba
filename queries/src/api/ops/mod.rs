//! Operations: what a running service says about itself.
//!
//! - `pipeline`: the [`Health`] of the parts around the engine (source, lag, archive), as the
//!   service reports them.
//! - `health`: `GET /health`, every part's status (503 when one is not ok).
//! - `metrics`: `GET /metrics`, Prometheus text.
//! - `openapi`: the OpenAPI document, generated from the handlers (`GET /api/openapi.json`).

pub(in crate::api) mod health;
pub(in crate::api) mod metrics;
pub(in crate::api) mod openapi;
mod pipeline;

pub(in crate::api) use openapi::ApiDoc;
pub use openapi::openapi;
pub use pipeline::{
    ArchiveCounters, CheckpointCounters, EngineOnly, Health, LagReading, LatestCheckpoint,
    Pipeline, SourceCounters,
};

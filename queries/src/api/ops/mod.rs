//! Operations: what a running service says about itself.
//!
//! - `pipeline`: the [`Health`] of the parts around the engine (source, lag, archive), as the
//!   service reports them.
//! - `health`: `GET /health`, every part's status (503 when one is not ok).
//! - `metrics`: `GET /metrics`, Prometheus text.
//! - `openapi`: the OpenAPI document of every route (`GET /api/openapi.json`).

mod health;
mod metrics;
mod openapi;
mod pipeline;

pub(in crate::api) use health::health;
pub(in crate::api) use metrics::metrics;
pub use openapi::openapi;
pub(in crate::api) use openapi::openapi_json;
pub use pipeline::{ArchiveCounters, EngineOnly, Health, LagReading, Pipeline, SourceCounters};

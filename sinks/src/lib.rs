//! Where vendflow's views and events go when they leave the engine.
//!
//! # Layout
//! - [`csv`]: one CSV file per view from a consistent snapshot (what `vendflow replay` writes).
//! - [`archive`]: the Parquet archive — raw events and rejected records by date and hour, view
//!   snapshots and per-day history, written exactly once per input position.
//! - [`rows`]: the archive's row shapes as Arrow schemas.
//! - [`files`]: Parquet files written whole (temporary name, rename) and Hive partition names.
//! - [`export`]: copies a date range of the archive for the data team, with a manifest
//!   (`vendflow export`, whose options it declares).

pub mod archive;
pub mod csv;
pub mod export;
pub mod files;
pub mod rows;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode {view}: {message}")]
    Encode { view: String, message: String },
    #[error("{path} is damaged: {message}")]
    Corrupt { path: String, message: String },
    #[error("the archive is closed")]
    Closed,
    #[error("cannot flush the archive: {0}")]
    Flush(#[source] Box<SinkError>),
    #[error("{0}")]
    Invalid(String),
}

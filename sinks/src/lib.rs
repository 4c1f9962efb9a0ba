//! Where vendflow's views go when they leave the engine.
//!
//! # Layout
//! - [`csv`]: one CSV file per view from a consistent snapshot (what `vendflow replay` writes).

pub mod csv;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode view {view}: {message}")]
    Encode { view: String, message: String },
}

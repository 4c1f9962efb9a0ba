//! Why a record was refused: a coarse [`ErrorKind`] to count and route on, and a message for
//! whoever sent it. Shared by every decoder (events, envelopes, registry records, commands).

/// Why a record was refused, coarse enough to count and route on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// Not JSON at all, or truncated.
    Syntax,
    /// JSON, but a field is missing or has the wrong type.
    Schema,
    /// An event `type` this protocol does not know.
    UnknownType,
    /// A timestamp that is not RFC 3339 / epoch milliseconds, or is out of range.
    Timestamp,
    /// A number that is not a valid decimal for its field (money with sub-cent digits, …).
    Number,
    /// A malformed machine id.
    MachineId,
    /// The machine id of an event disagrees with its envelope (or topic).
    MachineMismatch,
    /// Larger than the configured limit.
    TooLarge,
    /// Not signed, badly signed, stale or replayed (device credentials).
    Unauthenticated,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Schema => "schema",
            ErrorKind::UnknownType => "unknown_type",
            ErrorKind::Timestamp => "timestamp",
            ErrorKind::Number => "number",
            ErrorKind::MachineId => "machine_id",
            ErrorKind::MachineMismatch => "machine_mismatch",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unauthenticated => "unauthenticated",
        }
    }
}

/// A refused record: what kind of problem, and a message for whoever sent it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DecodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DecodeError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn json(e: serde_json::Error) -> Self {
        let kind = match e.classify() {
            serde_json::error::Category::Data => ErrorKind::Schema,
            _ => ErrorKind::Syntax,
        };
        DecodeError::new(kind, e.to_string())
    }

    pub(crate) fn in_event(self, index: usize) -> Self {
        DecodeError {
            kind: self.kind,
            message: format!("event {index}: {}", self.message),
        }
    }
}

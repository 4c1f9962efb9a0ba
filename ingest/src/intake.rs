//! What every source does with a message its transport has read, written once: its decoded
//! events go into the batch, each failure becomes an error record (counted, logged, kept with
//! the raw bytes for whoever sent it), and the archive's tap sees the message's events and
//! errors at its position. The transport decides only what a message is, where it sits and what
//! time it is ingested at. Telemetry sources take machines' events only: a `settlement` line
//! (the payment processor's) is refused here and loaded with `vendflow import settlement`,
//! whose converted file the file source replays ([`Intake::trusting_settlements`]).

use std::sync::atomic::Ordering::Relaxed;

use vendflow_dataflows::{Batch, ErrorRecord};
use vendflow_protocol::{DecodeError, ErrorKind, Event, EventKind};

use crate::{Counters, Position, Tap};

/// A source's counters and tap.
#[derive(Clone, Copy)]
pub(crate) struct Intake<'a> {
    counters: &'a Counters,
    tap: Option<&'a Tap>,
    /// Whether `settlement` lines are taken (a file the operator replays) or refused (a
    /// machine's telemetry).
    settlements: bool,
}

/// One message being taken in.
pub(crate) struct Message<'a> {
    /// Where it came from, for its error records: `kafka:<topic>/<partition>@<offset>`,
    /// `mqtt:<topic>`, `replay:<file>:<line>` (formatted only when a record is refused).
    pub source: &'a dyn std::fmt::Display,
    /// Its stream, offset and ingestion time (the tap's position).
    pub at: Position<'a>,
    pub raw: &'a [u8],
    /// The time its error records carry: its ingestion time, unless the source knows better
    /// ([`Message::refused_at`]).
    refused_at: vendflow_protocol::Timestamp,
    /// Where its records begin in the batch.
    marks: (usize, usize),
}

impl Message<'_> {
    /// Error records of this message carry `at` instead of its ingestion time (a bulk replay's
    /// clock steps by the hour; where in the file's time a bad line was read is finer).
    pub fn refused_at(mut self, at: vendflow_protocol::Timestamp) -> Self {
        self.refused_at = at;
        self
    }
}

impl<'a> Intake<'a> {
    pub fn new(counters: &'a Counters, tap: Option<&'a Tap>) -> Intake<'a> {
        Intake {
            counters,
            tap,
            settlements: false,
        }
    }

    /// Takes `settlement` lines as events: a file the operator replays (`vendflow import
    /// settlement` writes the processor's lines as one), not a machine's telemetry.
    pub fn trusting_settlements(self) -> Intake<'a> {
        Intake {
            settlements: true,
            ..self
        }
    }

    /// Starts a message whose records will go into `batch` (counted as one message).
    pub fn begin<'m>(
        &self,
        batch: &Batch,
        source: &'m dyn std::fmt::Display,
        at: Position<'m>,
        raw: &'m [u8],
    ) -> Message<'m> {
        self.counters.messages.fetch_add(1, Relaxed);
        Message {
            source,
            at,
            raw,
            refused_at: at.received_at,
            marks: (batch.events.len(), batch.errors.len()),
        }
    }

    /// The message's decoded `results`: events into `batch`, each failure refused.
    pub fn decoded(
        &self,
        batch: &mut Batch,
        message: &Message<'_>,
        results: impl IntoIterator<Item = Result<Event, DecodeError>>,
    ) {
        for result in results {
            self.take(batch, message, result);
        }
    }

    /// One decoded result of the message: an event into `batch`, or a failure refused.
    pub fn take(
        &self,
        batch: &mut Batch,
        message: &Message<'_>,
        result: Result<Event, DecodeError>,
    ) {
        match result {
            // A processor's verdict is not a machine's to give: sources of telemetry (MQTT,
            // the Kafka topic the bridge fills) refuse it.
            Ok(event) if !self.settlements && matches!(event.kind, EventKind::Settlement(_)) => self.refuse(
                batch,
                message,
                &DecodeError::new(
                    ErrorKind::Schema,
                    "a machine cannot send settlement lines; they come from the payment processor (vendflow import settlement)",
                ),
            ),
            Ok(event) => {
                self.counters.events.fetch_add(1, Relaxed);
                batch.events.push(event);
            }
            Err(e) => self.refuse(batch, message, &e),
        }
    }

    /// A record of the message refused: an error record with its reason and raw bytes.
    pub fn refuse(&self, batch: &mut Batch, message: &Message<'_>, e: &DecodeError) {
        self.counters.refused.fetch_add(1, Relaxed);
        let source = message.source.to_string();
        tracing::warn!(source, kind = e.kind.as_str(), error = %e, "refused a record");
        batch
            .errors
            .push(ErrorRecord::new(message.refused_at, source, e, message.raw));
    }

    /// The message is done: the tap sees its events and errors at its position.
    pub fn end(&self, batch: &Batch, message: Message<'_>) {
        if let Some(tap) = self.tap {
            let (events, errors) = message.marks;
            tap(message.at, &batch.events[events..], &batch.errors[errors..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vendflow_protocol::Timestamp;
    use vendflow_protocol::decode::decode_line;

    use super::*;

    #[test]
    fn a_message_splits_into_events_and_counted_error_records_and_the_tap_sees_only_it() {
        let counters = Counters::default();
        let seen: Arc<Mutex<Vec<(i64, usize, usize)>>> = Arc::default();
        let tap: Tap = {
            let seen = seen.clone();
            Arc::new(
                move |at: Position<'_>, events: &[Event], errors: &[ErrorRecord]| {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push((
                        at.offset,
                        events.len(),
                        errors.len(),
                    ));
                },
            )
        };
        let intake = Intake::new(&counters, Some(&tap));
        let mut batch = Batch::default();
        let at = |offset| Position {
            stream: "t/0",
            offset,
            received_at: Timestamp(1_000),
        };
        for (offset, raw) in [
            (
                7,
                br#"{"machineId":"m1","type":"heartbeat","timestamp":1705305600000,"payload":{}}"#
                    .as_slice(),
            ),
            (8, b"{not json".as_slice()),
            (
                9,
                br#"{"machineId":"m1","type":"settlement","timestamp":1705305600000,"payload":{"transactionId":"t","amount":1,"status":"declined"}}"#
                    .as_slice(),
            ),
        ] {
            let message = intake.begin(&batch, &"kafka:t/0", at(offset), raw);
            intake.decoded(&mut batch, &message, decode_line(raw));
            intake.end(&batch, message);
        }
        assert_eq!((batch.events.len(), batch.errors.len()), (1, 2));
        assert_eq!(batch.errors[0].source, "kafka:t/0");
        assert!(
            batch.errors[1].message.contains("settlement"),
            "a machine cannot settle its own sales: {:?}",
            batch.errors[1]
        );
        assert_eq!(
            counters.read(),
            crate::Counts {
                messages: 3,
                events: 1,
                refused: 2
            }
        );
        assert_eq!(
            *seen.lock().unwrap_or_else(|e| e.into_inner()),
            vec![(7, 1, 0), (8, 0, 1), (9, 0, 1)],
            "the tap sees each message's own records"
        );
    }
}

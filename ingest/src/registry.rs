//! The registry log: locations, machines, leases and lease events, with one semantics on every
//! path. A record replaces the record with the same key ([`RegistryRecord::key`]): an upsert.
//! A delete names a key and removes its record: on Kafka a tombstone (the key with no payload),
//! as in any compacted upsert log.
//!
//! Writers append records to a [`RegistryLog`]: on Kafka, to `fleet-commands` (through one
//! producer kept for the process's lifetime), from which the Kafka source applies them; in the
//! embedded mode (the demo, tests), straight to the engine. Either way the records reach the
//! engine through [`Keyed::upsert`], which turns an upsert into the retraction of the record it
//! replaces and the new record, so both paths give the dataflows the same changes.

use std::collections::HashMap;
use std::sync::Mutex;

use vendflow_dataflows::{Batch, Feeder, Time};
use vendflow_protocol::RegistryRecord;

use crate::kafka::{FLEET_COMMANDS_TOPIC, KafkaError, Producer};

/// The registry as the engine has it, by key: what an upsert replaces.
#[derive(Default)]
pub struct Keyed {
    records: HashMap<String, RegistryRecord>,
}

impl Keyed {
    /// Takes `record` in, pushing the engine's changes onto `out`: the record it replaces
    /// (`-1`) and itself (`+1`); nothing when it is already there.
    pub fn upsert(&mut self, record: RegistryRecord, out: &mut Vec<(RegistryRecord, isize)>) {
        match self.records.insert(record.key(), record.clone()) {
            Some(old) if old == record => {}
            Some(old) => {
                out.push((old, -1));
                out.push((record, 1));
            }
            None => out.push((record, 1)),
        }
    }

    /// Removes the record under `key`, pushing its retraction onto `out`; returns it (None, and
    /// no change, when there is none).
    pub fn delete(
        &mut self,
        key: &str,
        out: &mut Vec<(RegistryRecord, isize)>,
    ) -> Option<RegistryRecord> {
        let old = self.records.remove(key)?;
        out.push((old.clone(), -1));
        Some(old)
    }
}

/// One change read from the registry log.
#[derive(Clone, Copy, Debug)]
pub enum RegistryChange<'a> {
    /// The record replaces the one with its key.
    Upsert(&'a RegistryRecord),
    /// The record under this key ([`RegistryRecord::key`]) is removed.
    Delete(&'a str),
}

/// Why a registry write did not land.
#[derive(Debug, thiserror::Error)]
pub enum RegistryLogError {
    /// Kafka did not take the records (retryable).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The engine has stopped (the service is shutting down).
    #[error(transparent)]
    Engine(#[from] vendflow_dataflows::EngineError),
}

/// Where registry records are appended.
pub enum RegistryLog {
    /// `fleet-commands` on Kafka.
    Kafka(Producer),
    /// Straight into the engine through one worker's input.
    Embedded(Mutex<(Keyed, Feeder)>),
}

impl RegistryLog {
    /// A log on `fleet-commands` of `brokers`, through one producer.
    pub fn kafka(brokers: &str) -> Result<RegistryLog, KafkaError> {
        Ok(RegistryLog::Kafka(Producer::new(brokers)?))
    }

    /// A log applied straight to the engine through `feeder`.
    pub fn embedded(feeder: Feeder) -> RegistryLog {
        RegistryLog::Embedded(Mutex::new((Keyed::default(), feeder)))
    }

    /// Deletes the records under `keys` ([`RegistryRecord::key`]) and returns once the log has
    /// the deletes: tombstones acknowledged by Kafka, or retractions handed to the engine.
    pub fn delete(&self, keys: &[String]) -> Result<(), RegistryLogError> {
        let changes: Vec<(String, Option<&RegistryRecord>)> =
            keys.iter().map(|k| (k.clone(), None)).collect();
        self.write(Time::EPOCH, &changes)
    }

    /// Appends `records` (upserts) and returns once the log has them: acknowledged by Kafka, or
    /// handed to the engine.
    pub fn append(&self, records: &[RegistryRecord]) -> Result<(), RegistryLogError> {
        self.append_at(Time::EPOCH, records)
    }

    /// [`RegistryLog::append`], at ingestion time `at` or later (embedded: the time of the
    /// initial registry of a simulated fleet; Kafka stamps records itself).
    pub fn append_at(&self, at: Time, records: &[RegistryRecord]) -> Result<(), RegistryLogError> {
        let changes: Vec<(String, Option<&RegistryRecord>)> =
            records.iter().map(|r| (r.key(), Some(r))).collect();
        self.write(at, &changes)
    }

    /// Writes upserts (a key and its record) and deletes (a key alone), in order.
    fn write(
        &self,
        at: Time,
        changes: &[(String, Option<&RegistryRecord>)],
    ) -> Result<(), RegistryLogError> {
        if changes.is_empty() {
            return Ok(());
        }
        match self {
            RegistryLog::Kafka(producer) => {
                let lines: Vec<Option<String>> = changes
                    .iter()
                    .map(|(_, r)| r.map(RegistryRecord::to_json_line))
                    .collect();
                let keyed: Vec<(String, Option<&str>)> = changes
                    .iter()
                    .zip(&lines)
                    .map(|((key, _), line)| (key.clone(), line.as_deref()))
                    .collect();
                blocking(|| producer.send_keyed(FLEET_COMMANDS_TOPIC, &keyed))?;
            }
            RegistryLog::Embedded(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                let (keyed, feeder) = &mut *state;
                let mut out = Vec::with_capacity(changes.len() * 2);
                for (key, record) in changes {
                    match record {
                        Some(record) => keyed.upsert((*record).clone(), &mut out),
                        None => {
                            keyed.delete(key, &mut out);
                        }
                    }
                }
                let time = feeder.time().max(at);
                feeder.send(
                    time,
                    Batch {
                        registry: out,
                        ..Batch::default()
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Runs blocking `work` from any thread. Inside a multi-threaded tokio runtime (an HTTP
/// handler), through `block_in_place`: the runtime's other tasks keep running, and `work` may
/// wait on a runtime of its own (the producer's), which is refused from a runtime's thread.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(id: &str, address: &str) -> RegistryRecord {
        let line = format!(
            r#"{{"type":"location","locationId":"{id}","clientId":"c","address":"{address}","lat":1,"lng":2,"locationType":"office"}}"#
        );
        vendflow_protocol::decode::decode_registry(line.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_upsert_retracts_what_it_replaces_once() {
        let mut keyed = Keyed::default();
        let mut out = Vec::new();
        keyed.upsert(location("l1", "1 Main St"), &mut out);
        keyed.upsert(location("l1", "1 Main St"), &mut out);
        assert_eq!(
            out,
            vec![(location("l1", "1 Main St"), 1)],
            "the same record again changes nothing"
        );
        out.clear();
        keyed.upsert(location("l1", "2 Main St"), &mut out);
        assert_eq!(
            out,
            vec![
                (location("l1", "1 Main St"), -1),
                (location("l1", "2 Main St"), 1)
            ]
        );
    }

    #[test]
    fn a_delete_retracts_the_record_under_its_key_once() {
        let mut keyed = Keyed::default();
        let mut out = Vec::new();
        keyed.upsert(location("l1", "1 Main St"), &mut out);
        keyed.upsert(location("l2", "2 Main St"), &mut out);
        out.clear();
        let key = location("l1", "1 Main St").key();
        assert_eq!(
            keyed.delete(&key, &mut out),
            Some(location("l1", "1 Main St"))
        );
        assert_eq!(keyed.delete(&key, &mut out), None, "deleted once");
        assert_eq!(keyed.delete("location/nowhere", &mut out), None);
        assert_eq!(out, vec![(location("l1", "1 Main St"), -1)]);
        // Registered again after the delete: a new record, not a replacement.
        out.clear();
        keyed.upsert(location("l1", "3 Main St"), &mut out);
        assert_eq!(out, vec![(location("l1", "3 Main St"), 1)]);
    }

    /// An HTTP handler appends on a runtime thread; the Kafka producer waits on a runtime of
    /// its own, which tokio refuses there unless the wait goes through `block_in_place`.
    #[test]
    fn blocking_work_may_wait_on_its_own_runtime_from_a_handler() {
        let outer = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = outer.block_on(async {
            tokio::spawn(async {
                blocking(|| {
                    let inner = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap_or_else(|e| panic!("{e}"));
                    inner.block_on(async { 42 })
                })
            })
            .await
        });
        assert_eq!(answer.ok(), Some(42));
    }
}

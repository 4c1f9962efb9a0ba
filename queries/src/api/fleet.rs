//! The registry as the REST API keeps it: locations, machines, leases and lease events by key.
//!
//! The API validates a change against this copy, then appends the changed records (upserts) to
//! the registry log ([`vendflow_ingest::registry::RegistryLog`]): straight to the engine in the
//! embedded demo, through `fleet-commands` with Kafka. Records that arrive from elsewhere
//! (a `vendflow registry load`, another API instance, this one's own writes read back from
//! Kafka) are [`Fleet::observe`]d, so the copy follows the log of record. Deletes (a machine
//! taken out of service, a location closed) go the same way, by key. All writes go
//! through one lock, so two requests cannot both pass a check that only one may pass (two
//! leases overlapping on one machine).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vendflow_ingest::registry::{RegistryChange, RegistryLog, RegistryLogError};
use vendflow_protocol::{Lease, LeaseEvent, Location, Machine, RegistryRecord};

use crate::sql::Owners;

#[derive(Default)]
pub struct Registry {
    pub locations: BTreeMap<String, Location>,
    pub machines: BTreeMap<String, Machine>,
    pub leases: BTreeMap<String, Lease>,
    /// Per lease, its events in time order.
    pub lease_events: HashMap<String, Vec<LeaseEvent>>,
    /// Serial number → machine id (serial numbers are unique).
    pub serials: HashMap<String, String>,
}

impl Registry {
    /// The record currently stored under `record`'s key.
    fn current(&self, record: &RegistryRecord) -> Option<RegistryRecord> {
        match record {
            RegistryRecord::Location(l) => self
                .locations
                .get(&l.location_id)
                .cloned()
                .map(RegistryRecord::Location),
            RegistryRecord::Machine(m) => self
                .machines
                .get(m.machine_id.as_str())
                .cloned()
                .map(RegistryRecord::Machine),
            RegistryRecord::Lease(l) => self
                .leases
                .get(&l.lease_id)
                .cloned()
                .map(RegistryRecord::Lease),
            RegistryRecord::LeaseEvent(e) => self
                .lease_events
                .get(&e.lease_id)
                .and_then(|events| events.iter().find(|x| *x == e))
                .cloned()
                .map(RegistryRecord::LeaseEvent),
        }
    }

    fn store(&mut self, record: RegistryRecord) {
        match record {
            RegistryRecord::Location(l) => {
                self.locations.insert(l.location_id.clone(), l);
            }
            RegistryRecord::Machine(m) => {
                if let Some(old) = self.machines.get(m.machine_id.as_str()) {
                    self.serials.remove(&old.serial_number);
                }
                if !m.serial_number.is_empty() {
                    self.serials
                        .insert(m.serial_number.clone(), m.machine_id.as_str().to_owned());
                }
                self.machines.insert(m.machine_id.as_str().to_owned(), m);
            }
            RegistryRecord::Lease(l) => {
                self.leases.insert(l.lease_id.clone(), l);
            }
            RegistryRecord::LeaseEvent(e) => {
                let events = self.lease_events.entry(e.lease_id.clone()).or_default();
                if !events.contains(&e) {
                    events.push(e);
                    events.sort_by_key(|e| (e.at, e.kind));
                }
            }
        }
    }

    /// Removes the record under `key` ([`RegistryRecord::key`]); true if there was one.
    fn remove(&mut self, key: &str) -> bool {
        let Some((kind, id)) = key.split_once('/') else {
            return false;
        };
        match kind {
            "location" => self.locations.remove(id).is_some(),
            "machine" => match self.machines.remove(id) {
                Some(m) => {
                    self.serials.remove(&m.serial_number);
                    true
                }
                None => false,
            },
            "lease" => self.leases.remove(id).is_some(),
            "lease_event" => {
                let Some(lease) = id.split('/').next() else {
                    return false;
                };
                let Some(events) = self.lease_events.get_mut(lease) else {
                    return false;
                };
                let before = events.len();
                events.retain(|e| RegistryRecord::LeaseEvent(e.clone()).key() != key);
                before != events.len()
            }
            _ => false,
        }
    }

    /// The client a machine belongs to: its location's.
    pub fn machine_client(&self, machine_id: &str) -> Option<&str> {
        let location = self.machines.get(machine_id)?.location_id.as_deref()?;
        self.locations.get(location).map(|l| l.client_id.as_str())
    }
}

/// The registry behind a lock, and the log its changes go to.
pub struct Fleet {
    registry: RwLock<Registry>,
    log: Option<Arc<RegistryLog>>,
}

impl Fleet {
    pub fn new(log: Arc<RegistryLog>) -> Fleet {
        Fleet {
            registry: RwLock::new(Registry::default()),
            log: Some(log),
        }
    }

    /// A fleet whose changes go nowhere but this copy (tests of the API alone).
    pub fn detached() -> Fleet {
        Fleet {
            registry: RwLock::new(Registry::default()),
            log: None,
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry for a change: hold it across the check and [`Fleet::commit`].
    pub fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a change read from the log (the same upsert again, or a delete of a key
    /// already gone, changes nothing).
    pub fn observe(&self, change: RegistryChange<'_>) {
        match change {
            RegistryChange::Upsert(record) => self.write().store(record.clone()),
            RegistryChange::Delete(key) => {
                self.write().remove(key);
            }
        }
    }

    /// Deletes the records under `keys` from the log, then from this copy. Nothing is removed
    /// if the log refuses the deletes.
    pub fn delete(
        &self,
        registry: &mut Registry,
        keys: Vec<String>,
    ) -> Result<(), RegistryLogError> {
        if let Some(log) = &self.log {
            log.delete(&keys)?;
        }
        for key in keys {
            registry.remove(&key);
        }
        Ok(())
    }

    /// Appends the `records` that change something (each replacing the record with its key) to
    /// the log and stores them. Nothing is stored if the log refuses them.
    pub fn commit(
        &self,
        registry: &mut Registry,
        records: Vec<RegistryRecord>,
    ) -> Result<(), RegistryLogError> {
        let changed: Vec<RegistryRecord> = records
            .into_iter()
            .filter(|r| registry.current(r).as_ref() != Some(r))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if let Some(log) = &self.log {
            log.append(&changed)?;
        }
        for record in changed {
            registry.store(record);
        }
        Ok(())
    }
}

impl Owners for Fleet {
    fn machine_of(&self, machine_id: &str, client: &str) -> bool {
        self.read().machine_client(machine_id) == Some(client)
    }

    fn location_of(&self, location_id: &str, client: &str) -> bool {
        self.read()
            .locations
            .get(location_id)
            .is_some_and(|l| l.client_id == client)
    }
}

/// One client's machines and locations, copied out of the registry: filtering many rows then
/// takes no lock per row.
pub struct ClientAssets {
    pub client: String,
    pub machines: HashSet<String>,
    pub locations: HashSet<String>,
}

impl ClientAssets {
    pub fn of(fleet: &Fleet, client: &str) -> ClientAssets {
        let r = fleet.read();
        ClientAssets {
            client: client.to_owned(),
            machines: r
                .machines
                .keys()
                .filter(|m| r.machine_client(m) == Some(client))
                .cloned()
                .collect(),
            locations: r
                .locations
                .values()
                .filter(|l| l.client_id == client)
                .map(|l| l.location_id.clone())
                .collect(),
        }
    }
}

impl Owners for ClientAssets {
    fn machine_of(&self, machine_id: &str, client: &str) -> bool {
        client == self.client && self.machines.contains(machine_id)
    }

    fn location_of(&self, location_id: &str, client: &str) -> bool {
        client == self.client && self.locations.contains(location_id)
    }
}

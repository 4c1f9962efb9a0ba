//! Every event counts once: the identity of an event, and `event_duplicates`.
//!
//! Machines deliver at least once (a buffer re-sent after a lost acknowledgement, a bridge that
//! retries), so any event can arrive twice. Sale lines have their own identity and dedup
//! ([`crate::sales`]); every other event is identified by the machine's `seq` when its firmware
//! numbers events, and otherwise by a fingerprint of its content (event time and payload: a
//! machine does not emit the same reading twice in the same millisecond). Each view that *counts*
//! events drops a second delivery where it keeps the first one's state:
//! - `anomaly_windows`: each window keeps the identities of its heartbeats, door and error
//!   events for as long as the window itself (its retention), a few per window;
//! - `inventory`: each machine keeps the identities of its restocks for
//!   [`Config::restock_dedup_days`](crate::config::Config::restock_dedup_days) (35) of event time (a restock
//!   re-sent within that time is dropped; restocks are a few a week, so this is small, and a
//!   machine's list is trimmed whenever it restocks again).
//!
//! The other views are idempotent in their events: liveness keeps the newest heartbeat, the
//! days observed are a set, a command's first acknowledgement wins, a DEX audit is a reading
//! of counters, and settlement lines are matched per transaction.
//!
//! ```sql
//! -- event_duplicates
//! SELECT machine_id, kind, count(*) AS duplicates FROM deliveries
//! WHERE kind <> 'sale' AND NOT first_delivery GROUP BY 1, 2
//! ```

use vendflow_protocol::{Event, MachineId};

use crate::operators::hash_of;
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col};

pub const EVENT_DUPLICATES: ViewDef = ViewDef {
    name: "event_duplicates",
    description: "re-delivered heartbeat, door, error and restock events dropped, per machine and kind (each event counts once)",
    columns: &[
        col("machine_id", Text),
        col("kind", Text),
        col("duplicates", Int),
    ],
};

/// An event's identity within its machine: `seq` when the firmware numbers its events, else a
/// 64-bit fingerprint of its time and payload. Never 0 (0 marks "no identity to check").
pub fn identity(event: &Event) -> u64 {
    let id = match event.seq {
        Some(seq) => hash_of(&(0u8, seq)),
        None => hash_of(&(1u8, event.timestamp, &event.kind)),
    };
    id.max(1)
}

/// A small set of identities (a window's events, a machine's recent restocks), sorted. The
/// first four live inline: a window holds a few heartbeats, and a heap vector per window,
/// grown one id at a time, cost an allocation and a few reallocations for every window.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen(smallvec::SmallVec<[u64; 4]>);

impl Seen {
    pub fn contains(&self, id: u64) -> bool {
        id != 0 && self.0.binary_search(&id).is_ok()
    }

    /// The identities, in ascending order.
    pub fn ids(&self) -> &[u64] {
        &self.0
    }

    /// Adds `id`; false if it was there (a duplicate). 0 is never recorded and always new.
    pub fn insert(&mut self, id: u64) -> bool {
        if id == 0 {
            return true;
        }
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, id);
                true
            }
        }
    }
}

pub fn row(((machine, kind), n): ((MachineId, String), isize)) -> Row {
    Row::from([
        Value::text(machine.as_str()),
        Value::text(kind),
        Value::Int(n as i64),
    ])
}

#[cfg(test)]
mod tests {
    use vendflow_protocol::{DoorStatus, EventKind, Timestamp};

    use super::*;
    use crate::testing;

    fn door(at: i64, seq: Option<u64>) -> Event {
        Event {
            machine_id: testing::machine("m1"),
            timestamp: Timestamp(at),
            seq,
            kind: EventKind::Door(DoorStatus::Open),
        }
    }

    #[test]
    fn a_redelivery_has_the_same_identity_and_a_numbered_twin_does_not() {
        assert_eq!(identity(&door(5, None)), identity(&door(5, None)));
        assert_ne!(identity(&door(5, None)), identity(&door(6, None)));
        // Two door openings in the same millisecond are two events when the firmware numbers
        // them, and a re-delivery of either repeats its number.
        assert_ne!(identity(&door(5, Some(1))), identity(&door(5, Some(2))));
        assert_eq!(identity(&door(5, Some(2))), identity(&door(9, Some(2))));
        let mut seen = Seen::default();
        assert!(seen.insert(identity(&door(5, None))));
        assert!(!seen.insert(identity(&door(5, None))));
        assert!(seen.insert(0) && seen.insert(0));
    }

    /// Every kind is re-delivered in the random streams (with its first delivery, minutes,
    /// hours and days later); each delivery after the first, while its window lives (or its
    /// restock is remembered), is one duplicate.
    #[test]
    fn event_duplicates_match_the_oracle_on_random_streams() {
        use std::collections::{BTreeMap, BTreeSet};
        use vendflow_protocol::units::MS_PER_DAY;
        let mut kinds = BTreeSet::new();
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let config = &scenario.config;
            let mut windows = BTreeSet::new();
            let mut restocks: BTreeMap<_, i64> = BTreeMap::new();
            let mut duplicates: BTreeMap<(MachineId, &str), i64> = BTreeMap::new();
            for (t, e) in &scenario.deliveries {
                let t = t.ms();
                let identity = crate::testing::naive_identity(e);
                let kind = match &e.kind {
                    EventKind::Heartbeat(_) => "heartbeat",
                    EventKind::Door(DoorStatus::Open) => "door",
                    EventKind::Error(_) => "error",
                    EventKind::Restock(_) => {
                        if restocks.get(&identity).is_some_and(|until| *until > t) {
                            *duplicates
                                .entry((e.machine_id.clone(), "restock"))
                                .or_default() += 1;
                        } else {
                            restocks.insert(
                                identity,
                                e.timestamp.0 + config.restock_dedup_days * MS_PER_DAY,
                            );
                        }
                        continue;
                    }
                    _ => continue,
                };
                let start = e.timestamp.0 - e.timestamp.0.rem_euclid(config.window_ms);
                let until = start + config.window_ms + config.window_retention_ms;
                // A window past its retention takes nothing (too late), duplicate or not.
                if until <= t {
                    continue;
                }
                if !windows.insert(identity) {
                    *duplicates.entry((e.machine_id.clone(), kind)).or_default() += 1;
                }
            }
            kinds.extend(duplicates.keys().map(|(_, k)| *k));
            let expected = duplicates
                .into_iter()
                .map(|((m, k), n)| row(((m, k.to_owned()), n as isize)))
                .collect();
            testing::assert_view(views, "event_duplicates", expected, seed);
        }
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["door", "error", "heartbeat", "restock"],
            "every kind is re-delivered"
        );
    }
}

//! `liveness`: each machine's last heartbeat and whether it is active, offline or in maintenance.
//!
//! ```sql
//! SELECT machine_id, max(heartbeat.timestamp) AS last_heartbeat,
//!        CASE WHEN registry.status = 'maintenance' THEN 'maintenance'
//!             WHEN now() < max(heartbeat.timestamp) + offline_after THEN 'active'
//!             ELSE 'offline' END AS status
//! FROM registry FULL JOIN heartbeats USING (machine_id) GROUP BY machine_id
//! ```
//! "Now" is the ingestion frontier, not a wall clock that something polls: the latest heartbeat
//! is published together with its own retraction from the online set, scheduled
//! `offline_after_ms` later (temporal filter). State is one latest heartbeat per machine.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::{MachineId, MachineStatus, RegistryRecord, Timestamp};

use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Time, hash_of};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, RowWriter, col, null};

pub const LIVENESS: ViewDef = ViewDef {
    name: "liveness",
    description: "last heartbeat and status (active / offline / maintenance) per machine",
    columns: &[
        col("machine_id", Text),
        null("last_heartbeat", Time),
        col("status", Text),
        col("registered", Bool),
    ],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Active,
    Offline,
    Maintenance,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Offline => "offline",
            Status::Maintenance => "maintenance",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Liveness {
    pub machine_id: MachineId,
    pub last_heartbeat: Option<Timestamp>,
    pub status: Status,
    pub registered: bool,
}

/// What the fold hears of a machine: the demux sends each heartbeat as one (no operator of
/// its own to wrap 80 % of the events), and the registry's records are mapped here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Fact {
    Registered(MachineStatus),
    Heartbeat(Timestamp),
}

/// The status rule, shared with the oracle.
pub fn status(registered: Option<MachineStatus>, online: bool) -> Status {
    match (registered, online) {
        (Some(MachineStatus::Maintenance), _) => Status::Maintenance,
        (Some(MachineStatus::Offline), _) => Status::Offline,
        (_, true) => Status::Active,
        (_, false) => Status::Offline,
    }
}

/// One machine: its registry statuses (a multiset: the registry can retract), its latest
/// heartbeat, whether that heartbeat is recent, and the one timer it has pending.
#[derive(Default, PartialEq, Serialize, Deserialize)]
struct State {
    registered: Vec<(MachineStatus, isize)>,
    last: Option<Timestamp>,
    online: bool,
    timer: Option<Time>,
}

/// What the liveness operator publishes: the view's row (kept as published, so its retraction
/// is not built again), and the status alone (for health, which must not hear about every
/// heartbeat, only about status changes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    Row(Row),
    Status(MachineId, Status),
}

/// Liveness per machine, folded in ingestion-time order. A heartbeat moves the machine's last
/// heartbeat (and its row); the machine goes offline when ingestion time reaches
/// `last + offline_after`, by a timer the machine holds at most one of.
pub fn render<'s>(
    heartbeats: VecCollection<'s, Time, (MachineId, Fact)>,
    registry: VecCollection<'s, Time, RegistryRecord>,
    config: &Config,
) -> VecCollection<'s, Time, Out> {
    let offline_after = config.offline_after_ms;
    let deadline = move |last: Timestamp| last.saturating_add(offline_after);
    let registered = registry.flat_map(|r| match r {
        RegistryRecord::Machine(m) => Some((m.machine_id, Fact::Registered(m.status))),
        _ => None,
    });
    heartbeats.concat(registered).fold_by_key(
        "Liveness",
        Published::Kept,
        hash_of::<MachineId>,
        move |_m, state: &mut State, fact, diff, ctx| match fact {
            Fact::Registered(s) => {
                match state.registered.iter_mut().find(|(x, _)| *x == s) {
                    Some((_, c)) => *c += diff,
                    None => state.registered.push((s, diff)),
                }
                state.registered.retain(|(_, c)| *c != 0);
            }
            Fact::Heartbeat(ts) => {
                if diff <= 0 || state.last.is_some_and(|l| l >= ts) {
                    return;
                }
                state.last = Some(ts);
                let until = deadline(ts);
                state.online = until > ctx.now();
                if state.online && state.timer.is_none() {
                    state.timer = Some(until);
                    ctx.wake_at(until);
                }
            }
        },
        move |_m, state, ctx| {
            state.timer = None;
            let Some(until) = state.last.map(deadline) else {
                return;
            };
            state.online = until > ctx.now();
            if state.online {
                state.timer = Some(until);
                ctx.wake_at(until);
            }
        },
        |m, state, out| {
            let reg = state
                .registered
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(s, _)| *s)
                .max();
            if reg.is_none() && state.last.is_none() {
                return;
            }
            let status = status(reg, state.online);
            out.push(Out::Row(row(Liveness {
                machine_id: m.clone(),
                last_heartbeat: state.last,
                status,
                registered: reg.is_some(),
            })));
            out.push(Out::Status(m.clone(), status));
        },
    )
}

pub fn row(l: Liveness) -> Row {
    Row::build(|r| {
        r.text(l.machine_id.as_str());
        r.opt(l.last_heartbeat, RowWriter::time);
        r.text(l.status.as_str());
        r.bool(l.registered);
    })
}

#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Liveness> {
    use std::collections::BTreeMap;
    let now = scenario.now();
    let mut machines: BTreeMap<MachineId, (Option<MachineStatus>, Option<Timestamp>)> =
        BTreeMap::new();
    for r in &scenario.registry {
        if let RegistryRecord::Machine(m) = r {
            machines.entry(m.machine_id.clone()).or_default().0 = Some(m.status);
        }
    }
    for (_, e) in &scenario.deliveries {
        if matches!(e.kind, vendflow_protocol::EventKind::Heartbeat(_)) {
            let last = &mut machines.entry(e.machine_id.clone()).or_default().1;
            *last = (*last).max(Some(e.timestamp));
        }
    }
    machines
        .into_iter()
        .map(|(m, (reg, last))| {
            let online =
                last.is_some_and(|ts| Timestamp(ts.0 + scenario.config.offline_after_ms) > now);
            Liveness {
                machine_id: m,
                last_heartbeat: last,
                status: status(reg, online),
                registered: reg.is_some(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value;
    use crate::testing::{self, Scenario};

    #[test]
    fn liveness_matches_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            testing::assert_view(
                views,
                "liveness",
                oracle(scenario).into_iter().map(row).collect(),
                seed,
            );
        }
    }

    #[test]
    fn machine_goes_offline_after_two_silent_minutes_of_ingestion_time() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        scenario.deliver(t, testing::heartbeat("quiet", t, 4_000));
        scenario.deliver(t, testing::heartbeat("chatty", t, 4_000));
        scenario.deliver(
            t + 121_000,
            testing::heartbeat("chatty", t + 121_000, 4_000),
        );
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "liveness");
        assert_eq!(rows[0].cell(2), Value::text("active"), "{rows:?}");
        assert_eq!(rows[1].cell(2), Value::text("offline"), "{rows:?}");
    }
}

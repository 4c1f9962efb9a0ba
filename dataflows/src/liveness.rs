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
use vendflow_protocol::{Event, EventKind, MachineId, MachineStatus, RegistryRecord, Timestamp};

use crate::config::Config;
use crate::operators::{FastMap, Keyed, Temporal, Time, as_time, hash_of};
use crate::row::{ColumnType::*, Row, Value, col, null};
use crate::views::ViewDef;

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

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Fact {
    Registered(MachineStatus),
    LastHeartbeat(Timestamp),
    Online,
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

pub fn render<'s>(
    events: VecCollection<'s, Time, Event>,
    registry: VecCollection<'s, Time, RegistryRecord>,
    config: &Config,
) -> VecCollection<'s, Time, Liveness> {
    let offline_after = config.offline_after_ms;
    let latest = events
        .flat_map(|e| {
            matches!(e.kind, EventKind::Heartbeat(_)).then_some((e.machine_id, e.timestamp))
        })
        .keyed_in_time_order(
            "Liveness: latest heartbeat",
            |(m, _): &(MachineId, Timestamp)| hash_of(m),
            FastMap::<MachineId, Timestamp>::default(),
            |latest, (m, ts), diff, out| {
                if diff <= 0 {
                    return;
                }
                match latest.get(&m) {
                    Some(old) if *old >= ts => {}
                    old => {
                        if let Some(old) = old {
                            out.give((m.clone(), *old), -1);
                        }
                        latest.insert(m.clone(), ts);
                        out.give((m, ts), 1);
                    }
                }
            },
            |_, _| {},
        );
    let online = latest
        .clone()
        .retain_between(move |(_, ts): &(MachineId, Timestamp)| (0, as_time(ts.0 + offline_after)))
        .0
        .map(|(m, _)| (m, Fact::Online));
    let registered = registry.flat_map(|r| match r {
        RegistryRecord::Machine(m) => Some((m.machine_id, Fact::Registered(m.status))),
        _ => None,
    });
    latest
        .map(|(m, ts)| (m, Fact::LastHeartbeat(ts)))
        .concat(online)
        .concat(registered)
        .reduce_named("Liveness: reduce", |m, facts, output| {
            let mut reg = None;
            let mut last = None;
            let mut online = false;
            for (fact, count) in facts {
                if *count <= 0 {
                    continue;
                }
                match fact {
                    Fact::Registered(s) => reg = Some(*s),
                    Fact::LastHeartbeat(ts) => last = last.max(Some(*ts)),
                    Fact::Online => online = true,
                }
            }
            let live = Liveness {
                machine_id: m.clone(),
                last_heartbeat: last,
                status: status(reg, online),
                registered: reg.is_some(),
            };
            output.push((live, 1isize));
        })
        .map(|(_m, l)| l)
}

pub fn row(l: Liveness) -> Row {
    vec![
        Value::text(l.machine_id.as_str()),
        Value::opt(l.last_heartbeat, Value::Time),
        Value::text(l.status.as_str()),
        Value::Bool(l.registered),
    ]
    .into()
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
        if matches!(e.kind, EventKind::Heartbeat(_)) {
            let last = &mut machines.entry(e.machine_id.clone()).or_default().1;
            *last = (*last).max(Some(e.timestamp));
        }
    }
    machines
        .into_iter()
        .map(|(m, (reg, last))| {
            let online =
                last.is_some_and(|ts| as_time(ts.0 + scenario.config.offline_after_ms) > now);
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
        assert_eq!(rows[0][2], Value::text("active"), "{rows:?}");
        assert_eq!(rows[1][2], Value::text("offline"), "{rows:?}");
    }
}

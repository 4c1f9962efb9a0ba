//! `leases`: the leases in the registry, one row per lease record; `lease_events`: their
//! lifecycle (created, activated, renewal notice, renewed, expired, terminated).
//!
//! ```sql
//! SELECT DISTINCT lease_id, client_id, machine_id, start_date, end_date, monthly_rate,
//!        revenue_share_basis_points, status, auto_renew
//! FROM registry WHERE type = 'lease';
//! SELECT DISTINCT lease_id, client_id, machine_id, at, event, note
//! FROM registry WHERE type = 'lease_event'
//! ```
//! A record sent twice is one lease; a change of a lease is a retraction of its old record and
//! the new record (the registry input carries both). Revenue shares by month are computed in SQL
//! from this view and the revenue views (`lease_revenue_share_monthly`).

use differential_dataflow::VecCollection;
use vendflow_protocol::{Lease, LeaseEvent, RegistryRecord};

use crate::operators::Time;
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col, null};

pub const LEASES: ViewDef = ViewDef {
    name: "leases",
    description: "leases in the registry: machine, client, term, monthly rate and revenue share",
    columns: &[
        col("lease_id", Text),
        col("client_id", Text),
        col("machine_id", Text),
        col("start_date", Date),
        col("end_date", Date),
        col("monthly_rate", Money),
        // Hundredths of a percent (1250 = 12.5 %): an integer, like money.
        col("revenue_share_basis_points", Int),
        col("status", Text),
        col("auto_renew", Bool),
    ],
};

pub const LEASE_EVENTS: ViewDef = ViewDef {
    name: "lease_events",
    description: "each lease's lifecycle: created, activated, renewal notice, renewed, expired, terminated",
    columns: &[
        col("lease_id", Text),
        col("client_id", Text),
        col("machine_id", Text),
        col("at", Time),
        col("event", Text),
        null("note", Text),
    ],
};

pub fn render_events<'s>(
    registry: VecCollection<'s, Time, RegistryRecord>,
) -> VecCollection<'s, Time, LeaseEvent> {
    crate::fold::distinct_total(
        registry.flat_map(|r| match r {
            RegistryRecord::LeaseEvent(e) => Some(e),
            _ => None,
        }),
        "Leases: events",
    )
}

pub fn event_row(e: LeaseEvent) -> Row {
    Row::from([
        Value::text(&e.lease_id),
        Value::text(&e.client_id),
        Value::text(e.machine_id.as_str()),
        Value::Time(e.at),
        Value::text(e.kind.as_str()),
        e.note.as_deref().map_or(Value::Null, Value::text),
    ])
}

pub fn render<'s>(
    registry: VecCollection<'s, Time, RegistryRecord>,
) -> VecCollection<'s, Time, Lease> {
    crate::fold::distinct_total(
        registry.flat_map(|r| match r {
            RegistryRecord::Lease(l) => Some(l),
            _ => None,
        }),
        "Leases: leases",
    )
}

pub fn row(l: Lease) -> Row {
    Row::from([
        Value::text(&l.lease_id),
        Value::text(&l.client_id),
        Value::text(l.machine_id.as_str()),
        Value::Date(l.start.day()),
        Value::Date(l.end.day()),
        Value::Money(l.monthly_rate),
        Value::Int(l.revenue_share_basis_points),
        Value::text(l.status.as_str()),
        Value::Bool(l.auto_renew),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use vendflow_protocol::units::MS_PER_DAY;
    use vendflow_protocol::{Cents, LeaseEventKind, LeaseStatus, Timestamp};

    use super::*;
    use crate::testing::{self, BASE, Scenario, machine};

    /// Leases over a few machines, some sent twice, mixed with machine records.
    fn scenario(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty();
        s.register_machine("m1", "loc1", &[(1, 10)]);
        for i in 0..rng.random_range(5..20) {
            let start = BASE + rng.random_range(0..300) * MS_PER_DAY;
            let lease = Lease {
                lease_id: format!("lease{}", rng.random_range(0..8)),
                client_id: format!("client{i}"),
                machine_id: machine(&format!("m{}", rng.random_range(1..4))),
                start: Timestamp(start),
                end: Timestamp(start + rng.random_range(90..800) * MS_PER_DAY),
                monthly_rate: Cents(rng.random_range(100..90_000)),
                revenue_share_basis_points: rng.random_range(0..3_000),
                auto_renew: rng.random_bool(0.5),
                status: [
                    LeaseStatus::Draft,
                    LeaseStatus::Active,
                    LeaseStatus::Expired,
                ][rng.random_range(0..3)],
            };
            if rng.random_bool(0.3) {
                s.registry.push(RegistryRecord::Lease(lease.clone()));
            }
            s.registry.push(RegistryRecord::Lease(lease));
        }
        for _ in 0..rng.random_range(0..12) {
            let event = LeaseEvent {
                lease_id: format!("lease{}", rng.random_range(0..4)),
                client_id: "client1".into(),
                machine_id: machine("m1"),
                at: Timestamp(BASE + rng.random_range(0..5) * MS_PER_DAY),
                kind: LeaseEventKind::ALL[rng.random_range(0..LeaseEventKind::ALL.len())],
                note: rng.random_bool(0.3).then(|| "next term".to_owned()),
            };
            if rng.random_bool(0.3) {
                s.registry.push(RegistryRecord::LeaseEvent(event.clone()));
            }
            s.registry.push(RegistryRecord::LeaseEvent(event));
        }
        s.deliver(BASE, testing::heartbeat("m1", BASE, 4_000));
        s
    }

    #[test]
    fn leases_equal_the_distinct_lease_records() {
        for seed in 0..4 {
            let s = scenario(seed);
            let oracle: BTreeSet<Row> = s
                .registry
                .iter()
                .filter_map(|r| match r {
                    RegistryRecord::Lease(l) => Some(row(l.clone())),
                    _ => None,
                })
                .collect();
            let events: BTreeSet<Row> = s
                .registry
                .iter()
                .filter_map(|r| match r {
                    RegistryRecord::LeaseEvent(e) => Some(event_row(e.clone())),
                    _ => None,
                })
                .collect();
            let snapshot = testing::run(&s);
            testing::assert_view(&snapshot, "leases", oracle.into_iter().collect(), seed);
            testing::assert_view(
                &snapshot,
                "lease_events",
                events.into_iter().collect(),
                seed,
            );
        }
    }
}

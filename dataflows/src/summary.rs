//! The fleet's headline numbers read from one snapshot, computed here once: the summary line of
//! `vendflow demo` / `run` (the whole fleet) and `GET /api/dashboard/fleet` (a tenant's or a
//! region's machines). Columns are read by name.

use std::collections::HashMap;
use std::fmt;

use vendflow_protocol::{Cents, MachineStatus};

use crate::row::{Row, Value, ViewDef};
use crate::view_store::{Snapshot, StoreError};

/// Which machines a summary covers.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Every machine that reports (the summary line): statuses as liveness has them, revenue as
    /// `revenue_fleet_today` has it.
    Fleet,
    /// These machines with their registered status: one registered in maintenance counts as
    /// such whatever it reports, one that never reported counts as offline; revenue is the sum
    /// of their `revenue_machine_local_daily` rows of their own today (a machine in Tokyo
    /// starts its day at Tokyo's midnight).
    Machines(&'a HashMap<String, MachineStatus>),
}

/// Headline numbers of the fleet (or of a scope), all as of one frontier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSummary {
    /// The day the views' frontier is in (days since the epoch).
    pub day: i64,
    pub machines: usize,
    pub active: usize,
    pub offline: usize,
    pub maintenance: usize,
    /// Sum of the machines' alerts (one per reason in `health`).
    pub alerts: i64,
    pub machines_with_alerts: usize,
    /// Machines whose latest health grade is `poor`.
    pub poor_health: usize,
    pub revenue_today: Cents,
    pub low_stock_slots: usize,
    pub sold_out_slots: usize,
    pub machines_to_restock: usize,
    /// Fleet-wide counts (not scoped): duplicate sale lines dropped, records refused.
    pub duplicates: i64,
    pub refused_records: i64,
}

/// The positions of `names` in `view`, which must have them (the tests read every view).
fn columns<const N: usize>(view: &ViewDef, names: [&str; N]) -> Result<[usize; N], StoreError> {
    view.columns(names).ok_or_else(|| {
        let missing = names.iter().find(|n| view.column(n).is_none());
        StoreError::UnknownColumn(view.name, missing.copied().unwrap_or_default().to_owned())
    })
}

/// Whether a `revenue_machine_local_daily` row is of the day its zone is in at `now`.
pub fn is_local_today(row: &Row, zone_at: usize, day_at: usize, now: i64) -> bool {
    let zone = match row.cell(zone_at) {
        Value::Text(z) => z,
        _ => "UTC".into(),
    };
    row.cell(day_at) == Value::Date(vendflow_protocol::registry::local_day_in(now, &zone))
}

fn int(row: &Row, i: usize) -> i64 {
    match row.cell(i) {
        Value::Int(n) => n,
        _ => 0,
    }
}

fn money(row: &Row, i: usize) -> i64 {
    match row.cell(i) {
        Value::Money(c) => c.0,
        _ => 0,
    }
}

impl FleetSummary {
    /// The views a summary of `scope` reads: `store.snapshot_of(FleetSummary::views(scope))`
    /// copies only these.
    pub fn views(scope: Scope<'_>) -> &'static [&'static str] {
        match scope {
            Scope::Fleet => &[
                "liveness",
                "health",
                "revenue_fleet_today",
                "inventory",
                "restock_needed",
                "sale_duplicates",
                "error_counts",
            ],
            Scope::Machines(_) => &[
                "liveness",
                "health",
                "revenue_machine_local_daily",
                "inventory",
                "restock_needed",
                "sale_duplicates",
                "error_counts",
            ],
        }
    }

    /// The summary of the whole fleet.
    pub fn from_snapshot(s: &Snapshot) -> Result<FleetSummary, StoreError> {
        FleetSummary::of(s, Scope::Fleet)
    }

    /// The summary of `scope`.
    pub fn of(s: &Snapshot, scope: Scope<'_>) -> Result<FleetSummary, StoreError> {
        use crate::{errors, health, inventory, liveness, revenue, sales, stockout};
        let day = s.frontier.day();
        let mut summary = FleetSummary {
            day,
            ..FleetSummary::default()
        };
        let within = |row: &Row, at: usize| match scope {
            Scope::Fleet => true,
            Scope::Machines(m) => {
                matches!(row.cell(at), Value::Text(t) if m.contains_key(t.as_str()))
            }
        };

        let [id, status] = columns(&liveness::LIVENESS, ["machine_id", "status"])?;
        let mut count = |status: &str| match status {
            "active" => summary.active += 1,
            "maintenance" => summary.maintenance += 1,
            _ => summary.offline += 1,
        };
        match scope {
            Scope::Fleet => {
                for row in s.rows(liveness::LIVENESS.name)? {
                    match row.cell(status) {
                        Value::Text(t) => count(t.as_str()),
                        _ => count("offline"),
                    }
                }
            }
            Scope::Machines(machines) => {
                let live: HashMap<String, Value> = s
                    .rows(liveness::LIVENESS.name)?
                    .iter()
                    .filter(|r| within(r, id))
                    .map(|r| (r.cell(id).render(), r.cell(status)))
                    .collect();
                for (m, registered) in machines {
                    match (registered, live.get(m)) {
                        (MachineStatus::Maintenance, _) => count("maintenance"),
                        (_, Some(Value::Text(t))) => count(t.as_str()),
                        _ => count("offline"),
                    }
                }
            }
        }
        summary.machines = summary.active + summary.offline + summary.maintenance;

        let [id, grade, alerts] = columns(&health::HEALTH, ["machine_id", "grade", "alerts"])?;
        for row in s
            .rows(health::HEALTH.name)?
            .iter()
            .filter(|r| within(r, id))
        {
            let n = int(row, alerts);
            summary.alerts += n;
            summary.machines_with_alerts += usize::from(n > 0);
            summary.poor_health += usize::from(row.cell(grade) == Value::text("poor"));
        }

        // Today's revenue: the fleet's own view (UTC), or the scope's machines' rows of their
        // own today (each machine's location's calendar).
        summary.revenue_today = Cents(match scope {
            Scope::Fleet => {
                let view = &revenue::FLEET_TODAY;
                let [day_at, revenue] = columns(view, ["day", "revenue"])?;
                s.rows(view.name)?
                    .iter()
                    .filter(|r| r.cell(day_at) == Value::Date(day))
                    .map(|r| money(r, revenue))
                    .sum()
            }
            Scope::Machines(_) => {
                let view = &revenue::MACHINE_LOCAL_DAILY;
                let [id, zone_at, day_at, revenue] =
                    columns(view, ["machine_id", "time_zone", "day", "revenue"])?;
                let now = s.frontier.ms();
                s.rows(view.name)?
                    .iter()
                    .filter(|r| within(r, id) && is_local_today(r, zone_at, day_at, now))
                    .map(|r| money(r, revenue))
                    .sum()
            }
        });

        let [id, low, sold_out] = columns(
            &inventory::INVENTORY,
            ["machine_id", "low_stock", "sold_out"],
        )?;
        for row in s
            .rows(inventory::INVENTORY.name)?
            .iter()
            .filter(|r| within(r, id))
        {
            summary.low_stock_slots += usize::from(row.cell(low) == Value::Bool(true));
            summary.sold_out_slots += usize::from(row.cell(sold_out) == Value::Bool(true));
        }
        let [id] = columns(&stockout::RESTOCK_NEEDED, ["machine_id"])?;
        summary.machines_to_restock = s
            .rows(stockout::RESTOCK_NEEDED.name)?
            .iter()
            .filter(|r| within(r, id))
            .count();

        let [dropped] = columns(&sales::DUPLICATES, ["duplicates"])?;
        summary.duplicates = s
            .rows(sales::DUPLICATES.name)?
            .iter()
            .map(|r| int(r, dropped))
            .sum();
        let [refused] = columns(&errors::ERROR_COUNTS, ["records"])?;
        summary.refused_records = s
            .rows(errors::ERROR_COUNTS.name)?
            .iter()
            .map(|r| int(r, refused))
            .sum();
        Ok(summary)
    }
}

impl fmt::Display for FleetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "machines {} active / {} offline / {} maintenance | alerts {} ({} poor) | revenue today ${} | low stock {} slots, sold out {}, restock {} machines | duplicates dropped {} | refused {}",
            self.active,
            self.offline,
            self.maintenance,
            self.alerts,
            self.poor_health,
            self.revenue_today,
            self.low_stock_slots,
            self.sold_out_slots,
            self.machines_to_restock,
            self.duplicates,
            self.refused_records,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live loops copy only `views(scope)`: a view read but not listed would silently count
    /// zero.
    #[test]
    fn a_summary_reads_only_the_views_it_lists() {
        let (_, full) = crate::testing::random_run(0);
        let machines: HashMap<String, MachineStatus> = HashMap::new();
        for scope in [Scope::Fleet, Scope::Machines(&machines)] {
            let listed = full.only(FleetSummary::views(scope));
            let summary = FleetSummary::of(full, scope).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                FleetSummary::of(&listed, scope).unwrap_or_else(|e| panic!("{e}")),
                summary
            );
        }
        assert_ne!(
            FleetSummary::from_snapshot(full).unwrap_or_else(|e| panic!("{e}")),
            FleetSummary {
                day: full.frontier.day(),

                ..FleetSummary::default()
            },
            "the scenario has a fleet"
        );
    }

    /// Scoped to every machine that reports, with none in maintenance, a summary counts what
    /// the fleet's does: the machines' daily revenue of today adds up to the fleet's.
    #[test]
    fn every_machine_in_scope_sums_to_the_fleet() {
        let (_, full) = crate::testing::random_run(3);
        let fleet = FleetSummary::from_snapshot(full).unwrap_or_else(|e| panic!("{e}"));
        let id = crate::liveness::LIVENESS
            .column("machine_id")
            .unwrap_or_else(|| panic!("liveness has machine_id"));
        let machines: HashMap<String, MachineStatus> = full
            .rows("liveness")
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| (r.cell(id).render(), MachineStatus::Active))
            .collect();
        let scoped =
            FleetSummary::of(full, Scope::Machines(&machines)).unwrap_or_else(|e| panic!("{e}"));
        assert!(fleet.machines > 0 && fleet.revenue_today.0 > 0, "{fleet:?}");
        assert_eq!(scoped, fleet);
    }
}

//! A fleet summary read from one snapshot: what `vendflow demo` prints.

use std::fmt;

use crate::row::Value;
use crate::view_store::{Snapshot, StoreError};

/// Headline numbers of the fleet, all as of one frontier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSummary {
    pub active: usize,
    pub offline: usize,
    pub maintenance: usize,
    /// Sum of the alerts in the health view.
    pub alerts: i64,
    /// Machines whose latest health grade is `poor`.
    pub poor_health: usize,
    pub revenue_today: Option<String>,
    pub low_stock_slots: usize,
    pub sold_out_slots: usize,
    pub machines_to_restock: usize,
    pub duplicates: i64,
    pub refused_records: i64,
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        _ => 0,
    }
}

impl FleetSummary {
    /// The views a summary reads: `store.snapshot_of(FleetSummary::VIEWS)` copies only these.
    pub const VIEWS: &[&str] = &[
        "liveness",
        "health",
        "revenue_fleet_today",
        "inventory",
        "restock_needed",
        "sale_duplicates",
        "error_counts",
    ];

    pub fn from_snapshot(s: &Snapshot) -> Result<FleetSummary, StoreError> {
        let mut summary = FleetSummary::default();
        for row in s.rows("liveness")? {
            match &row.cell(2) {
                Value::Text(t) if t == "active" => summary.active += 1,
                Value::Text(t) if t == "maintenance" => summary.maintenance += 1,
                _ => summary.offline += 1,
            }
        }
        for row in s.rows("health")? {
            summary.alerts += int(&row.cell(3));
            summary.poor_health += usize::from(row.cell(2) == Value::text("poor"));
        }
        summary.revenue_today = s
            .rows("revenue_fleet_today")?
            .first()
            .map(|r| r.cell(1).render());
        for row in s.rows("inventory")? {
            summary.low_stock_slots += usize::from(row.cell(6) == Value::Bool(true));
            summary.sold_out_slots += usize::from(row.cell(7) == Value::Bool(true));
        }
        summary.machines_to_restock = s.rows("restock_needed")?.len();
        summary.duplicates = s
            .rows("sale_duplicates")?
            .iter()
            .map(|r| int(&r.cell(1)))
            .sum();
        summary.refused_records = s
            .rows("error_counts")?
            .iter()
            .map(|r| int(&r.cell(2)))
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
            self.revenue_today.as_deref().unwrap_or("0.00"),
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

    /// The live loops copy only `VIEWS`: a view read but not listed would silently count zero.
    #[test]
    fn a_summary_reads_only_the_views_it_lists() {
        let (_, full) = crate::testing::random_run(0);
        let listed = full.only(FleetSummary::VIEWS);
        let summary = FleetSummary::from_snapshot(full).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(summary, FleetSummary::default(), "the scenario has a fleet");
        assert_eq!(
            FleetSummary::from_snapshot(&listed).unwrap_or_else(|e| panic!("{e}")),
            summary
        );
    }
}

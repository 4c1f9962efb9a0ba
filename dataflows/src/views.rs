//! The catalog of published views: name, meaning and columns of each.

use crate::row::{Column, Row, Value, schema};

/// A published view's definition.
#[derive(Clone, Copy, Debug)]
pub struct ViewDef {
    pub name: &'static str,
    pub description: &'static str,
    pub columns: &'static [Column],
}

impl ViewDef {
    pub fn schema(&self) -> arrow_schema::SchemaRef {
        schema(self.columns)
    }

    /// The position of the column called `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The cell of `row` (a row of this view) in the column called `name`; `None` if the view
    /// has no such column.
    pub fn get(&self, row: &Row, name: &str) -> Option<Value> {
        self.column(name).map(|i| row.cell(i))
    }
}

/// Every view, in publication order.
pub const CATALOG: &[ViewDef] = &[
    crate::revenue::MACHINE_DAILY,
    crate::revenue::LOCATION_DAILY,
    crate::revenue::LOCATION_HOURLY,
    crate::revenue::FLEET_TODAY,
    crate::revenue::TOP_MACHINES_TODAY,
    crate::revenue::SLOT_SALES,
    crate::sales::DUPLICATES,
    crate::inventory::INVENTORY,
    crate::anomaly_windows::WINDOWS,
    crate::liveness::LIVENESS,
    crate::stockout::STOCKOUT,
    crate::stockout::RESTOCK_NEEDED,
    crate::health::HEALTH,
    crate::errors::ERRORS,
    crate::errors::ERROR_COUNTS,
    crate::errors::TOO_LATE,
    crate::commands::COMMANDS,
    crate::leases::LEASES,
    crate::leases::LEASE_EVENTS,
];

/// Looks a view up by name.
pub fn find(name: &str) -> Option<(usize, &'static ViewDef)> {
    CATALOG.iter().enumerate().find(|(_, v)| v.name == name)
}

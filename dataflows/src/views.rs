//! The catalog of published views: name, meaning and columns of each.

pub use crate::row::ViewDef;

/// Every view, in publication order.
pub const CATALOG: &[ViewDef] = &[
    crate::revenue::MACHINE_DAILY,
    crate::revenue::LOCATION_DAILY,
    crate::revenue::MACHINE_LOCAL_DAILY,
    crate::revenue::LOCATION_HOURLY,
    crate::revenue::FLEET_TODAY,
    crate::revenue::TOP_MACHINES_TODAY,
    crate::revenue::CORRECTIONS,
    crate::revenue::LOCATION_CORRECTIONS,
    crate::revenue::LOCAL_CORRECTIONS,
    crate::revenue::SLOT_SALES,
    crate::sales::DUPLICATES,
    crate::dedup::EVENT_DUPLICATES,
    crate::inventory::INVENTORY,
    crate::anomaly_windows::WINDOWS,
    crate::anomaly_windows::CORRECTIONS,
    crate::signals::BASELINES,
    crate::signals::ANOMALIES,
    crate::zero_sales::ZERO_SALES,
    crate::maintenance::CANDIDATES,
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
    crate::dex::AUDITS,
    crate::dex::RECONCILIATION,
    crate::settlement::DAILY,
    crate::settlement::EXCEPTIONS,
    crate::refunds::REFUNDS,
    crate::sequence_gaps::SEQUENCE_GAPS,
    crate::routes::ROUTES,
    crate::routes::LOADS,
];

/// Looks a view up by name.
pub fn find(name: &str) -> Option<(usize, &'static ViewDef)> {
    CATALOG.iter().enumerate().find(|(_, v)| v.name == name)
}

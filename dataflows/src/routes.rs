//! `restock_routes` and `restock_loads`: each crew's stops for its shift, and what to load at each.
//!
//! These two views are **planned, not maintained**: routing is a search, not an incremental
//! computation, so the dataflow publishes them empty and the service's route planner
//! (`vendflow_queries::service`, with the `vendflow-routes` crate) replaces their rows with
//! [`crate::ViewStore::replace`] each time it plans or re-plans, from one snapshot of
//! `inventory`, `stockout_forecast` and `restock_needed`. They are then read like every other
//! view (SQL over HTTP and the Postgres protocol, the archive, subscriptions), within the
//! caller's tenant scope (their rows are about machines).
//!
//! ```sql
//! -- restock_routes: one row per machine to visit: its crew and place in the route, or none
//! -- (`crew` null) and the reason; restock_loads: per planned stop and slot, the units to bring
//! ```

use crate::row::ViewDef;
use crate::row::{ColumnType::*, col, null};

pub const ROUTES: ViewDef = ViewDef {
    name: "restock_routes",
    description: "restock plan: each machine to visit with its crew, order and estimated arrival (or the reason it has none this shift)",
    columns: &[
        col("machine_id", Text),
        col("region", Text),
        null("crew", Text),
        null("stop", Int),
        null("arrive", Time),
        null("depart", Time),
        null("leg_km", Float),
        col("urgent", Bool),
        null("hours_to_empty", Float),
        col("units", Int),
        null("lat", Float),
        null("lng", Float),
        col("shift_start", Time),
        col("planned_at", Time),
        null("reason", Text),
    ],
};

pub const LOADS: ViewDef = ViewDef {
    name: "restock_loads",
    description: "restock plan: units to bring per planned stop and slot (what the slot will lack at the estimated arrival)",
    columns: &[
        col("machine_id", Text),
        col("crew", Text),
        col("slot_number", Int),
        col("product_id", Text),
        col("units", Int),
    ],
};

/// The views a planner publishes with [`crate::ViewStore::replace`].
pub const PLANNED: [&str; 2] = [ROUTES.name, LOADS.name];

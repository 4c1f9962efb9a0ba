//! vendflow's incremental views and the consistent view store.
//!
//! Telemetry and registry records go in through an [`Engine`]'s feeders; timely and
//! differential-dataflow maintain every view incrementally on ingestion time; the [`ViewStore`]
//! publishes all views together once the dataflow's frontier has passed a time. Other crates read
//! results only through the store (snapshots as Arrow batches, or subscriptions).
//!
//! # Layout
//! - [`config`]: horizons and thresholds, with the product's defaults.
//! - [`engine`]: timely workers, feeders (the input side) and shutdown.
//! - [`view_store`]: consistent snapshots and subscriptions (the output side).
//! - [`row`]: rows, cells, columns and a view's definition ([`ViewDef`]: its columns by name).
//! - [`views`]: the catalog of published views.
//! - `dataflow`: wires the views below into one dataflow.
//! - [`sales`]: exactly-once sale lines (dedup with a horizon in memory, the [`ledger`] on disk
//!   beyond it).
//! - [`revenue`]: revenue per machine / location / fleet per day, top machines, slot sales.
//! - [`inventory`]: units per slot, low-stock and sold-out flags.
//! - [`anomaly_windows`]: 5-minute sensor windows per machine, classified.
//! - [`liveness`]: last heartbeat and status per machine.
//! - [`stockout`]: hours until each slot is empty, machines to restock.
//! - [`signals`]: each machine's readings against its own 30-day baseline: rolling averages and
//!   hours more than 3 deviations from its mean.
//! - [`zero_sales`]: machines silent for longer than their own sales history allows.
//! - [`health`]: a score per machine with its reasons.
//! - [`settlement`]: card sales against the payment processor's settlement file; transactions
//!   waiting beyond an hour are [`parked`] on disk (known in memory by a Bloom filter per day);
//!   [`anomaly_windows`] closed for half an hour wait there too.
//! - [`dex`]: the machines' DEX audits per column and period, reconciled with telemetry.
//! - [`refunds`]: the money machines gave back, per machine and day, each refund once.
//! - [`sequence_gaps`]: per machine, the event numbers never received.
//! - [`routes`]: restock routes and loads, planned outside the dataflow and published here.
//! - [`leases`]: the registry's leases (revenue shares are SQL over this and revenue).
//! - [`errors`]: refused records, their counts, and too-late events.
//! - [`summary`]: the fleet's (or a scope's) headline numbers from one snapshot, computed once.
//! - `operators`: the temporal filter and the keyed in-time-order operator.
//! - [`checkpoint`]: each stateful operator's state as bytes, saved and restored by name.
//! - `fold`: per-key state folded in time order with timers (most views are built on it).

pub mod aligned;
pub mod anomaly_windows;
pub mod checkpoint;
pub mod cold_rows;
pub mod commands;
pub mod config;
mod dataflow;
pub mod dedup;
pub mod dex;
pub mod engine;
pub mod errors;
mod fold;
pub mod health;
pub mod inventory;
pub mod leases;
pub mod ledger;
pub mod liveness;
pub mod maintenance;
mod operators;
pub mod parked;
pub mod refunds;
pub mod revenue;
pub mod routes;
pub mod row;
pub mod sales;
pub mod sequence_gaps;
pub mod settlement;
pub mod signals;
pub mod state_file;
pub mod stockout;
pub mod summary;
mod temporary_state;
#[cfg(test)]
mod testing;
pub mod view_store;
pub mod views;
pub mod zero_sales;

pub use config::Config;
pub use engine::{Batch, Engine, EngineError, Feeder, Feeders, peak_rss_bytes};
pub use errors::ErrorRecord;
pub use operators::state_sizes::OperatorState;
pub use operators::{ExpiringMap, ExpiringSet, FanOut, Time};
pub use row::{CellRef, ColumnType, Row, Value};
pub use summary::FleetSummary;
pub use view_store::{Change, Snapshot, StoreError, Subscription, SubscriptionEnd, ViewStore};
pub use views::{CATALOG, ViewDef};

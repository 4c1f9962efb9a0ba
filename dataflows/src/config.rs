//! Engine and view settings, with the defaults from the product design.

use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE};

/// How the dataflows are run and how long each piece of state is kept.
///
/// Every horizon is in milliseconds of *event* time, compared with the ingestion frontier: state
/// older than its horizon is retracted, so memory stays flat on an endless stream.
#[derive(Clone, Debug)]
pub struct Config {
    /// Timely worker threads (per process, in a cluster).
    pub workers: usize,
    /// Run as one process of a timely cluster; None: this process alone.
    pub cluster: Option<Cluster>,
    /// Sale lines are deduplicated for this long (longer than the machines' 24 h offline buffer).
    pub dedup_horizon_ms: i64,
    /// How long (days of event time) a restock is remembered, so that a re-delivery of it is
    /// not loaded twice ([`crate::dedup`]).
    pub restock_dedup_days: i64,
    /// Width of the anomaly windows.
    pub window_ms: i64,
    /// How long a closed anomaly window can still be corrected by a late event, and is kept.
    pub window_retention_ms: i64,
    /// How long after it closes an anomaly window stays in memory; for the rest of its
    /// retention it waits on disk ([`crate::parked`]), where a late event takes it back. Nearly
    /// every event lands in its window within seconds; 48 h of 5-minute windows in memory are
    /// 29 M windows for 50,000 machines. At least the retention: never on disk.
    pub window_memory_ms: i64,
    /// Whether the view store keeps old rows on disk ([`crate::cold_rows`]): those of closed
    /// windows older than `window_memory_ms` (48 h of windows are 29 M rows for 50,000 machines)
    /// and of machine-days over for longer than `day_memory_ms` (35 days of revenue are 1.75 M
    /// rows per view). A live engine does. A bulk load, which writes every row out at its end,
    /// keeps them in memory: moving each row to disk and back would cost it time and save
    /// little at its peak.
    pub cold_views: bool,
    /// Days of sale lines kept in the on-disk ledger that recognises re-deliveries after the dedup
    /// horizon (see [`crate::ledger`]).
    pub ledger_retention_days: i64,
    /// Where the engine keeps its on-disk state (the sale-line ledger); `None`: a temporary
    /// directory, removed when the engine stops.
    pub state_dir: Option<std::path::PathBuf>,
    /// Days of DEX audits kept per machine for `dex_audits` and `reconciliation` (its newest
    /// audit is always kept).
    pub dex_retention_days: i64,
    /// How long a machine that has sent no DEX audit keeps its sale lines for reconciliation:
    /// a machine sends its audit when it reads it, in order with its sales, so only an audit
    /// overtaken by the sales after it (another transport) needs them.
    pub dex_grace_ms: i64,
    /// How long a card transaction waits for its settlement line (and its sale lines for their
    /// settlement) after its last record arrives: processors settle a day or two after a sale.
    /// 0: no matching (the settlement views stay empty; no card transaction is held).
    pub settlement_days: i64,
    /// How long a card transaction stays in memory after its last record; for the rest of
    /// `settlement_days` it waits on disk ([`crate::parked`]). An hour: processors settle a day
    /// or two later, so a transaction is parked once whatever this is, and a day of a fleet's
    /// card sales in memory is hundreds of megabytes (1.5 M transactions a day for 50,000
    /// machines; the 1 M benchmark's rate is 9.5 M), an hour of them a few percent of that.
    pub settlement_memory_ms: i64,
    /// At most this many card transactions in memory per worker: past it, a transaction is
    /// parked as soon as its record is applied. A live fleet stays under it even on one worker
    /// (50,000 machines sell ~62,000 card transactions an hour), but a bulk load or a catch-up
    /// applies hours of them at one ingestion time, and their hour in memory would be gigabytes.
    /// Parking costs ~2 µs a transaction, so the limit is not set lower.
    pub settlement_memory_transactions: usize,
    /// How many days of per-day revenue are kept live (older days live in the Parquet history).
    pub revenue_retention_days: i64,
    /// How long after its day has ended a machine's per-day revenue stays in memory; for the
    /// rest of `revenue_retention_days` it waits on disk ([`crate::parked`]), where a late sale
    /// takes it back; with `cold_views`, so do its rows in the two machine revenue views (a
    /// local day's 12 hours later). A fleet's machine-days are 50,000 a day, five weeks of them
    /// are kept, and nearly every sale lands on its day within minutes. At least the retention:
    /// never on disk.
    pub day_memory_ms: i64,
    /// A machine without a heartbeat for this long is offline.
    pub offline_after_ms: i64,
    /// Default low-stock threshold, percent of capacity, for slots that set none.
    pub low_stock_percent: u32,
    /// Trailing days of sales the stockout forecast learns a slot's level from.
    pub demand_days: i64,
    /// Trailing days of a machine's sales the stockout forecast learns its weekday index and
    /// its holiday factor from (at least `demand_days`).
    pub demand_index_days: i64,
    /// Holidays (days since the epoch, UTC; `--holidays FILE`): left out of the forecast's
    /// weekday index and levels, and a holiday's demand is scaled by what the machine's
    /// holidays before it did. Empty: no calendar.
    pub holidays: std::sync::Arc<std::collections::BTreeSet<i64>>,
    /// A machine needs restocking when a slot will run out within this many hours.
    pub restock_within_hours: f64,
    /// Days of a machine's own readings its signal baselines are learnt from.
    pub signal_baseline_days: i64,
    /// Hours of baseline a signal needs before its anomalies are judged.
    pub signal_min_baseline_hours: i64,
    /// Readings (5-minute windows) an hour needs for its mean to be judged.
    pub signal_min_readings: u32,
    /// A silent machine is listed in `zero_sales` once it would normally have sold this many
    /// units since its last sale...
    pub zero_sales_expected_units: f64,
    /// ...on a weekday when it usually sells at least this many.
    pub zero_sales_min_daily_units: f64,
    /// How long individual error records stay in the `errors` view (counts are kept forever).
    pub error_retention_ms: i64,
    /// How long a command (by its `issuedAt`) and an acknowledgement (by its timestamp) are kept
    /// in the `commands` view.
    pub command_retention_ms: i64,
    /// An event dated more than this after the ingestion time is refused (a machine's clock
    /// cannot keep state alive into the future).
    pub max_ahead_ms: i64,
    /// In a cluster with checkpoints: the step of the grid of ingestion times at which they may
    /// be taken (see [`crate::aligned`]). None: no cluster checkpoints.
    pub checkpoint_grid_ms: Option<i64>,
    /// The failure model of `maintenance_candidates` (`--maintenance-model`; the built-in one).
    pub maintenance: std::sync::Arc<crate::maintenance::Model>,
}

/// One process of a timely cluster: every process runs [`Config::workers`] workers, and the
/// views are gathered on process 0's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index in `addresses`.
    pub process: usize,
    /// Every process's `host:port`, in process order (timely's hostfile).
    pub addresses: Vec<String>,
}

impl Config {
    /// Processes in the cluster (1 alone).
    pub fn processes(&self) -> usize {
        self.cluster
            .as_ref()
            .map_or(1, |c| c.addresses.len().max(1))
    }

    /// This process's index (0 alone).
    pub fn process(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.process)
    }
}

/// The default of [`Config::window_memory_ms`], in minutes.
pub const WINDOW_MEMORY_MINUTES: i64 = 30;

/// The default of [`Config::day_memory_ms`], in minutes.
pub const DAY_MEMORY_MINUTES: i64 = 60;

/// The default of [`Config::settlement_memory_transactions`].
pub const SETTLEMENT_MEMORY_TRANSACTIONS: usize = 100_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 2,
            cluster: None,
            dedup_horizon_ms: 48 * MS_PER_HOUR,
            restock_dedup_days: 35,
            ledger_retention_days: 400,
            dex_retention_days: 35,
            dex_grace_ms: 10 * MS_PER_MINUTE,
            state_dir: None,
            window_ms: 5 * MS_PER_MINUTE,
            window_retention_ms: 48 * MS_PER_HOUR,
            window_memory_ms: WINDOW_MEMORY_MINUTES * MS_PER_MINUTE,
            cold_views: true,
            revenue_retention_days: 35,
            day_memory_ms: DAY_MEMORY_MINUTES * MS_PER_MINUTE,
            settlement_days: 7,
            settlement_memory_ms: MS_PER_HOUR,
            settlement_memory_transactions: SETTLEMENT_MEMORY_TRANSACTIONS,
            offline_after_ms: 120_000,
            low_stock_percent: 20,
            demand_days: 28,
            demand_index_days: vendflow_forecast::model::INDEX_DAYS,
            holidays: Default::default(),
            restock_within_hours: 48.0,
            signal_baseline_days: 30,
            signal_min_baseline_hours: 72,
            signal_min_readings: 6,
            zero_sales_expected_units: 5.0,
            zero_sales_min_daily_units: 10.0,
            error_retention_ms: MS_PER_DAY,
            command_retention_ms: 7 * MS_PER_DAY,
            max_ahead_ms: 5 * MS_PER_MINUTE,
            checkpoint_grid_ms: None,
            maintenance: crate::maintenance::Model::builtin(),
        }
    }
}

//! The Parquet archive: every accepted raw event, every rejected record, periodic snapshots of
//! the views, and the closed days of the aggregate views, laid out for DuckDB / Spark / pyarrow.
//!
//! ```text
//! <root>/events/date=YYYY-MM-DD/hour=HH/part-<stream>-<from>-<to>.parquet   (event time)
//! <root>/rejected/date=YYYY-MM-DD/hour=HH/part-<stream>-<from>-<to>.parquet (time received)
//! <root>/views/<view>/snapshot-<frontier>.parquet                            (the newest N)
//! <root>/history/<view>/date=YYYY-MM-DD/data.parquet                         (closed days)
//! <root>/history/<view>/date=YYYY-MM-DD/late-arrived-YYYY-MM-DD.parquet      (later corrections)
//! <root>/_positions.json                                                     (next input position per stream)
//! ```
//!
//! # Exactly once
//! The sources hand every input record to the archive with its position in a *stream* (a Kafka
//! topic partition, or one run of the embedded demo). The archive buffers each stream and
//! flushes it every `flush_every` (or `flush_rows`): one file per partition the rows fall in, each
//! named by and recording (`vendflow.stream/from/to` metadata) the positions `[from, to)` it
//! covers; then `_positions.json` advances to `to`. A record below a stream's committed position is
//! already in the archive and is skipped, so a source may re-read from the beginning of its log.
//!
//! A crash (kill -9) can interrupt a flush between its files and the position: on open, files of a
//! stream starting at or past its committed position are removed (they are redone from the
//! input), as are hidden `.tmp` files, so a restart writes every row once. Late events go to their
//! own event-time partition in a new file, never rewriting an old one.
//!
//! # Compaction and retention
//! The writer thread also compacts: a partition with `compact_min_files` or more files becomes
//! one `compacted-*.parquet` (whose `vendflow.replaces` metadata names its inputs, removed after the
//! rename; an interrupted compaction is finished on open). Partitions older than the retention
//! (raw 90 days, aggregates 2 years, counted back from the newest ingestion time) are deleted.
//!
//! # Lifecycle
//! [`Archive::open`] recovers and starts one writer thread; [`ArchiveTap`]s (cheap clones) feed
//! it through a bounded channel, so a slow disk slows the sources instead of growing memory.
//! [`Archive::close`] flushes everything and joins the thread. A failed flush keeps its rows and
//! is retried on the next tick; the error is logged and counted in [`ArchiveStats`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vendflow_dataflows::row::to_batch;
use vendflow_dataflows::{Config, ErrorRecord, Row, Snapshot, Value};
use vendflow_protocol::{Event, Timestamp};

use crate::SinkError;
use crate::files::{
    MS_PER_DAY, date_partition, hour_partition, io, is_hidden, parquet_files, parse_date_partition,
    read_metadata, read_parquet, sync_dir, walk, write_parquet,
};
use crate::rows::{EventRow, RejectedRow, events_batch, rejected_batch};

pub const POSITIONS_FILE: &str = "_positions.json";

/// Where and how the archive writes.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    pub root: PathBuf,
    /// A stream's buffered rows are written at least this often…
    pub flush_every: Duration,
    /// …or as soon as this many rows are buffered.
    pub flush_rows: usize,
    /// A partition with at least this many files is compacted into one.
    pub compact_min_files: usize,
    /// How often compaction and retention run.
    pub compact_every: Duration,
    /// Days of raw events and rejected records kept.
    pub raw_retention_days: i64,
    /// Days of aggregate history kept.
    pub history_retention_days: i64,
    /// View snapshots kept per view (the newest).
    pub snapshots_kept: usize,
    /// The aggregate views whose closed days become history tables.
    pub history: Vec<HistoryTable>,
}

/// An aggregate view archived by day.
#[derive(Clone, Debug)]
pub struct HistoryTable {
    pub view: &'static str,
    /// The `Date` or `Time` column that says which day a row belongs to.
    pub day_column: &'static str,
    /// How long after the start of its day a row stays in the live view (it leaves at
    /// `start + kept_ms`). A day is written while it is closed and still whole in the view, so a
    /// correction (a late sale) rewrites it and the view's own expiry never truncates it.
    pub kept_ms: i64,
    /// A view of what arrived for a day after it left this one (same columns, plus `arrived`,
    /// the day the rows arrived): each (day, arrived) becomes its own file beside the day's, and
    /// SQL sums the day's files.
    pub corrections: Option<&'static str>,
}

impl ArchiveConfig {
    /// The product's defaults for an archive at `root`, with history horizons from `config`.
    pub fn new(root: impl Into<PathBuf>, config: &Config) -> ArchiveConfig {
        ArchiveConfig {
            root: root.into(),
            flush_every: Duration::from_secs(10),
            flush_rows: 200_000,
            compact_min_files: 16,
            compact_every: Duration::from_secs(60),
            raw_retention_days: 90,
            history_retention_days: 730,
            snapshots_kept: 24,
            history: vec![
                HistoryTable {
                    view: "revenue_machine_daily",
                    day_column: "day",
                    kept_ms: (config.revenue_retention_days + 1) * MS_PER_DAY,
                    corrections: Some(vendflow_dataflows::revenue::CORRECTIONS.name),
                },
                HistoryTable {
                    view: "revenue_location_daily",
                    day_column: "day",
                    kept_ms: (config.revenue_retention_days + 1) * MS_PER_DAY,
                    corrections: Some(vendflow_dataflows::revenue::LOCATION_CORRECTIONS.name),
                },
                HistoryTable {
                    view: "revenue_machine_local_daily",
                    day_column: "day",
                    // A local day leaves the view a day after the UTC day of its date.
                    kept_ms: (config.revenue_retention_days + 2) * MS_PER_DAY,
                    corrections: Some(vendflow_dataflows::revenue::LOCAL_CORRECTIONS.name),
                },
                HistoryTable {
                    view: "anomaly_windows",
                    day_column: "window_start",
                    kept_ms: config.window_retention_ms,
                    corrections: None,
                },
                // Card sales for windows already archived, by the day they arrived: that day
                // is whole once it is over, and its rows stay until two days later.
                HistoryTable {
                    view: vendflow_dataflows::anomaly_windows::CORRECTIONS.name,
                    day_column: "arrived",
                    kept_ms: (1 + vendflow_dataflows::revenue::CORRECTIONS_KEPT_DAYS) * MS_PER_DAY,
                    corrections: None,
                },
            ],
        }
    }
}

/// The views archived by day (their history tables are `<view>_history` in SQL).
pub fn history_views() -> Vec<&'static str> {
    ArchiveConfig::new("", &Config::default())
        .history
        .iter()
        .map(|t| t.view)
        .collect()
}

/// The newest complete snapshot of the views in the archive at `root`: its frontier and each
/// view's rows (the newest frontier every view has a `snapshot-<frontier>.parquet` for, so a
/// snapshot interrupted half-way is passed over). `None` when there is none.
#[allow(clippy::type_complexity)]
pub fn newest_snapshot(
    root: &Path,
) -> Result<Option<(Timestamp, Vec<(String, Vec<Row>)>)>, SinkError> {
    let mut common: Option<std::collections::BTreeSet<i64>> = None;
    for def in vendflow_dataflows::CATALOG {
        let dir = root.join("views").join(def.name);
        let frontiers: std::collections::BTreeSet<i64> = if dir.is_dir() {
            parquet_files(&dir)?
                .iter()
                .filter_map(|p| {
                    p.file_name()?
                        .to_str()?
                        .strip_prefix("snapshot-")?
                        .strip_suffix(".parquet")?
                        .parse()
                        .ok()
                })
                .collect()
        } else {
            Default::default()
        };
        common = Some(match common {
            None => frontiers,
            Some(c) => c.intersection(&frontiers).copied().collect(),
        });
    }
    let Some(frontier) = common.and_then(|c| c.last().copied()) else {
        return Ok(None);
    };
    let mut views = Vec::new();
    for def in vendflow_dataflows::CATALOG {
        let path = root
            .join("views")
            .join(def.name)
            .join(format!("snapshot-{frontier:015}.parquet"));
        let (batches, _) = crate::files::read_parquet(&path)?;
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(
                vendflow_dataflows::row::from_batch(def.columns, batch)
                    .map_err(|e| encode_error(def.name, &e))?,
            );
        }
        views.push((def.name.to_owned(), rows));
    }
    Ok(Some((Timestamp(frontier), views)))
}

/// What the archive has done, for logs and `/metrics`.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub files_written: AtomicU64,
    pub events_written: AtomicU64,
    pub rejected_written: AtomicU64,
    /// Records below their stream's committed position: already archived by an earlier run.
    pub skipped: AtomicU64,
    pub compactions: AtomicU64,
    pub partitions_expired: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub history_written: AtomicU64,
    pub errors: AtomicU64,
    /// Next position per stream, as committed in `_positions.json`.
    pub committed: Mutex<BTreeMap<String, i64>>,
}

impl ArchiveStats {
    /// Rows still buffered are not counted; see [`Archive::flush`].
    pub fn line(&self) -> String {
        format!(
            "{} events and {} rejected in {} files, {} compactions, {} snapshots, {} history files, {} errors",
            self.events_written.load(Ordering::Relaxed),
            self.rejected_written.load(Ordering::Relaxed),
            self.files_written.load(Ordering::Relaxed),
            self.compactions.load(Ordering::Relaxed),
            self.snapshots_written.load(Ordering::Relaxed),
            self.history_written.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

enum Msg {
    Record {
        stream: String,
        offset: i64,
        received_at: Timestamp,
        events: Vec<Event>,
        rejected: Vec<ErrorRecord>,
    },
    Views {
        snapshot: Box<Snapshot>,
        positions: String,
        /// Only the history tables (a bulk load's steps), not a snapshot of every view.
        history_only: bool,
    },
    Flush(SyncSender<Result<(), SinkError>>),
    /// Flush and end the writer thread; later records are refused with [`SinkError::Closed`].
    Stop,
}

/// A handle for the sources: hands records (and view snapshots) to the writer thread.
#[derive(Clone)]
pub struct ArchiveTap {
    tx: SyncSender<Msg>,
}

impl ArchiveTap {
    /// Hands over the record at `offset` of `stream`: the events it carried and the records
    /// refused in it. Blocks while the writer is behind; fails only once the archive is closed.
    pub fn record(
        &self,
        stream: &str,
        offset: i64,
        received_at: Timestamp,
        events: Vec<Event>,
        rejected: Vec<ErrorRecord>,
    ) -> Result<(), SinkError> {
        self.tx
            .send(Msg::Record {
                stream: stream_name(stream),
                offset,
                received_at,
                events,
                rejected,
            })
            .map_err(|_| SinkError::Closed)
    }

    /// Hands over a snapshot for the history tables only (its closed days), waiting while the
    /// writer is busy: a bulk load's steps, each of which must be written (its closed days leave
    /// the views soon after).
    pub fn history(&self, snapshot: Snapshot, positions: String) -> Result<(), SinkError> {
        self.send_views(snapshot, positions, true)
    }

    /// Like [`ArchiveTap::views`], waiting while the writer is busy instead of skipping.
    pub fn views_blocking(&self, snapshot: Snapshot, positions: String) -> Result<(), SinkError> {
        self.send_views(snapshot, positions, false)
    }

    fn send_views(
        &self,
        snapshot: Snapshot,
        positions: String,
        history_only: bool,
    ) -> Result<(), SinkError> {
        self.tx
            .send(Msg::Views {
                snapshot: Box::new(snapshot),
                positions,
                history_only,
            })
            .map_err(|_| SinkError::Closed)
    }

    /// Hands over a snapshot of the views, with the input positions it reflects. Skipped (with
    /// `false`) when the writer is busy: the next snapshot will do.
    pub fn views(&self, snapshot: Snapshot, positions: String) -> bool {
        match self.tx.try_send(Msg::Views {
            snapshot: Box::new(snapshot),
            positions,
            history_only: false,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A stream name usable in a file name: `machine-telemetry/3` → `machine-telemetry.3`.
pub fn stream_name(stream: &str) -> String {
    stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '.'
            }
        })
        .collect()
}

/// The archive's writer thread and its handle.
pub struct Archive {
    tap: ArchiveTap,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ArchiveStats>,
    root: PathBuf,
    history: Vec<HistoryTable>,
}

impl Archive {
    /// Recovers the archive at `config.root` (finishing or undoing what a crash interrupted) and
    /// starts its writer thread.
    pub fn open(config: ArchiveConfig) -> Result<Archive, SinkError> {
        let history = config.history.clone();
        // Every table's directory exists from the start, so readers can list an empty table.
        let mut dirs = vec![config.root.join("events"), config.root.join("rejected")];
        dirs.extend(
            config
                .history
                .iter()
                .map(|t| config.root.join("history").join(t.view)),
        );
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let committed = recover(&config.root)?;
        let stats = Arc::new(ArchiveStats::default());
        *stats.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let root = config.root.clone();
        let mut writer = Writer {
            config,
            committed,
            pending: BTreeMap::new(),
            stats: stats.clone(),
            latest_ms: 0,
            last_maintenance: Instant::now(),
            flush_failures: 0,
            retry_at: None,
            history_written: HashMap::new(),
            corrections_written: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("vendflow-archive".into())
            .spawn(move || writer.run(&rx))
            .map_err(io(&root))?;
        Ok(Archive {
            tap: ArchiveTap { tx },
            thread: Some(thread),
            stats,
            root,
            history,
        })
    }

    pub fn tap(&self) -> ArchiveTap {
        self.tap.clone()
    }

    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.stats.clone()
    }

    /// The aggregate views archived by day, with their horizons.
    pub fn history_tables(&self) -> &[HistoryTable] {
        &self.history
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The committed position of `stream`: records before it are in the archive.
    pub fn committed(&self, stream: &str) -> i64 {
        let committed = self
            .stats
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        committed.get(&stream_name(stream)).copied().unwrap_or(0)
    }

    /// Writes everything buffered so far, and waits for it.
    pub fn flush(&self) -> Result<(), SinkError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tap
            .tx
            .send(Msg::Flush(tx))
            .map_err(|_| SinkError::Closed)?;
        rx.recv()
            .map_err(|_| SinkError::Closed)?
            .map_err(|e| SinkError::Flush(Box::new(e)))
    }

    /// Flushes, stops the writer thread and waits for it. Close after stopping the sources:
    /// a tap used after this gets [`SinkError::Closed`].
    pub fn close(mut self) -> Result<Arc<ArchiveStats>, SinkError> {
        let flushed = self.flush();
        let _ = self.tap.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        flushed.map(|()| self.stats.clone())
    }
}

/// One stream's rows since its last flush.
struct Pending {
    from: i64,
    to: i64,
    events: Vec<EventRow>,
    rejected: Vec<RejectedRow>,
    since: Instant,
}

/// The pause after a timed flush first fails; it doubles with each failure after.
const FLUSH_RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between timed flushes that fail.
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(60);

struct Writer {
    config: ArchiveConfig,
    committed: BTreeMap<String, i64>,
    pending: BTreeMap<String, Pending>,
    stats: Arc<ArchiveStats>,
    /// The newest ingestion time seen: retention counts back from it, so a replay of old data
    /// keeps it.
    latest_ms: i64,
    last_maintenance: Instant,
    /// Timed flushes that failed in a row, and when the next may be tried: a full disk is
    /// tried again after a pause that doubles up to [`FLUSH_RETRY_MAX`], not at every tick
    /// (a full 30 MB disk under `vendflow demo` logged 322,064 failures in ten minutes).
    flush_failures: u32,
    retry_at: Option<Instant>,
    /// (view, day) → hash of the rows last written, so an unchanged day is not rewritten.
    history_written: HashMap<(&'static str, i64), u64>,
    /// (view, day, arrived) → hash of the corrections last written.
    corrections_written: HashMap<(&'static str, i64, i64), u64>,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Msg>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Record {
                    stream,
                    offset,
                    received_at,
                    events,
                    rejected,
                }) => self.add(stream, offset, received_at, events, rejected),
                Ok(Msg::Views {
                    snapshot,
                    positions,
                    history_only,
                }) => {
                    if let Err(e) = self.write_views(&snapshot, &positions, history_only) {
                        self.failed("cannot write view snapshots", &e);
                    }
                }
                Ok(Msg::Flush(done)) => {
                    let result = self.flush(|_| true);
                    let _ = done.send(result);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.flush(|_| true) {
                        self.failed("cannot flush the archive at shutdown", &e);
                    }
                    return;
                }
            }
            self.tick();
        }
    }

    fn failed(&self, what: &str, e: &SinkError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "archive: {what}");
    }

    fn add(
        &mut self,
        stream: String,
        offset: i64,
        received_at: Timestamp,
        events: Vec<Event>,
        rejected: Vec<ErrorRecord>,
    ) {
        self.latest_ms = self.latest_ms.max(received_at.0);
        if offset < self.committed.get(&stream).copied().unwrap_or(0) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pending = self.pending.entry(stream).or_insert_with(|| Pending {
            from: offset,
            to: offset,
            events: Vec::new(),
            rejected: Vec::new(),
            since: Instant::now(),
        });
        pending.to = pending.to.max(offset + 1);
        pending
            .events
            .extend(events.into_iter().map(|event| EventRow {
                event,
                received_at,
                offset,
            }));
        pending.rejected.extend(
            rejected
                .into_iter()
                .map(|record| RejectedRow { record, offset }),
        );
    }

    fn tick(&mut self) {
        let (every, rows) = (self.config.flush_every, self.config.flush_rows);
        let due = |p: &Pending| p.since.elapsed() >= every || p.events.len() >= rows;
        let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
        if !waiting && self.pending.values().any(due) {
            match self.flush(due) {
                Ok(()) => {
                    if self.flush_failures > 0 {
                        tracing::info!(
                            failures = self.flush_failures,
                            "archive: flushed again after failing"
                        );
                    }
                    self.flush_failures = 0;
                    self.retry_at = None;
                }
                Err(e) => {
                    self.flush_failures = self.flush_failures.saturating_add(1);
                    let pause = FLUSH_RETRY_FIRST
                        .saturating_mul(1 << (self.flush_failures - 1).min(16))
                        .min(FLUSH_RETRY_MAX);
                    self.retry_at = Some(Instant::now() + pause);
                    self.failed(
                        &format!(
                            "cannot flush (rows kept; try {} again in {:.1} s)",
                            self.flush_failures + 1,
                            pause.as_secs_f64()
                        ),
                        &e,
                    );
                }
            }
        }
        if self.last_maintenance.elapsed() >= self.config.compact_every {
            self.last_maintenance = Instant::now();
            if let Err(e) = self.maintain() {
                self.failed("cannot compact or expire partitions", &e);
            }
        }
    }

    /// Writes the streams `due` picks, each as one file per partition, then commits their
    /// positions. A failure leaves the stream's rows buffered for the next try.
    fn flush(&mut self, due: impl Fn(&Pending) -> bool) -> Result<(), SinkError> {
        let streams: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| due(p))
            .map(|(s, _)| s.clone())
            .collect();
        if streams.is_empty() {
            return Ok(());
        }
        for stream in &streams {
            let Some(pending) = self.pending.get(stream) else {
                continue;
            };
            self.write_pending(stream, pending)?;
            self.committed.insert(stream.clone(), pending.to);
            self.pending.remove(stream);
        }
        self.write_positions()
    }

    fn write_pending(&self, stream: &str, p: &Pending) -> Result<(), SinkError> {
        let name = format!("part-{stream}-{:020}-{:020}.parquet", p.from, p.to);
        let meta = [
            ("vendflow.stream", stream.to_owned()),
            ("vendflow.from", p.from.to_string()),
            ("vendflow.to", p.to.to_string()),
        ];
        let mut events: BTreeMap<String, Vec<&EventRow>> = BTreeMap::new();
        for row in &p.events {
            events
                .entry(hour_partition(row.event.timestamp.0))
                .or_default()
                .push(row);
        }
        for (partition, mut rows) in events {
            rows.sort_by(|a, b| {
                (&a.event.machine_id, a.event.timestamp)
                    .cmp(&(&b.event.machine_id, b.event.timestamp))
            });
            let batch = events_batch(stream, &rows).map_err(|e| encode_error("events", &e))?;
            let path = self.config.root.join("events").join(partition).join(&name);
            write_parquet(&path, &[batch], &meta)?;
            self.count_file(&self.stats.events_written, rows.len());
        }
        let mut rejected: BTreeMap<String, Vec<&RejectedRow>> = BTreeMap::new();
        for row in &p.rejected {
            rejected
                .entry(hour_partition(row.record.received_at.0))
                .or_default()
                .push(row);
        }
        for (partition, rows) in rejected {
            let batch = rejected_batch(stream, &rows).map_err(|e| encode_error("rejected", &e))?;
            let path = self
                .config
                .root
                .join("rejected")
                .join(partition)
                .join(&name);
            write_parquet(&path, &[batch], &meta)?;
            self.count_file(&self.stats.rejected_written, rows.len());
        }
        Ok(())
    }

    fn count_file(&self, counter: &AtomicU64, rows: usize) {
        self.stats.files_written.fetch_add(1, Ordering::Relaxed);
        counter.fetch_add(rows as u64, Ordering::Relaxed);
    }

    fn write_positions(&self) -> Result<(), SinkError> {
        let path = self.config.root.join(POSITIONS_FILE);
        let tmp = crate::files::temporary(&path);
        let json = serde_json::json!({ "streams": self.committed }).to_string();
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.config.root)?;
        *self
            .stats
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.committed.clone();
        Ok(())
    }

    /// Compaction of partitions with many files, then retention.
    fn maintain(&mut self) -> Result<(), SinkError> {
        for kind in ["events", "rejected"] {
            let mut dirs: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
            for file in parquet_files(&self.config.root.join(kind))? {
                if let Some(dir) = file.parent() {
                    dirs.entry(dir.to_path_buf()).or_default().push(file);
                }
            }
            for (dir, files) in dirs {
                if files.len() >= self.config.compact_min_files.max(2) {
                    compact(&dir, &files)?;
                    self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if self.latest_ms > 0 {
            let today = self.latest_ms.div_euclid(MS_PER_DAY);
            let raw = today - self.config.raw_retention_days;
            let history = today - self.config.history_retention_days;
            let mut expired = expire(&self.config.root.join("events"), raw)?;
            expired += expire(&self.config.root.join("rejected"), raw)?;
            for table in &self.config.history {
                expired += expire(&self.config.root.join("history").join(table.view), history)?;
            }
            self.stats
                .partitions_expired
                .fetch_add(expired, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A snapshot of every view, and the closed days of the history views that changed.
    fn write_views(
        &mut self,
        snapshot: &Snapshot,
        positions: &str,
        history_only: bool,
    ) -> Result<(), SinkError> {
        let frontier = snapshot.frontier.ms();
        let meta = [
            ("vendflow.frontier", frontier.to_string()),
            ("vendflow.positions", positions.to_owned()),
        ];
        if history_only {
            for table in self.config.history.clone() {
                self.write_history(snapshot, &table, frontier, &meta)?;
            }
            return Ok(());
        }
        let batches = snapshot.batches().map_err(|e| SinkError::Encode {
            view: "snapshot".into(),
            message: e.to_string(),
        })?;
        for (def, batch) in batches {
            let dir = self.config.root.join("views").join(def.name);
            write_parquet(
                &dir.join(format!("snapshot-{frontier:015}.parquet")),
                &[batch],
                &meta,
            )?;
            self.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
            let files = parquet_files(&dir)?;
            let excess = files
                .len()
                .saturating_sub(self.config.snapshots_kept.max(1));
            for old in &files[..excess] {
                std::fs::remove_file(old).map_err(io(old))?;
            }
        }
        for table in self.config.history.clone() {
            self.write_history(snapshot, &table, frontier, &meta)?;
        }
        Ok(())
    }

    fn write_history(
        &mut self,
        snapshot: &Snapshot,
        table: &HistoryTable,
        frontier: i64,
        meta: &[(&str, String)],
    ) -> Result<(), SinkError> {
        let Some(def) = vendflow_dataflows::CATALOG
            .iter()
            .find(|d| d.name == table.view)
        else {
            return Ok(());
        };
        let Some(column) = def.column(table.day_column) else {
            return Ok(());
        };
        let rows = snapshot.rows(table.view).map_err(|e| SinkError::Encode {
            view: table.view.into(),
            message: e.to_string(),
        })?;
        let mut days: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
        for row in rows {
            let day = match row.get(column) {
                Some(Value::Date(d)) => d,
                Some(Value::Time(t)) => t.0.div_euclid(MS_PER_DAY),
                _ => continue,
            };
            days.entry(day).or_default().push(row);
        }
        for (day, rows) in days {
            let start = day * MS_PER_DAY;
            // Closed, and still whole in the view (at a frontier equal to the day's expiry, the
            // view still holds it: only times before the frontier are reflected).
            if frontier < start + MS_PER_DAY || frontier > start + table.kept_ms {
                continue;
            }
            let hash = hash_rows(&rows);
            if self.history_written.get(&(table.view, day)) == Some(&hash) {
                continue;
            }
            let batch = to_batch(def.columns, rows.iter().copied())
                .map_err(|e| encode_error(def.name, &e))?;
            let path = self.history_file(table.view, day, "data.parquet");
            write_parquet(&path, &[batch], meta)?;
            self.history_written.insert((table.view, day), hash);
            self.stats.history_written.fetch_add(1, Ordering::Relaxed);
        }
        // Forget days that can no longer change.
        self.history_written.retain(|(view, day), _| {
            *view != table.view || frontier <= day * MS_PER_DAY + table.kept_ms
        });
        if let Some(corrections) = table.corrections {
            self.write_corrections(snapshot, table, def, corrections, frontier, meta)?;
        }
        Ok(())
    }

    /// `history/<view>/date=<day>/<name>`.
    fn history_file(&self, view: &str, day: i64, name: &str) -> PathBuf {
        self.config
            .root
            .join("history")
            .join(view)
            .join(date_partition(day))
            .join(name)
    }

    /// The corrections of `table`'s closed days, one file per (day, arrival day), with the
    /// table's own columns.
    fn write_corrections(
        &mut self,
        snapshot: &Snapshot,
        table: &HistoryTable,
        def: &'static vendflow_dataflows::ViewDef,
        view: &'static str,
        frontier: i64,
        meta: &[(&str, String)],
    ) -> Result<(), SinkError> {
        let Some((_, source)) = vendflow_dataflows::views::find(view) else {
            return Ok(());
        };
        let (Some(day_at), Some(arrived_at)) =
            (source.column(table.day_column), source.column("arrived"))
        else {
            return Ok(());
        };
        // The table's columns, read from the corrections' rows by name.
        let columns: Option<Vec<usize>> =
            def.columns.iter().map(|c| source.column(c.name)).collect();
        let Some(columns) = columns else {
            return Ok(());
        };
        let rows = snapshot.rows(view).map_err(|e| SinkError::Encode {
            view: view.into(),
            message: e.to_string(),
        })?;
        let mut groups: BTreeMap<(i64, i64), Vec<Row>> = BTreeMap::new();
        for row in rows {
            let (Some(Value::Date(day)), Some(Value::Date(arrived))) =
                (row.get(day_at), row.get(arrived_at))
            else {
                continue;
            };
            let projected: Row = columns
                .iter()
                .map(|c| row.get(*c).unwrap_or(Value::Null))
                .collect::<Vec<_>>()
                .into();
            groups.entry((day, arrived)).or_default().push(projected);
        }
        for ((day, arrived), rows) in groups {
            let hash = hash_rows(&rows);
            if self.corrections_written.get(&(table.view, day, arrived)) == Some(&hash) {
                continue;
            }
            let batch =
                to_batch(def.columns, rows.iter()).map_err(|e| encode_error(def.name, &e))?;
            let name = format!(
                "late-arrived-{}.parquet",
                vendflow_protocol::units::format_day(arrived)
            );
            let path = self.history_file(table.view, day, &name);
            write_parquet(&path, &[batch], meta)?;
            self.corrections_written
                .insert((table.view, day, arrived), hash);
            self.stats.history_written.fetch_add(1, Ordering::Relaxed);
        }
        // A correction row leaves its view two days after it arrived; forget it a day later.
        let kept = (vendflow_dataflows::revenue::CORRECTIONS_KEPT_DAYS + 2) * MS_PER_DAY;
        self.corrections_written.retain(|(v, _, arrived), _| {
            *v != table.view || frontier < arrived * MS_PER_DAY + kept
        });
        Ok(())
    }
}

/// A fingerprint of a day's rows, to skip rewriting a file whose rows did not change.
fn hash_rows<R: Hash>(rows: &[R]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rows.hash(&mut hasher);
    hasher.finish()
}

fn encode_error(what: &str, e: &arrow_schema::ArrowError) -> SinkError {
    SinkError::Encode {
        view: what.into(),
        message: e.to_string(),
    }
}

/// `(stream, from, to)` of a `part-<stream>-<from>-<to>.parquet` file name.
fn parse_part(name: &str) -> Option<(&str, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = rest.rsplitn(3, '-');
    let to = parts.next()?.parse().ok()?;
    let from = parts.next()?.parse().ok()?;
    Some((parts.next()?, from, to))
}

/// Reads the committed positions and puts the files back in a state they agree with: hidden
/// temporary files removed, interrupted compactions finished, and files of flushes that did not
/// commit removed.
fn recover(root: &Path) -> Result<BTreeMap<String, i64>, SinkError> {
    let path = root.join(POSITIONS_FILE);
    let committed: BTreeMap<String, i64> = match std::fs::read(&path) {
        Ok(bytes) => {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| SinkError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            serde_json::from_value(value["streams"].clone()).map_err(|e| SinkError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut temporaries = Vec::new();
    walk(root, &mut |p| {
        if is_hidden(p) && p.extension().is_some_and(|e| e == "tmp") {
            temporaries.push(p.to_path_buf());
        }
    })?;
    for tmp in &temporaries {
        std::fs::remove_file(tmp).map_err(io(tmp))?;
    }
    let mut undone = 0;
    for kind in ["events", "rejected"] {
        let files = parquet_files(&root.join(kind))?;
        for file in &files {
            let name = file_name(file);
            if name.starts_with("compacted-") {
                let (_, meta) = read_metadata(file)?;
                let replaces = meta
                    .iter()
                    .find(|(k, _)| k == "vendflow.replaces")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                for input in replaces.split(',').filter(|s| !s.is_empty()) {
                    let input = file.with_file_name(input);
                    if input.exists() {
                        std::fs::remove_file(&input).map_err(io(&input))?;
                    }
                }
            }
        }
        for file in parquet_files(&root.join(kind))? {
            if let Some((stream, from, _)) = parse_part(&file_name(&file))
                && from >= committed.get(stream).copied().unwrap_or(0)
            {
                std::fs::remove_file(&file).map_err(io(&file))?;
                undone += 1;
            }
        }
    }
    if !temporaries.is_empty() || undone > 0 {
        tracing::warn!(
            temporaries = temporaries.len(),
            uncommitted = undone,
            "archive: removed what an interrupted run left; it is rewritten from the input"
        );
    }
    Ok(committed)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Rewrites `files` (one partition) as one file, then removes them.
fn compact(dir: &Path, files: &[PathBuf]) -> Result<(), SinkError> {
    let mut batches = Vec::new();
    let mut covers = Vec::new();
    for file in files {
        let (b, meta) = read_parquet(file)?;
        batches.extend(b);
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        match (
            get("vendflow.stream"),
            get("vendflow.from"),
            get("vendflow.to"),
        ) {
            (Some(s), Some(f), Some(t)) => covers.push(format!("{s}:{f}-{t}")),
            _ => covers.extend(get("vendflow.covers")),
        }
    }
    let names: Vec<String> = files.iter().map(|f| file_name(f)).collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let target = dir.join(format!("compacted-{stamp:032}.parquet"));
    write_parquet(
        &target,
        &batches,
        &[
            ("vendflow.replaces", names.join(",")),
            ("vendflow.covers", covers.join(",")),
        ],
    )?;
    for file in files {
        std::fs::remove_file(file).map_err(io(file))?;
    }
    sync_dir(dir)?;
    tracing::debug!(dir = %dir.display(), files = files.len(), "archive: compacted");
    Ok(())
}

/// Removes `date=` partitions under `dir` older than `oldest_day`; returns how many.
fn expire(dir: &Path, oldest_day: i64) -> Result<u64, SinkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_date_partition(&name).is_some_and(|day| day < oldest_day) {
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow_array::{Array, Int64Array, StringArray};
    use vendflow_dataflows::{Batch, Engine};
    use vendflow_protocol::{Cents, EventKind, MachineId, Sale};

    use super::*;

    const T0: i64 = 1_710_000_000_000; // 2024-03-09T16:00:00Z
    const HOUR: i64 = 3_600_000;

    fn sale(machine: u32, at: i64, txn: u64) -> Event {
        Event {
            machine_id: MachineId::parse(&format!("mach_{machine:05}"))
                .unwrap_or_else(|e| panic!("{e}")),
            timestamp: Timestamp(at),
            seq: Some(txn),
            kind: EventKind::Sale(Sale {
                slot_number: 3,
                product_id: "cola".into(),
                amount: Cents(250),
                quantity: 1,
                payment_method: "card".into(),
                transaction_id: format!("t{txn}").into(),
                offline: false,
            }),
        }
    }

    fn config(root: &Path) -> ArchiveConfig {
        ArchiveConfig {
            flush_every: Duration::from_secs(3600),
            compact_every: Duration::from_secs(3600),
            ..ArchiveConfig::new(root, &Config::default())
        }
    }

    /// Offsets `range` of stream `t/0`: message `o` carries one sale at `T0 + o minutes`, and
    /// every tenth message also a refused record.
    fn feed(tap: &ArchiveTap, range: std::ops::Range<i64>) {
        for o in range {
            let event = sale((o % 7) as u32, T0 + o * 60_000, o as u64);
            let rejected = if o % 10 == 0 {
                vec![ErrorRecord {
                    received_at: Timestamp(T0 + o * 60_000),
                    source: "mqtt:machines/x/telemetry".into(),
                    kind: "syntax".into(),
                    message: "not JSON".into(),
                    raw: "{".into(),
                }]
            } else {
                Vec::new()
            };
            tap.record("t/0", o, Timestamp(T0 + o * 60_000), vec![event], rejected)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// (offset, rows) of every archived event, from the files.
    fn archived(root: &Path, kind: &str) -> Vec<i64> {
        let mut offsets = Vec::new();
        for file in parquet_files(&root.join(kind)).unwrap_or_else(|e| panic!("{e}")) {
            let (batches, _) = read_parquet(&file).unwrap_or_else(|e| panic!("{e}"));
            for b in batches {
                let col = b
                    .column_by_name("offset")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .unwrap_or_else(|| panic!("no offset column"));
                offsets.extend(col.values().iter().copied());
            }
        }
        offsets.sort_unstable();
        offsets
    }

    fn visible_tmp(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        walk(root, &mut |p| {
            if p.extension().is_some_and(|e| e == "tmp") {
                found.push(p.to_path_buf());
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        found
    }

    /// A flush that fails (here the events' directory is a file, as a full disk fails every
    /// write) keeps its rows and is tried again after a pause that doubles, not at every tick;
    /// once the directory is back, every row is written.
    #[test]
    fn a_failing_flush_is_tried_again_after_a_growing_pause() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(ArchiveConfig {
            flush_every: Duration::ZERO,
            ..config(dir.path())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let events = dir.path().join("events");
        std::fs::remove_dir_all(&events).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&events, b"not a directory").unwrap_or_else(|e| panic!("{e}"));
        feed(&archive.tap(), 0..50);
        // Ticks every 100 ms: 25 in 2.5 s. Pauses of 0.5, 1 and 2 s allow 3 tries.
        std::thread::sleep(Duration::from_millis(2_500));
        let tries = archive.stats.errors.load(Ordering::Relaxed);
        assert!(
            (1..=3).contains(&tries),
            "{tries} failed flushes in 2.5 s: tried at every tick?"
        );
        std::fs::remove_file(&events).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&events).unwrap_or_else(|e| panic!("{e}"));
        archive.close().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(archived(dir.path(), "events"), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn reading_the_input_again_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        feed(&archive.tap(), 0..100);
        archive.close().unwrap_or_else(|e| panic!("{e}"));
        // A restarted source reads its log from the beginning, and further.
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(archive.committed("t/0"), 100);
        feed(&archive.tap(), 0..130);
        let stats = archive.close().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 100);
        assert_eq!(archived(dir.path(), "events"), (0..130).collect::<Vec<_>>());
        assert_eq!(
            archived(dir.path(), "rejected"),
            (0..130).filter(|o| o % 10 == 0).collect::<Vec<_>>()
        );
        // Partitions by event hour: 130 minutes from 16:00 span hours 16, 17 and 18.
        let hours: BTreeSet<String> = parquet_files(&dir.path().join("events"))
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .filter_map(|f| {
                f.parent()?
                    .strip_prefix(dir.path())
                    .ok()
                    .map(|p| p.display().to_string())
            })
            .collect();
        assert_eq!(
            hours.into_iter().collect::<Vec<_>>(),
            [
                "events/date=2024-03-09/hour=16",
                "events/date=2024-03-09/hour=17",
                "events/date=2024-03-09/hour=18"
            ]
        );
    }

    #[test]
    fn an_interrupted_flush_is_undone_and_redone_from_the_input() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        feed(&archive.tap(), 0..50);
        archive.close().unwrap_or_else(|e| panic!("{e}"));
        // What a kill -9 in the middle of the next flush leaves: one file of offsets 50..60
        // renamed before the position was committed, and a half-written temporary.
        let partition = dir.path().join("events/date=2024-03-09/hour=16");
        let committed = partition.join(format!("part-t.0-{:020}-{:020}.parquet", 0, 50));
        let orphan = partition.join(format!("part-t.0-{:020}-{:020}.parquet", 50, 60));
        std::fs::copy(&committed, &orphan).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(partition.join(".part-t.0-x.parquet.tmp"), b"PAR1")
            .unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !orphan.exists(),
            "a file past the committed position is undone"
        );
        assert!(visible_tmp(dir.path()).is_empty());
        feed(&archive.tap(), 0..60);
        archive.close().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(archived(dir.path(), "events"), (0..60).collect::<Vec<_>>());
    }

    #[test]
    fn a_late_event_goes_to_its_own_hour_in_a_new_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        feed(&archive.tap(), 0..10);
        archive.flush().unwrap_or_else(|e| panic!("{e}"));
        let early = dir.path().join("events/date=2024-03-09/hour=16");
        let before = parquet_files(&early).unwrap_or_else(|e| panic!("{e}"));
        // Offset 10 arrives now but happened at 16:05: a sale from an offline buffer.
        archive
            .tap()
            .record(
                "t/0",
                10,
                Timestamp(T0 + 5 * HOUR),
                vec![sale(1, T0 + 5 * 60_000, 999)],
                vec![],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        archive.close().unwrap_or_else(|e| panic!("{e}"));
        let after = parquet_files(&early).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(after.len(), before.len() + 1);
        assert!(
            before.iter().all(|f| after.contains(f)),
            "old files are not rewritten"
        );
    }

    #[test]
    fn compaction_leaves_one_file_per_partition_and_every_row_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        for chunk in 0..4 {
            feed(&archive.tap(), chunk * 10..chunk * 10 + 10);
            archive.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        archive.close().unwrap_or_else(|e| panic!("{e}"));
        let partition = dir.path().join("events/date=2024-03-09/hour=16");
        let inputs = parquet_files(&partition).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inputs.len(), 4);
        let aside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for f in &inputs {
            std::fs::copy(f, aside.path().join(file_name(f))).unwrap_or_else(|e| panic!("{e}"));
        }
        compact(&partition, &inputs).unwrap_or_else(|e| panic!("{e}"));
        let compacted = parquet_files(&partition).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compacted.len(), 1);
        assert!(file_name(&compacted[0]).starts_with("compacted-"));
        assert_eq!(archived(dir.path(), "events"), (0..40).collect::<Vec<_>>());
        // A compaction killed after its rename but before removing its inputs is finished on open.
        for f in &inputs {
            std::fs::copy(aside.path().join(file_name(f)), f).unwrap_or_else(|e| panic!("{e}"));
        }
        Archive::open(config(dir.path()))
            .and_then(Archive::close)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parquet_files(&partition).unwrap_or_else(|e| panic!("{e}")),
            compacted
        );
        assert_eq!(archived(dir.path(), "events"), (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn the_writer_compacts_and_expires_partitions_on_its_own() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(ArchiveConfig {
            compact_min_files: 3,
            compact_every: Duration::ZERO,
            ..config(dir.path())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let tap = archive.tap();
        // 100 days before the rest: past the 90-day retention.
        tap.record(
            "t/0",
            0,
            Timestamp(T0),
            vec![sale(1, T0 - 100 * MS_PER_DAY, 1)],
            vec![],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for chunk in 0..3 {
            feed(&tap, 1 + chunk * 5..6 + chunk * 5);
            archive.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let stats = archive.close().unwrap_or_else(|e| panic!("{e}"));
        assert!(stats.compactions.load(Ordering::Relaxed) >= 1);
        assert!(stats.partitions_expired.load(Ordering::Relaxed) >= 1);
        let files = parquet_files(&dir.path().join("events")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(archived(dir.path(), "events"), (1..16).collect::<Vec<_>>());
    }

    #[test]
    fn closed_days_of_revenue_become_history_and_views_are_snapshotted() {
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders taken"));
        let day = T0.div_euclid(MS_PER_DAY);
        let events = vec![
            sale(1, T0, 1),
            sale(2, T0 + HOUR, 2),
            sale(1, T0 + 30 * HOUR, 3),
            // 40 days late: its day left the live revenue (35 days) long ago.
            sale(2, T0 - 40 * MS_PER_DAY, 4),
        ];
        let at = Timestamp(T0 + 31 * HOUR);
        feeders
            .send(
                at,
                Batch {
                    events,
                    ..Batch::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feeders
            .advance_all(at + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.wait_for(at + 1, Duration::from_secs(60)));
        let snapshot = store.snapshot();
        drop(feeders);
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let archive = Archive::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert!(archive.tap().views(snapshot, "t/0=3".into()));
        let stats = archive.close().unwrap_or_else(|e| panic!("{e}"));
        // Day one is closed: its history is written; day two is still open.
        let history = dir.path().join("history/revenue_machine_daily");
        let files = parquet_files(&history).unwrap_or_else(|e| panic!("{e}"));
        let arrived = vendflow_protocol::units::format_day(at.day());
        assert_eq!(
            files,
            [
                history
                    .join(date_partition(day - 40))
                    .join(format!("late-arrived-{arrived}.parquet")),
                history.join(date_partition(day)).join("data.parquet"),
            ]
        );
        let files = &files[1..];
        let (batches, meta) = read_parquet(&files[0]).unwrap_or_else(|e| panic!("{e}"));
        let machines: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let c = b
                    .column_by_name("machine_id")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
                c.map(|c| {
                    (0..c.len())
                        .map(|i| c.value(i).to_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
            })
            .collect();
        assert_eq!(machines, ["mach_00001", "mach_00002"]);
        assert!(meta.contains(&("vendflow.positions".into(), "t/0=3".into())));
        // Day one of each history table: revenue per machine, per location, per machine's local
        // day, and the windows the sales' card payments opened; and the late sale's correction
        // of the three revenues.
        assert_eq!(stats.history_written.load(Ordering::Relaxed), 7);
        let local = dir.path().join("history/revenue_machine_local_daily");
        assert_eq!(
            parquet_files(&local).unwrap_or_else(|e| panic!("{e}")),
            [
                local
                    .join(date_partition(day - 40))
                    .join(format!("late-arrived-{arrived}.parquet")),
                local.join(date_partition(day)).join("data.parquet"),
            ]
        );
        let snapshots = parquet_files(&dir.path().join("views")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshots.len(), vendflow_dataflows::CATALOG.len());
    }
}

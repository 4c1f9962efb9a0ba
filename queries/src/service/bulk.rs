//! Bulk loads: a recorded file (telemetry, or an import converted to it) through the engine,
//! optionally into the Parquet archive, for `vendflow replay` and `vendflow import`.
//!
//! Without an archive, a load ends with the views as of its last event (the caller writes them
//! as CSV). With one ([`BulkLoad::archive`]), every line also goes to the archive's raw events,
//! and the load takes a *history step* at every midnight of its clock: the readers stop there
//! ([`Pacer`]) until the archive has a snapshot at exactly that frontier, in which a day about
//! to leave the daily views is still whole and final. So a months-long history lands day by day in
//! `history/`, and `revenue_by_machine_day` over SQL covers all of it. The load ends with a full
//! snapshot of every view (`views/`), which `vendflow sql --archive` serves as the live views.
//!
//! With a state directory ([`BulkLoad::state`], `vendflow replay --state DIR`), the load ends
//! with a checkpoint of the engine at its last event instead of letting go of the workers'
//! state: a live engine (`vendflow run --state DIR`) starts from the history's state and reads
//! the Kafka log from its beginning (the checkpoint holds no log positions).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vendflow_dataflows::checkpoint::file::{Checkpoint, CheckpointDir};
use vendflow_dataflows::{Batch, Config, Engine, Time, ViewStore};
use vendflow_ingest::file::{
    Pacer, ReplayOptions, ReplayStats, load_commands, load_registry, replay,
};
use vendflow_sinks::archive::{Archive, ArchiveConfig};

use super::{ServiceError, archive_tap};

/// The options of `vendflow replay`: a recorded file through every view.
#[derive(clap::Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Events, one per line (or an envelope per line), as recorded or generated.
    pub file: PathBuf,
    /// Directory for `<view>.csv` (created if missing).
    #[arg(long, short, required_unless_present_any = ["archive", "state"])]
    pub out: Option<PathBuf>,
    /// Parquet archive directory (created if missing): raw events, the history of the daily
    /// views, and a final snapshot of every view.
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Registry records (machines, locations, leases) as JSON Lines.
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Commands sent to the machines (JSON Lines, as on `machine-commands`), so that the
    /// acknowledgements in the file find their commands in the `commands` view.
    #[arg(long)]
    pub commands: Option<PathBuf>,
    /// Granularity of the ingestion clock in milliseconds: the events of one tick are
    /// ingested together, and each view changes once per key and tick. Default: 3600000
    /// (one hour of event time, a bulk load's steps; also the most it takes), or 1000 with
    /// --rate (as live).
    #[arg(long)]
    pub tick_ms: Option<i64>,
    /// Replay the file this many times, each copy shifted later in event time (load tests).
    #[arg(long, default_value_t = 1, hide = true)]
    pub repeat: u32,
    /// Hours between copies with --repeat.
    #[arg(long, default_value_t = 24, hide = true)]
    pub repeat_shift_hours: i64,
    /// Minutes between copies with --repeat (instead of --repeat-shift-hours): copies that
    /// overlap in event time, the same machines at a multiple of their rate.
    #[arg(long, hide = true)]
    pub repeat_shift_minutes: Option<i64>,
    /// Pace the replay at this many events per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the engine's state at the end of the file into this directory, as the checkpoint
    /// `vendflow run --state DIR` starts from: a live engine that begins with the history's
    /// state (its days, windows, baselines, sale lines and parked state) and reads the Kafka
    /// log from its beginning, so the log should start where the file ends (a sale line or
    /// event in both is recognised as a re-delivery within the dedup horizons). The directory
    /// must hold no checkpoint yet; start `run` with the same --workers. Not with --archive,
    /// --registry or --commands: a live engine takes its registry and commands from Kafka.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["archive", "registry", "commands"])]
    pub state: Option<PathBuf>,
}

impl ReplayArgs {
    /// The load these options ask for, with the archive's settings for `engine`.
    pub fn load(&self, engine: &Config) -> Result<BulkLoad<'_>, ServiceError> {
        if let Some(tick) = self.tick_ms
            && !(1..=vendflow_ingest::file::BULK_TICK_MS).contains(&tick)
        {
            return Err(ServiceError::Config(format!(
                "--tick-ms must be between 1 and {} (one hour: the finest grain of the hourly views)",
                vendflow_ingest::file::BULK_TICK_MS
            )));
        }
        let options = ReplayOptions {
            tick_ms: self.tick_ms,
            repeat: self.repeat,
            repeat_shift_ms: self.repeat_shift_minutes.map_or(
                self.repeat_shift_hours
                    .saturating_mul(vendflow_protocol::units::MS_PER_HOUR),
                |m| m.saturating_mul(60_000),
            ),
            rate: self.rate,
            ..ReplayOptions::default()
        };
        Ok(BulkLoad {
            file: &self.file,
            registry: self.registry.as_deref(),
            commands: self.commands.as_deref(),
            archive: self
                .archive
                .as_ref()
                .map(|root| ArchiveConfig::new(root, engine)),
            options,
            registry_records: Vec::new(),
            errors: Vec::new(),
            state: self.state.as_deref(),
        })
    }
}

/// What to load and where.
pub struct BulkLoad<'a> {
    pub file: &'a Path,
    /// Registry records (machines, locations, leases) as JSON Lines, ingested first.
    pub registry: Option<&'a Path>,
    /// Commands as sent on `machine-commands` (JSON Lines), ingested first with the registry.
    pub commands: Option<&'a Path>,
    pub archive: Option<ArchiveConfig>,
    pub options: ReplayOptions,
    /// Registry records and error records to ingest first (an import's machines and refused
    /// rows).
    pub registry_records: Vec<vendflow_protocol::RegistryRecord>,
    pub errors: Vec<vendflow_dataflows::ErrorRecord>,
    /// Where to write the engine's state at the end, as a checkpoint a live engine starts
    /// from (a directory that holds no checkpoint yet).
    pub state: Option<&'a Path>,
}

/// A finished load: the engine (still running, its views final), and what it read.
pub struct Loaded {
    pub engine: Engine,
    pub store: ViewStore,
    pub stats: ReplayStats,
    /// From the start of the load until every view reflected the last event.
    pub elapsed: Duration,
    /// Registry and command lines refused (also in `error_counts`), to report to the user.
    pub refused: Vec<vendflow_dataflows::ErrorRecord>,
    /// The archive's directory, what it wrote, and the history steps taken.
    pub archive: Option<(PathBuf, String, u64)>,
    /// The checkpoint of the state written (`--state`), its size, and how long taking the
    /// state and writing it took (after `elapsed`).
    pub state: Option<(PathBuf, u64, Duration, Duration)>,
    /// The workers the state was taken with (`run` must start with as many).
    pub workers: usize,
}

/// [`load`] with a progress bar of the bytes read (on stderr, hidden when it is not a terminal).
pub fn load_with_progress(config: Config, load: BulkLoad<'_>) -> Result<Loaded, ServiceError> {
    let size = std::fs::metadata(load.file)
        .map_err(|source| ServiceError::Io {
            what: format!("cannot read {}", load.file.display()),
            source,
        })?
        .len();
    let bar = indicatif::ProgressBar::new(size * u64::from(load.options.repeat.max(1)));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (progress, bar) = (progress.clone(), bar.clone());
        std::thread::spawn(move || {
            while !bar.is_finished() {
                bar.set_position(progress.load(Ordering::Relaxed));
                // Woken at the end rather than slept out: a sleep here kept every load 0.1 s
                // longer than its work (6 % of the 1 M benchmark's replay at two workers).
                std::thread::park_timeout(Duration::from_millis(100));
            }
        })
    };
    let loaded = self::load(config, load, progress.clone());
    bar.set_position(progress.load(Ordering::Relaxed));
    bar.finish_and_clear();
    watcher.thread().unpark();
    let _ = watcher.join();
    loaded
}

impl Loaded {
    /// Writes the final views as CSV into `out` (when given) and says what the load did, a
    /// line each: events and their rate, each CSV, the archive, late arrivals, peak memory.
    /// The process is expected to end right after: the engine's workers are not drained.
    /// The refused registry and command lines, for stderr: a typo the user must see now (the
    /// `errors` view keeps the last day of the replay's clock, which a file loaded first may
    /// not reach). The first 20, then how many more.
    pub fn refusals(&self) -> Vec<String> {
        let mut lines: Vec<String> = (self.refused.iter().take(20))
            .map(|r| format!("refused {}: {}", r.source, r.message))
            .collect();
        if self.refused.len() > 20 {
            lines.push(format!(
                "... and {} more refused registry or command lines (see the error_counts view)",
                self.refused.len() - 20
            ));
        }
        lines
    }

    pub fn report(self, out: Option<&Path>) -> Result<Vec<String>, ServiceError> {
        let (stats, elapsed) = (&self.stats, self.elapsed);
        // The snapshot's sort counts as writing: it is only done for the CSVs.
        let written_at = Instant::now();
        let written = match out {
            Some(out) => vendflow_sinks::csv::write_store(&self.store, out)?,
            None => Vec::new(),
        };
        let csv = written_at.elapsed();
        // The process ends right after: no need to drain the workers and free their state.
        self.engine.abandon_at_exit();
        let mut lines = vec![format!(
            "replayed {} events from {} lines in {:.2}s ({:.0} events/s); {} refused; CSVs written in {:.2}s",
            stats.counts.events,
            stats.counts.messages,
            elapsed.as_secs_f64(),
            stats.counts.events as f64 / elapsed.as_secs_f64().max(1e-9),
            stats.counts.refused,
            csv.as_secs_f64()
        )];
        lines.extend(
            written
                .iter()
                .map(|w| format!("  {:>9} rows  {}", w.rows, w.path.display())),
        );
        if let Some((root, line, steps)) = &self.archive {
            lines.push(format!(
                "archive {}: {line}; {steps} history steps",
                root.display()
            ));
        }
        if let Some((path, bytes, taken, write)) = &self.state {
            let dir = path.parent().unwrap_or(path);
            lines.push(format!(
                "state at the file's end written to {} ({:.1} MiB, taken in {:.2}s, written in {:.2}s): `vendflow --workers {} run --state {} ...` starts from it and reads the Kafka log from its beginning",
                path.display(),
                *bytes as f64 / (1u64 << 20) as f64,
                taken.as_secs_f64(),
                write.as_secs_f64(),
                self.workers,
                dir.display()
            ));
        }
        let late = vendflow_dataflows::errors::too_late_summary(&self.store);
        if !late.is_empty() {
            lines.push(format!(
                "late arrivals (counted, see the too_late view): {late}"
            ));
        }
        if let Some(bytes) = vendflow_dataflows::peak_rss_bytes() {
            lines.push(format!("peak memory {} MiB", bytes >> 20));
        }
        Ok(lines)
    }
}

/// Loads `load.file`; `progress` counts the bytes read.
pub fn load(
    config: Config,
    load: BulkLoad<'_>,
    progress: Arc<AtomicU64>,
) -> Result<Loaded, ServiceError> {
    let started = Instant::now();
    // Refused before the load, not after an hour of it.
    let state = load.state.map(empty_state_dir).transpose()?;
    let workers = config.workers.max(1);
    // Every row is written out at the end: the store keeps them in memory meanwhile.
    let config = Config {
        cold_views: false,
        ..config
    };
    let mut engine = Engine::start(config)?;
    let store = engine.store();
    let mut feeders = engine
        .feeders()
        .ok_or_else(|| ServiceError::Internal("engine feeders already taken".into()))?;
    let mut refused = Vec::new();
    let mut first = Batch {
        registry: load.registry_records.into_iter().map(|r| (r, 1)).collect(),
        ..Batch::default()
    };
    // Refused records of the files that come with the replay go with its first batch, stamped at
    // its time (see `ReplayOptions::refused_before`).
    let mut refused_before = load.errors;
    if let Some(path) = load.registry {
        let (records, errors) = load_registry(path)?;
        refused.extend(errors.iter().cloned());
        first.registry.extend(records.into_iter().map(|r| (r, 1)));
        refused_before.extend(errors);
    }
    if let Some(path) = load.commands {
        let (commands, errors) = load_commands(path)?;
        refused.extend(errors.iter().cloned());
        first.commands.extend(commands);
        refused_before.extend(errors);
    }
    if !first.is_empty() {
        feeders.send(Time::EPOCH, first)?;
    }
    let mut options = load.options;
    options.refused_before.extend(refused_before);
    let archive = load.archive.map(Archive::open).transpose()?;
    let steps = Arc::new(AtomicU64::new(0));
    let mut archiver = None;
    if let Some(archive) = &archive {
        let pacer = Arc::new(Pacer::new(vendflow_protocol::units::MS_PER_DAY));
        options.pacer = Some(pacer.clone());
        options.tap = Some(archive_tap(archive));
        let stop = Arc::new(AtomicBool::new(false));
        let (tap, store, steps, name) = (
            archive.tap(),
            store.clone(),
            steps.clone(),
            load.file.display().to_string(),
        );
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("vendflow-bulk-history".into())
            .spawn(move || {
                let result = history_steps(&store, &tap, &pacer, &name, &steps, &thread_stop);
                pacer.release();
                result
            })
            .map_err(|e| ServiceError::Internal(format!("cannot start the archiver: {e}")))?;
        archiver = Some((stop, handle));
    }
    // A clone of the feeders takes the checkpoint once the readers are done.
    let mut checkpointing = state.map(|dir| (dir, feeders.clone()));
    let stats = replay(load.file, feeders, &options, progress);
    let mut written = None;
    let mut elapsed = None;
    let caught_up = match (&stats, checkpointing.as_mut()) {
        (Ok(s), Some((dir, feeders))) => {
            // The load's time ends with every view at the end, before the state is taken.
            let caught_up = store.wait_for(s.end, Duration::from_secs(24 * 3600));
            elapsed = Some(started.elapsed());
            let taking = Instant::now();
            let state = feeders.checkpoint(s.end, Duration::from_secs(24 * 3600))?;
            let taken = taking.elapsed();
            let file = dir.write(&Checkpoint {
                engine: state,
                // No log positions: the live engine reads the log from its beginning.
                source: vendflow_ingest::kafka::source::positions_to_bytes(&Default::default()),
            })?;
            written = Some((file.path, file.bytes, taken, taking.elapsed() - taken));
            caught_up
        }
        // The workers' state goes while the store applies the last updates (the peak of a
        // load's memory was the two side by side).
        (Ok(s), None) => engine.finish_load(s.end, Duration::from_secs(24 * 3600)),
        (Err(_), _) => false,
    };
    let elapsed = elapsed.unwrap_or_else(|| started.elapsed());
    if let Some((stop, handle)) = archiver {
        stop.store(true, Ordering::SeqCst);
        handle
            .join()
            .map_err(|_| ServiceError::Internal("the archiver panicked".into()))??;
    }
    let stats = stats?;
    if !caught_up {
        return Err(ServiceError::Internal(
            "the dataflows did not catch up with the input".into(),
        ));
    }
    let archived = match archive {
        Some(archive) => {
            let positions = format!("{}@{}", load.file.display(), stats.counts.messages);
            archive.tap().views_blocking(store.snapshot(), positions)?;
            let root = archive.root().to_path_buf();
            let written = archive.close()?;
            Some((root, written.line(), steps.load(Ordering::Relaxed)))
        }
        None => None,
    };
    Ok(Loaded {
        engine,
        store,
        stats,
        elapsed,
        refused,
        archive: archived,
        state: written,
        workers,
    })
}

/// Opens `dir` for a history load's state: refused when it already holds checkpoints (an
/// engine's state directory: a live engine would start from the history and read its log from
/// the beginning again).
fn empty_state_dir(dir: &Path) -> Result<CheckpointDir, ServiceError> {
    let opened = CheckpointDir::open(dir)?;
    if opened.holds_checkpoints()? {
        return Err(ServiceError::Config(format!(
            "{} already holds checkpoints: a history load writes the first state of a new engine; give it an empty directory (an engine that has run keeps its own state there)",
            dir.display()
        )));
    }
    Ok(opened)
}

/// Hands the archive a snapshot for its history tables at each boundary the pacer holds the
/// readers at (each midnight), and tells the pacer; until `stop`.
fn history_steps(
    store: &ViewStore,
    tap: &vendflow_sinks::archive::ArchiveTap,
    pacer: &Pacer,
    name: &str,
    steps: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), ServiceError> {
    let mut last: Option<Time> = None;
    loop {
        let due = last.map_or(Time::EPOCH, |l| pacer.next_boundary(l));
        let reached = store.wait_for(due, Duration::from_millis(20));
        if reached {
            let snapshot = store.snapshot();
            let frontier = snapshot.frontier;
            tap.history(snapshot, format!("{name}@{}", frontier.ms()))?;
            pacer.archived(frontier);
            steps.fetch_add(1, Ordering::Relaxed);
            last = Some(frontier);
        } else if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

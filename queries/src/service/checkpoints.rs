//! Checkpoints of a service on Kafka (`vendflow run --state DIR`): where the engine starts from,
//! and the thread that takes one every `--checkpoint-secs`.
//!
//! # Lifecycle
//! - **Start** ([`restore`]): the newest whole checkpoint in the directory is loaded (damaged
//!   ones are skipped, logged and counted; one written by another version stops the start with a
//!   message). The engine starts from its state, and the source from its offsets: each partition
//!   continues where the state was taken, or earlier where the archive's committed position is
//!   behind (those messages go to the archive only). Without a checkpoint, everything starts
//!   empty and the log is read from its beginning.
//! - **Running** ([`Checkpointer::run`]): every period, the source's consumers are held
//!   ([`Pause`]), the frontier is the latest of their input times, the source's positions are
//!   read and the engine's state is taken at that frontier; the consumers go on, and the
//!   checkpoint is written (temporary name, sync, rename; the previous one is kept). A failure is
//!   logged and counted, and the next period tries again.
//! - **Stop**: the thread ends with the stop flag. An orderly stop (Ctrl-C, SIGTERM) then takes
//!   one last checkpoint while the source still runs ([`Checkpointer::last`]; the source has a
//!   stop flag of its own, raised after it), so the next start reads nothing again. After a
//!   crash the newest checkpoint on disk is where the next start continues (at most one period
//!   of the log is read again).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vendflow_dataflows::checkpoint::file::{Checkpoint, CheckpointDir};
use vendflow_dataflows::engine::EngineState;
use vendflow_dataflows::{Feeders, Time};
use vendflow_ingest::kafka::pause::Pause;
use vendflow_ingest::kafka::source::{
    Resume, SourceStats, positions_from_bytes, positions_to_bytes,
};
use vendflow_sinks::archive::Archive;

use super::{ServiceError, sleep_unless};

/// `--state DIR --checkpoint-secs N`.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub every: Duration,
}

impl CheckpointConfig {
    /// Where the engine keeps its working files (the sale-line ledger, parked settlements):
    /// rebuilt from the checkpoint at each start.
    pub fn engine_dir(&self) -> PathBuf {
        self.dir.join("engine")
    }
}

/// The latest checkpoint written.
#[derive(Clone, Debug)]
pub struct Written {
    pub frontier: Time,
    pub path: PathBuf,
    pub bytes: u64,
    /// How long the consumers were held (the state taken), and the file's write.
    pub held: Duration,
    pub write: Duration,
    pub at: Instant,
}

/// The checkpoint a run started from.
#[derive(Clone, Debug)]
pub struct Restart {
    pub frontier: Time,
    pub path: PathBuf,
    /// The offsets the engine continued from, as `topic/partition=next` pairs.
    pub positions: String,
}

/// What the checkpoints did, for `/health`, `/metrics` and the status line.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    pub written: AtomicU64,
    pub failed: AtomicU64,
    /// Damaged files skipped at start.
    pub skipped_at_start: AtomicU64,
    /// The checkpoint this run started from.
    pub restored: Mutex<Option<Restart>>,
    pub latest: Mutex<Option<Written>>,
    /// The latest failure's message.
    pub last_error: Mutex<Option<String>>,
}

impl CheckpointStats {
    pub fn latest(&self) -> Option<Written> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn restored(&self) -> Option<Restart> {
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where a service starts: the engine's state and the source's offsets.
pub struct Restored {
    pub dir: CheckpointDir,
    pub engine: Option<EngineState>,
    pub resume: Resume,
    pub stats: Arc<CheckpointStats>,
}

/// Opens `config`'s directory and loads its newest whole checkpoint; the source resumes where
/// it was taken (or where `archive` needs it to).
pub fn restore(
    config: &CheckpointConfig,
    archive: Option<&Archive>,
) -> Result<Restored, ServiceError> {
    let dir = CheckpointDir::open(&config.dir).map_err(ServiceError::Checkpoint)?;
    let loaded = dir.load_newest().map_err(ServiceError::Checkpoint)?;
    let stats = Arc::new(CheckpointStats::default());
    stats
        .skipped_at_start
        .store(loaded.skipped.len() as u64, Ordering::Relaxed);
    let Some((path, checkpoint)) = loaded.checkpoint else {
        tracing::info!(dir = %config.dir.display(), "no checkpoint: the engine starts empty and reads the log from its beginning");
        return Ok(Restored {
            dir,
            engine: None,
            resume: Resume::default(),
            stats,
        });
    };
    let engine = positions_from_bytes(&checkpoint.source).map_err(|e| {
        ServiceError::Config(format!(
            "{}: the source's positions do not decode ({e}); move the file aside to use the one before",
            path.display()
        ))
    })?;
    let read_from: BTreeMap<(String, i32), i64> = match archive {
        Some(archive) => engine
            .keys()
            .map(|(topic, partition)| {
                let stream = format!("{topic}/{partition}");
                ((topic.clone(), *partition), archive.committed(&stream))
            })
            .collect(),
        None => BTreeMap::new(),
    };
    let frontier = checkpoint.engine.frontier;
    tracing::info!(
        path = %path.display(),
        frontier = %frontier,
        partitions = engine.len(),
        "starting from a checkpoint"
    );
    let positions = vendflow_ingest::kafka::source::positions_line(&engine);
    *stats.restored.lock().unwrap_or_else(|e| e.into_inner()) = Some(Restart {
        frontier,
        path,
        positions,
    });
    Ok(Restored {
        dir,
        engine: Some(checkpoint.engine),
        resume: Resume { engine, read_from },
        stats,
    })
}

/// How long the consumers may take to hold, and the engine to reach the frontier.
const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
/// At a stop, a source that does not hold soon is not waited for long.
const LAST_HOLD_TIMEOUT: Duration = Duration::from_secs(10);
const TAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Takes a checkpoint every period until stopped.
pub struct Checkpointer {
    pub dir: CheckpointDir,
    pub every: Duration,
    pub pause: Arc<Pause>,
    pub feeders: Feeders,
    pub source: Arc<SourceStats>,
    pub stats: Arc<CheckpointStats>,
}

impl Checkpointer {
    /// Takes a checkpoint every period until `stop`; shared with [`Checkpointer::last`].
    pub fn run(this: &Mutex<Checkpointer>, stop: &AtomicBool) {
        let every = this.lock().unwrap_or_else(|e| e.into_inner()).every;
        while !sleep_unless(stop, every) {
            let mut c = this.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = c.take(HOLD_TIMEOUT, stop) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!(error = %e, "checkpoint not taken; trying again at the next period");
                c.failed(e);
            }
        }
    }

    /// The checkpoint of an orderly stop, while the source still runs (`source_stop` not raised
    /// yet): the next start re-reads nothing.
    pub fn last(this: &Mutex<Checkpointer>, source_stop: &AtomicBool) {
        let mut c = this.lock().unwrap_or_else(|e| e.into_inner());
        match c.take(LAST_HOLD_TIMEOUT, source_stop) {
            Ok(w) => {
                tracing::info!(frontier = %w.frontier, path = %w.path.display(), "checkpoint taken at the stop")
            }
            Err(e) => {
                tracing::warn!(error = %e, "no checkpoint at the stop; the next start continues from the one before");
                c.failed(e);
            }
        }
    }

    /// Counts a failure and keeps its message for `/health`.
    fn failed(&self, e: String) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// Holds the source, takes the engine's state at its frontier with the positions, lets the
    /// source go on, and writes the checkpoint.
    pub fn take(&mut self, hold: Duration, stop: &AtomicBool) -> Result<Written, String> {
        let started = Instant::now();
        let (feeders, source) = (&mut self.feeders, &self.source);
        let (frontier, taken) = self
            .pause
            .with_held(hold, stop, |at| {
                let positions = source
                    .positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                feeders
                    .checkpoint(at, TAKE_TIMEOUT)
                    .map(|engine| (engine, positions))
            })
            .map_err(|e| e.to_string())?;
        let (engine, positions) = taken.map_err(|e| e.to_string())?;
        let held = started.elapsed();
        let writing = Instant::now();
        let written = self
            .dir
            .write(&Checkpoint {
                engine,
                source: positions_to_bytes(&positions),
            })
            .map_err(|e| e.to_string())?;
        let written = Written {
            frontier,
            path: written.path,
            bytes: written.bytes,
            held,
            write: writing.elapsed(),
            at: Instant::now(),
        };
        tracing::info!(
            frontier = %frontier,
            bytes = written.bytes,
            held_ms = held.as_millis() as u64,
            write_ms = written.write.as_millis() as u64,
            "checkpoint written"
        );
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        *self.stats.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(written.clone());
        Ok(written)
    }
}

/// The counters `/health` and `/metrics` show.
pub fn counters(
    stats: &Arc<CheckpointStats>,
    source: Option<Arc<SourceStats>>,
) -> Box<dyn Fn() -> crate::api::CheckpointCounters + Send + Sync> {
    let stats = stats.clone();
    Box::new(move || crate::api::CheckpointCounters {
        written: stats.written.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        skipped_at_start: stats.skipped_at_start.load(Ordering::Relaxed),
        restored_from: stats.restored().map(|r| r.frontier.ms()),
        latest: stats.latest().map(|w| crate::api::LatestCheckpoint {
            frontier_ms: w.frontier.ms(),
            bytes: w.bytes,
            age: w.at.elapsed(),
            held: w.held,
            write: w.write,
        }),
        last_error: stats
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        lost_to_retention: source
            .as_ref()
            .map_or(0, |s| s.lost_to_retention.load(Ordering::Relaxed)),
    })
}

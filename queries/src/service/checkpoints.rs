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

use vendflow_dataflows::aligned::{Aligned, Positions, agree_frontier};
use vendflow_dataflows::checkpoint::file::{Checkpoint, CheckpointDir};
use vendflow_dataflows::engine::EngineState;
use vendflow_dataflows::view_store::ViewStore;
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

    /// Counts a failure and keeps its message for `/health`.
    pub fn record_failure(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
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
    resumed(path, checkpoint, archive, stats, dir)
}

/// Where a service starts from `checkpoint` (at `path`).
fn resumed(
    path: PathBuf,
    checkpoint: Checkpoint,
    archive: Option<&Archive>,
    stats: Arc<CheckpointStats>,
    dir: CheckpointDir,
) -> Result<Restored, ServiceError> {
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

/// Opens `config`'s directory in a cluster: the processes agree on the newest frontier every
/// one of them has whole ([`agree_frontier`]), and each loads its own checkpoint at it. Its
/// checkpoints newer than that are set aside (`superseded/`); with no common frontier every
/// process starts empty (logged).
pub fn restore_in_cluster(
    config: &CheckpointConfig,
    engine: &vendflow_dataflows::Config,
    archive: Option<&Archive>,
) -> Result<Restored, ServiceError> {
    let dir = CheckpointDir::open(&config.dir).map_err(ServiceError::Checkpoint)?;
    let vendflow_dataflows::checkpoint::file::Whole {
        checkpoints: whole,
        skipped,
    } = dir.whole().map_err(ServiceError::Checkpoint)?;
    let stats = Arc::new(CheckpointStats::default());
    stats
        .skipped_at_start
        .store(skipped.len() as u64, Ordering::Relaxed);
    let ours: Vec<Time> = whole.iter().map(|(t, _)| *t).collect();
    tracing::info!(
        process = engine.process(),
        checkpoints = ours.len(),
        "agreeing with the cluster's other processes on where to start"
    );
    let agreed = agree_frontier(engine, &ours)?;
    let set_aside = dir
        .set_aside_newer_than(agreed)
        .map_err(ServiceError::Checkpoint)?;
    let Some((frontier, path)) = agreed.and_then(|a| whole.into_iter().find(|(t, _)| *t == a))
    else {
        if !ours.is_empty() {
            tracing::warn!(
                dir = %config.dir.display(),
                set_aside,
                "no checkpoint frontier is whole on every process: the engine starts empty and reads the log from its beginning (the files are in superseded/)"
            );
        } else {
            tracing::info!(dir = %config.dir.display(), "no checkpoint: the engine starts empty and reads the log from its beginning");
        }
        return Ok(Restored {
            dir,
            engine: None,
            resume: Resume::default(),
            stats,
        });
    };
    if set_aside > 0 {
        tracing::warn!(
            set_aside,
            frontier = %frontier,
            "newer checkpoints of this process are not on every process: set aside in superseded/"
        );
    }
    let checkpoint = dir.load(&path).map_err(ServiceError::Checkpoint)?;
    if checkpoint.engine.frontier != frontier {
        return Err(ServiceError::Config(format!(
            "{}: its name says frontier {frontier} and its state {}; move it aside",
            path.display(),
            checkpoint.engine.frontier
        )));
    }
    resumed(path, checkpoint, archive, stats, dir)
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
                c.stats.record_failure(e);
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
                c.stats.record_failure(e);
            }
        }
    }

    /// Holds the source, takes the engine's state at its frontier with the positions, lets the
    /// source go on, and writes the checkpoint.
    pub fn take(&mut self, hold: Duration, stop: &AtomicBool) -> Result<Written, String> {
        let started = Instant::now();
        let (feeders, source) = (&mut self.feeders, &self.source);
        let (_, taken) = self
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
        write(
            &self.dir,
            &self.stats,
            engine,
            &positions,
            started.elapsed(),
        )
    }
}

/// Writes a checkpoint of `engine` with the source's `positions` (the state was taken with the
/// input held for `held`), logs it and counts it.
fn write(
    dir: &CheckpointDir,
    stats: &CheckpointStats,
    engine: EngineState,
    positions: &Positions,
    held: Duration,
) -> Result<Written, String> {
    let frontier = engine.frontier;
    let writing = Instant::now();
    let written = dir
        .write(&Checkpoint {
            engine,
            source: positions_to_bytes(positions),
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
        positions = %vendflow_ingest::kafka::source::positions_line(positions),
        "checkpoint written"
    );
    stats.written.fetch_add(1, Ordering::Relaxed);
    *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    *stats.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(written.clone());
    Ok(written)
}

/// Takes a cluster's checkpoints on this process: process 0 asks for one every period (its
/// first worker picks the grid's next boundary); every worker of every process saves at that
/// boundary and hands its section here; the views are read at it, the workers released, and
/// the file written. See [`vendflow_dataflows::aligned`].
pub struct Collector {
    pub dir: CheckpointDir,
    pub every: Duration,
    /// Process 0 asks (through its first worker); the others only collect.
    pub feeders: Option<Feeders>,
    pub aligned: Aligned,
    pub store: ViewStore,
    /// This process's workers.
    pub workers: usize,
    pub stats: Arc<CheckpointStats>,
}

impl Collector {
    pub fn run(self, stop: &AtomicBool) {
        let mut asked: Option<Instant> = None;
        let mut last = Instant::now();
        let mut sections: Vec<vendflow_dataflows::aligned::Section> = Vec::new();
        let mut started: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            if let Some(feeders) = &self.feeders {
                // Asked again when an answer is long overdue (e.g. the request was lost when
                // the workers stopped at a failure).
                let overdue = asked.is_some_and(|t| t.elapsed() > self.every * 4 + TAKE_TIMEOUT);
                if (asked.is_none() && last.elapsed() >= self.every) || overdue {
                    match feeders.request_checkpoint() {
                        Ok(true) => asked = Some(Instant::now()),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot ask for a checkpoint"),
                    }
                }
            }
            let section = match self
                .aligned
                .sections
                .recv_timeout(Duration::from_millis(50))
            {
                Ok(s) => s,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            started.get_or_insert_with(Instant::now);
            if sections.first().is_some_and(|s| s.at != section.at) {
                // A worker at another boundary: the earlier one cannot complete.
                let at = sections[0].at;
                self.stats.record_failure(format!(
                    "only {} of {} workers saved at {at}",
                    sections.len(),
                    self.workers
                ));
                self.aligned.release(at);
                sections.clear();
            }
            sections.push(section);
            if sections.len() < self.workers {
                continue;
            }
            let at = sections[0].at;
            let held_since = started.take().unwrap_or_else(Instant::now);
            let taken = self.assemble(std::mem::take(&mut sections));
            // The workers go on as soon as the views are read.
            self.aligned.release(at);
            let held = held_since.elapsed();
            asked = None;
            last = Instant::now();
            let written = taken.and_then(|(engine, positions)| {
                write(&self.dir, &self.stats, engine, &positions, held)
            });
            if let Err(e) = written {
                tracing::warn!(error = %e, frontier = %at, "cluster checkpoint not written; the next period tries again");
                self.stats.record_failure(e);
            }
        }
    }

    /// This process's state at the sections' boundary: its workers' sections in order, and
    /// every view as of the boundary (the workers hold there until released).
    fn assemble(
        &self,
        mut sections: Vec<vendflow_dataflows::aligned::Section>,
    ) -> Result<(EngineState, Positions), String> {
        sections.sort_by_key(|s| s.worker);
        let at = sections.first().map(|s| s.at).ok_or("no sections")?;
        if sections.iter().enumerate().any(|(i, s)| s.worker != i) {
            return Err(format!("the sections at {at} are not one per worker"));
        }
        let views = vendflow_dataflows::engine::views_at(&self.store, at, TAKE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let mut positions = BTreeMap::new();
        let mut hour = None;
        let mut workers = Vec::with_capacity(sections.len());
        for s in sections {
            positions.extend(s.positions);
            if let Some(h) = s.hour {
                hour = h;
            }
            workers.push(s.state);
        }
        Ok((
            EngineState {
                frontier: at,
                workers,
                hour,
                views,
            },
            positions,
        ))
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

//! Runs the dataflow on timely worker threads and feeds it.
//!
//! Who owns what: [`Engine::start`] spawns the timely workers (their own threads, beside any
//! async runtime) and the view store's thread. Sources get one [`Feeder`] per worker and push
//! batches tagged with an ingestion time; each worker owns a bounded channel, so a source that
//! outruns the dataflow blocks instead of growing memory. Time only moves forward: a batch tagged
//! with an older time than its feeder already sent is ingested at the feeder's time.
//!
//! Every worker must see time advance, or the frontier (and every view) stands still: a source
//! either sends to all feeders or calls [`Feeders::advance_all`]. Worker 0 also maintains the
//! `clock` input (the current ingestion hour) from the times it sees.
//!
//! Shutdown: [`Engine::shutdown`] raises a stop flag; each worker closes its inputs, drains and
//! exits; then the store thread sees the captures close and ends. The store keeps the last
//! published state and stays readable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::operators::capture::Capture;
use vendflow_protocol::decode::{DecodeError, ErrorKind};
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{Command as MachineCommand, Event, RegistryRecord, Timestamp};

use std::cell::RefCell;
use std::rc::Rc;

use crate::checkpoint::Book;
use crate::config::Config;
use crate::dataflow::{Inputs, Stores, build};
use crate::errors::ErrorRecord;
use crate::operators::Time;
use crate::view_store::{self, ViewPusher, ViewStore};

/// Batches waiting per worker before a feeder blocks.
const CHANNEL_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start the dataflow workers: {0}")]
    Start(String),
    #[error(transparent)]
    StateFile(#[from] crate::state_file::StateFileError),
    #[error("cannot create the engine's state directory: {0}")]
    StateDir(std::io::Error),
    #[error("a dataflow worker failed: {0}")]
    Worker(String),
    #[error("the engine has stopped; the batch was not ingested")]
    Stopped,
    #[error("cannot take a checkpoint: {0}")]
    Checkpoint(String),
    #[error("cannot start from the checkpoint: {0}")]
    Restore(String),
}

/// What a source hands the engine for one ingestion time.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub errors: Vec<ErrorRecord>,
    /// Registry changes: `+1` adds a record, `-1` retracts it.
    pub registry: Vec<(RegistryRecord, isize)>,
    /// Commands sent to machines (`machine-commands`).
    pub commands: Vec<MachineCommand>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.errors.is_empty()
            && self.registry.is_empty()
            && self.commands.is_empty()
    }
}

enum Command {
    Batch(Time, Batch),
    Advance(Time),
    /// Save the worker's state once every view has passed this time (no input is at or after it).
    Checkpoint(Time, SyncSender<Result<WorkerState, String>>),
    /// The source positions of the input sent so far (cluster checkpoints take them).
    Positions(crate::aligned::Positions),
    /// Global worker 0: request a cluster checkpoint at the next boundary after its input time.
    Request,
}

/// One worker's part of an [`EngineState`]: its operators' states, and (worker 0) the clock's
/// hour as of the frontier.
type WorkerState = (usize, crate::checkpoint::Section, Option<Option<Time>>);

/// The engine's state at a frontier: what a checkpoint holds (with the sources' positions,
/// which are the caller's), and what [`Engine::start_from`] starts from. Taken by
/// [`Feeders::checkpoint`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EngineState {
    /// Every ingestion time before it is in the state; nothing at or after it.
    pub frontier: Time,
    /// Each worker's operators' states, by worker index.
    pub workers: Vec<crate::checkpoint::Section>,
    /// Worker 0's clock hour as of the frontier.
    pub hour: Option<Time>,
    /// Every view's rows as of the frontier (those on disk read as the state is written).
    pub views: Vec<(String, crate::view_store::CheckpointRows)>,
}

impl Command {
    fn records(&self) -> usize {
        match self {
            Command::Batch(_, b) => {
                b.events.len() + b.errors.len() + b.registry.len() + b.commands.len()
            }
            Command::Advance(_)
            | Command::Checkpoint(..)
            | Command::Positions(_)
            | Command::Request => 0,
        }
    }
}

/// A source's handle to one worker's input. A clone shares the worker's channel.
#[derive(Clone)]
pub struct Feeder {
    tx: SyncSender<Command>,
    time: Time,
    /// How far ahead of the ingestion time an event may be dated ([`Config::max_ahead_ms`]).
    max_ahead_ms: i64,
}

impl Feeder {
    /// Ingests `batch` at `time` (or at the feeder's current time, if that is later).
    ///
    /// Every source feeds through here, so this is where a machine's clock is bounded: an event
    /// dated more than [`Config::max_ahead_ms`] after the ingestion time would keep a machine
    /// "active", and pin its windows and dedup state, until that date. It becomes an error
    /// record (kind `timestamp`, in the `errors` view and its counts) instead.
    pub fn send(&mut self, time: Time, batch: Batch) -> Result<(), EngineError> {
        self.send_step(time, 0, batch)
    }

    /// Ingests `batch` as one step of a bulk load: its events are dated within `step_ms` after
    /// `time` (the clock rounded down to the step), so they may be up to the step, or
    /// [`Config::max_ahead_ms`] if that is longer, ahead of it.
    pub fn send_step(
        &mut self,
        time: Time,
        step_ms: i64,
        mut batch: Batch,
    ) -> Result<(), EngineError> {
        self.time = self.time.max(time);
        let now = self.time;
        let tolerance = self.max_ahead_ms.max(step_ms);
        let limit = now.saturating_add(tolerance);
        if batch.events.iter().any(|e| e.timestamp > limit) {
            let (ahead, kept): (Vec<Event>, Vec<Event>) = std::mem::take(&mut batch.events)
                .into_iter()
                .partition(|e| e.timestamp > limit);
            batch.events = kept;
            for event in ahead {
                tracing::warn!(machine_id = %event.machine_id, timestamp = %event.timestamp, "refused an event dated in the future");
                batch.errors.push(future_dated(&event, now, tolerance));
            }
        }
        self.tx
            .send(Command::Batch(self.time, batch))
            .map_err(|_| EngineError::Stopped)
    }

    /// Moves this worker's input time forward without data.
    pub fn advance(&mut self, time: Time) -> Result<(), EngineError> {
        if time > self.time {
            self.time = time;
            self.tx
                .send(Command::Advance(time))
                .map_err(|_| EngineError::Stopped)?;
        }
        Ok(())
    }

    pub fn time(&self) -> Time {
        self.time
    }

    /// Records where the source stands after what it sent: the next offset per partition it
    /// reads. A cluster checkpoint saves the positions of exactly the input before its frontier.
    pub fn mark(&mut self, positions: crate::aligned::Positions) -> Result<(), EngineError> {
        self.tx
            .send(Command::Positions(positions))
            .map_err(|_| EngineError::Stopped)
    }
}

/// The error record of an event dated more than `max_ahead_ms` after the ingestion time `now`.
fn future_dated(event: &Event, now: Time, max_ahead_ms: i64) -> ErrorRecord {
    let error = DecodeError::new(
        ErrorKind::Timestamp,
        format!(
            "event time {} is {} s ahead of the ingestion clock {} (at most {} s are accepted): set the machine's clock",
            event.timestamp,
            (event.timestamp - now) / 1000,
            now,
            max_ahead_ms / 1000
        ),
    );
    ErrorRecord::new(
        now,
        format!("machine:{}", event.machine_id),
        &error,
        event.to_json_line().as_bytes(),
    )
}

/// One feeder per worker. A clone shares the workers' channels (a checkpointer holds one beside
/// the source's).
#[derive(Clone)]
pub struct Feeders {
    feeders: Vec<Feeder>,
    next: usize,
    store: ViewStore,
}

impl Feeders {
    /// Takes the engine's state at `at`: every worker's input moves to `at` (nothing may have
    /// been sent at or after it), and once every view has passed it each worker saves its
    /// operators' states; the views are read as of `at`. The source waits meanwhile, so the
    /// state and the source's position agree.
    pub fn checkpoint(&mut self, at: Time, timeout: Duration) -> Result<EngineState, EngineError> {
        if self.feeders.iter().any(|f| f.time > at) {
            return Err(EngineError::Checkpoint(format!(
                "input was already sent at {}, after the checkpoint's frontier {at}",
                self.feeders.iter().map(|f| f.time).max().unwrap_or(at)
            )));
        }
        self.advance_all(at)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(self.feeders.len());
        for f in &self.feeders {
            f.tx.send(Command::Checkpoint(at, tx.clone()))
                .map_err(|_| EngineError::Stopped)?;
        }
        drop(tx);
        let mut workers: Vec<crate::checkpoint::Section> =
            (0..self.feeders.len()).map(|_| Vec::new().into()).collect();
        let mut hour = None;
        for _ in 0..self.feeders.len() {
            let (index, section, clock) = rx
                .recv_timeout(timeout)
                .map_err(|_| {
                    EngineError::Checkpoint(format!(
                        "the workers did not reach {at} within {timeout:?}"
                    ))
                })?
                .map_err(EngineError::Checkpoint)?;
            if let Some(clock) = clock {
                hour = clock;
            }
            if let Some(slot) = workers.get_mut(index) {
                *slot = section;
            }
        }
        Ok(EngineState {
            frontier: at,
            workers,
            hour,
            views: views_at(&self.store, at, timeout)?,
        })
    }

    /// Asks for a cluster checkpoint at the next boundary of the grid (process 0 only: its
    /// first worker is the cluster's worker 0, which decides; see [`crate::aligned`]). False
    /// when that worker's channel is full: ask again later (never blocks, so a collector that
    /// a waiting worker needs is never stuck here).
    pub fn request_checkpoint(&self) -> Result<bool, EngineError> {
        let first = self.feeders.first().ok_or(EngineError::Stopped)?;
        match first.tx.try_send(Command::Request) {
            Ok(()) => Ok(true),
            Err(std::sync::mpsc::TrySendError::Full(_)) => Ok(false),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    /// Sends to the workers in turn.
    pub fn send(&mut self, time: Time, batch: Batch) -> Result<(), EngineError> {
        let i = self.next % self.feeders.len();
        self.next = self.next.wrapping_add(1);
        self.feeders[i].send(time, batch)
    }

    /// The latest time any worker's input is at.
    pub fn time(&self) -> Time {
        self.feeders
            .iter()
            .map(|f| f.time)
            .max()
            .unwrap_or(Time::EPOCH)
    }

    /// Moves every worker's input to `time`.
    pub fn advance_all(&mut self, time: Time) -> Result<(), EngineError> {
        self.feeders.iter_mut().try_for_each(|f| f.advance(time))
    }

    /// Sends to the worker that owns `key`, so one machine's events stay on one worker.
    pub fn send_keyed(&mut self, key: u64, time: Time, batch: Batch) -> Result<(), EngineError> {
        let i = (key % self.feeders.len() as u64) as usize;
        self.feeders[i].send(time, batch)
    }

    /// A clone of worker `i`'s feeder (modulo the workers), for a second source of records
    /// (the REST API's registry changes).
    pub fn feeder(&self, i: usize) -> Feeder {
        self.feeders[i % self.feeders.len()].clone()
    }

    /// The feeders, for sources that run a thread per worker.
    pub fn into_vec(self) -> Vec<Feeder> {
        self.feeders
    }

    pub fn len(&self) -> usize {
        self.feeders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.feeders.is_empty()
    }
}

/// This process's peak resident set size in bytes (Linux `VmHWM`), for the summaries of
/// `vendflow replay` and the benchmarks.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The views that keep their old rows on disk in `dir`, each once its rows have left the
/// dataflow's memory:
/// - `anomaly_windows`, after `window_memory_ms` (48 h of windows are 29 M rows for 50,000
///   machines);
/// - `revenue_machine_daily` and `revenue_machine_local_daily`, after `day_memory_ms` (35 days
///   are 1.75 M rows each). A local day ends up to 12 hours after the UTC day of the same date
///   (UTC-12), so its rows wait that much longer.
fn cold_views(
    dir: &std::path::Path,
    config: &Config,
) -> Result<Vec<crate::cold_rows::ColdRows>, EngineError> {
    use crate::cold_rows::{ColdRows, ColdSpec};
    if !config.cold_views {
        return Ok(Vec::new());
    }
    let mut specs = Vec::new();
    if config.window_memory_ms < config.window_retention_ms {
        specs.push(ColdSpec {
            view: crate::anomaly_windows::WINDOWS.name,
            time_column: column(&crate::anomaly_windows::WINDOWS, "window_start")?,
            after_ms: config.window_ms.saturating_add(config.window_memory_ms),
        });
    }
    if config.day_memory_ms < config.revenue_retention_days.saturating_mul(MS_PER_DAY) {
        for (def, late) in [
            (&crate::revenue::MACHINE_DAILY, 0),
            (&crate::revenue::MACHINE_LOCAL_DAILY, 12 * MS_PER_HOUR),
        ] {
            specs.push(ColdSpec {
                view: def.name,
                time_column: column(def, "day")?,
                after_ms: config.day_memory_ms.saturating_add(late),
            });
        }
    }
    specs
        .into_iter()
        .map(|spec| Ok(ColdRows::create(dir, spec)?))
        .collect()
}

/// Where `def`'s column `name` is.
fn column(def: &crate::row::ViewDef, name: &str) -> Result<usize, EngineError> {
    def.column(name)
        .ok_or_else(|| EngineError::Start(format!("{} has no column {name}", def.name)))
}

/// Every view's rows as of `at`, once the store has reached it (the workers must be holding
/// there); the rows on disk as a read of the disk at `at`, read when the state is written.
pub fn views_at(
    store: &ViewStore,
    at: Time,
    timeout: Duration,
) -> Result<Vec<(String, crate::view_store::CheckpointRows)>, EngineError> {
    if !store.wait_for(at, timeout) || store.frontier() != at {
        return Err(EngineError::Checkpoint(format!(
            "the views did not stop at {at} (they are at {})",
            store.frontier()
        )));
    }
    let mut views = Vec::with_capacity(crate::views::CATALOG.len());
    for def in crate::views::CATALOG {
        let (frontier, rows) = store
            .checkpoint_rows(def.name)
            .map_err(|e| EngineError::Checkpoint(e.to_string()))?;
        if frontier != at {
            return Err(EngineError::Checkpoint(format!(
                "the views moved past {at} while they were read"
            )));
        }
        views.push((def.name.to_owned(), rows));
    }
    Ok(views)
}

/// A running dataflow and its view store.
pub struct Engine {
    store: ViewStore,
    feeders: Option<Feeders>,
    stop: Arc<AtomicBool>,
    /// Set by [`Engine::finish_load`]: the workers drop their dataflows.
    release: Arc<AtomicBool>,
    workers: Option<timely_communication::WorkerGuards<()>>,
    store_thread: Option<std::thread::JoinHandle<()>>,
    /// The state directory when none was configured: removed when the engine is dropped, or
    /// by the next engine to start if this process dies first.
    temporary_state: Option<crate::temporary_state::TemporaryState>,
    /// Cluster checkpoints' sections (with a checkpoint grid), once.
    aligned: Option<crate::aligned::Aligned>,
    parked_windows: Arc<crate::anomaly_windows::ParkedCounts>,
    operator_state: crate::operators::state_sizes::OperatorState,
}

impl Engine {
    pub fn start(config: Config) -> Result<Engine, EngineError> {
        Engine::start_from(config, None)
    }

    /// Starts the engine from `state` (a checkpoint's), or empty: its operators hold what they
    /// held at the state's frontier, its views are as they were, and input continues at that
    /// frontier. The same code and number of workers must have taken the state.
    pub fn start_from(config: Config, state: Option<EngineState>) -> Result<Engine, EngineError> {
        let workers = config.workers.max(1);
        if let Some(state) = &state
            && state.workers.len() != workers
        {
            return Err(EngineError::Restore(format!(
                "it was taken with {} workers; start with --workers {} (its keys are spread over that many)",
                state.workers.len(),
                state.workers.len()
            )));
        }
        if let Some(cluster) = &config.cluster
            && cluster.process >= cluster.addresses.len()
        {
            return Err(EngineError::Start(format!(
                "process {} of a cluster of {}",
                cluster.process,
                cluster.addresses.len()
            )));
        }
        let start_time = state.as_ref().map_or(Time::EPOCH, |s| s.frontier);
        let (sections, hour, views): (Vec<Option<crate::checkpoint::Section>>, _, _) = match state {
            Some(s) => (
                s.workers.into_iter().map(Some).collect(),
                s.hour,
                Some((
                    s.frontier,
                    s.views
                        .into_iter()
                        .map(|(name, rows)| rows.into_rows().map(|rows| (name, rows)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| EngineError::Restore(e.to_string()))?,
                )),
            ),
            None => ((0..workers).map(|_| None).collect(), None, None),
        };
        let sections = Arc::new(Mutex::new(sections));
        let temporary_state = match &config.state_dir {
            Some(_) => None,
            None => Some(
                crate::temporary_state::TemporaryState::create().map_err(EngineError::StateDir)?,
            ),
        };
        let state_dir = match (&config.state_dir, &temporary_state) {
            (Some(dir), _) => dir.clone(),
            (None, Some(t)) => t.path().to_owned(),
            (None, None) => std::env::temp_dir(),
        };
        let parked_windows = Arc::new(crate::anomaly_windows::ParkedCounts::default());
        let operator_state = crate::operators::state_sizes::OperatorState::default();
        let worker_gauges = operator_state.clone();
        let mut ledgers: Vec<Option<Stores>> = Vec::with_capacity(workers);
        for i in 0..workers {
            ledgers.push(Some(Stores::for_worker(
                &state_dir,
                i,
                &config,
                &parked_windows,
            )?));
        }
        let ledgers = Arc::new(Mutex::new(ledgers));
        let (store, capture_tx, store_thread) =
            view_store::start(workers, views, cold_views(&state_dir, &config)?)
                .map_err(|e| EngineError::Restore(e.to_string()))?;
        let mut senders = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_DEPTH);
            senders.push(Feeder {
                tx,
                time: start_time,
                max_ahead_ms: config.max_ahead_ms,
            });
            receivers.push(Some(rx));
        }
        let receivers = Arc::new(Mutex::new(receivers));
        let released = Arc::new(std::sync::atomic::AtomicI64::new(start_time.ms()));
        let (sections_tx, aligned) = match config.checkpoint_grid_ms {
            Some(_) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(workers);
                (
                    Some(Arc::new(Mutex::new(tx))),
                    Some(crate::aligned::Aligned::new(rx, released.clone())),
                )
            }
            None => (None, None),
        };
        let capture_tx = Arc::new(Mutex::new(capture_tx));
        let stop = Arc::new(AtomicBool::new(false));
        let worker_stop = stop.clone();
        let release = Arc::new(AtomicBool::new(false));
        let worker_release = release.clone();
        // Each worker says whether its dataflow was built (and took up its state).
        let (built_tx, built_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(workers);
        let built_tx = Arc::new(Mutex::new(built_tx));
        let communication = match &config.cluster {
            None => timely::CommunicationConfig::Process(workers),
            Some(cluster) => timely::CommunicationConfig::Cluster {
                threads: workers,
                process: cluster.process,
                addresses: cluster.addresses.clone(),
                report: false,
                zerocopy: false,
            },
        };
        let timely_config = timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        };
        let spill = state_dir.clone();
        let guards = timely::execute(timely_config, move |worker| {
            // In a cluster, worker indices run over every process; this process's workers are
            // `process * workers ..`, and its channels are by the local index.
            let index = worker.index() % workers;
            let rx = receivers.lock().ok().and_then(|mut r| r[index].take());
            let tx = capture_tx.lock().map(|t| t.clone()).ok();
            let ledger = ledgers.lock().ok().and_then(|mut l| l[index].take());
            let built = built_tx.lock().map(|t| t.clone()).ok();
            let section = sections.lock().ok().and_then(|mut s| s[index].take());
            let (Some(rx), Some(tx), Some(stores), Some(built)) = (rx, tx, ledger, built) else {
                tracing::error!(worker = index, "worker started without its channels");
                return;
            };
            let gate = match (config.checkpoint_grid_ms, &sections_tx) {
                (Some(step), Some(tx)) => tx.lock().ok().map(|tx| {
                    (
                        crate::aligned::Gate {
                            step,
                            decided_through: start_time,
                            asked: Default::default(),
                            decides: worker.index() == 0,
                            released: released.clone(),
                        },
                        tx.clone(),
                    )
                }),
                _ => None,
            };
            let start = Start {
                at: start_time,
                section,
                gauges: worker_gauges.clone(),
                spill: spill.clone(),
                hour,
                built,
                gate,
            };
            run_worker(
                worker,
                rx,
                tx,
                stores,
                start,
                &config,
                (&worker_stop, &worker_release),
            );
        })
        .map_err(EngineError::Start)?;
        let mut failed = None;
        for _ in 0..workers {
            match built_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e),
                Err(_) => failed = Some("a worker stopped before its dataflow was built".into()),
            }
        }
        if let Some(e) = failed {
            stop.store(true, Ordering::SeqCst);
            drop(guards);
            return Err(EngineError::Restore(e));
        }
        let feeders = Feeders {
            feeders: senders,
            next: 0,
            store: store.clone(),
        };
        Ok(Engine {
            store,
            feeders: Some(feeders),
            stop,
            release,
            workers: Some(guards),
            store_thread: Some(store_thread),
            temporary_state,
            aligned,
            parked_windows,
            operator_state,
        })
    }

    /// Anomaly windows that left memory for disk, came back for a late event, and ended their
    /// retention on disk, over this process's workers so far.
    pub fn parked_windows(&self) -> (u64, u64, u64) {
        self.parked_windows.get()
    }

    /// What each keyed operator holds now, over this process's workers (its `/metrics`).
    pub fn operator_state(&self) -> crate::operators::state_sizes::OperatorState {
        self.operator_state.clone()
    }

    /// Where this process's workers hand their parts of cluster checkpoints (with
    /// [`Config::checkpoint_grid_ms`]), once.
    pub fn aligned(&mut self) -> Option<crate::aligned::Aligned> {
        self.aligned.take()
    }

    pub fn store(&self) -> ViewStore {
        self.store.clone()
    }

    /// The feeders, once: whoever takes them is the engine's source.
    pub fn feeders(&mut self) -> Option<Feeders> {
        self.feeders.take()
    }

    /// Ends a bulk load whose inputs went up to `end`: once the store has every view's updates
    /// before it ([`ViewStore::wait_for_received`]), the workers drop their dataflows, and with
    /// them every operator's state, while the store applies those updates and the views are
    /// written out. True once the views are at `end` (each wait within `timeout`). The engine
    /// takes no input after this; the store stays readable.
    pub fn finish_load(&self, end: Time, timeout: Duration) -> bool {
        if !self.store.wait_for_received(end, timeout) {
            return false;
        }
        self.release.store(true, Ordering::SeqCst);
        self.store.wait_for(end, timeout)
    }

    /// Stops the workers and the store thread; the store stays readable.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop_and_join()
    }

    /// Leaves the engine running and frees nothing, for a process that is about to exit (the
    /// last step of a replay): draining the workers and freeing a gigabyte of state piece by
    /// piece only costs time when the operating system takes it back at once.
    pub fn abandon_at_exit(mut self) {
        // The temporary state directory still goes (open files are fine to unlink).
        drop(self.temporary_state.take());
        std::mem::forget(self);
    }

    fn stop_and_join(&mut self) -> Result<(), EngineError> {
        self.stop.store(true, Ordering::SeqCst);
        self.feeders = None;
        let mut result = Ok(());
        if let Some(guards) = self.workers.take() {
            for r in guards.join() {
                if let Err(e) = r {
                    result = Err(EngineError::Worker(e));
                }
            }
        }
        if let Some(t) = self.store_thread.take()
            && t.join().is_err()
        {
            result = Err(EngineError::Worker("the view store thread panicked".into()));
        }
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::error!(error = %e, "engine shut down with an error");
        }
    }
}

struct WorkerInputs {
    events: InputSession<Time, Event, isize>,
    registry: InputSession<Time, RegistryRecord, isize>,
    errors: InputSession<Time, ErrorRecord, isize>,
    commands: InputSession<Time, MachineCommand, isize>,
    clock: InputSession<Time, Timestamp, isize>,
    /// Cluster checkpoint requests: held by global worker 0 only (its input time is then the
    /// stream's frontier on every worker).
    requests: Option<InputSession<Time, Time, isize>>,
    /// Cluster checkpoints: moved past a boundary once this worker has saved there (and only
    /// then; [`WorkerInputs::advance`] leaves it alone).
    saved: Option<InputSession<Time, (), isize>>,
    /// The source positions of the input taken so far.
    positions: crate::aligned::Positions,
    /// Worker 0 owns the clock row; `None` elsewhere.
    hour: Option<Option<Time>>,
    /// When the hour last changed, and what it was before.
    hour_changed_at: Time,
    previous_hour: Option<Time>,
}

impl WorkerInputs {
    fn advance(&mut self, time: Time) {
        if time <= *self.events.time() {
            return;
        }
        self.events.advance_to(time);
        self.registry.advance_to(time);
        self.errors.advance_to(time);
        self.commands.advance_to(time);
        self.clock.advance_to(time);
        if let Some(requests) = &mut self.requests {
            requests.advance_to(time);
        }
        if let Some(hour) = &mut self.hour {
            let now = time.window_start(MS_PER_HOUR);
            if *hour != Some(now) {
                self.previous_hour = *hour;
                self.hour_changed_at = time;
                if let Some(old) = hour.replace(now) {
                    self.clock.remove(old);
                }
                self.clock.insert(now);
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Advance(t) => self.advance(t),
            // Taken by the worker's loop, which runs the dataflow to it.
            Command::Checkpoint(t, _) => self.advance(t),
            Command::Positions(p) => self.positions.extend(p),
            // Taken by the worker's loop (its gate records the request).
            Command::Request => {}
            Command::Batch(t, batch) => {
                self.advance(t);
                for e in batch.events {
                    self.events.insert(e);
                }
                for e in batch.errors {
                    self.errors.insert(e);
                }
                for (r, d) in batch.registry {
                    self.registry.update(r, d);
                }
                for c in batch.commands {
                    self.commands.insert(c);
                }
            }
        }
    }

    /// The clock's hour as the views hold it at frontier `at` (a change made at `at` itself is
    /// not in them yet).
    fn hour_as_of(&self, at: Time) -> Option<Time> {
        match self.hour {
            Some(hour) if self.hour_changed_at < at => hour,
            Some(_) => self.previous_hour,
            None => None,
        }
    }

    fn flush(&mut self) {
        self.events.flush();
        self.registry.flush();
        self.errors.flush();
        self.commands.flush();
        self.clock.flush();
        if let Some(requests) = &mut self.requests {
            requests.flush();
        }
    }

    fn time(&self) -> Time {
        *self.events.time()
    }
}

/// How far a worker lets input run ahead of its views: ingestion times, and records in them.
const MAX_OUTSTANDING_TIMES: usize = 64;
const MAX_OUTSTANDING_RECORDS: usize = 32_768;

/// Drops the times the views have passed; true if what remains is too much. Records at the
/// input's current time `now` do not count: the views cannot pass that time before the input
/// moves on, and only a later command moves it (a registry of 50,000 machines arrives as one
/// batch at one time; holding back the command after it would wait for ever).
fn too_far_ahead(
    probe: &timely::dataflow::operators::probe::Handle<Time>,
    outstanding: &mut Vec<(Time, usize)>,
    now: Time,
) -> bool {
    outstanding.retain(|(t, _)| probe.less_equal(t));
    let behind = outstanding.iter().filter(|(t, _)| *t < now);
    behind.clone().count() >= MAX_OUTSTANDING_TIMES
        || behind.map(|(_, n)| n).sum::<usize>() >= MAX_OUTSTANDING_RECORDS
}

/// Where a worker starts: a checkpoint's frontier, its section and clock hour, or empty; and
/// where it says whether its dataflow was built.
struct Start {
    at: Time,
    section: Option<crate::checkpoint::Section>,
    /// Where this worker's operators tell what they hold.
    gauges: crate::operators::state_sizes::OperatorState,
    /// Where this worker writes its sections of checkpoints (the engine's state directory).
    spill: std::path::PathBuf,
    hour: Option<Time>,
    built: SyncSender<Result<(), String>>,
    /// Cluster checkpoints: the grid's gate, and where the sections go.
    gate: Option<(crate::aligned::Gate, SyncSender<crate::aligned::Section>)>,
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    rx: Receiver<Command>,
    tx: std::sync::mpsc::SyncSender<view_store::Captured>,
    stores: Stores,
    mut start: Start,
    config: &Config,
    (stop, release): (&AtomicBool, &AtomicBool),
) {
    // Global over a cluster's processes (worker 0 owns the clock); channels are local.
    let index = worker.index();
    let local = index % config.workers.max(1);
    let gather = config.cluster.is_some();
    let profile = std::env::var_os("VENDFLOW_PROFILE")
        .is_some()
        .then(|| profile::register(worker));
    let book = match Book::restoring(start.section.take()) {
        Ok(book) => book,
        Err(e) => {
            let _ = start.built.send(Err(e.to_string()));
            return;
        }
    };
    let building = Book::building(&book);
    let gauges = start.gauges.building();
    let mut gate = start.gate;
    let request_probe = timely::dataflow::operators::probe::Handle::<Time>::new();
    let saved_probe = timely::dataflow::operators::probe::Handle::<Time>::new();
    let linger = crate::aligned::slow_save(config);
    let (mut inputs, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (requests, requests_c) = scope.new_collection::<Time, isize>();
        if let Some((gate, _)) = &gate {
            // Every worker sees every request; the probe says which have all arrived.
            use timely::dataflow::operators::vec::Broadcast;
            use timely::dataflow::operators::{Inspect, Probe};
            let asked = gate.asked.clone();
            requests_c
                .inner
                .broadcast()
                .inspect(move |(b, _, diff): &(Time, Time, isize)| {
                    if *diff > 0 {
                        asked.borrow_mut().insert(*b);
                    }
                })
                .probe_with(&request_probe);
        }
        // Every worker moves its `saved` input past a boundary once it has saved there: the
        // probe says when the whole cluster has.
        let (saved, saved_c) = scope.new_collection::<(), isize>();
        if gate.is_some() {
            use timely::dataflow::operators::Probe;
            saved_c.inner.probe_with(&saved_probe);
        }
        let (events, events_c) = scope.new_collection::<Event, isize>();
        let (registry, registry_c) = scope.new_collection::<RegistryRecord, isize>();
        let (errors, errors_c) = scope.new_collection::<ErrorRecord, isize>();
        let (commands, commands_c) = scope.new_collection::<MachineCommand, isize>();
        let (clock, clock_c) = scope.new_collection::<Timestamp, isize>();
        let views = build(
            Inputs {
                events: events_c,
                registry: registry_c,
                errors: errors_c,
                commands: commands_c,
                clock: clock_c,
                stores,
            },
            config,
        );
        let probe = timely::dataflow::operators::probe::Handle::new();
        for (view, rows) in views.into_iter().enumerate() {
            let pusher = ViewPusher {
                view,
                tx: tx.clone(),
            };
            if gather {
                // A cluster serves its views from process 0: every row goes to worker 0.
                use timely::dataflow::operators::{Exchange, Probe};
                rows.inner
                    .exchange(|_| 0)
                    .probe_with(&probe)
                    .capture_into(pusher);
            } else {
                rows.probe_with(&probe).inner.capture_into(pusher);
            }
        }
        let inputs = WorkerInputs {
            events,
            registry,
            errors,
            commands,
            clock,
            requests: (index == 0 && gate.is_some()).then_some(requests),
            saved: gate.is_some().then_some(saved),
            positions: Default::default(),
            hour: (index == 0).then_some(start.hour),
            hour_changed_at: Time::EPOCH,
            previous_hour: None,
        };
        (inputs, probe)
    });
    drop(gauges);
    drop(building);
    drop(tx);
    let finished = book.borrow_mut().finish().map_err(|e| e.to_string());
    let ok = finished.is_ok();
    let _ = start.built.send(finished);
    if !ok {
        return;
    }
    if start.at > Time::EPOCH {
        inputs.advance(start.at);
        inputs.flush();
    }
    // Sources come and go (a replay drops its feeders when the file ends, and its last advance
    // must still be published): only the engine's stop flag, or a finished bulk load's release,
    // ends a worker.
    let mut disconnected = false;
    let mut outstanding: Vec<(Time, usize)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if release.load(Ordering::SeqCst) {
            break;
        }
        let mut applied = 0;
        // Flow control: take new input only while the views are at most a few ingestion times
        // behind it, so a fast source waits in its bounded channel instead of piling records up
        // inside the dataflow's queues.
        while applied < 16
            && !disconnected
            && !too_far_ahead(&probe, &mut outstanding, *inputs.events.time())
        {
            match rx.try_recv() {
                Ok(Command::Checkpoint(at, reply)) => {
                    inputs.advance(at);
                    inputs.flush();
                    let saved = checkpoint_worker(
                        worker,
                        (&probe, &book, &start.spill),
                        &inputs,
                        at,
                        stop,
                        Duration::ZERO,
                    );
                    let _ = reply.send(saved.map(|section| {
                        (local, section, inputs.hour.map(|_| inputs.hour_as_of(at)))
                    }));
                }
                Ok(Command::Request) => {
                    if let Some((gate, _)) = &mut gate
                        && gate.decides
                    {
                        let b = crate::aligned::next_boundary(inputs.time(), gate.step);
                        if let Some(requests) = &mut inputs.requests {
                            requests.insert(b);
                        }
                        gate.asked.borrow_mut().insert(b);
                    }
                }
                Ok(command) => {
                    if let Some(gate) = &mut gate {
                        let need = match &command {
                            Command::Batch(t, _) => Some((*t).max(inputs.time())),
                            Command::Advance(t) if *t > inputs.time() => {
                                Some(Timestamp(t.ms().saturating_sub(1)))
                            }
                            _ => None,
                        };
                        if let Some(need) = need {
                            let held = Held {
                                worker,
                                probe: &probe,
                                requests: &request_probe,
                                saved: &saved_probe,
                                linger,
                                book: &book,
                                spill: &start.spill,
                                local,
                                stop,
                            };
                            if let Err(e) = held.pass(&mut inputs, gate, need) {
                                if !stop.load(Ordering::SeqCst) {
                                    tracing::error!(worker = index, error = %e, "cluster checkpoint failed; this worker stops");
                                }
                                break;
                            }
                        }
                    }
                    let records = command.records();
                    inputs.apply(command);
                    applied += 1;
                    let now = *inputs.events.time();
                    match outstanding.last_mut() {
                        Some((t, n)) if *t == now => *n += records,
                        _ => outstanding.push((now, records)),
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => disconnected = true,
            }
        }
        if applied > 0 {
            inputs.flush();
            worker.step();
        } else {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
    if let Some(profile) = profile {
        profile::report(index, &profile);
    }
    // Closing the inputs lets the dataflow complete; the store ignores the final retractions.
    drop(inputs);
    while !release.load(Ordering::SeqCst) && worker.step_or_park(Some(Duration::from_millis(1))) {}
    // A finished bulk load (`Engine::finish_load`): every view is with the store. The
    // operators' state goes now, beside the store's last work and the CSVs, and the thread ends
    // (its allocator then gives the memory back to the system). Not drained: another worker
    // may have dropped its dataflow already, and this one would never complete.
    for dataflow in worker.installed_dataflows() {
        worker.drop_dataflow(dataflow);
    }
}

/// A worker at the grid's boundaries (see [`crate::aligned`]).
struct Held<'a> {
    worker: &'a mut timely::worker::Worker,
    probe: &'a timely::dataflow::operators::probe::Handle<Time>,
    requests: &'a timely::dataflow::operators::probe::Handle<Time>,
    saved: &'a timely::dataflow::operators::probe::Handle<Time>,
    /// How long to keep running between reaching a boundary and saving (tests only).
    linger: Duration,
    book: &'a Rc<RefCell<Book>>,
    /// Where the worker's sections are written.
    spill: &'a std::path::Path,
    local: usize,
    stop: &'a AtomicBool,
}

impl Held<'_> {
    /// Returns once every boundary up to `need` is decided, saving at the requested ones.
    fn pass(
        self,
        inputs: &mut WorkerInputs,
        (gate, sections): &mut (crate::aligned::Gate, SyncSender<crate::aligned::Section>),
        need: Time,
    ) -> Result<(), String> {
        use crate::aligned::Next;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err("the engine is stopping".into());
            }
            let known = self
                .requests
                .with_frontier(|f| f.to_owned().elements().first().copied());
            match gate.next(need, known) {
                Next::Pass => return Ok(()),
                Next::Wait(b) => {
                    if inputs.time() < b {
                        inputs.advance(b);
                        inputs.flush();
                    }
                    self.worker.step_or_park(Some(Duration::from_millis(1)));
                }
                Next::Save(b) => {
                    inputs.advance(b);
                    inputs.flush();
                    let state = checkpoint_worker(
                        self.worker,
                        (self.probe, self.book, self.spill),
                        inputs,
                        b,
                        self.stop,
                        self.linger,
                    )?;
                    let section = crate::aligned::Section {
                        at: b,
                        worker: self.local,
                        state,
                        hour: inputs.hour.map(|_| inputs.hour_as_of(b)),
                        positions: inputs.positions.clone(),
                    };
                    sections
                        .send(section)
                        .map_err(|_| "nobody collects the checkpoint's sections".to_string())?;
                    gate.saved(b);
                    let after = Timestamp(b.ms().saturating_add(1));
                    if let Some(saved) = &mut inputs.saved {
                        saved.advance_to(after);
                        saved.flush();
                    }
                    // The collector reads the views at `b`: nothing may move past it meanwhile.
                    // Nor may any input at `b` or later be taken before every worker of every
                    // process has saved: its records would reach a worker still waiting to save
                    // (one process may learn that the views passed `b` before another), and that
                    // worker would save them, to be counted again after a restart.
                    while !gate.released(b) || self.saved.less_than(&after) {
                        if self.stop.load(Ordering::SeqCst) {
                            return Err("the engine is stopping".into());
                        }
                        self.worker.step_or_park(Some(Duration::from_millis(1)));
                    }
                }
            }
        }
    }
}

/// Runs the dataflow until every view has passed `at`, then saves this worker's operators (into
/// a file in `spill`, the engine's state directory).
fn checkpoint_worker(
    worker: &mut timely::worker::Worker,
    (probe, book, spill): (
        &timely::dataflow::operators::probe::Handle<Time>,
        &Rc<RefCell<Book>>,
        &std::path::Path,
    ),
    inputs: &WorkerInputs,
    at: Time,
    stop: &AtomicBool,
    linger: Duration,
) -> Result<crate::checkpoint::Section, String> {
    if *inputs.events.time() > at {
        return Err(format!(
            "worker input is already at {}, after {at}",
            inputs.events.time()
        ));
    }
    while probe.less_than(&at) {
        if stop.load(Ordering::SeqCst) {
            return Err("the engine is stopping".into());
        }
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    // Tests only: a worker slow to save, still running its dataflow meanwhile.
    let until = std::time::Instant::now() + linger;
    while std::time::Instant::now() < until {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    book.borrow().save(spill).map_err(|e| e.to_string())
}

/// `VENDFLOW_PROFILE=1`: time spent in each operator, from timely's own scheduling log, printed
/// per worker at shutdown (most expensive first).
mod profile {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::time::Duration;

    use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
    use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

    #[derive(Default)]
    pub struct Profile {
        names: HashMap<usize, String>,
        /// Operator names by address, and each channel's (scope, source, target): an output read
        /// by several operators is copied for every reader but the last.
        by_addr: HashMap<Vec<usize>, String>,
        channels: Vec<(Vec<usize>, (usize, usize), usize)>,
        started: HashMap<usize, Duration>,
        spent: HashMap<usize, (Duration, u64)>,
        /// Per arranging operator: updates held in its trace (now, peak) and its batcher's
        /// buffered capacity in bytes (now, peak).
        traces: HashMap<usize, Held>,
    }

    #[derive(Default)]
    struct Held {
        updates: (isize, isize),
        batcher_bytes: (isize, isize),
    }

    fn bump((now, peak): &mut (isize, isize), by: isize) {
        *now += by;
        *peak = (*peak).max(*now);
    }

    pub fn register(worker: &mut timely::worker::Worker) -> Rc<RefCell<Profile>> {
        let profile = Rc::new(RefCell::new(Profile::default()));
        let sink = profile.clone();
        if let Some(mut registry) = worker.log_register() {
            registry.insert::<TimelyEventBuilder, _>("timely", move |_time, data| {
                let Some(data) = data else { return };
                let mut p = sink.borrow_mut();
                for (at, event) in data.iter() {
                    match event {
                        TimelyEvent::Operates(o) => {
                            p.names.insert(o.id, o.name.clone());
                            p.by_addr.insert(o.addr.clone(), o.name.clone());
                        }
                        TimelyEvent::Channels(c) => {
                            p.channels
                                .push((c.scope_addr.clone(), c.source, c.target.0));
                        }
                        TimelyEvent::Schedule(s) => match s.start_stop {
                            StartStop::Start => {
                                p.started.insert(s.id, *at);
                            }
                            StartStop::Stop => {
                                if let Some(start) = p.started.remove(&s.id) {
                                    let e = p.spent.entry(s.id).or_default();
                                    e.0 += at.saturating_sub(start);
                                    e.1 += 1;
                                }
                            }
                        },
                        _ => {}
                    }
                }
            });
        }
        let sink = profile.clone();
        if let Some(mut registry) = worker.log_register() {
            registry.insert::<DifferentialEventBuilder, _>(
                "differential/arrange",
                move |_time, data| {
                    let Some(data) = data else { return };
                    let mut p = sink.borrow_mut();
                    for (_, event) in data.iter() {
                        match event {
                            DifferentialEvent::Batch(b) => {
                                bump(
                                    &mut p.traces.entry(b.operator).or_default().updates,
                                    b.length as isize,
                                );
                            }
                            DifferentialEvent::Merge(m) => {
                                if let Some(done) = m.complete {
                                    let by = done as isize - (m.length1 + m.length2) as isize;
                                    bump(&mut p.traces.entry(m.operator).or_default().updates, by);
                                }
                            }
                            DifferentialEvent::Drop(d) => {
                                bump(
                                    &mut p.traces.entry(d.operator).or_default().updates,
                                    -(d.length as isize),
                                );
                            }
                            DifferentialEvent::Batcher(b) => {
                                bump(
                                    &mut p.traces.entry(b.operator).or_default().batcher_bytes,
                                    b.capacity_diff,
                                );
                            }
                            _ => {}
                        }
                    }
                },
            );
        }
        profile
    }

    pub fn report(worker: usize, profile: &Rc<RefCell<Profile>>) {
        let p = profile.borrow();
        let mut rows: Vec<_> = p
            .spent
            .iter()
            .map(|(id, (d, n))| (*d, *n, p.names.get(id).cloned().unwrap_or_default(), *id))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        if worker == 0 {
            // Outputs with several readers: each reader but the last gets a copy of every message.
            // By (scope, source operator and port): the target operators.
            type Output<'a> = (&'a [usize], (usize, usize));
            let mut readers: HashMap<Output<'_>, Vec<usize>> = HashMap::new();
            for (scope, source, target) in &p.channels {
                readers.entry((scope, *source)).or_default().push(*target);
            }
            let name = |scope: &[usize], index: usize| {
                let mut addr = scope.to_vec();
                addr.push(index);
                p.by_addr
                    .get(&addr)
                    .cloned()
                    .unwrap_or_else(|| format!("{addr:?}"))
            };
            let mut fanned: Vec<String> = readers
                .iter()
                .filter(|(_, targets)| targets.len() > 1)
                .map(|((scope, (op, port)), targets)| {
                    let to: Vec<String> = targets.iter().map(|t| name(scope, *t)).collect();
                    format!(
                        "{} output {port} read by {}: {}",
                        name(scope, *op),
                        to.len(),
                        to.join(", ")
                    )
                })
                .collect();
            fanned.sort();
            for line in fanned {
                eprintln!("fan-out  {line}");
            }
        }
        for (d, n, name, id) in rows.into_iter().take(25) {
            eprintln!(
                "worker {worker} {:>9.1} ms {n:>7} runs  {name} ({id})",
                d.as_secs_f64() * 1000.0
            );
        }
        if worker == 0 {
            for (name, keys, bytes) in crate::operators::state_sizes::report().into_iter().take(25)
            {
                eprintln!(
                    "state {:>8.1} MiB peak, {keys:>9} keys (all workers)  {name}",
                    bytes as f64 / f64::from(1 << 20)
                );
            }
        }
        let mut held: Vec<_> = p.traces.iter().collect();
        held.sort_by_key(|(_, h)| std::cmp::Reverse(h.updates.1));
        for (id, h) in held.into_iter().take(30) {
            eprintln!(
                "worker {worker} trace {:>9} updates (peak {:>9}), batcher {:>7} KiB (peak {:>7} KiB)  {} ({id})",
                h.updates.0,
                h.updates.1,
                h.batcher_bytes.0 / 1024,
                h.batcher_bytes.1 / 1024,
                p.names.get(id).map_or("", String::as_str),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use vendflow_protocol::RegistryRecord;
    use vendflow_protocol::registry::{Location, LocationType};
    use vendflow_protocol::units::Micro;

    use super::*;

    /// The sections written as byte strings are the bytes a `Vec<Vec<u8>>` wrote (checkpoints
    /// of earlier builds read as before), and read back the same, from a slice or a reader.
    #[test]
    fn sections_as_bytes_are_the_bytes_a_sequence_wrote() -> Result<(), Box<dyn std::error::Error>>
    {
        #[derive(serde::Serialize)]
        struct AsBefore {
            frontier: Time,
            workers: Vec<Vec<u8>>,
            hour: Option<Time>,
            views: Vec<(String, Vec<crate::row::Row>)>,
        }
        let workers = vec![
            vec![1, 2, 3],
            Vec::new(),
            (0..=255).cycle().take(5000).collect(),
        ];
        let before = AsBefore {
            frontier: Timestamp(7),
            workers: workers.clone(),
            hour: Some(Timestamp(3)),
            views: Vec::new(),
        };
        let state = EngineState {
            frontier: before.frontier,
            workers: workers.iter().cloned().map(Into::into).collect(),
            hour: before.hour,
            views: Vec::new(),
        };
        let bytes = bincode::serialize(&before)?;
        assert_eq!(bincode::serialize(&state)?, bytes);
        let in_memory = |state: EngineState| -> std::io::Result<Vec<Vec<u8>>> {
            state.workers.into_iter().map(|s| s.into_bytes()).collect()
        };
        let from_slice: EngineState = bincode::deserialize(&bytes)?;
        assert_eq!(in_memory(from_slice)?, workers);
        let from_reader: EngineState = bincode::deserialize_from(std::io::Cursor::new(&bytes))?;
        assert_eq!(from_reader.frontier, before.frontier);
        assert_eq!(in_memory(from_reader)?, workers);
        // A section cut short is an error, not a shorter section.
        assert!(bincode::deserialize::<EngineState>(&bytes[..bytes.len() - 20]).is_err());
        Ok(())
    }

    /// A batch larger than the flow-control limit, all at one time (a big fleet's registry at
    /// start-up), must not stop the worker from taking the command that moves time on.
    #[test]
    fn one_batch_over_the_flow_control_limit_still_lets_time_move() {
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let registry: Vec<(RegistryRecord, isize)> = (0..MAX_OUTSTANDING_RECORDS + 10)
            .map(|i| {
                let location = Location {
                    location_id: format!("loc-{i}"),
                    client_id: "c".into(),
                    address: "a".into(),
                    lat: Micro(0),
                    lng: Micro(0),
                    location_type: LocationType::Office,
                    region: None,
                    time_zone: None,
                };
                (RegistryRecord::Location(location), 1)
            })
            .collect();
        let t0 = Timestamp(1_700_000_000_000);
        feeders
            .feeder(0)
            .send(
                t0,
                Batch {
                    registry,
                    ..Batch::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feeders
            .advance_all(t0 + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        while store.frontier() <= t0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the views never passed the big batch's time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(feeders);
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }
}

#[cfg(test)]
mod future_tests {
    use vendflow_protocol::decode::decode_line;

    use super::*;

    /// A signed heartbeat dated 2099 kept a machine "active" until 2100. An event dated more
    /// than a few minutes after the ingestion clock is refused with its reason instead; one
    /// within the tolerance is kept.
    #[test]
    fn an_event_dated_in_the_future_is_refused_with_its_reason() {
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let t0: i64 = 1_700_000_000_000;
        let heartbeat = |machine: &str, at: i64| {
            let line = format!(
                r#"{{"machineId":"{machine}","type":"heartbeat","timestamp":{at},"payload":{{"temperature":4.0}}}}"#
            );
            match decode_line(line.as_bytes()).pop() {
                Some(Ok(e)) => e,
                other => panic!("{other:?}"),
            }
        };
        let events = vec![
            heartbeat("m-now", t0),
            heartbeat("m-skewed", t0 + 60_000),
            heartbeat("m-2099", 4_070_908_800_000),
        ];
        let t = Timestamp(t0);

        feeders
            .send(
                t,
                Batch {
                    events,
                    ..Batch::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feeders.advance_all(t + 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.wait_for(t + 1, Duration::from_secs(30)));
        let snapshot = store.snapshot();
        let text = |view: &str| -> Vec<String> {
            snapshot
                .rows(view)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|r| format!("{r:?}"))
                .collect()
        };
        let liveness = text("liveness");
        assert!(liveness.iter().any(|r| r.contains("m-now")), "{liveness:?}");
        assert!(
            liveness.iter().any(|r| r.contains("m-skewed")),
            "{liveness:?}"
        );
        assert!(
            !liveness.iter().any(|r| r.contains("m-2099")),
            "{liveness:?}"
        );
        let errors = text("errors");
        assert!(
            errors
                .iter()
                .any(|r| r.contains("m-2099") && r.contains("ahead of the ingestion clock")),
            "{errors:?}"
        );
        let _ = engine.shutdown();
    }
}

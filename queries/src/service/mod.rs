//! The running service, assembled once: the engine and its source, SQL, the REST API and the
//! dashboard over HTTP, the Postgres endpoint, the fleet registry, the lease sweeper and the
//! Parquet archive, with one ticker for summaries, status files and archive snapshots.
//!
//! `vendflow demo` and `vendflow run` differ only in the [`Source`] they plug in: a simulated
//! fleet publishing to an embedded MQTT broker, or Kafka; their command-line options
//! ([`RunOptions`], [`DemoOptions`]) turn into a [`ServiceConfig`] and that source. Tests start the same service in-process
//! (ports 0) and drive it over HTTP and the Postgres protocol.
//!
//! # Lifecycle
//! [`Service::start`] opens the archive, starts the engine, SQL, the registry, the servers and
//! the source, and returns [`Running`]; a start-up error (an address in use, a bad certificate,
//! an unreadable tokens file) stops what was already started. [`Running::run`] runs the ticker on
//! the calling thread until the stop flag is raised: by the caller ([`Running::stop_flag`],
//! Ctrl-C in the binary), by the simulation's duration, or by a source or simulator that ended
//! with an error. Then [`Running::shutdown`] stops, in this order and each joined before the
//! next: the HTTP and Postgres servers (no new requests), the simulator, the source (no new
//! input), the background threads (lease sweeper, lag probe), the archive (it writes what it
//! holds) and the engine (its workers drain). The one thread not joined is the embedded MQTT
//! broker's: rumqttd has no way to stop, so it ends with the process.

pub mod bulk;
pub mod checkpoints;
mod options;
pub mod planner;
mod source;
mod ticker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vendflow_dataflows::{Config, Engine, EngineError, ViewStore};
use vendflow_ingest::server::{Listen, Server};
use vendflow_protocol::Timestamp;
use vendflow_sinks::SinkError;
use vendflow_sinks::archive::{Archive, ArchiveConfig};

use crate::api::fleet::Fleet as Registry;
use crate::api::limits::{Rate, Streams};
use crate::api::{ApiState, Pipeline, SourceCounters};
use crate::auth::{Role, Tenant, Tokens};
use crate::sql::{Limits, Sql};

pub use options::{ArchiveOptions, DemoOptions, RunOptions, ServeOptions};
pub use source::{Simulation, Source};
pub use ticker::Tick;

/// Everything about the service but its source.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub engine: Config,
    /// The REST API, the views, SQL over HTTP and the dashboard (and, with a simulated source,
    /// machines' telemetry over HTTP); port 0 picks one.
    pub http: Option<Listen>,
    /// SQL over the Postgres protocol; port 0 picks one.
    pub pg: Option<Listen>,
    /// (certificate chain, key) PEM files: HTTPS, and TLS for the Postgres endpoint.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Requests per second one token may make to the HTTP API (bursts of twice as many).
    pub api_rate: u32,
    pub access: Access,
    /// Machine credentials file where `POST /api/machines` stores new machines' public keys
    /// (the bridge reads it). A simulated source keeps its credentials in memory instead.
    pub credentials: Option<PathBuf>,
    pub archive: Option<ArchiveConfig>,
    /// Time between snapshots of every view into the archive (and history updates).
    pub snapshot_every: Duration,
    /// Time between ticks: the fleet summary, the status files and `out`.
    pub summary_every: Duration,
    /// Write every view as CSV, and `status.json`, into this directory at each tick.
    pub out: Option<PathBuf>,
    /// Write the status (frontier, lag, positions, freshness) as JSON here at each tick.
    pub status: Option<PathBuf>,
    /// Checkpoints of the engine's state and the source's offsets (Kafka only): the service
    /// starts from the newest, and takes one every period.
    pub checkpoints: Option<checkpoints::CheckpointConfig>,
    /// Restock routes: planned every period into `restock_routes` / `restock_loads` and
    /// `GET /api/routes` (None: no planner).
    pub routes: Option<planner::RouteConfig>,
}

impl ServiceConfig {
    /// No servers, no archive, open access, a tick every 2 s.
    pub fn new(engine: Config) -> ServiceConfig {
        ServiceConfig {
            engine,
            http: None,
            pg: None,
            tls: None,
            api_rate: crate::api::limits::Rate::PER_SECOND,
            access: Access::Open,
            credentials: None,
            archive: None,
            snapshot_every: Duration::from_secs(60),
            summary_every: Duration::from_secs(2),
            out: None,
            status: None,
            checkpoints: None,
            routes: None,
        }
    }
}

/// Who may use the HTTP API and the Postgres endpoint.
#[derive(Clone, Debug)]
pub enum Access {
    /// Holders of a token in this file, each within its role and tenant.
    Tokens(PathBuf),
    /// The same, and an admin token for the whole fleet is issued into the file at start
    /// ([`Running::admin_token`]; the demo prints it).
    TokensWithAdmin(PathBuf),
    /// Anyone who reaches the ports (trusted networks and tests only).
    Open,
}

/// Why the service did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(String),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("archive: {0}")]
    Archive(#[from] SinkError),
    #[error("sql: {0}")]
    Sql(#[from] crate::sql::QueryError),
    #[error("tokens: {0}")]
    Tokens(#[from] crate::auth::AuthError),
    #[error("credentials: {0}")]
    Credentials(#[from] vendflow_ingest::auth::CredentialsError),
    #[error("{0}")]
    Http(#[from] vendflow_ingest::http::ServeError),
    #[error("cannot serve the Postgres protocol on {0}: {1}")]
    Pg(std::net::SocketAddr, std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::pg::TlsError),
    #[error("kafka: {0}")]
    Kafka(#[from] vendflow_ingest::kafka::KafkaError),
    #[error("{0}")]
    Ingest(#[from] vendflow_ingest::IngestError),
    #[error("registry: {0}")]
    Registry(#[from] vendflow_ingest::registry::RegistryLogError),
    #[error("simulated fleet: {0}")]
    Simulation(#[from] vendflow_firmware::mqtt::PublishError),
    #[error("views: {0}")]
    Store(#[from] vendflow_dataflows::view_store::StoreError),
    #[error("checkpoints: {0}")]
    Checkpoint(#[from] vendflow_dataflows::checkpoint::file::CheckpointFileError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("{0}")]
    Internal(String),
}

/// What kind of failure a [`ServiceError`] is, for whoever decides what to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The configuration or a file it names is wrong: fix it, retrying will not help.
    BadInput,
    /// Something outside (a broker, a port, the disk) failed: retrying later may work.
    External,
    /// A bug in vendflow.
    Internal,
}

impl ServiceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ServiceError::Config(_)
            | ServiceError::Tls(_)
            | ServiceError::Tokens(_)
            | ServiceError::Credentials(_)
            | ServiceError::Checkpoint(
                vendflow_dataflows::checkpoint::file::CheckpointFileError::Incompatible { .. },
            ) => ErrorClass::BadInput,
            ServiceError::Checkpoint(_) => ErrorClass::External,
            ServiceError::Http(_)
            | ServiceError::Pg(..)
            | ServiceError::Kafka(_)
            | ServiceError::Ingest(_)
            | ServiceError::Registry(_)
            | ServiceError::Simulation(_)
            | ServiceError::Archive(_)
            | ServiceError::Io { .. } => ErrorClass::External,
            ServiceError::Engine(_)
            | ServiceError::Sql(_)
            | ServiceError::Store(_)
            | ServiceError::Panicked(_)
            | ServiceError::Internal(_) => ErrorClass::Internal,
        }
    }
}

/// A thread the service started and joins at shutdown.
struct Worker {
    name: &'static str,
    join: Box<dyn FnOnce() -> Result<(), ServiceError> + Send>,
}

impl Worker {
    /// Runs `work` on a thread named `vendflow-<name>`. When it returns an error, the error is
    /// logged and `stop` raised, so the service does not keep serving without it; the error is
    /// returned again by [`Running::shutdown`].
    fn spawn(
        name: &'static str,
        stop: &Arc<AtomicBool>,
        work: impl FnOnce() -> Result<(), ServiceError> + Send + 'static,
    ) -> Result<Worker, ServiceError> {
        let stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vendflow-{name}"))
            .spawn(move || {
                let result = work();
                if let Err(e) = &result {
                    tracing::error!(thread = name, error = %e, "stopped with an error; stopping the service");
                    stop.store(true, Ordering::SeqCst);
                }
                result
            })
            .map_err(|source| ServiceError::Io {
                what: format!("cannot start the {name} thread"),
                source,
            })?;
        Ok(Worker {
            name,
            join: Box::new(move || handle.join().map_err(|_| ServiceError::Panicked(name))?),
        })
    }

    /// A thread started elsewhere (the Kafka source's consumers).
    fn from_handle(name: &'static str, handle: JoinHandle<()>) -> Worker {
        Worker {
            name,
            join: Box::new(move || handle.join().map_err(|_| ServiceError::Panicked(name))),
        }
    }

    fn join(self) -> Result<(), ServiceError> {
        tracing::debug!(thread = self.name, "joining");
        (self.join)()
    }
}

/// How to start the service.
pub struct Service;

impl Service {
    /// Starts the whole service on `source`; see the module's lifecycle. `stop` is the flag that
    /// ends it (the binary raises it on Ctrl-C).
    pub fn start(
        config: ServiceConfig,
        source: Source,
        stop: Arc<AtomicBool>,
    ) -> Result<Running, ServiceError> {
        source.check()?;
        check_cluster(&config, &source)?;
        let archive = config.archive.clone().map(Archive::open).transpose()?;
        let mut engine_config = config.engine.clone();
        let clustered = engine_config.cluster.is_some();
        if let Some(c) = &config.checkpoints {
            engine_config.state_dir = Some(c.engine_dir());
            if clustered {
                engine_config.checkpoint_grid_ms = Some(grid_step(c.every));
            }
        }
        let restored = match (&config.checkpoints, &source) {
            (None, _) => None,
            (Some(c), Source::Kafka { .. }) if clustered => Some(checkpoints::restore_in_cluster(
                c,
                &engine_config,
                archive.as_ref(),
            )?),
            (Some(c), Source::Kafka { .. }) => Some(checkpoints::restore(c, archive.as_ref())?),
            (Some(_), Source::Simulated(_)) => {
                return Err(ServiceError::Config(
                    "checkpoints need a durable source to resume from: use them with Kafka (vendflow run)".into(),
                ));
            }
        };
        let (engine_state, resume, checkpointing) = match restored {
            Some(r) => (r.engine, r.resume, Some((r.dir, r.stats))),
            None => (None, Default::default(), None),
        };
        let mut engine = Engine::start_from(engine_config, engine_state)?;
        let store = engine.store();
        let sql = Sql::open(
            store.clone(),
            archive.as_ref().map(Archive::root),
            Limits::default(),
        )?;
        let feeders = engine
            .feeders()
            .ok_or_else(|| ServiceError::Config("the engine's feeders were taken".into()))?;
        // One process holds its consumers for a checkpoint; a cluster's workers stop at the
        // grid's boundaries instead, with the positions their consumers mark.
        let pause = checkpointing
            .as_ref()
            .filter(|_| !clustered)
            .map(|_| Arc::new(vendflow_ingest::kafka::pause::Pause::default()));
        let aligned = engine.aligned();
        let checkpoint_feeders = checkpointing.as_ref().map(|_| feeders.clone());
        let share = config
            .engine
            .cluster
            .as_ref()
            .map(|_| vendflow_ingest::kafka::source::Share {
                first_worker: config.engine.process() * config.engine.workers,
                all_workers: config.engine.processes() * config.engine.workers,
            });
        let mut prepared =
            source.prepare(feeders, resume, pause.clone(), share, aligned.is_some())?;
        let registry = prepared.registry.clone();
        let prepared_source = prepared.freshness.clone();
        let checkpoint_stats = checkpointing.as_ref().map(|(_, stats)| stats.clone());
        let (tokens, admin_token) = match &config.access {
            Access::Open => (None, None),
            Access::Tokens(path) => (Some(Arc::new(Tokens::open(path)?)), None),
            Access::TokensWithAdmin(path) => {
                let tokens = Arc::new(Tokens::open(path)?);
                let admin = tokens.issue(Role::Admin, Tenant::All, Some("vendflow demo"))?;
                (Some(tokens), Some(admin))
            }
        };
        let operators = engine.operator_state();
        let mut running = Running {
            engine: Some(engine),
            store: store.clone(),
            sql: sql.clone(),
            registry: registry.clone(),
            archive,
            http: None,
            pg: None,
            admin_token,
            stop: stop.clone(),
            counters: prepared.counters.clone(),
            kind: prepared.kind,
            freshness: prepared.freshness.clone(),
            checkpoints: checkpoint_stats.clone(),
            last_checkpoint: None,
            source_stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            simulator: None,
            simulator_report: None,
            mqtt: prepared.mqtt,
            simulated_from: prepared.simulated_from,
            config: config.clone(),
            deadline: prepared.duration.map(|d| Instant::now() + d),
            planner: Arc::new(planner::Planner::default()),
        };
        // From here on, a start-up error stops what was started (`running` is dropped through
        // `fail`, which shuts it down).
        let fail = |running: Running, e: ServiceError| -> Result<Running, ServiceError> {
            running.stop.store(true, Ordering::SeqCst);
            if let Err(later) = running.shutdown() {
                tracing::warn!(error = %later, "while stopping after a start-up error");
            }
            Err(e)
        };
        let pg_tls = match config
            .tls
            .as_ref()
            .map(|(cert, key)| crate::pg::tls(cert, key))
            .transpose()
        {
            Ok(t) => t,
            Err(e) => return fail(running, e.into()),
        };
        if let Some(addr) = config.http {
            let pipeline = prepared
                .pipeline
                .take()
                .unwrap_or_else(|| Pipeline::new("none", "", Box::new(SourceCounters::default)));
            let pipeline = match &checkpoint_stats {
                Some(stats) => {
                    pipeline.with_checkpoints(checkpoints::counters(stats, prepared_source.clone()))
                }
                None => pipeline,
            };
            let health = with_archive(pipeline, running.archive.as_ref());
            let rate = config.api_rate.max(1);
            let mut state = ApiState::new(store.clone(), sql.clone(), registry.clone())
                .with_routes(running.planner.clone())
                .with_operators(operators)
                .with_health(health)
                .with_limits(Streams::default(), Rate::new(rate, rate.saturating_mul(2)));
            if let Some(tokens) = &tokens {
                state = state.with_tokens(tokens.clone());
            }
            if let Some(keys) = prepared.keys.take() {
                state = state.with_keys(keys);
            } else if let Some(path) = config.credentials.clone() {
                state = state.with_keys(vendflow_ingest::auth::KeyStore::File(path));
            }
            match prepared.serve_http(addr, config.tls.as_ref(), crate::app(state)) {
                Ok(server) => running.http = Some(server),
                Err(e) => return fail(running, e),
            }
        }
        if let Some(addr) = config.pg {
            let access = tokens.clone().map(|tokens| crate::pg::Access {
                tokens,
                fleet: registry.clone(),
            });
            match crate::pg::spawn(addr, sql.clone(), access, pg_tls) {
                Ok(server) => running.pg = Some(server),
                Err(e) => return fail(running, ServiceError::Pg(addr.addr, e)),
            }
        }
        let sweeper = {
            let (registry, store, stop) = (registry.clone(), store.clone(), stop.clone());
            Worker::spawn("leases", &running.stop, move || {
                sweep_leases(&registry, &store, &stop);
                Ok(())
            })
        };
        match sweeper {
            Ok(w) => running.workers.push(w),
            Err(e) => return fail(running, e),
        }
        // In a cluster the views are on process 0: only it plans.
        if let Some(routes) = config
            .routes
            .clone()
            .filter(|_| config.engine.process() == 0)
        {
            let (planner, registry, store, stop) = (
                running.planner.clone(),
                registry.clone(),
                store.clone(),
                stop.clone(),
            );
            match Worker::spawn("routes", &running.stop, move || {
                planner.run(&routes, &store, &registry, &stop);
                Ok(())
            }) {
                Ok(w) => running.workers.push(w),
                Err(e) => return fail(running, e),
            }
        }
        let tap = running.archive.as_ref().map(archive_tap);
        // With checkpoints the source stops after the service, once the last one is taken.
        let source_stop = if checkpointing.is_some() && !clustered {
            running.source_stop.clone()
        } else {
            stop.clone()
        };
        match prepared.start(tap, &source_stop) {
            Ok(started) => {
                running.workers.extend(started.workers);
                running.simulator = started.simulator;
                running.simulator_report = started.report;
            }
            Err(e) => return fail(running, e),
        }
        if let (Some((dir, stats)), Some(aligned)) = (&checkpointing, aligned) {
            let collector = checkpoints::Collector {
                dir: dir.clone(),
                every: config
                    .checkpoints
                    .as_ref()
                    .map_or(Duration::from_secs(60), |c| c.every),
                feeders: checkpoint_feeders
                    .clone()
                    .filter(|_| config.engine.process() == 0),
                aligned,
                store: store.clone(),
                workers: config.engine.workers.max(1),
                stats: stats.clone(),
            };
            let stop = stop.clone();
            match Worker::spawn("checkpoints", &running.stop, move || {
                collector.run(&stop);
                Ok(())
            }) {
                Ok(w) => running.workers.push(w),
                Err(e) => return fail(running, e),
            }
        }
        if let (Some((dir, stats)), Some(pause), Some(feeders), Some(source)) =
            (checkpointing, pause, checkpoint_feeders, prepared_source)
        {
            let every = config
                .checkpoints
                .as_ref()
                .map_or(Duration::from_secs(60), |c| c.every);
            let checkpointer = Arc::new(std::sync::Mutex::new(checkpoints::Checkpointer {
                dir,
                every,
                pause,
                feeders,
                source,
                stats,
            }));
            running.last_checkpoint = Some(checkpointer.clone());
            let stop = stop.clone();
            match Worker::spawn("checkpoints", &running.stop, move || {
                checkpoints::Checkpointer::run(&checkpointer, &stop);
                Ok(())
            }) {
                Ok(w) => running.workers.push(w),
                Err(e) => return fail(running, e),
            }
        }
        Ok(running)
    }
}

/// The grid of a cluster's checkpoints (see [`vendflow_dataflows::aligned`]): a checkpoint asked
/// for lands at most one step later, and workers run at most one step ahead of worker 0.
fn grid_step(every: Duration) -> i64 {
    (every.as_millis() as i64).clamp(100, 1_000)
}

/// Refuses what a cluster cannot do yet, or what only process 0 can (it holds the views).
fn check_cluster(config: &ServiceConfig, source: &Source) -> Result<(), ServiceError> {
    if config.engine.cluster.is_none() {
        return Ok(());
    }
    let refuse = |what: &str| Err(ServiceError::Config(what.to_owned()));
    if matches!(source, Source::Simulated(_)) {
        return refuse("a cluster runs on Kafka (vendflow run)");
    }
    if config.engine.process() != 0
        && (config.http.is_some() || config.pg.is_some() || config.out.is_some())
    {
        return refuse(
            "the views are gathered on process 0: serve --http, --pg and --out from it, not from this process",
        );
    }
    Ok(())
}

/// The service, running; see the module's lifecycle.
pub struct Running {
    /// Taken by `shutdown`.
    engine: Option<Engine>,
    store: ViewStore,
    sql: Arc<Sql>,
    registry: Arc<Registry>,
    archive: Option<Archive>,
    http: Option<Server>,
    pg: Option<Server>,
    admin_token: Option<String>,
    stop: Arc<AtomicBool>,
    counters: Arc<dyn Fn() -> SourceCounters + Send + Sync>,
    kind: source::Kind,
    freshness: Option<Arc<vendflow_ingest::kafka::source::SourceStats>>,
    checkpoints: Option<Arc<checkpoints::CheckpointStats>>,
    /// Takes the checkpoint of an orderly stop (with --state).
    last_checkpoint: Option<Arc<std::sync::Mutex<checkpoints::Checkpointer>>>,
    /// Stops the source: raised with `stop`, or after the last checkpoint.
    source_stop: Arc<AtomicBool>,
    /// The source's threads and the background ones, joined at shutdown after the simulator.
    workers: Vec<Worker>,
    simulator: Option<Worker>,
    simulator_report: Option<Arc<std::sync::Mutex<Option<String>>>>,
    mqtt: Option<std::net::SocketAddr>,
    simulated_from: Option<Timestamp>,
    config: ServiceConfig,
    /// When the simulation's duration is over.
    deadline: Option<Instant>,
    /// The latest restock plan (empty without a planner).
    planner: Arc<planner::Planner>,
}

impl Running {
    /// The HTTP server's address, when there is one.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(Server::addr)
    }

    /// The Postgres endpoint's address, when there is one.
    pub fn pg_addr(&self) -> Option<std::net::SocketAddr> {
        self.pg.as_ref().map(Server::addr)
    }

    /// The embedded MQTT broker's address (a simulated source).
    pub fn mqtt_addr(&self) -> Option<std::net::SocketAddr> {
        self.mqtt
    }

    /// Where the simulated fleet's clock started.
    pub fn simulated_from(&self) -> Option<Timestamp> {
        self.simulated_from
    }

    /// The admin token issued at start ([`Access::TokensWithAdmin`]).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    pub fn store(&self) -> &ViewStore {
        &self.store
    }

    pub fn sql(&self) -> &Arc<Sql> {
        &self.sql
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The restock planner's latest plan.
    pub fn planner(&self) -> &Arc<planner::Planner> {
        &self.planner
    }

    pub fn archive_root(&self) -> Option<&Path> {
        self.archive.as_ref().map(Archive::root)
    }

    /// What the checkpoints did (with --state).
    pub fn checkpoints(&self) -> Option<&Arc<checkpoints::CheckpointStats>> {
        self.checkpoints.as_ref()
    }

    /// The flag that stops the service.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs the ticker until the stop flag is raised (`on_tick` sees each tick), then shuts
    /// down.
    pub fn run(mut self, on_tick: impl FnMut(&Tick)) -> Result<Stopped, ServiceError> {
        let ticked = ticker::run(&mut self, on_tick);
        self.stop.store(true, Ordering::SeqCst);
        let stopped = self.shutdown();
        ticked?;
        stopped
    }

    /// Raises the stop flag and stops everything in order (see the module's lifecycle); the
    /// first error of any part is returned once every part has been stopped.
    pub fn shutdown(mut self) -> Result<Stopped, ServiceError> {
        self.stop.store(true, Ordering::SeqCst);
        let mut first: Option<ServiceError> = None;
        let mut keep = |r: Result<(), ServiceError>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "while stopping");
                first.get_or_insert(e);
            }
        };
        if let Some(server) = self.http.take() {
            server.stop();
        }
        if let Some(server) = self.pg.take() {
            server.stop();
        }
        if let Some(simulator) = self.simulator.take() {
            keep(simulator.join());
        }
        if let Some(checkpointer) = self.last_checkpoint.take() {
            checkpoints::Checkpointer::last(&checkpointer, &self.source_stop);
        }
        self.source_stop.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            keep(worker.join());
        }
        let mut archived = None;
        if let Some(archive) = self.archive.take() {
            let root = archive.root().to_path_buf();
            match archive.close() {
                Ok(stats) => archived = Some((root, stats.line())),
                Err(e) => keep(Err(e.into())),
            }
        }
        if let Some(engine) = self.engine.take() {
            keep(engine.shutdown().map_err(Into::into));
        }
        let stopped = Stopped {
            source: (self.counters)(),
            archive: archived,
            simulator: self
                .simulator_report
                .as_ref()
                .and_then(|r| r.lock().unwrap_or_else(|e| e.into_inner()).take()),
        };
        match first {
            Some(e) => Err(e),
            None => Ok(stopped),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped without `shutdown` (a panic, an early return): everything is told to stop;
        // the engine's own drop stops its workers.
        self.stop.store(true, Ordering::SeqCst);
        self.source_stop.store(true, Ordering::SeqCst);
    }
}

/// What a stopped service reports.
#[derive(Debug)]
pub struct Stopped {
    pub source: SourceCounters,
    /// The archive's directory and what it wrote.
    pub archive: Option<(PathBuf, String)>,
    /// What the demo's simulator said when it stopped.
    pub simulator: Option<String>,
}

/// `pipeline` with the archive's counters when there is one, for `/health` and `/metrics`.
fn with_archive(pipeline: Pipeline, archive: Option<&Archive>) -> Arc<dyn crate::api::Health> {
    let pipeline = match archive {
        Some(a) => {
            let stats = a.stats();
            pipeline.with_archive(Box::new(move || crate::api::ArchiveCounters {
                files: stats.files_written.load(Ordering::Relaxed),
                events: stats.events_written.load(Ordering::Relaxed),
                errors: stats.errors.load(Ordering::Relaxed),
            }))
        }
        None => pipeline,
    };
    Arc::new(pipeline)
}

/// The source tap that hands every record to the archive.
pub(crate) fn archive_tap(archive: &Archive) -> vendflow_ingest::Tap {
    let tap = archive.tap();
    Arc::new(
        move |at: vendflow_ingest::Position<'_>,
              events: &[vendflow_protocol::Event],
              errors: &[vendflow_dataflows::ErrorRecord]| {
            if let Err(e) = tap.record(
                at.stream,
                at.offset,
                at.received_at,
                events.to_vec(),
                errors.to_vec(),
            ) {
                tracing::error!(stream = at.stream, offset = at.offset, error = %e, "archive: record not handed over");
            }
        },
    )
}

/// Moves leases along their lifecycle (renewal notices, renewals, expiry) once a second, on
/// the views' clock, until `stop`.
fn sweep_leases(registry: &Registry, store: &ViewStore, stop: &AtomicBool) {
    while !sleep_unless(stop, Duration::from_secs(1)) {
        let now = crate::api::frontier_or_now(store);
        if let Err(e) = crate::api::sweep_leases(registry, now) {
            tracing::warn!(error = %e, "lease lifecycle not advanced");
        }
    }
}

/// Sleeps `time` in short steps; true once `stop` is raised.
fn sleep_unless(stop: &AtomicBool, time: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < time {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(time));
    }
    stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_runs_on_kafka_and_only_process_0_serves_views() {
        let kafka = Source::Kafka {
            brokers: "k:9092".into(),
            partitions: 4,
            tick_ms: 1000,
        };
        let in_cluster = |process: usize| {
            ServiceConfig::new(Config {
                cluster: Some(vendflow_dataflows::config::Cluster {
                    process,
                    addresses: vec!["a:1".into(), "b:2".into()],
                }),
                ..Config::default()
            })
        };
        let refused = |config: ServiceConfig, source: &Source, why: &str| {
            let e = check_cluster(&config, source).expect_err(why);
            assert!(e.to_string().contains(why), "{e}");
            assert_eq!(e.class(), ErrorClass::BadInput);
        };
        assert!(check_cluster(&in_cluster(0), &kafka).is_ok());
        assert!(check_cluster(&ServiceConfig::new(Config::default()), &kafka).is_ok());
        let mut served = in_cluster(0);
        served.out = Some("views".into());
        assert!(check_cluster(&served, &kafka).is_ok(), "process 0 serves");
        let mut elsewhere = in_cluster(1);
        elsewhere.out = Some("views".into());
        refused(elsewhere, &kafka, "gathered on process 0");
        let mut state = in_cluster(0);
        state.checkpoints = Some(checkpoints::CheckpointConfig {
            dir: "state".into(),
            every: Duration::from_secs(60),
        });
        assert!(
            check_cluster(&state, &kafka).is_ok(),
            "a cluster takes checkpoints at one frontier"
        );
        let mut archive = in_cluster(1);
        archive.archive = Some(vendflow_sinks::archive::ArchiveConfig::new(
            "a",
            &Config::default(),
        ));
        assert!(
            check_cluster(&archive, &kafka).is_ok(),
            "each process archives its share"
        );
        let simulated = Source::Simulated(Simulation {
            machines: 1,
            speed: 1.0,
            seed: 1,
            mqtt_port: 0,
            duration: None,
            controllers: false,
        });
        refused(in_cluster(0), &simulated, "a cluster runs on Kafka");
    }
}

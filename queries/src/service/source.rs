//! The sources a service plugs in: Kafka (`vendflow run`), or a simulated fleet publishing signed
//! envelopes to an embedded MQTT broker (`vendflow demo`). Each is started in two steps:
//! `prepare` (before the servers: the registry, health, where telemetry over HTTP goes) and
//! `start` (after them: the threads that feed the engine).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vendflow_dataflows::Feeders;
use vendflow_firmware::controlled::{ControlledConfig, Controllers};
use vendflow_firmware::mqtt as mqtt_sim;
use vendflow_firmware::publish::{Link, run_controllers};
use vendflow_firmware::{Fleet, FleetConfig};
use vendflow_ingest::Counters;
use vendflow_ingest::Tap;
use vendflow_ingest::auth::{Credentials, KeyStore, SharedCredentials, Verifier};
use vendflow_ingest::kafka::source::{self as kafka_source, SourceConfig, SourceStats};
use vendflow_ingest::mqtt::MqttSource;
use vendflow_ingest::registry::{RegistryChange, RegistryLog};
use vendflow_ingest::server::Server;
use vendflow_protocol::Timestamp;

use super::{ServiceError, Worker, sleep_unless};
use crate::api::fleet::Fleet as Registry;
use crate::api::{LagReading, Pipeline, SourceCounters};

/// Where the service's events come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `machine-telemetry` and `fleet-commands` on these Kafka brokers, every partition from
    /// the start or from a checkpoint's offsets; in a cluster, this process's share of them.
    Kafka {
        brokers: String,
        /// Partitions of `machine-telemetry` if it has to be created.
        partitions: i32,
        /// Granularity of the ingestion clock.
        tick_ms: i64,
    },
    /// A simulated fleet on an embedded MQTT broker.
    Simulated(Simulation),
}

/// A simulated fleet: `machines` machines from `seed`, at `speed` simulated seconds per second,
/// publishing to an embedded MQTT broker on 127.0.0.1:`mqtt_port` (0: any free port), for
/// `duration` (None: until stopped).
#[derive(Clone, Debug)]
pub struct Simulation {
    pub machines: usize,
    pub speed: f64,
    pub seed: u64,
    pub mqtt_port: u16,
    pub duration: Option<Duration>,
    /// The machines run the real controller ([`vendflow_firmware::controlled`]) instead of the
    /// event simulator, and the source sends them delivery receipts.
    pub controllers: bool,
}

/// Which transport the source is, for the summary line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Kafka,
    Mqtt,
}

impl Source {
    /// Refuses settings that cannot work, before anything starts.
    pub(super) fn check(&self) -> Result<(), ServiceError> {
        match self {
            Source::Simulated(s) if s.machines == 0 || s.speed.is_nan() || s.speed <= 0.0 => Err(
                ServiceError::Config("--machines and --speed must be positive".into()),
            ),
            Source::Kafka { tick_ms: ..=0, .. } => Err(ServiceError::Config(
                "the ingestion clock's tick must be at least 1 ms".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The registry and health of this source, and what `start` will need.
    /// A Kafka source continues at `resume`'s offsets, held by `pause` for checkpoints.
    pub(super) fn prepare(
        self,
        mut feeders: Feeders,
        resume: kafka_source::Resume,
        pause: Option<Arc<vendflow_ingest::kafka::pause::Pause>>,
        cluster: Option<kafka_source::Share>,
        mark_positions: bool,
    ) -> Result<Prepared, ServiceError> {
        match self {
            Source::Kafka {
                brokers,
                partitions,
                tick_ms,
            } => {
                // The REST API's registry: filled from `fleet-commands` by the source; its own
                // changes go to `fleet-commands` through one producer (the engine reads them back
                // from there, like any registry record).
                let registry = Arc::new(Registry::new(Arc::new(RegistryLog::kafka(&brokers)?)));
                let stats = Arc::new(SourceStats::default());
                let counters: Arc<dyn Fn() -> SourceCounters + Send + Sync> = {
                    let stats = stats.clone();
                    Arc::new(move || stats.counters.read())
                };
                let lag = Arc::new(Mutex::new(None));
                let pipeline = {
                    let (counters, lag) = (counters.clone(), lag.clone());
                    Pipeline::new("kafka", brokers.clone(), Box::new(move || counters())).with_lag(
                        Box::new(move || lag.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                    )
                };
                let config = SourceConfig {
                    brokers: brokers.clone(),
                    partitions,
                    tick_ms,
                    registry_observer: Some({
                        let registry = registry.clone();
                        Arc::new(move |record| registry.observe(record))
                    }),
                    resume,
                    pause,
                    cluster,
                    mark_positions,
                };
                Ok(Prepared {
                    kind: Kind::Kafka,
                    registry,
                    counters,
                    pipeline: Some(pipeline),
                    keys: None,
                    freshness: Some(stats.clone()),
                    mqtt: None,
                    simulated_from: None,
                    duration: None,
                    plan: Plan::Kafka {
                        config,
                        feeders,
                        stats,
                        lag,
                    },
                })
            }
            Source::Simulated(simulation) => {
                let fleet = Fleet::new(&FleetConfig {
                    machines: simulation.machines,
                    seed: simulation.seed,
                    ..FleetConfig::default()
                });
                // The production path from the broker on: a real MQTT broker (in-process), the
                // simulated machines publishing signed envelopes to it, and the MQTT source
                // verifying and feeding them.
                let port = match simulation.mqtt_port {
                    0 => free_port()?,
                    p => p,
                };
                let listen: SocketAddr = ([127, 0, 0, 1], port).into();
                vendflow_ingest::mqtt::start_embedded_broker(listen).map_err(|source| {
                    ServiceError::Io {
                        what: format!("cannot start the embedded MQTT broker on {listen}"),
                        source,
                    }
                })?;
                let mut credentials = Credentials::default();
                for (machine, hash) in mqtt_sim::simulated_credentials(&fleet, simulation.seed) {
                    credentials.insert(&machine, hash);
                }
                // Shared with the REST API: a machine registered there can publish at once.
                let credentials = Arc::new(std::sync::RwLock::new(credentials));
                // The registry log goes straight to the engine (there is no Kafka), through a
                // clone of worker 0's input; it starts with the simulated fleet's registry at the
                // fleet's start, and the REST API's copy with it.
                let start = fleet.now().max(vendflow_dataflows::Time::EPOCH);
                let log = Arc::new(RegistryLog::embedded(feeders.feeder(0)));
                log.append_at(start, fleet.registry())?;
                feeders.advance_all(start)?;
                let registry = Arc::new(Registry::new(log));
                for record in fleet.registry() {
                    registry.observe(RegistryChange::Upsert(record));
                }
                let stats = Arc::new(Counters::default());
                let counters: Arc<dyn Fn() -> SourceCounters + Send + Sync> = {
                    let stats = stats.clone();
                    Arc::new(move || stats.read())
                };
                let pipeline = {
                    let counters = counters.clone();
                    Pipeline::new(
                        "mqtt",
                        format!("embedded broker {listen}"),
                        Box::new(move || counters()),
                    )
                };
                Ok(Prepared {
                    kind: Kind::Mqtt,
                    registry,
                    counters,
                    pipeline: Some(pipeline),
                    keys: Some(KeyStore::Shared(credentials.clone())),
                    freshness: None,
                    mqtt: Some(listen),
                    simulated_from: Some(fleet.now()),
                    duration: simulation.duration,
                    plan: Plan::Simulated {
                        // The simulated clock is the ingestion clock.
                        clock: Arc::new(AtomicI64::new(fleet.now().ms())),
                        fleet: Box::new(fleet),
                        feeders,
                        port,
                        seed: simulation.seed,
                        speed: simulation.speed,
                        stats,
                        credentials,
                        controllers: simulation.controllers.then_some(simulation.machines),
                    },
                })
            }
        }
    }
}

/// A source between `prepare` and `start`.
pub(super) struct Prepared {
    pub kind: Kind,
    pub registry: Arc<Registry>,
    pub counters: Arc<dyn Fn() -> SourceCounters + Send + Sync>,
    /// Health for `/health` and `/metrics`; taken when there is an HTTP server.
    pub pipeline: Option<Pipeline>,
    /// Where `POST /api/machines` issues a new machine's key, when the source decides it.
    pub keys: Option<KeyStore>,
    /// Sampled messages, to measure freshness (Kafka).
    pub freshness: Option<Arc<SourceStats>>,
    pub mqtt: Option<SocketAddr>,
    pub simulated_from: Option<Timestamp>,
    pub duration: Option<Duration>,
    plan: Plan,
}

enum Plan {
    Kafka {
        config: SourceConfig,
        feeders: Feeders,
        stats: Arc<SourceStats>,
        /// The latest lag measurement, read by `/health`.
        lag: Arc<Mutex<Option<LagReading>>>,
    },
    Simulated {
        fleet: Box<Fleet>,
        feeders: Feeders,
        port: u16,
        seed: u64,
        speed: f64,
        stats: Arc<Counters>,
        credentials: SharedCredentials,
        clock: Arc<AtomicI64>,
        /// With `--controllers`: how many machines run the real controller.
        controllers: Option<usize>,
    },
}

/// The controllers' span in the demo (customers stop at its end; outages and power cuts fall
/// within it): a year of simulated time, longer than any demo runs.
const CONTROLLED_SPAN_MS: i64 = 365 * 86_400_000;

/// The threads a started source runs.
pub(super) struct Started {
    pub workers: Vec<Worker>,
    pub simulator: Option<Worker>,
    /// What the simulator says when it stops (the demo's controllers: what they sent, and what
    /// waits for its receipt).
    pub report: Option<Arc<Mutex<Option<String>>>>,
}

impl Prepared {
    /// Serves `app` on `addr`; with a simulated source, machines' telemetry over HTTP too (into
    /// the embedded broker, verified like over MQTT).
    pub fn serve_http(
        &mut self,
        addr: vendflow_ingest::server::Listen,
        tls: Option<&(std::path::PathBuf, std::path::PathBuf)>,
        app: axum::Router,
    ) -> Result<Server, ServiceError> {
        let server = match &self.plan {
            Plan::Kafka { .. } => vendflow_ingest::http::serve(addr, tls, app, None)?,
            Plan::Simulated {
                port, credentials, ..
            } => vendflow_ingest::http::spawn_into_broker(
                addr,
                tls,
                *port,
                Verifier::shared(
                    Some(credentials.clone()),
                    vendflow_ingest::auth::DEFAULT_MAX_SKEW_MS,
                ),
                app,
            )?,
        };
        Ok(server)
    }

    /// Starts feeding the engine; `tap` sees every record read.
    pub fn start(self, tap: Option<Tap>, stop: &Arc<AtomicBool>) -> Result<Started, ServiceError> {
        // The lag probe only feeds `/health` and `/metrics`: measured when an HTTP server took
        // the pipeline's health.
        let lag_wanted = self.pipeline.is_none();
        match self.plan {
            Plan::Kafka {
                config,
                feeders,
                stats,
                lag,
            } => {
                let mut workers = Vec::new();
                if lag_wanted {
                    let (brokers, stats, stop) =
                        (config.brokers.clone(), stats.clone(), stop.clone());
                    workers.push(Worker::spawn("lag-probe", &stop.clone(), move || {
                        probe_lag(&brokers, &stats, &lag, &stop);
                        Ok(())
                    })?);
                }
                let handles = kafka_source::start(&config, feeders, stats, tap, stop.clone())?;
                for handle in handles {
                    workers.push(Worker::from_handle("kafka-source", handle));
                }
                Ok(Started {
                    workers,
                    simulator: None,
                    report: None,
                })
            }
            Plan::Simulated {
                fleet,
                feeders,
                port,
                seed,
                speed,
                stats,
                credentials,
                clock,
                controllers,
            } => {
                // Set once the source's subscription is in place: a controller's first messages
                // before it would find no subscriber, and wait for their resend.
                let subscribed = Arc::new(AtomicBool::new(false));
                let source = {
                    let (clock, stop_flag) = (clock.clone(), stop.clone());
                    let subscribed = subscribed.clone();
                    let verifier = Verifier::shared(
                        Some(credentials),
                        vendflow_ingest::auth::DEFAULT_MAX_SKEW_MS,
                    );
                    Worker::spawn("mqtt-source", stop, move || {
                        let source = MqttSource {
                            host: "127.0.0.1",
                            port,
                            client_id: "vendflow-demo-source",
                            verifier,
                            clock: &|| Timestamp(clock.load(Ordering::SeqCst)),
                            counters: &stats,
                            tap: tap.as_ref(),
                            receipts: controllers.is_some(),
                            subscribed: Some(&subscribed),
                        };
                        vendflow_ingest::mqtt::run(source, feeders, &stop_flag)?;
                        Ok(())
                    })?
                };
                let report = Arc::new(Mutex::new(None));
                let simulator = if let Some(machines) = controllers {
                    let (stop_flag, report) = (stop.clone(), report.clone());
                    // The same machines, planograms and keys as the event simulator's fleet of
                    // this seed (the registry and the credentials above are its), from its start.
                    let start = fleet.now();
                    let mut config = ControlledConfig::new(
                        machines,
                        seed,
                        start,
                        Timestamp(start.0 + CONTROLLED_SPAN_MS),
                    );
                    config.slots = FleetConfig::default().slots;
                    Worker::spawn("simulator", stop, move || {
                        let waiting = std::time::Instant::now();
                        while !subscribed.load(Ordering::SeqCst)
                            && waiting.elapsed() < Duration::from_secs(10)
                            && !stop_flag.load(Ordering::SeqCst)
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let mut machines = Controllers::new(config).map_err(|e| {
                            ServiceError::Internal(format!("the controllers cannot start: {e}"))
                        })?;
                        let address = format!("127.0.0.1:{port}");
                        let link = Link {
                            mqtt: &address,
                            client_id: "vendflow-demo-controllers".into(),
                            seed,
                            key: None,
                            speed: Some(speed),
                            record: None,
                            durable_record: false,
                            linger: 0,
                            tls: None,
                            clock: Some(&clock),
                            // The demo's MQTT source receipts what is in the engine's input.
                            acks: vendflow_firmware::mqtt::Acks::Receipts,
                        };
                        let end = Timestamp(start.0 + CONTROLLED_SPAN_MS);
                        let published = run_controllers(&link, &mut machines, end, &stop_flag)
                            .map_err(|e| {
                                ServiceError::Internal(format!("the controllers stopped: {e}"))
                            })?;
                        *report.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                            "controllers: {} machines sent {} events in {} envelopes; {} wait for their delivery receipt",
                            machines.len(),
                            published.events,
                            published.envelopes,
                            machines.pending()
                        ));
                        Ok(())
                    })?
                } else {
                    let stop_flag = stop.clone();
                    let mut fleet = fleet;
                    Worker::spawn("simulator", stop, move || {
                        let mut publisher = mqtt_sim::Publisher::connect(
                            "127.0.0.1",
                            port,
                            "vendflow-demo-fleet",
                            seed,
                        );
                        let end = Timestamp(i64::MAX / 2);
                        let result = mqtt_sim::run(
                            &mut fleet,
                            &mut publisher,
                            end,
                            Some(speed),
                            &stop_flag,
                            |_| {},
                            |now| clock.store(now.ms(), Ordering::SeqCst),
                        );
                        // What is in flight has two seconds to be acknowledged.
                        let _ = publisher.finish(Duration::from_secs(2));
                        result?;
                        Ok(())
                    })?
                };
                Ok(Started {
                    workers: vec![source],
                    simulator: Some(simulator),
                    report: Some(report),
                })
            }
        }
    }
}

/// Measures the Kafka source's lag every 5 s until `stop` (it asks the brokers, which may take
/// seconds; `/health` and `/metrics` read the latest measurement).
fn probe_lag(
    brokers: &str,
    stats: &SourceStats,
    latest: &Mutex<Option<LagReading>>,
    stop: &AtomicBool,
) {
    let probe = kafka_source::LagProbe::new(brokers);
    loop {
        let result = match &probe {
            Ok(p) => p
                .measure(stats, Duration::from_secs(2))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "kafka lag not measured");
        }
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(LagReading {
            taken: std::time::Instant::now(),
            result,
        });
        if sleep_unless(stop, Duration::from_secs(5)) {
            return;
        }
    }
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16, ServiceError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| ServiceError::Io {
            what: "cannot find a free port for the embedded MQTT broker".into(),
            source,
        })
}

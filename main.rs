//! The `vendflow` binary: parses the command line and wires the crates together.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use tracing_subscriber::EnvFilter;
use vendflow_dataflows::ErrorRecord;
use vendflow_dataflows::{Batch, Config, Engine, FleetSummary};
use vendflow_firmware::mqtt as mqtt_sim;
use vendflow_firmware::{Fault, Fleet, FleetConfig};
use vendflow_ingest::auth::{Credentials, Verifier};
use vendflow_ingest::bridge::{self, BridgeConfig, BridgeStats};
use vendflow_ingest::file::{ReplayOptions, load_registry, replay};
use vendflow_ingest::kafka::TELEMETRY_TOPIC;
use vendflow_ingest::kafka::source::{self as kafka_source, Freshness, SourceConfig, SourceStats};
use vendflow_ingest::mqtt::MqttSourceStats;
use vendflow_ingest::sim;
use vendflow_ingest::{Position, Tap};
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{Event, Timestamp};
use vendflow_queries::api::fleet::Fleet as Registry;
use vendflow_queries::auth::{Role, Tenant, Tokens};
use vendflow_queries::sql::{Limits, Sql};
use vendflow_sinks::archive::{Archive, ArchiveConfig};

// Timely workers allocate and free many small records across threads; glibc's allocator spends a
// fifth of the time consolidating its arenas on the replay benchmark, mimalloc does not.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vendflow",
    version,
    about = "Stream processing for a leased vending-machine fleet",
    long_about = "Stream processing for a leased vending-machine fleet.\n\n\
        Telemetry (heartbeats, sales, restocks, errors) flows through incremental dataflows that keep \
        inventory, revenue, anomaly windows, liveness, stockout forecasts and machine health up to date, \
        all published at one consistent timestamp.\n\n\
        Start with `vendflow demo`: a simulated fleet, no external services needed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Timely worker threads.
    #[arg(long, global = true, default_value_t = 2, env = "VENDFLOW_WORKERS")]
    workers: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated fleet through the dataflows and print a fleet summary until Ctrl-C.
    Demo(DemoArgs),
    /// Replay a JSON Lines telemetry file through the dataflows and write every final view as CSV.
    Replay {
        /// Events, one per line (or an envelope per line), as recorded or generated.
        file: PathBuf,
        /// Directory for `<view>.csv` (created if missing).
        #[arg(long, short)]
        out: PathBuf,
        /// Registry records (machines, locations, leases) as JSON Lines.
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Granularity of the ingestion clock in milliseconds: the events of one tick are
        /// ingested together. Default: 300000 (5 minutes of event time, a bulk load's steps;
        /// at most the engine's 5-minute future tolerance), or 1000 with --rate (as live).
        #[arg(long)]
        tick_ms: Option<u64>,
        /// Replay the file this many times, each copy shifted later in event time (load tests).
        #[arg(long, default_value_t = 1, hide = true)]
        repeat: u32,
        /// Hours between copies with --repeat.
        #[arg(long, default_value_t = 24, hide = true)]
        repeat_shift_hours: i64,
        /// Pace the replay at this many events per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Bridge machine telemetry from MQTT into Kafka, acknowledging to MQTT only once Kafka has it.
    ///
    /// Subscribes `machines/+/telemetry` (QoS 1, persistent session) and produces each envelope to
    /// `machine-telemetry` keyed by machine id; refused envelopes (wrong machine for the topic, bad
    /// or missing signature, stale, replayed) go to `telemetry-rejected` with the reason.
    Bridge {
        /// MQTT broker, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt: String,
        /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT…].
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// MQTT client id; keep it stable: the broker keeps unacknowledged messages under it.
        #[arg(long, default_value = "vendflow-bridge")]
        client_id: String,
        /// MQTT username (password from VENDFLOW_MQTT_PASSWORD).
        #[arg(long)]
        mqtt_user: Option<String>,
        /// Device credentials (JSON Lines of machineId + publicKey), see `vendflow device
        /// register`. Lines of the first scheme (machineId + secretSha256) are read too, and
        /// replaced by the machine's public key when its firmware enrols one.
        #[arg(long, required_unless_present = "insecure_no_auth")]
        credentials: Option<PathBuf>,
        /// Refuse machines that still sign with the first scheme's shared-key HMAC (once the
        /// fleet has migrated to Ed25519; until then a leaked hash file could sign for them).
        #[arg(long)]
        refuse_legacy_credentials: bool,
        /// Accept unsigned envelopes (trusted test networks only).
        #[arg(long)]
        insecure_no_auth: bool,
        /// Largest accepted difference between an envelope's sentAt and this clock, in seconds.
        #[arg(long, default_value_t = 900)]
        max_skew_secs: i64,
        /// Partitions of `machine-telemetry` if the bridge creates it.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Messages waiting for Kafka before the bridge stops reading MQTT.
        #[arg(long, default_value_t = 10_000)]
        max_inflight: usize,
        /// Largest MQTT payload forwarded, in KiB; larger ones go to `telemetry-rejected`
        /// as `too_large` (the same limit as `POST /api/telemetry`).
        #[arg(long, default_value_t = 256)]
        max_payload_kib: usize,
        /// Also accept telemetry over HTTP (`POST /api/telemetry`) on this address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Serve --http over TLS (HTTPS) with this certificate chain (PEM).
        #[arg(long, requires_all = ["http", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Run the dataflows on the Kafka log (`machine-telemetry`, `fleet-commands`,
    /// `machine-commands`, `telemetry-rejected`) until Ctrl-C.
    ///
    /// Reads every partition from the beginning: on restart the views are rebuilt from the log.
    Run(RunArgs),
    /// Simulated machines publishing signed telemetry over MQTT (load and end-to-end tests).
    Publish(PublishArgs),
    /// Send a command to a machine: produced to Kafka `machine-commands`; the bridge delivers it
    /// on MQTT `machines/{id}/commands` (and offers it to machines polling over HTTP), and the
    /// engine's `commands` view shows it pending until the machine answers.
    #[command(name = "command")]
    Send {
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// The machine, e.g. mach_00042.
        #[arg(long)]
        machine: String,
        /// UPDATE_PRICE (needs --slot and --price) or REBOOT.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        #[arg(long)]
        slot: Option<u32>,
        /// New price, e.g. 2.75.
        #[arg(long)]
        price: Option<String>,
        /// Command id (default: a new unique one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Access tokens for the REST API, the views, SQL and the dashboard.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Device credentials.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The fleet registry (locations, machines with their planogram, leases) on Kafka.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Copy days of the Parquet archive for the data team: raw events, rejected records and the
    /// per-day history tables, same layout, with `manifest.json` (every file, its rows and size).
    Export {
        /// The archive (`--archive` of `run` or `demo`).
        #[arg(long)]
        archive: PathBuf,
        /// First day, `YYYY-MM-DD` (UTC).
        #[arg(long)]
        from: String,
        /// Last day, included.
        #[arg(long)]
        to: String,
        /// Where the copy goes (created).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a simulated fleet's registry and events as JSON Lines (fixtures, workloads).
    Simulate {
        /// Output directory: `registry.jsonl` and `events.jsonl` (in delivery order).
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long, default_value_t = 10)]
        machines: usize,
        /// Simulated hours.
        #[arg(long, default_value_t = 24)]
        hours: i64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// `golden`: 5 machines with an overheating machine (0), a 5-hour outage (1) and a
        /// machine the restock crew skips (2), no random faults.
        #[arg(long)]
        scenario: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    kafka: String,
    /// Write every view as CSV (and status.json) into this directory at each summary.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Write only the status (frontier, lagMs, consumed offsets) as JSON to this file at
    /// each summary.
    #[arg(long)]
    status: Option<PathBuf>,
    /// Serve the views over HTTP on this address: `GET /views`, `/views/<name>`, live changes
    /// as Server-Sent Events at `/views/<name>/subscribe`, and SQL at `POST /sql`.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Serve SQL over the Postgres wire protocol on this address (`psql -h HOST -p PORT`).
    #[arg(long)]
    pg: Option<std::net::SocketAddr>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Tokens file (`vendflow token create`): every HTTP request but /health, /metrics and
    /// /api/openapi.json needs one of its tokens.
    #[arg(long, required_unless_present = "insecure_open_api")]
    tokens: Option<PathBuf>,
    /// Serve HTTP without access control (trusted networks and tests only).
    #[arg(long)]
    insecure_open_api: bool,
    /// Machine credentials file: `POST /api/machines` stores each new machine's public key
    /// here (the file the bridge's --credentials reads).
    #[arg(long)]
    credentials: Option<PathBuf>,
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 2.0)]
    every: f64,
    /// Partitions of `machine-telemetry` if it has to be created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Granularity of the ingestion clock in milliseconds.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Simulated machines.
    #[arg(long, default_value_t = 1000)]
    machines: usize,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Seed of the simulation (same seed, same fleet, same events).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 2.0)]
    every: f64,
    /// Stop after this many wall-clock seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Port of the embedded MQTT broker on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    mqtt_port: u16,
    /// HTTP address: the views, live subscriptions and `POST /sql`, and telemetry over HTTP
    /// (`POST /api/telemetry`, the simulated machines' credentials) into the embedded broker.
    /// If the port is taken, any free port is used and printed.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// Postgres wire protocol address for SQL (`psql`); any free port if taken.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pg: std::net::SocketAddr,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    archive: ArchiveArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Serve --http as HTTPS and --pg with TLS with this certificate chain (PEM). Logins over
    /// the Postgres protocol then need TLS (`sslmode=require`; psql's default `prefer` uses it),
    /// so tokens never cross the network in clear.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requests per second one token may make to the HTTP API (bursts of twice as many); past
    /// it, 429 with Retry-After.
    #[arg(long, default_value_t = vendflow_queries::api::limits::Rate::PER_SECOND)]
    api_rate: u32,
}

/// (certificate, key) PEM files, and the Postgres endpoint's acceptor for them.
type Tls = (
    Option<(PathBuf, PathBuf)>,
    Option<vendflow_queries::pg::TlsAcceptor>,
);

impl ServeArgs {
    /// (certificate, key) when given, and the Postgres endpoint's acceptor for them.
    fn tls(&self) -> anyhow::Result<Tls> {
        let pair = self.tls_cert.clone().zip(self.tls_key.clone());
        let acceptor = pair
            .as_ref()
            .map(|(cert, key)| vendflow_queries::pg::tls(cert, key))
            .transpose()?;
        Ok((pair, acceptor))
    }

    /// The API's limits: live streams as by default, requests per token as given.
    fn limits(
        &self,
    ) -> (
        vendflow_queries::api::limits::Streams,
        vendflow_queries::api::limits::Rate,
    ) {
        let rate = self.api_rate.max(1);
        (
            vendflow_queries::api::limits::Streams::default(),
            vendflow_queries::api::limits::Rate::new(rate, rate.saturating_mul(2)),
        )
    }
}

#[derive(clap::Args)]
struct ArchiveArgs {
    /// Write the Parquet archive into this directory: raw events and rejected records by event
    /// date and hour, snapshots of every view, and the closed days of the revenue and window
    /// views; SQL then also has `events`, `rejected` and `<view>_history` (the demo defaults to
    /// a new temporary directory).
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Seconds between archive flushes (each writes one file per hour partition it touches).
    #[arg(long, default_value_t = 10.0)]
    archive_flush_secs: f64,
    /// Seconds between snapshots of the views into the archive (and history updates).
    #[arg(long, default_value_t = 60.0)]
    archive_snapshot_secs: f64,
    /// Compact an hour partition once it holds this many files.
    #[arg(long, default_value_t = 16)]
    archive_compact_files: usize,
    /// Days of raw events and rejected records kept.
    #[arg(long, default_value_t = 90)]
    raw_retention_days: i64,
    /// Days of per-day history kept.
    #[arg(long, default_value_t = 730)]
    history_retention_days: i64,
}

impl ArchiveArgs {
    fn open(&self, root: Option<PathBuf>, config: &Config) -> anyhow::Result<Option<Archive>> {
        let Some(root) = root.or_else(|| self.archive.clone()) else {
            return Ok(None);
        };
        let archive = Archive::open(ArchiveConfig {
            flush_every: Duration::from_secs_f64(self.archive_flush_secs.max(0.05)),
            compact_min_files: self.archive_compact_files,
            raw_retention_days: self.raw_retention_days,
            history_retention_days: self.history_retention_days,
            ..ArchiveConfig::new(&root, config)
        })
        .with_context(|| format!("cannot open the archive at {}", root.display()))?;
        Ok(Some(archive))
    }
}

/// The source tap that hands every record to the archive.
fn archive_tap(archive: &Archive) -> Tap {
    let tap = archive.tap();
    Arc::new(
        move |at: Position<'_>, events: &[Event], errors: &[ErrorRecord]| {
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

/// `addr`, or any free port on its host when `addr` is taken (told on stderr).
fn free_or_any(addr: std::net::SocketAddr) -> anyhow::Result<std::net::SocketAddr> {
    match std::net::TcpListener::bind(addr) {
        Ok(listener) => Ok(listener.local_addr()?),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let any = std::net::TcpListener::bind((addr.ip(), 0))?.local_addr()?;
            eprintln!("{addr} is in use; using {any} instead");
            Ok(any)
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

fn export(
    archive: &std::path::Path,
    from: &str,
    to: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let day = |text: &str| {
        Timestamp::parse_date(text)
            .map(Timestamp::day)
            .map_err(|e| anyhow::anyhow!("{text:?} is not a date (YYYY-MM-DD): {e}"))
    };
    let (from_day, to_day) = (day(from)?, day(to)?);
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let manifest =
        vendflow_sinks::export::export(archive, from_day, to_day, out, &mut |p| match p {
            vendflow_sinks::export::Progress::Total(n) => bar.set_length(n),
            vendflow_sinks::export::Progress::Copied(n) => bar.inc(n),
        })?;
    bar.finish_and_clear();
    let rows: Vec<String> = manifest
        .rows()
        .iter()
        .map(|(table, rows)| format!("{table} {rows}"))
        .collect();
    eprintln!(
        "exported {from}..={to}: {} files, {} bytes into {} ({}); manifest: {}",
        manifest.files.len(),
        manifest.bytes(),
        out.display(),
        if rows.is_empty() {
            "no rows".to_owned()
        } else {
            rows.join(", ")
        },
        out.join("manifest.json").display()
    );
    Ok(())
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Produce a registry file (JSON Lines of location / machine / lease records, as
    /// `publish --registry-out` writes) to `fleet-commands`, where the engine reads it. Every
    /// line is checked first; a file with an invalid line is refused whole, nothing sent.
    Load {
        file: PathBuf,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token: prints it once; the tokens file keeps only its hash, role and tenant.
    /// A server reading that file (`run --tokens`) accepts the token at once.
    Create {
        /// admin (machines, locations, leases), operator (maintenance), viewer (read only).
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// The client whose machines, leases and rows the token sees, or `*` for the whole
        /// fleet (the platform's staff).
        #[arg(long)]
        tenant: String,
        /// The tokens file (created if missing).
        #[arg(long, default_value = "vendflow-tokens.jsonl")]
        tokens: PathBuf,
        /// What the token is for (kept in the file).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Issue a secret for a machine: prints it once and stores only its Ed25519 public key
    /// (derived from the secret) in --credentials.
    Register {
        machine_id: String,
        /// Credentials file (created if missing).
        #[arg(long)]
        credentials: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let config = Config {
        workers: cli.workers,
        ..Config::default()
    };
    match cli.command {
        Command::Demo(args) => demo(config, args),
        Command::Replay {
            file,
            out,
            registry,
            tick_ms,
            repeat,
            repeat_shift_hours,
            rate,
        } => {
            if let Some(tick) = tick_ms
                && (tick == 0 || tick as i64 > config.max_ahead_ms)
            {
                bail!(
                    "--tick-ms must be between 1 and {} (the engine refuses events dated more than that after its clock)",
                    config.max_ahead_ms
                );
            }
            let options = ReplayOptions {
                tick_ms,
                repeat,
                repeat_shift_ms: repeat_shift_hours * MS_PER_HOUR,
                on_sent: None,
                rate,
            };
            replay_file(config, &file, &out, registry.as_deref(), &options)
        }
        Command::Simulate {
            out,
            machines,
            hours,
            seed,
            scenario,
        } => simulate(&out, machines, hours, seed, scenario.as_deref()),
        Command::Bridge {
            mqtt,
            kafka,
            client_id,
            mqtt_user,
            credentials,
            insecure_no_auth,
            refuse_legacy_credentials,
            max_skew_secs,
            partitions,
            max_inflight,
            max_payload_kib,
            http,
            tls_cert,
            tls_key,
        } => {
            let (mqtt_host, mqtt_port) = host_port(&mqtt)?;
            let credentials = match (credentials, insecure_no_auth) {
                (Some(path), _) => {
                    let creds = Credentials::load(&path)?;
                    eprintln!(
                        "bridge: {} machine credential(s) from {} ({} still on the legacy shared-key scheme{})",
                        creds.len(),
                        path.display(),
                        creds.legacy(),
                        if refuse_legacy_credentials {
                            ", refused"
                        } else {
                            ", accepted until they enrol an Ed25519 key"
                        }
                    );
                    Some(creds)
                }
                (None, _) => {
                    eprintln!(
                        "bridge: WARNING --insecure-no-auth: envelopes are not authenticated"
                    );
                    None
                }
            };
            let mqtt_credentials = mqtt_user.map(|u| {
                (
                    u,
                    std::env::var("VENDFLOW_MQTT_PASSWORD").unwrap_or_default(),
                )
            });
            let config = BridgeConfig {
                mqtt_host,
                mqtt_port,
                client_id,
                mqtt_credentials,
                kafka,
                partitions,
                max_inflight: max_inflight.max(1),
                max_payload: max_payload_kib.saturating_mul(1024),
                tls: tls_cert.zip(tls_key),
                http,
            };
            let stop = stop_flag()?;
            let stats = Arc::new(BridgeStats::default());
            eprintln!(
                "bridge: mqtt {}:{} ({}) -> kafka {} ({}); Ctrl-C to stop",
                config.mqtt_host,
                config.mqtt_port,
                bridge::TELEMETRY_FILTER,
                config.kafka,
                TELEMETRY_TOPIC
            );
            let verifier = Verifier::new(credentials, max_skew_secs.saturating_mul(1000));
            let verifier = if refuse_legacy_credentials {
                verifier.refuse_legacy()
            } else {
                verifier
            };
            bridge::run(&config, verifier, stats.clone(), &stop)?;
            eprintln!("bridge stopped: {}", stats.line());
            Ok(())
        }
        Command::Run(args) => run_kafka(config, args),
        Command::Export {
            archive,
            from,
            to,
            out,
        } => export(&archive, &from, &to, &out),
        Command::Publish(args) => publish(args),
        Command::Registry {
            command: RegistryCommand::Load { file, kafka },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let sent = vendflow_ingest::kafka::load_registry(&kafka, &text)
                .with_context(|| format!("loading {}", file.display()))?;
            eprintln!("sent {sent} registry record(s) to fleet-commands on {kafka}");
            Ok(())
        }
        Command::Send {
            kafka,
            machine,
            kind,
            slot,
            price,
            id,
        } => send_command(&kafka, &machine, &kind, slot, price.as_deref(), id),
        Command::Token {
            command:
                TokenCommand::Create {
                    role,
                    tenant,
                    tokens,
                    note,
                },
        } => {
            let role = Role::parse(&role).context("role")?;
            let tenant = Tenant::parse(&tenant)?;
            let token = Tokens::open(&tokens)?.issue(role, tenant.clone(), note.as_deref())?;
            eprintln!(
                "created a {} token for tenant {} in {} (shown once):",
                role.as_str(),
                tenant.as_str(),
                tokens.display()
            );
            println!("{token}");
            Ok(())
        }
        Command::Device {
            command:
                DeviceCommand::Register {
                    machine_id,
                    credentials,
                },
        } => {
            vendflow_protocol::MachineId::parse(&machine_id)
                .map_err(|e| anyhow::anyhow!("machine id {machine_id:?}: {e}"))?;
            let secret = Credentials::register(&credentials, &machine_id)?;
            eprintln!(
                "registered {machine_id}; its secret (shown once, stored only as a hash in {}):",
                credentials.display()
            );
            println!("{secret}");
            Ok(())
        }
    }
}

fn send_command(
    kafka: &str,
    machine: &str,
    kind: &str,
    slot: Option<u32>,
    price: Option<&str>,
    id: Option<String>,
) -> anyhow::Result<()> {
    let now = Timestamp::now().0;
    let command_id = id.unwrap_or_else(|| {
        format!(
            "cmd_{now:x}_{:x}",
            std::process::id() ^ (now as u32).rotate_left(7)
        )
    });
    // Built as wire JSON and decoded, so the CLI accepts exactly what the bridge and engine do.
    let mut wire = serde_json::json!({
        "commandId": command_id, "machineId": machine, "issuedAt": now, "type": kind,
    });
    if let Some(map) = wire.as_object_mut() {
        if let Some(slot) = slot {
            map.insert("slotNumber".into(), slot.into());
        }
        if let Some(price) = price {
            let price: serde_json::Value = serde_json::from_str(price)
                .map_err(|_| anyhow::anyhow!("--price {price:?} is not a number"))?;
            map.insert("newPrice".into(), price);
        }
    }
    let command = vendflow_protocol::command::decode_command(wire.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("not a valid command: {e}"))?;
    let (partition, offset) = vendflow_ingest::kafka::send_command(kafka, &command)
        .with_context(|| format!("sending the command to {kafka}"))?;
    eprintln!("sent to machine-commands/{partition}@{offset}");
    println!("{}", command.to_json());
    Ok(())
}

fn parse_outage(text: &str) -> Result<(usize, u32), String> {
    let (machine, hours) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not MACHINE_INDEX:HOURS, e.g. 7:5"))?;
    let machine = machine
        .parse()
        .map_err(|_| format!("{machine:?} is not a machine index"))?;
    let hours = hours
        .parse()
        .map_err(|_| format!("{hours:?} is not a number of hours"))?;
    Ok((machine, hours))
}

fn host_port(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address:?} is not HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("{address:?}: port {port:?} is not a number"))?;
    Ok((host.to_owned(), port))
}

/// Moves leases along their lifecycle (renewal notices, renewals, expiry) once a second, on
/// the views' clock, until `stop`.
fn spawn_lease_sweeper(
    registry: Arc<Registry>,
    store: vendflow_dataflows::ViewStore,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("vendflow-leases".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let now = vendflow_queries::api::frontier_or_now(&store);
                if let Err(e) = vendflow_queries::api::sweep_leases(&registry, now) {
                    tracing::warn!(error = %e, "lease lifecycle not advanced");
                }
            }
        })?;
    Ok(())
}

/// `pipeline`, with the archive's counters when there is one, for `/health` and `/metrics`.
fn pipeline_health(
    pipeline: vendflow_queries::api::Pipeline,
    archive: Option<&Archive>,
) -> Arc<dyn vendflow_queries::api::Health> {
    let pipeline = match archive {
        Some(a) => {
            let stats = a.stats();
            pipeline.with_archive(Box::new(move || vendflow_queries::api::ArchiveCounters {
                files: stats.files_written.load(Ordering::Relaxed),
                events: stats.events_written.load(Ordering::Relaxed),
                errors: stats.errors.load(Ordering::Relaxed),
            }))
        }
        None => pipeline,
    };
    Arc::new(pipeline)
}

/// Measures the Kafka source's lag every 5 s in the background (it asks the brokers, which may
/// take seconds; `/health` and `/metrics` read the latest measurement).
fn spawn_lag_probe(
    brokers: &str,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Arc<std::sync::Mutex<Option<vendflow_queries::api::LagReading>>>> {
    let latest = Arc::new(std::sync::Mutex::new(None));
    let (brokers, out) = (brokers.to_owned(), latest.clone());
    std::thread::Builder::new()
        .name("vendflow-lag-probe".into())
        .spawn(move || {
            let probe = vendflow_ingest::kafka::source::LagProbe::new(&brokers);
            while !stop.load(Ordering::SeqCst) {
                let result = match &probe {
                    Ok(p) => p
                        .measure(&stats, Duration::from_secs(2))
                        .map(|parts| {
                            parts
                                .into_iter()
                                .map(|p| (p.topic, p.partition, p.position, p.end))
                                .collect()
                        })
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "kafka lag not measured");
                }
                *out.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(vendflow_queries::api::LagReading {
                        taken: Instant::now(),
                        result,
                    });
                let slept = Instant::now();
                while slept.elapsed() < Duration::from_secs(5) && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(latest)
}

/// A flag raised by Ctrl-C or SIGTERM.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

fn run_kafka(config: Config, args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        kafka,
        out,
        status,
        http,
        pg,
        serve,
        tokens,
        insecure_open_api,
        credentials,
        archive,
        every,
        partitions,
        tick_ms,
    } = args;
    let (tls, pg_tls) = serve.tls()?;
    let (streams, rate) = serve.limits();
    let (brokers, out, status_file) = (kafka.as_str(), out.as_deref(), status.as_deref());
    let stop = stop_flag()?;
    let archive_args = archive;
    let archive = archive_args.open(None, &config)?;
    let mut engine = Engine::start(config)?;
    let store = engine.store();
    let sql = Sql::open(
        store.clone(),
        archive.as_ref().map(Archive::root),
        Limits::default(),
    )?;
    // The REST API's registry: filled from `fleet-commands` by the source; its own changes go
    // to `fleet-commands` (the engine reads them back from there, like any registry record).
    let registry = {
        let brokers = brokers.to_owned();
        Arc::new(Registry::new(Arc::new(move |changes| {
            let text: String = changes
                .iter()
                .filter(|(_, diff)| *diff > 0)
                .map(|(r, _)| r.to_json_line() + "\n")
                .collect();
            vendflow_ingest::kafka::load_registry(&brokers, &text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })))
    };
    let _ = insecure_open_api; // clap makes it the alternative to --tokens
    let tokens = tokens
        .map(|path| Tokens::open(&path).map(Arc::new))
        .transpose()?;
    // The Postgres endpoint takes the same tokens (as passwords), scoped the same way.
    let pg_access = tokens.clone().map(|tokens| vendflow_queries::pg::Access {
        tokens,
        fleet: registry.clone(),
    });
    let stats = Arc::new(SourceStats::default());
    if let Some(addr) = http {
        let lag = spawn_lag_probe(brokers, stats.clone(), stop.clone())?;
        let counters = stats.clone();
        let health = pipeline_health(
            vendflow_queries::api::Pipeline::new(
                "kafka",
                brokers,
                Box::new(move || vendflow_queries::api::SourceCounters {
                    messages: counters.messages.load(Ordering::Relaxed),
                    events: counters.events.load(Ordering::Relaxed),
                    refused: counters.errors.load(Ordering::Relaxed),
                }),
            )
            .with_lag(Box::new(move || {
                lag.lock().unwrap_or_else(|e| e.into_inner()).clone()
            })),
            archive.as_ref(),
        );
        let mut state =
            vendflow_queries::ApiState::new(store.clone(), sql.clone(), registry.clone())
                .with_health(health)
                .with_limits(streams, rate);
        match &tokens {
            Some(tokens) => state = state.with_tokens(tokens.clone()),
            None => eprintln!(
                "run: WARNING: --insecure-open-api: anyone who reaches {addr} can read and change the fleet"
            ),
        }
        if let Some(path) = credentials.clone() {
            state = state.with_secrets(Arc::new(move |machine: &str| {
                Credentials::register(&path, machine).map_err(|e| e.to_string())
            }));
        }
        vendflow_ingest::http::serve(addr, tls.as_ref(), vendflow_queries::app(state), None)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!(
            "run: REST API on {scheme}://{addr}/api (see /api/openapi.json), views on {scheme}://{addr}/views, SQL at POST {scheme}://{addr}/sql"
        );
    }
    spawn_lease_sweeper(registry.clone(), store.clone(), stop.clone())?;
    if let Some(addr) = pg {
        if pg_access.is_none() {
            eprintln!(
                "run: WARNING: --insecure-open-api: anyone who reaches {addr} can query every view"
            );
        }
        let bound = vendflow_queries::pg::spawn(addr, sql.clone(), pg_access, pg_tls)
            .with_context(|| format!("cannot serve the Postgres protocol on {addr}"))?;
        eprintln!(
            "run: SQL over the Postgres protocol: PGPASSWORD=<token> psql -h {} -p {} -U vendflow",
            bound.ip(),
            bound.port()
        );
    }
    if let Some(a) = &archive {
        eprintln!("run: archiving to {}", a.root().display());
    }
    let feeders = engine.feeders().context("engine feeders already taken")?;
    let handles = kafka_source::start(
        &SourceConfig {
            brokers: brokers.to_owned(),
            partitions,
            tick_ms,
            registry_observer: Some({
                let registry = registry.clone();
                Arc::new(move |record| registry.observe(record))
            }),
        },
        feeders,
        stats.clone(),
        archive.as_ref().map(archive_tap),
        stop.clone(),
    )?;
    eprintln!("run: consuming {TELEMETRY_TOPIC} and fleet-commands from {brokers}; Ctrl-C to stop");
    let every = Duration::from_secs_f64(every.max(0.1));
    let mut freshness = Freshness::default();
    let snapshot_every = Duration::from_secs_f64(archive_args.archive_snapshot_secs.max(0.1));
    let mut last_archived = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // Between summaries, watch the published frontier pass sampled messages.
        let slept = Instant::now();
        while slept.elapsed() < every && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            freshness.observe(&stats, store.frontier(), Timestamp::now().0);
        }
        // Every view is copied only when the archive or `--out` takes them; the summary reads
        // a few (the copy holds the store's read lock, and publication waits for it).
        let archive_due = archive.is_some() && last_archived.elapsed() >= snapshot_every;
        let snapshot = if archive_due || out.is_some() {
            store.snapshot()
        } else {
            store.snapshot_of(FleetSummary::VIEWS)
        };
        let summary = FleetSummary::from_snapshot(&snapshot)?;
        if let Some(a) = &archive
            && archive_due
        {
            last_archived = Instant::now();
            a.tap().views(snapshot.clone(), stats.positions_line());
        }
        let fresh = freshness.percentiles();
        println!(
            "[{}] {summary} | consumed {} messages, {} events, {} refused | {}{}",
            Timestamp(snapshot.frontier as i64),
            stats.messages.load(Ordering::Relaxed),
            stats.events.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
            stats.positions_line(),
            fresh.map_or(String::new(), |f| format!(
                " | freshness p50 {} ms p99 {} ms (engine p50 {} ms p99 {} ms)",
                f.p50, f.p99, f.engine_p50, f.engine_p99
            ))
        );
        let mut status_files: Vec<PathBuf> = status_file.map(Into::into).into_iter().collect();
        if let Some(dir) = out {
            vendflow_sinks::csv::write_snapshot(&snapshot, dir)?;
            status_files.push(dir.join("status.json"));
        }
        if !status_files.is_empty() {
            // Freshness: how far the published views are behind the wall clock. Ingestion time
            // is the bridge's clock when it produced each envelope, so this is the time from
            // the bridge to a view (plus at most one --every).
            let lag_ms = Timestamp::now().0 - snapshot.frontier as i64;
            let status = serde_json::json!({
                "frontier": snapshot.frontier,
                "lagMs": lag_ms,
                // Bridge stamp → every view, over the latest sampled messages.
                "freshnessP50Ms": fresh.map(|f| f.p50),
                "freshnessP99Ms": fresh.map(|f| f.p99),
                // Consumer received → every view: the engine's own part of the above.
                "engineFreshnessP50Ms": fresh.map(|f| f.engine_p50),
                "engineFreshnessP99Ms": fresh.map(|f| f.engine_p99),
                "freshnessSamples": fresh.map_or(0, |f| f.samples),
                "messages": stats.messages.load(Ordering::Relaxed),
                "events": stats.events.load(Ordering::Relaxed),
                "errors": stats.errors.load(Ordering::Relaxed),
                "positions": stats.positions_line(),
                "archive": archive.as_ref().map(|a| a.stats().line()),
                "archived": archive.as_ref().map(|a| {
                    a.stats().committed.lock().map(|c| c.clone()).unwrap_or_default()
                }),
            });
            for path in status_files {
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, status.to_string())?;
                std::fs::rename(&tmp, &path)?;
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(a) = archive {
        let stats = a.close()?;
        eprintln!("archive: {}", stats.line());
    }
    engine.shutdown()?;
    eprintln!("run stopped.");
    Ok(())
}

#[derive(clap::Args)]
struct PublishArgs {
    /// MQTT broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    #[arg(long, default_value_t = 20)]
    machines: usize,
    /// Simulated hours to publish, ending now (fractions too: 0.05 is 3 minutes).
    #[arg(long, default_value_t = 6.0)]
    hours: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Simulated seconds per wall-clock second (default: as fast as the broker takes it).
    #[arg(long)]
    speed: Option<f64>,
    /// Write the fleet's credentials file (public keys) here, for the bridge.
    #[arg(long)]
    credentials_out: Option<PathBuf>,
    /// Write the fleet's registry records here.
    #[arg(long)]
    registry_out: Option<PathBuf>,
    /// Record every published event here as JSON Lines (what an oracle should count).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Only write --credentials-out / --registry-out, publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Take machine N (0-based) off the network for H hours, one hour into the stream:
    /// `N:H`. It buffers its sales and flushes them when the network returns.
    #[arg(long, value_parser = parse_outage)]
    outage: Vec<(usize, u32)>,
    /// After the stream, stay connected this many seconds answering commands
    /// (`machines/+/commands`; they are answered during the stream too).
    #[arg(long, default_value_t = 0)]
    linger: u64,
}

fn publish(args: PublishArgs) -> anyhow::Result<()> {
    if args.machines == 0 || args.hours.is_nan() || args.hours <= 0.0 {
        bail!("--machines and --hours must be positive");
    }
    let now = Timestamp::now().0;
    // The simulated span ends now, on a whole minute, so event times are what a live fleet sends.
    let end = now - now.rem_euclid(60_000);
    if let Some((machine, hours)) = args.outage.iter().find(|(m, _)| *m >= args.machines) {
        bail!(
            "--outage {machine}:{hours}: there are only {} machines",
            args.machines
        );
    }
    let mut fleet = Fleet::new(&FleetConfig {
        machines: args.machines,
        seed: args.seed,
        start: Timestamp(end - (args.hours * MS_PER_HOUR as f64) as i64),
        scripted: args
            .outage
            .iter()
            .map(|&(m, hours)| (m, Fault::NetworkOutage { hours }, MS_PER_HOUR))
            .collect(),
        ..FleetConfig::default()
    });
    if let Some(path) = &args.credentials_out {
        let mut creds = Credentials::default();
        for (machine, hash) in mqtt_sim::simulated_credentials(&fleet, args.seed) {
            creds.insert(&machine, hash);
        }
        creds.save(path)?;
    }
    if let Some(path) = &args.registry_out {
        let registry: String = fleet
            .registry()
            .iter()
            .map(|r| r.to_json_line() + "\n")
            .collect();
        std::fs::write(path, registry)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.dry_run {
        return Ok(());
    }
    let (host, port) = host_port(&args.mqtt)?;
    let stop = stop_flag()?;
    let client_id = format!("vendflow-publisher-{}", std::process::id());
    let mut publisher = mqtt_sim::Publisher::connect(&host, port, &client_id, args.seed);
    let mut record = match &args.record {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    let mut events = 0u64;
    let mut write_error = None;
    let started = Instant::now();
    mqtt_sim::run(
        &mut fleet,
        &mut publisher,
        Timestamp(end),
        args.speed,
        &stop,
        |envelope| {
            events += envelope.events.len() as u64;
            if let Some(w) = record.as_mut() {
                for e in &envelope.events {
                    if let Err(err) = writeln!(w, "{}", e.to_json_line()) {
                        write_error.get_or_insert(err);
                    }
                }
            }
        },
        |_| {},
    )?;
    if let Some(e) = write_error {
        bail!("cannot record the published events: {e}");
    }
    if let Some(mut w) = record {
        w.flush()?;
    }
    if args.linger > 0 {
        eprintln!("publish: answering commands for {} s", args.linger);
        let answered = mqtt_sim::serve_commands(
            &mut fleet,
            &mut publisher,
            Duration::from_secs(args.linger),
            &stop,
        )?;
        eprintln!("publish: answered {answered} command(s)");
    }
    let envelopes = publisher.finish(Duration::from_secs(120))?;
    println!(
        "published {envelopes} envelopes ({events} events) of {} machines in {:.1}s, all acknowledged by {}",
        args.machines,
        started.elapsed().as_secs_f64(),
        args.mqtt
    );
    Ok(())
}

fn demo(config: Config, args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        machines,
        speed,
        seed,
        every,
        duration,
        mqtt_port,
        http,
        pg,
        serve,
        archive,
    } = args;
    let (tls, pg_tls) = serve.tls()?;
    let (streams, rate) = serve.limits();
    let scheme = if tls.is_some() { "https" } else { "http" };
    if machines == 0 || speed <= 0.0 {
        bail!("--machines and --speed must be positive");
    }
    let stop = stop_flag()?;
    let archive_args = archive;
    let default_root = std::env::temp_dir().join(format!("vendflow-demo-{}", std::process::id()));
    let archive = archive_args.open(
        Some(archive_args.archive.clone().unwrap_or(default_root)),
        &config,
    )?;
    let mut engine = Engine::start(config)?;
    let store = engine.store();
    let sql = Sql::open(
        store.clone(),
        archive.as_ref().map(Archive::root),
        Limits::default(),
    )?;
    let mut feeders = engine.feeders().context("engine feeders already taken")?;
    let mut fleet = Fleet::new(&FleetConfig {
        machines,
        seed,
        ..FleetConfig::default()
    });

    // The production path from the broker on: a real MQTT broker (in-process), the simulated
    // machines publishing signed envelopes to it, and the MQTT source verifying and feeding them.
    let port = match mqtt_port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
        p => p,
    };
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    vendflow_ingest::mqtt::start_embedded_broker(listen)
        .with_context(|| format!("cannot start the embedded MQTT broker on {listen}"))?;
    let mut credentials = Credentials::default();
    for (machine, hash) in mqtt_sim::simulated_credentials(&fleet, seed) {
        credentials.insert(&machine, hash);
    }
    // Shared with the REST API: a machine registered there can publish at once.
    let credentials = Arc::new(std::sync::RwLock::new(credentials));
    println!(
        "vendflow demo: {machines} simulated machines at {speed}x from {}, publishing to the embedded MQTT broker on {listen} (Ctrl-C to stop)",
        fleet.now()
    );
    let addr = free_or_any(http)?;
    // The REST API's registry starts as the simulated fleet's; its changes go straight to the
    // engine (there is no Kafka in the demo) through a clone of worker 0's input.
    let registry = {
        let feeder = std::sync::Mutex::new(feeders.feeder(0));
        Arc::new(Registry::new(Arc::new(move |changes| {
            let mut feeder = feeder.lock().unwrap_or_else(|e| e.into_inner());
            let at = feeder.time();
            feeder
                .send(
                    at,
                    Batch {
                        registry: changes,
                        ..Batch::default()
                    },
                )
                .map_err(|e| e.to_string())
        })))
    };
    for record in fleet.registry() {
        registry.observe(record);
    }
    let token_dir = archive
        .as_ref()
        .map(|a| a.root().to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    let tokens = Arc::new(Tokens::open(&token_dir.join("tokens.jsonl"))?);
    let admin_token = tokens.issue(Role::Admin, Tenant::All, Some("vendflow demo"))?;
    let source_stats = Arc::new(MqttSourceStats::default());
    let health = {
        let stats = source_stats.clone();
        pipeline_health(
            vendflow_queries::api::Pipeline::new(
                "mqtt",
                format!("embedded broker 127.0.0.1:{port}"),
                Box::new(move || vendflow_queries::api::SourceCounters {
                    messages: stats.messages.load(Ordering::Relaxed),
                    events: stats.events.load(Ordering::Relaxed),
                    refused: stats.refused.load(Ordering::Relaxed),
                }),
            ),
            archive.as_ref(),
        )
    };
    let state = vendflow_queries::ApiState::new(store.clone(), sql.clone(), registry.clone())
        .with_health(health)
        .with_limits(streams, rate)
        .with_tokens(tokens.clone())
        .with_secrets({
            let credentials = credentials.clone();
            Arc::new(move |machine: &str| {
                let secret = vendflow_ingest::auth::new_secret().map_err(|e| e.to_string())?;
                credentials
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        machine,
                        vendflow_protocol::auth::StoredKey::PublicKey(
                            vendflow_protocol::auth::PublicKey::of_secret(&secret),
                        ),
                    );
                Ok(secret)
            })
        });
    spawn_lease_sweeper(registry.clone(), store.clone(), stop.clone())?;
    vendflow_ingest::http::spawn_into_broker(
        addr,
        tls.as_ref(),
        port,
        Verifier::shared(
            Some(credentials.clone()),
            vendflow_ingest::auth::DEFAULT_MAX_SKEW_MS,
        ),
        vendflow_queries::app(state),
    )?;
    let pg_access = vendflow_queries::pg::Access {
        tokens: tokens.clone(),
        fleet: registry.clone(),
    };
    let pg = vendflow_queries::pg::spawn(free_or_any(pg)?, sql.clone(), Some(pg_access), pg_tls)
        .context("cannot serve the Postgres protocol")?;
    println!(
        "vendflow demo: views on {scheme}://{addr}/views, live: {scheme}://{addr}/views/<name>/subscribe, SQL: POST {scheme}://{addr}/sql; telemetry over HTTP on {scheme}://{addr}/api/telemetry"
    );
    println!(
        "vendflow demo: REST API on {scheme}://{addr}/api (documented at {scheme}://{addr}/api/openapi.json); admin token (tenant *): {admin_token}"
    );
    println!("vendflow demo: dashboard: {scheme}://{addr}/#token={admin_token}");
    println!(
        "vendflow demo: try: curl -H 'Authorization: Bearer {admin_token}' {scheme}://{addr}/api/dashboard/fleet"
    );
    println!(
        "vendflow demo: SQL for psql and BI tools (a token is the password): PGPASSWORD={admin_token} psql -h {} -p {} -U vendflow -c 'SELECT * FROM revenue_by_location_day'",
        pg.ip(),
        pg.port()
    );
    if let Some(a) = &archive {
        println!(
            "vendflow demo: Parquet archive in {} (export: vendflow export --archive {} --from DAY --to DAY --out DIR)",
            a.root().display(),
            a.root().display()
        );
    }
    let tap = archive.as_ref().map(archive_tap);
    sim::register(&fleet, &mut feeders)?;
    // The simulated clock is the ingestion clock.
    let sim_clock = Arc::new(AtomicU64::new(fleet.now().0.max(0) as u64));
    let source = {
        let (clock, stats, stop) = (sim_clock.clone(), source_stats.clone(), stop.clone());
        let verifier = Verifier::shared(
            Some(credentials),
            vendflow_ingest::auth::DEFAULT_MAX_SKEW_MS,
        );
        std::thread::Builder::new()
            .name("vendflow-mqtt-source".into())
            .spawn(move || {
                vendflow_ingest::mqtt::run(
                    "127.0.0.1",
                    port,
                    "vendflow-demo-source",
                    verifier,
                    feeders,
                    &|| clock.load(Ordering::SeqCst),
                    &stats,
                    tap.as_ref(),
                    &stop,
                )
            })?
    };
    let mut publisher =
        mqtt_sim::Publisher::connect("127.0.0.1", port, "vendflow-demo-fleet", seed);
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut last_archived = Instant::now();
    let snapshot_every = Duration::from_secs_f64(archive_args.archive_snapshot_secs.max(0.1));
    let end = Timestamp(i64::MAX / 2);
    let result = mqtt_sim::run(
        &mut fleet,
        &mut publisher,
        end,
        Some(speed),
        &stop,
        |_| {},
        |now| {
            sim_clock.store(now.0.max(0) as u64, Ordering::SeqCst);
            if duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d) {
                stop.store(true, Ordering::SeqCst);
            }
            if let Some(a) = &archive
                && last_archived.elapsed() >= snapshot_every
            {
                last_archived = Instant::now();
                a.tap().views(store.snapshot(), String::new());
            }
            if last_print.elapsed().as_secs_f64() >= every {
                last_print = Instant::now();
                let snapshot = store.snapshot_of(FleetSummary::VIEWS);
                match FleetSummary::from_snapshot(&snapshot) {
                    Ok(summary) => println!("[{}] {summary}", Timestamp(snapshot.frontier as i64)),
                    Err(e) => tracing::error!(error = %e, "cannot summarize the fleet"),
                }
            }
        },
    );
    stop.store(true, Ordering::SeqCst);
    let _ = publisher.finish(Duration::from_secs(2));
    result?;
    source
        .join()
        .map_err(|_| anyhow::anyhow!("the MQTT source panicked"))??;
    if let Some(a) = archive {
        let root = a.root().to_path_buf();
        let stats = a.close()?;
        println!("archive {}: {}", root.display(), stats.line());
    }
    engine.shutdown()?;
    println!(
        "stopped: {} envelopes received over MQTT, {} events, {} refused.",
        source_stats.messages.load(Ordering::Relaxed),
        source_stats.events.load(Ordering::Relaxed),
        source_stats.refused.load(Ordering::Relaxed)
    );
    Ok(())
}

fn replay_file(
    config: Config,
    file: &std::path::Path,
    out: &std::path::Path,
    registry: Option<&std::path::Path>,
    options: &ReplayOptions,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let mut engine = Engine::start(config)?;
    let store = engine.store();
    let mut feeders = engine.feeders().context("engine feeders already taken")?;
    if let Some(path) = registry {
        let (records, errors) = load_registry(path)?;
        if !errors.is_empty() {
            eprintln!(
                "warning: {} registry lines refused (see the errors view)",
                errors.len()
            );
        }
        feeders.send(
            0,
            Batch {
                registry: records.into_iter().map(|r| (r, 1)).collect(),
                errors,
                ..Batch::default()
            },
        )?;
    }
    let bar = ProgressBar::new(size * u64::from(options.repeat.max(1)));
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (progress, bar) = (progress.clone(), bar.clone());
        std::thread::spawn(move || {
            while !bar.is_finished() {
                bar.set_position(progress.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let stats = replay(file, feeders, options, progress.clone());
    bar.set_position(progress.load(Ordering::Relaxed));
    bar.finish_and_clear();
    let _ = watcher.join();
    let stats = stats?;
    if !store.wait_for(stats.end, Duration::from_secs(3600)) {
        bail!("the dataflows did not catch up with the input");
    }
    let elapsed = started.elapsed();
    let snapshot = store.snapshot();
    let written = vendflow_sinks::csv::write_snapshot(&snapshot, out)?;
    let csv = started.elapsed() - elapsed;
    // The process ends right after: no need to drain the workers and free their state.
    engine.abandon_at_exit();
    println!(
        "replayed {} events from {} lines in {:.2}s ({:.0} events/s); {} refused; CSVs written in {:.2}s",
        stats.events,
        stats.lines,
        elapsed.as_secs_f64(),
        stats.events as f64 / elapsed.as_secs_f64().max(1e-9),
        stats.errors,
        csv.as_secs_f64()
    );
    for w in &written {
        println!("  {:>9} rows  {}", w.rows, w.path.display());
    }
    if let Some(bytes) = vendflow_dataflows::peak_rss_bytes() {
        println!("peak memory {} MiB", bytes >> 20);
    }
    Ok(())
}

fn simulate(
    out: &std::path::Path,
    machines: usize,
    hours: i64,
    seed: u64,
    scenario: Option<&str>,
) -> anyhow::Result<()> {
    let config = match scenario {
        None => FleetConfig {
            machines,
            seed,
            ..FleetConfig::default()
        },
        Some("golden") => FleetConfig {
            machines: 5,
            seed,
            slots: 12,
            fault_rate: 0.0,
            scripted: vec![
                (0, Fault::CoolingFailure, 6 * MS_PER_HOUR),
                (1, Fault::NetworkOutage { hours: 5 }, 8 * MS_PER_HOUR),
                (2, Fault::SkippedByCrew, 0),
            ],
            ..FleetConfig::default()
        },
        Some(other) => bail!("unknown scenario {other:?}; the one scenario is `golden`"),
    };
    if hours <= 0 || hours > 24 * 60 {
        bail!("--hours must be between 1 and {}", 24 * 60);
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut fleet = Fleet::new(&config);
    let registry: String = fleet
        .registry()
        .iter()
        .map(|r| r.to_json_line() + "\n")
        .collect();
    std::fs::write(out.join("registry.jsonl"), registry)?;
    let mut events = String::new();
    let mut count = 0;
    let end = config.start.0 + hours * MS_PER_HOUR;
    let mut t = config.start.0;
    while t < end {
        t = (t + 10_000).min(end);
        for envelope in fleet.advance(Timestamp(t)) {
            for e in envelope.events {
                events.push_str(&e.to_json_line());
                events.push('\n');
                count += 1;
            }
        }
    }
    std::fs::write(out.join("events.jsonl"), events)?;
    println!(
        "wrote {count} events over {hours} h ({} days) of {} machines to {}",
        hours as f64 * MS_PER_HOUR as f64 / MS_PER_DAY as f64,
        config.machines,
        out.display()
    );
    Ok(())
}

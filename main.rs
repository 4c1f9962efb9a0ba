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
use vendflow_dataflows::Config;
use vendflow_firmware::mqtt as mqtt_sim;
use vendflow_firmware::{Fault, Fleet, FleetConfig};
use vendflow_ingest::auth::{Credentials, Verifier};
use vendflow_ingest::bridge::{self, BridgeConfig, BridgeStats};
use vendflow_ingest::file::ReplayOptions;
use vendflow_ingest::import::{
    ColumnMap, CsvImport, convert_csv, convert_dex, convert_settlement, merge_by_time,
};
use vendflow_ingest::kafka::TELEMETRY_TOPIC;
use vendflow_protocol::Timestamp;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_queries::auth::{Role, Tenant, Tokens};
use vendflow_queries::service::bulk::{self, BulkLoad};
use vendflow_queries::service::{Access, Service, ServiceConfig, Simulation, Source};
use vendflow_sinks::archive::ArchiveConfig;

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
    /// Days a card transaction waits for the payment processor's settlement line (and a
    /// settlement line for its sale). 0 turns the matching off (`settlement_daily` and
    /// `settlement_exceptions` stay empty) for a fleet that loads no settlement file: it holds
    /// every card transaction that long.
    #[arg(
        long,
        global = true,
        default_value_t = 7,
        env = "VENDFLOW_SETTLEMENT_DAYS"
    )]
    settlement_days: i64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SqlFormat {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum ImportKind {
    /// A sales export with a header row, one sale line per row.
    ///
    /// Example: vendflow import csv sales.csv --archive archive/
    ///   --map 'machine=Machine,time=Trans Date,transaction=Trans ID,slot=Coil,quantity=Qty,amount=Line Total,payment=Type,location=Location'
    ///
    /// Fields: machine, product, transaction, slot, quantity, amount (the line total), time (the
    /// date, with or without the time of day), clock (a separate time-of-day column), payment,
    /// location, offline (yes/no: a card sale the machine authorised alone while offline).
    /// amount and time are required, and machine unless --machine is given. Money is
    /// read exactly ($1,234.50, (3.00) for a refund); dates as exports write them (1/31/2022,
    /// 2022-01-31, Monday, January 31, 2022, with or without 13:05 or 1:05 PM). Refused rows are
    /// listed with their line numbers and kept in the errors view.
    Csv(TableArgs),
    /// A payment processor's settlement file: one card transaction per row, with what became of
    /// it (settled, declined or reversed).
    ///
    /// Example: vendflow import settlement settlement.csv --telemetry sales.jsonl --out views/
    ///   --map 'machine=Terminal,time=Auth Time,transaction=Reference,amount=Amount,status=Result'
    ///
    /// Fields: machine, transaction, amount, time, clock, status (all but clock required; machine
    /// unless --machine is given). Status words: settled / approved / captured / paid, declined /
    /// failed / rejected, reversed / refunded / chargeback. With the machines' telemetry
    /// (--telemetry, JSON Lines) loaded alongside, `settlement_daily` compares each machine-day's
    /// card sales with what the processor paid, and `settlement_exceptions` lists each
    /// transaction they disagree on; an offline sale the processor declined is marked for review.
    Settlement {
        #[command(flatten)]
        table: TableArgs,
        /// The machines' telemetry (JSON Lines) over the same span, loaded with the file.
        #[arg(long)]
        telemetry: Option<PathBuf>,
    },
    /// EVA-DTS / DEX audit files, the audit read from every machine (DXS, ST, ID1, VA1, CA2,
    /// PA1 price per column, PA2 vend counters, EA3 / ID5 read time, SE, DXE).
    ///
    /// Consecutive audits of a machine become per-column sales for the period between them
    /// (`dex_audits`), and with the machine's telemetry (--telemetry) the `reconciliation` view:
    /// per period and slot, matched, missing in telemetry, missing in the audit, or an amount
    /// difference. Counter resets and unreadable segments are reported, not guessed.
    Dex {
        /// Audit files, in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The machine of every file (default: each audit's serial number, ID101).
        #[arg(long)]
        machine: Option<String>,
        /// The machines' telemetry (JSON Lines) over the same span, loaded with the audits.
        #[arg(long)]
        telemetry: Option<PathBuf>,
        /// Directory for `<view>.csv` (created if missing).
        #[arg(long, short, required_unless_present = "archive")]
        out: Option<PathBuf>,
        /// Parquet archive directory.
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Registry records (machines, locations, leases) as JSON Lines.
        #[arg(long)]
        registry: Option<PathBuf>,
    },
}

/// A CSV file with a header row and a column mapping (`import csv`, `import settlement`).
#[derive(clap::Args)]
struct TableArgs {
    file: PathBuf,
    /// FIELD=COLUMN pairs, separated by commas (a pair with a comma in its column name is
    /// quoted whole: "amount=Line, Total").
    #[arg(long)]
    map: String,
    /// The machine of every row (a file of one machine with no machine column).
    #[arg(long)]
    machine: Option<String>,
    /// The time zone of the file's local times (IANA name, e.g. Europe/Paris).
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Keep the converted events (JSON Lines) here (default: a temporary file).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Directory for `<view>.csv` (created if missing).
    #[arg(long, short, required_unless_present = "archive")]
    out: Option<PathBuf>,
    /// Parquet archive directory: raw events, history of the daily views, final snapshot.
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Registry records (machines, locations, leases) as JSON Lines.
    #[arg(long)]
    registry: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated fleet through the dataflows and print a fleet summary until Ctrl-C.
    Demo(DemoArgs),
    /// Replay a JSON Lines telemetry file through the dataflows and write every final view as CSV
    /// (--out) and/or into the Parquet archive (--archive).
    ///
    /// Any order and any span: a file out of time order is judged in its own order (an event
    /// older than the replay's clock arrives late, as it would live); every sale still counts, in
    /// its own day. With --archive, the closed days of the daily views land in the history
    /// tables as the replay goes, so `vendflow sql --archive DIR` covers the whole span.
    Replay {
        /// Events, one per line (or an envelope per line), as recorded or generated.
        file: PathBuf,
        /// Directory for `<view>.csv` (created if missing).
        #[arg(long, short, required_unless_present = "archive")]
        out: Option<PathBuf>,
        /// Parquet archive directory (created if missing): raw events, the history of the daily
        /// views, and a final snapshot of every view.
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Registry records (machines, locations, leases) as JSON Lines.
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Commands sent to the machines (JSON Lines, as on `machine-commands`), so that the
        /// acknowledgements in the file find their commands in the `commands` view.
        #[arg(long)]
        commands: Option<PathBuf>,
        /// Granularity of the ingestion clock in milliseconds: the events of one tick are
        /// ingested together, and each view changes once per key and tick. Default: 3600000
        /// (one hour of event time, a bulk load's steps; also the most it takes), or 1000 with
        /// --rate (as live).
        #[arg(long)]
        tick_ms: Option<u64>,
        /// Replay the file this many times, each copy shifted later in event time (load tests).
        #[arg(long, default_value_t = 1, hide = true)]
        repeat: u32,
        /// Hours between copies with --repeat.
        #[arg(long, default_value_t = 24, hide = true)]
        repeat_shift_hours: i64,
        /// Minutes between copies with --repeat (instead of --repeat-shift-hours): copies that
        /// overlap in event time, the same machines at a multiple of their rate.
        #[arg(long, hide = true)]
        repeat_shift_minutes: Option<i64>,
        /// Pace the replay at this many events per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Load what operators already have: sales exports (CSV). The sales go through the same
    /// bulk load as `replay` (any order, any span, every sale in its own day).
    #[command(subcommand)]
    Import(ImportKind),
    /// Run one read-only SQL query over a Parquet archive, without a running engine: the views
    /// as of the archive's newest snapshot (the end of a `replay --archive`, or the last one a
    /// server took), the history tables, raw events and the ready views such as
    /// `revenue_by_machine_day`.
    Sql {
        /// The archive directory.
        #[arg(long)]
        archive: PathBuf,
        /// Output: a text table, CSV with a header, or a JSON array of rows.
        #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
        format: SqlFormat,
        /// The query, e.g. "SELECT * FROM revenue_by_machine_day ORDER BY day".
        query: String,
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

impl ServeArgs {
    /// (certificate, key) when given.
    fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_cert.clone().zip(self.tls_key.clone())
    }

    fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
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
    /// The archive's settings, at `root` or --archive (None: no archive).
    fn config(&self, root: Option<PathBuf>, config: &Config) -> Option<ArchiveConfig> {
        let root = root.or_else(|| self.archive.clone())?;
        Some(ArchiveConfig {
            flush_every: Duration::from_secs_f64(self.archive_flush_secs.max(0.05)),
            compact_min_files: self.archive_compact_files,
            raw_retention_days: self.raw_retention_days,
            history_retention_days: self.history_retention_days,
            ..ArchiveConfig::new(&root, config)
        })
    }

    fn snapshot_every(&self) -> Duration {
        Duration::from_secs_f64(self.archive_snapshot_secs.max(0.1))
    }
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
    /// Take a machine's key out of the credentials file (a decommissioned machine, a leaked
    /// secret): a bridge or server following the file refuses its envelopes within a second.
    /// `DELETE /api/machines/{id}` does the same for a machine deleted through the API.
    Revoke {
        machine_id: String,
        /// Credentials file.
        #[arg(long)]
        credentials: PathBuf,
    },
}

/// Exit status of a process whose output pipe was closed (128 + SIGPIPE), as Unix tools
/// report it.
const BROKEN_PIPE_STATUS: i32 = 141;

/// `println!` for the results a command prints: when stdout is a pipe its reader closed
/// (`vendflow replay … | head`), the process ends quietly, as Unix tools do, instead of
/// panicking; any other failure to write is said on stderr.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))
    };
}

fn write_out(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        quit_on_write_error(&e);
    }
}

/// [`summary_line`] with `format!`'s arguments.
macro_rules! summaryln {
    ($($arg:tt)*) => {
        summary_line(&format!($($arg)*))
    };
}

/// A running service's banner or periodic summary line: a closed or failing stdout does not
/// stop the service (ending it there would skip its orderly shutdown: the archive's last snapshot, the
/// consumer's committed positions); it is said once on stderr and the summaries stop.
fn summary_line(line: &str) {
    static FAILED: AtomicBool = AtomicBool::new(false);
    if FAILED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        FAILED.store(true, Ordering::Relaxed);
        eprintln!("vendflow: cannot write the summaries to stdout ({e}); the service goes on");
    }
}

fn quit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(BROKEN_PIPE_STATUS);
    }
    eprintln!("vendflow: cannot write to stdout: {e}");
    std::process::exit(1);
}

fn main() -> anyhow::Result<()> {
    let result = run();
    // An answer written into a closed pipe (`vendflow sql … | head`) is not an error to report.
    if let Err(e) = &result
        && let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>())
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        quit_on_write_error(io);
    }
    result
}

fn run() -> anyhow::Result<()> {
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
    if cli.settlement_days < 0 {
        bail!("--settlement-days must be 0 (off) or more");
    }
    let config = Config {
        workers: cli.workers,
        settlement_days: cli.settlement_days,
        ..Config::default()
    };
    match cli.command {
        Command::Demo(args) => demo(config, args),
        Command::Replay {
            file,
            out,
            archive,
            registry,
            commands,
            tick_ms,
            repeat,
            repeat_shift_hours,
            repeat_shift_minutes,
            rate,
        } => {
            if let Some(tick) = tick_ms
                && !(1..=vendflow_ingest::file::BULK_TICK_MS).contains(&tick)
            {
                bail!(
                    "--tick-ms must be between 1 and {} (one hour: the finest grain of the hourly views)",
                    vendflow_ingest::file::BULK_TICK_MS
                );
            }
            let options = ReplayOptions {
                tick_ms,
                repeat,
                repeat_shift_ms: repeat_shift_minutes
                    .map_or(repeat_shift_hours * MS_PER_HOUR, |m| m * 60_000),
                rate,
                ..ReplayOptions::default()
            };
            let archive = archive.map(|root| ArchiveConfig::new(root, &config));
            bulk_load(
                config,
                BulkLoad {
                    file: &file,
                    registry: registry.as_deref(),
                    commands: commands.as_deref(),
                    archive,
                    options,
                    registry_records: Vec::new(),
                    errors: Vec::new(),
                },
                out.as_deref(),
            )
        }
        Command::Sql {
            archive,
            format,
            query,
        } => sql_over_archive(&archive, format, &query),
        Command::Import(ImportKind::Dex {
            files,
            machine,
            telemetry,
            out,
            archive,
            registry,
        }) => {
            let mut audits = Vec::new();
            let converted = convert_dex(&files, machine.as_deref(), &mut audits)?;
            outln!(
                "{} audits read, {} files refused",
                converted.audits,
                converted.refused.len()
            );
            for (file, reason) in &converted.refused {
                outln!("  {file}: {reason}");
            }
            for (file, problem) in &converted.problems {
                outln!("  {file}: {problem}");
            }
            let events = tempfile::NamedTempFile::new()?;
            merge_by_time(&audits, telemetry.as_deref(), events.path())?;
            let archive = archive.map(|root| ArchiveConfig::new(root, &config));
            bulk_load(
                config,
                BulkLoad {
                    file: events.path(),
                    registry: registry.as_deref(),
                    commands: None,
                    archive,
                    options: ReplayOptions::default(),
                    registry_records: Vec::new(),
                    errors: Vec::new(),
                },
                out.as_deref(),
            )
        }
        Command::Import(ImportKind::Csv(table)) => import_table(config, table, None, false),
        Command::Import(ImportKind::Settlement { table, telemetry }) => {
            import_table(config, table, telemetry.as_deref(), true)
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
            outln!("{token}");
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
            outln!("{secret}");
            Ok(())
        }
        Command::Device {
            command:
                DeviceCommand::Revoke {
                    machine_id,
                    credentials,
                },
        } => {
            if !Credentials::revoke(&credentials, &machine_id)? {
                bail!(
                    "{machine_id} has no credentials in {}; nothing revoked",
                    credentials.display()
                );
            }
            eprintln!(
                "revoked {machine_id}'s key in {}; its envelopes are refused from now on",
                credentials.display()
            );
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
    outln!("{}", command.to_json());
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
    let _ = insecure_open_api; // clap makes it the alternative to --tokens
    let service = ServiceConfig {
        http,
        pg,
        tls: serve.tls_files(),
        api_rate: serve.api_rate,
        access: tokens.map_or(Access::Open, Access::Tokens),
        credentials,
        archive: archive.config(None, &config),
        snapshot_every: archive.snapshot_every(),
        summary_every: Duration::from_secs_f64(every.max(0.1)),
        out,
        status,
        ..ServiceConfig::new(config)
    };
    let open = matches!(service.access, Access::Open);
    let running = Service::start(
        service,
        Source::Kafka {
            brokers: kafka.clone(),
            partitions,
            tick_ms,
        },
        stop_flag()?,
    )?;
    if let Some(addr) = running.http_addr() {
        if open {
            eprintln!(
                "run: WARNING: --insecure-open-api: anyone who reaches {addr} can read and change the fleet"
            );
        }
        let scheme = serve.scheme();
        eprintln!(
            "run: REST API on {scheme}://{addr}/api (see /api/openapi.json), views on {scheme}://{addr}/views, SQL at POST {scheme}://{addr}/sql"
        );
    }
    if let Some(addr) = running.pg_addr() {
        if open {
            eprintln!(
                "run: WARNING: --insecure-open-api: anyone who reaches {addr} can query every view"
            );
        }
        eprintln!(
            "run: SQL over the Postgres protocol: PGPASSWORD=<token> psql -h {} -p {} -U vendflow",
            addr.ip(),
            addr.port()
        );
    }
    if let Some(root) = running.archive_root() {
        eprintln!("run: archiving to {}", root.display());
    }
    eprintln!("run: consuming {TELEMETRY_TOPIC} and fleet-commands from {kafka}; Ctrl-C to stop");
    let stopped = running.run(|tick| summary_line(&tick.line()))?;
    if let Some((_, line)) = stopped.archive {
        eprintln!("archive: {line}");
    }
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
    /// Keep every message until the platform's delivery receipt for it arrives
    /// (`machines/{id}/delivered`, sent by `vendflow bridge` once the message is in Kafka), and
    /// send again what has none after a timeout (at least 5 s, adapted to how long receipts
    /// take, doubled while resends go unanswered): what a machine's outbox does, so that nothing is lost
    /// when the broker dies after acknowledging. Needs a bridge (not the demo's embedded broker).
    #[arg(long)]
    receipts: bool,
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
        // A fleet published again continues its numbers, as firmware does across restarts
        // (a thousand numbers a millisecond apart: ids stay below 2^53, exact in JSON readers).
        first_number: u64::try_from(now).unwrap_or(0).saturating_mul(1000),
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
    let mut publisher =
        mqtt_sim::Publisher::connect_with(&host, port, &client_id, args.seed, args.receipts);
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
    outln!(
        "published {envelopes} envelopes ({events} events) of {} machines in {:.1}s, all {} {}",
        args.machines,
        started.elapsed().as_secs_f64(),
        if args.receipts {
            "receipted (durable in Kafka) through"
        } else {
            "acknowledged by"
        },
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
    let scheme = serve.scheme();
    let default_root = std::env::temp_dir().join(format!("vendflow-demo-{}", std::process::id()));
    let archive_config = archive.config(
        Some(archive.archive.clone().unwrap_or(default_root)),
        &config,
    );
    let token_dir = archive_config
        .as_ref()
        .map(|a| a.root.clone())
        .unwrap_or_else(std::env::temp_dir);
    let service = ServiceConfig {
        http: Some(free_or_any(http)?),
        pg: Some(free_or_any(pg)?),
        tls: serve.tls_files(),
        api_rate: serve.api_rate,
        access: Access::TokensWithAdmin(token_dir.join("tokens.jsonl")),
        archive: archive_config,
        snapshot_every: archive.snapshot_every(),
        summary_every: Duration::from_secs_f64(every.max(0.1)),
        ..ServiceConfig::new(config)
    };
    let running = Service::start(
        service,
        Source::Simulated(Simulation {
            machines,
            speed,
            seed,
            mqtt_port,
            duration: duration.map(|d| Duration::from_secs_f64(d.max(0.0))),
        }),
        stop_flag()?,
    )?;
    let (Some(addr), Some(pg), Some(mqtt), Some(admin_token)) = (
        running.http_addr(),
        running.pg_addr(),
        running.mqtt_addr(),
        running.admin_token().map(str::to_owned),
    ) else {
        bail!("the demo started without its HTTP, Postgres or MQTT endpoint");
    };
    summaryln!(
        "vendflow demo: {machines} simulated machines at {speed}x from {}, publishing to the embedded MQTT broker on {mqtt} (Ctrl-C to stop)",
        running.simulated_from().unwrap_or_default()
    );
    summaryln!(
        "vendflow demo: views on {scheme}://{addr}/views, live: {scheme}://{addr}/views/<name>/subscribe, SQL: POST {scheme}://{addr}/sql; telemetry over HTTP on {scheme}://{addr}/api/telemetry"
    );
    summaryln!(
        "vendflow demo: REST API on {scheme}://{addr}/api (documented at {scheme}://{addr}/api/openapi.json); admin token (tenant *): {admin_token}"
    );
    summaryln!("vendflow demo: dashboard: {scheme}://{addr}/#token={admin_token}");
    summaryln!(
        "vendflow demo: try: curl -H 'Authorization: Bearer {admin_token}' {scheme}://{addr}/api/dashboard/fleet"
    );
    summaryln!(
        "vendflow demo: SQL for psql and BI tools (a token is the password): PGPASSWORD={admin_token} psql -h {} -p {} -U vendflow -c 'SELECT * FROM revenue_by_location_day'",
        pg.ip(),
        pg.port()
    );
    if let Some(root) = running.archive_root() {
        summaryln!(
            "vendflow demo: Parquet archive in {} (export: vendflow export --archive {} --from DAY --to DAY --out DIR)",
            root.display(),
            root.display()
        );
    }
    let stopped = running.run(|tick| summary_line(&tick.line()))?;
    if let Some((root, line)) = stopped.archive {
        outln!("archive {}: {line}", root.display());
    }
    outln!(
        "stopped: {} envelopes received over MQTT, {} events, {} refused.",
        stopped.source.messages,
        stopped.source.events,
        stopped.source.refused
    );
    Ok(())
}

/// `import csv` (a sales export) or `import settlement` (a processor's settlement file, with
/// the machines' telemetry when given): converts the rows, reports the refused ones, and loads
/// the events like a replay.
fn import_table(
    config: Config,
    table: TableArgs,
    telemetry: Option<&std::path::Path>,
    settlement: bool,
) -> anyhow::Result<()> {
    let map = ColumnMap::parse(&table.map, table.machine.is_some())?;
    let import = CsvImport::new(map, table.machine, Some(&table.tz))?;
    let temporary = tempfile::NamedTempFile::new()?;
    let events_path = table.events.unwrap_or_else(|| temporary.path().to_owned());
    let converted = if settlement {
        // Settlement lines are few (card transactions); they are merged into the telemetry in
        // time order.
        let mut lines = Vec::new();
        let converted = convert_settlement(&table.file, &import, &mut lines)?;
        merge_by_time(&lines, telemetry, &events_path)?;
        converted
    } else {
        let mut writer = std::io::BufWriter::new(
            std::fs::File::create(&events_path)
                .with_context(|| format!("cannot write {}", events_path.display()))?,
        );
        let converted = convert_csv(&table.file, &import, &mut writer)?;
        writer.flush()?;
        converted
    };
    outln!(
        "{}: {} rows, {} {}, {} refused",
        table.file.display(),
        converted.rows,
        converted.events,
        if settlement {
            "settlement lines"
        } else {
            "sales"
        },
        converted.refused.len()
    );
    for r in converted.refused.iter().take(20) {
        outln!("  line {}: {}", r.line, r.reason);
    }
    if converted.refused.len() > 20 {
        outln!(
            "  … and {} more (all in the errors view)",
            converted.refused.len() - 20
        );
    }
    let archive = table.archive.map(|root| ArchiveConfig::new(root, &config));
    bulk_load(
        config,
        BulkLoad {
            file: &events_path,
            registry: table.registry.as_deref(),
            commands: None,
            archive,
            options: ReplayOptions::default(),
            registry_records: converted.registry,
            errors: converted.errors,
        },
        table.out.as_deref(),
    )
}

/// A bulk load (`replay`, `import`) with a progress bar; prints what it did and writes the
/// final views as CSV to `out`.
fn bulk_load(
    config: Config,
    load: BulkLoad<'_>,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let file = load.file;
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let bar = ProgressBar::new(size * u64::from(load.options.repeat.max(1)));
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
    let loaded = bulk::load(config, load, progress.clone());
    bar.set_position(progress.load(Ordering::Relaxed));
    bar.finish_and_clear();
    let _ = watcher.join();
    let loaded = loaded?;
    // A refused registry or command line is a typo the user must see now (the `errors` view
    // keeps the last day of the replay's clock, which a file loaded first may not reach).
    for record in loaded.refused.iter().take(20) {
        eprintln!("refused {}: {}", record.source, record.message);
    }
    if loaded.refused.len() > 20 {
        eprintln!(
            "... and {} more refused registry or command lines (see the error_counts view)",
            loaded.refused.len() - 20
        );
    }
    let stats = &loaded.stats;
    let elapsed = loaded.elapsed;
    // The snapshot's sort counts as writing: it is only done for the CSVs.
    let written_at = Instant::now();
    let snapshot = loaded.store.snapshot();
    let written = match out {
        Some(out) => vendflow_sinks::csv::write_snapshot(&snapshot, out)?,
        None => Vec::new(),
    };
    let csv = written_at.elapsed();
    // The process ends right after: no need to drain the workers and free their state.
    loaded.engine.abandon_at_exit();
    outln!(
        "replayed {} events from {} lines in {:.2}s ({:.0} events/s); {} refused; CSVs written in {:.2}s",
        stats.events,
        stats.lines,
        elapsed.as_secs_f64(),
        stats.events as f64 / elapsed.as_secs_f64().max(1e-9),
        stats.errors,
        csv.as_secs_f64()
    );
    for w in &written {
        outln!("  {:>9} rows  {}", w.rows, w.path.display());
    }
    if let Some((root, line, steps)) = &loaded.archive {
        outln!("archive {}: {line}; {steps} history steps", root.display());
    }
    let late = too_late_summary(&snapshot);
    if !late.is_empty() {
        outln!("late arrivals (counted, see the too_late view): {late}");
    }
    if let Some(bytes) = vendflow_dataflows::peak_rss_bytes() {
        outln!("peak memory {} MiB", bytes >> 20);
    }
    Ok(())
}

fn sql_over_archive(
    archive: &std::path::Path,
    format: SqlFormat,
    query: &str,
) -> anyhow::Result<()> {
    if !archive.join("history").is_dir() {
        bail!(
            "{} is not a vendflow archive (no history/ directory); write one with `vendflow replay FILE --archive DIR` or `vendflow demo --archive DIR`",
            archive.display()
        );
    }
    let (frontier, views) = vendflow_sinks::archive::newest_snapshot(archive)?.unwrap_or_default();
    let store = vendflow_dataflows::ViewStore::fixed(frontier, views)?;
    let sql = vendflow_queries::sql::Sql::open(
        store,
        Some(archive),
        vendflow_queries::sql::Limits::default(),
    )?;
    let answer = sql.query_blocking(query)?;
    let mut stdout = std::io::stdout().lock();
    match format {
        SqlFormat::Table => writeln!(stdout, "{}", vendflow_queries::sql::render_table(&answer)?)?,
        SqlFormat::Csv => {
            stdout.write_all(&vendflow_queries::sql::encode(&answer, "text/csv")?.1)?
        }
        SqlFormat::Json => {
            stdout.write_all(&vendflow_queries::sql::encode(&answer, "application/json")?.1)?
        }
    }
    Ok(())
}

/// `sales 12, anomaly_windows 3` from the `too_late` view.
fn too_late_summary(snapshot: &vendflow_dataflows::Snapshot) -> String {
    let def = &vendflow_dataflows::errors::TOO_LATE;
    snapshot
        .rows(def.name)
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let n = def.named(r);
                    format!(
                        "{} {}",
                        n.text("view").unwrap_or_default(),
                        n.int("events").unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
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
        Some(name) => FleetConfig::scenario(name, seed).with_context(|| {
            format!(
                "unknown scenario {name:?}; the scenarios are {}",
                FleetConfig::SCENARIOS.join(", ")
            )
        })?,
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
    outln!(
        "wrote {count} events over {hours} h ({} days) of {} machines to {}",
        hours as f64 * MS_PER_HOUR as f64 / MS_PER_DAY as f64,
        config.machines,
        out.display()
    );
    Ok(())
}

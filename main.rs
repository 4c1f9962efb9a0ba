//! The `vendflow` binary: parses the command line and wires the crates together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use tracing_subscriber::EnvFilter;
use vendflow_dataflows::Config;
use vendflow_firmware::mqtt as mqtt_sim;
use vendflow_firmware::publish::PublishOptions;
use vendflow_firmware::simulate::SimulateOptions;
use vendflow_ingest::auth::{Credentials, DeviceCommand};
use vendflow_ingest::bridge::{self, BridgeOptions, BridgeStats};
use vendflow_ingest::file::ReplayOptions;
use vendflow_ingest::import::{ImportCommand, TableOptions, convert_dex, merge_by_time};
use vendflow_ingest::kafka::{CommandOptions, RegistryCommand, TELEMETRY_TOPIC};
use vendflow_protocol::Timestamp;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_queries::auth::TokenCommand;
use vendflow_queries::service::bulk::{self, BulkLoad, ReplayArgs};
use vendflow_queries::service::{DemoOptions, RunOptions, Service};
use vendflow_queries::sql::ArchiveQuery;
use vendflow_sinks::archive::ArchiveConfig;
use vendflow_sinks::export::ExportOptions;

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
    /// Card transactions each worker keeps in memory while they wait for their settlement line;
    /// the rest wait on disk in the state directory. The default holds a live 50,000-machine
    /// fleet's hour of card sales; a bulk load or catch-up parks what is past it at once.
    #[arg(
        long,
        global = true,
        default_value_t = vendflow_dataflows::config::SETTLEMENT_MEMORY_TRANSACTIONS,
        env = "VENDFLOW_SETTLEMENT_MEMORY_TRANSACTIONS"
    )]
    settlement_memory_transactions: usize,
    /// Minutes an anomaly window stays in memory after it closes; for the rest of its 48 h
    /// retention it waits on disk in the state directory, where a late event takes it back.
    /// In `run` and `demo` its `anomaly_windows` row goes to disk too. 2880 or more keeps every
    /// window in memory.
    #[arg(
        long,
        global = true,
        default_value_t = vendflow_dataflows::config::WINDOW_MEMORY_MINUTES,
        env = "VENDFLOW_WINDOW_MEMORY_MINUTES"
    )]
    window_memory_minutes: i64,
    /// Minutes after its day ends that a machine's day of revenue and of settlement stays in
    /// memory; for the rest of its 35 days it waits on disk in the state directory, where a
    /// late sale or settlement line takes it back. In `run` and `demo` its rows in
    /// `revenue_machine_daily` and `revenue_machine_local_daily` go to disk too (a local day's
    /// 12 hours later).
    #[arg(
        long,
        global = true,
        default_value_t = vendflow_dataflows::config::DAY_MEMORY_MINUTES,
        env = "VENDFLOW_DAY_MEMORY_MINUTES"
    )]
    day_memory_minutes: i64,
    /// The failure model of `maintenance_candidates` (JSON, from `vendflow maintenance train`);
    /// without it, the model this build carries.
    #[arg(long, global = true, env = "VENDFLOW_MAINTENANCE_MODEL")]
    maintenance_model: Option<std::path::PathBuf>,
    /// Public holidays for the stockout forecast: one date (YYYY-MM-DD, UTC) a line, `#`
    /// comments. Holidays are left out of each machine's weekday pattern and each slot's
    /// demand level, and a holiday's demand is scaled by what the machine sold on the holidays
    /// before it (an office that closes on them does not run out over them). Without it,
    /// every day is a working day.
    #[arg(long, global = true, env = "VENDFLOW_HOLIDAYS", value_name = "FILE")]
    holidays: Option<std::path::PathBuf>,
}

/// `vendflow maintenance …`
#[derive(Subcommand)]
enum DeviceCli {
    #[command(flatten)]
    Credentials(DeviceCommand),
    /// Run one machine from its provisioning bundle: the real controller with its outbox in a
    /// file (a restart resumes from it; nothing synced is lost to a kill), publishing signed
    /// envelopes to the bundle's broker and forgetting them only on the platform's delivery
    /// receipt (`vendflow bridge`); commands are applied and answered. Customers, the payment
    /// network and the drop sensor are simulated.
    Run(vendflow_firmware::device::DeviceRunOptions),
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Learn the failure model of `maintenance_candidates` from a simulated history whose
    /// failures are known (wear with days of warning, drifts that come to nothing), through the
    /// engine's own `signal_baselines`; print its precision and recall on held-out days next
    /// to the fixed 3-deviation rule, and write it with --out.
    Train(vendflow_ingest::maintenance::TrainOptions),
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated fleet through the dataflows and print a fleet summary until Ctrl-C.
    Demo(DemoOptions),
    /// Replay a JSON Lines telemetry file through the dataflows and write every final view as CSV
    /// (--out) and/or into the Parquet archive (--archive).
    ///
    /// Any order and any span: a file out of time order is judged in its own order (an event
    /// older than the replay's clock arrives late, as it would live); every sale still counts, in
    /// its own day. With --archive, the closed days of the daily views land in the history
    /// tables as the replay goes, so `vendflow sql --archive DIR` covers the whole span.
    Replay(ReplayArgs),
    /// Load what operators already have: sales exports (CSV). The sales go through the same
    /// bulk load as `replay` (any order, any span, every sale in its own day).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Run one read-only SQL query over a Parquet archive, without a running engine: the views
    /// as of the archive's newest snapshot (the end of a `replay --archive`, or the last one a
    /// server took), the history tables, raw events and the ready views such as
    /// `revenue_by_machine_day`.
    Sql(ArchiveQuery),
    /// Bridge machine telemetry from MQTT into Kafka, acknowledging to MQTT only once Kafka has it.
    ///
    /// Subscribes `machines/+/telemetry` (QoS 1, persistent session) and produces each envelope to
    /// `machine-telemetry` keyed by machine id; refused envelopes (wrong machine for the topic, bad
    /// or missing signature, stale, replayed) go to `telemetry-rejected` with the reason.
    Bridge(BridgeOptions),
    /// Run the dataflows on the Kafka log (`machine-telemetry`, `fleet-commands`,
    /// `machine-commands`, `telemetry-rejected`) until Ctrl-C.
    ///
    /// Reads every partition from the beginning: on restart the views are rebuilt from the log.
    Run(RunOptions),
    /// Simulated machines publishing signed telemetry over MQTT (load and end-to-end tests).
    Publish(PublishOptions),
    /// Send a command to a machine: produced to Kafka `machine-commands`; the bridge delivers it
    /// on MQTT `machines/{id}/commands` (and offers it to machines polling over HTTP), and the
    /// engine's `commands` view shows it pending until the machine answers.
    #[command(name = "command")]
    Send(CommandOptions),
    /// Demand forecasts: `forecast backtest` scores the engine's forecast on a sales history.
    #[command(subcommand)]
    Forecast(vendflow_forecast::ForecastCommand),
    /// Predictive maintenance: `maintenance train` fits the model that ranks machines by their
    /// probability of failing within 7 days.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Access tokens for the REST API, the views, SQL and the dashboard.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Machines: their credentials and provisioning bundles, and a machine run from its bundle.
    Device {
        #[command(subcommand)]
        command: DeviceCli,
    },
    /// The fleet registry (locations, machines with their planogram, leases) on Kafka.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Copy days of the Parquet archive for the data team: raw events, rejected records and the
    /// per-day history tables, same layout, with `manifest.json` (every file, its rows and size).
    Export(ExportOptions),
    /// Write a simulated fleet's registry and events as JSON Lines (fixtures, workloads).
    Simulate(SimulateOptions),
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
        // Colours only on a terminal: a log redirected to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if cli.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if cli.settlement_days < 0 {
        bail!("--settlement-days must be 0 (off) or more");
    }
    if cli.window_memory_minutes < 0 {
        bail!("--window-memory-minutes must be 0 or more");
    }
    if cli.day_memory_minutes < 0 {
        bail!("--day-memory-minutes must be 0 or more");
    }
    let maintenance = match &cli.maintenance_model {
        Some(path) => std::sync::Arc::new(vendflow_dataflows::maintenance::Model::load(path)?),
        None => vendflow_dataflows::maintenance::Model::builtin(),
    };
    let holidays = match &cli.holidays {
        Some(path) => std::sync::Arc::new(
            vendflow_forecast::read_holidays(path)
                .with_context(|| format!("--holidays {}", path.display()))?,
        ),
        None => Default::default(),
    };
    let config = Config {
        workers: cli.workers,
        holidays,
        settlement_days: cli.settlement_days,
        settlement_memory_transactions: cli.settlement_memory_transactions,
        window_memory_ms: cli.window_memory_minutes.saturating_mul(60_000),
        day_memory_ms: cli.day_memory_minutes.saturating_mul(60_000),
        maintenance,
        ..Config::default()
    };
    match cli.command {
        Command::Demo(args) => demo(config, args),
        Command::Replay(args) => {
            bulk_load(config.clone(), args.load(&config)?, args.out.as_deref())
        }
        Command::Sql(query) => {
            let answer = query.run()?;
            std::io::stdout().lock().write_all(&answer)?;
            Ok(())
        }
        Command::Import(ImportCommand::Dex {
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
                    state: None,
                },
                out.as_deref(),
            )
        }
        Command::Import(ImportCommand::Csv(table)) => import_table(config, table, None, false),
        Command::Import(ImportCommand::Settlement { table, telemetry }) => {
            import_table(config, table, telemetry.as_deref(), true)
        }
        Command::Simulate(options) => {
            let wrote = vendflow_firmware::simulate::write_files(&options)?;
            outln!(
                "wrote {} events over {} h ({} days) of {} machines to {}",
                wrote.events,
                wrote.hours,
                wrote.hours as f64 * MS_PER_HOUR as f64 / MS_PER_DAY as f64,
                wrote.machines,
                options.out.display()
            );
            if let Some((t, took)) = &wrote.controllers {
                outln!(
                    "controllers: {} customers, {} receipts, {} units sold, {} refunds, {} declined, {} cards not read, {} jams, {} outages, {} power cuts ({} mid-write); simulated in {:.1} s ({:.0}x real time, peak RSS {} MB)",
                    t.customers,
                    t.receipts,
                    t.units_sold,
                    t.refunds,
                    t.declined,
                    t.read_failures,
                    t.jams,
                    t.outages,
                    t.power_cuts,
                    t.torn_writes,
                    took.as_secs_f64(),
                    wrote.hours as f64 * 3600.0 / took.as_secs_f64().max(1e-9),
                    vendflow_dataflows::peak_rss_bytes().unwrap_or(0) / 1_000_000
                );
            }
            Ok(())
        }
        Command::Bridge(options) => {
            let credentials = match &options.credentials {
                Some(path) => {
                    let creds = Credentials::load(path)?;
                    eprintln!(
                        "bridge: {} machine credential(s) from {} ({} still on the legacy shared-key scheme{})",
                        creds.len(),
                        path.display(),
                        creds.legacy(),
                        if options.refuse_legacy_credentials {
                            ", refused"
                        } else {
                            ", accepted until they enrol an Ed25519 key"
                        }
                    );
                    Some(creds)
                }
                None => {
                    eprintln!(
                        "bridge: WARNING --insecure-no-auth: envelopes are not authenticated"
                    );
                    None
                }
            };
            let config =
                options.config(std::env::var("VENDFLOW_MQTT_PASSWORD").unwrap_or_default())?;
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
            bridge::run(&config, options.verifier(credentials), stats.clone(), &stop)?;
            eprintln!("bridge stopped: {}", stats.line());
            Ok(())
        }
        Command::Run(args) => run_kafka(config, args),
        Command::Export(options) => {
            eprintln!("{}", options.run()?);
            Ok(())
        }
        Command::Publish(args) => publish(args),
        Command::Registry { command } => {
            eprintln!("{}", command.run()?);
            Ok(())
        }
        Command::Send(options) => {
            let command = options.command(Timestamp::now())?;
            let (partition, offset) =
                vendflow_ingest::kafka::send_command(&options.kafka, &command)
                    .with_context(|| format!("sending the command to {}", options.kafka))?;
            eprintln!("sent to machine-commands/{partition}@{offset}");
            outln!("{}", command.to_json());
            Ok(())
        }
        Command::Forecast(vendflow_forecast::ForecastCommand::Backtest(args)) => {
            let report = vendflow_forecast::backtest_command(&args)?;
            outln!("{report}");
            Ok(())
        }
        Command::Maintenance(MaintenanceCommand::Train(options)) => {
            let bar = indicatif::ProgressBar::new(u64::from(options.days));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "simulating {pos}/{len} days [{bar:30}] {elapsed} (eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report =
                vendflow_ingest::maintenance::train(&options, config.workers, |day, _| {
                    bar.set_position(u64::from(day));
                })?;
            bar.finish_and_clear();
            outln!("{report}");
            if let Some(out) = &options.out {
                outln!("wrote {}", out.display());
            }
            Ok(())
        }
        Command::Token { command } => {
            let issued = command.run()?;
            eprintln!("{}", issued.notice);
            outln!("{}", issued.token);
            Ok(())
        }
        Command::Device {
            command: DeviceCli::Run(options),
        } => {
            let stop = stop_flag()?;
            let run = vendflow_firmware::device::run_device(&options, &stop)?;
            outln!("{}", run.summary());
            Ok(())
        }
        Command::Device {
            command: DeviceCli::Credentials(command),
        } => {
            let outcome = command.run()?;
            eprintln!("{}", outcome.notice);
            if let Some(secret) = outcome.secret {
                outln!("{secret}");
            }
            if let Some((rendered, payload)) = outcome.qr {
                outln!("{rendered}");
                outln!("{payload}");
            }
            Ok(())
        }
    }
}

/// A flag raised by Ctrl-C or SIGTERM.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// A timely thread that panics leaves the views frozen behind a service that still answers; in a
/// cluster it is how a lost peer shows (timely's connection threads panic when a socket
/// closes). The process exits instead, with the reason, so that whoever supervises it starts it
/// again: from its checkpoints, with `--state`.
fn exit_when_an_engine_thread_dies(clustered: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let name = std::thread::current().name().map(str::to_owned);
        if !name.as_deref().is_some_and(|n| n.starts_with("timely:")) {
            return;
        }
        let why = if clustered {
            "the cluster lost a process (or a worker failed): this process stops too; start every process again (with --state they resume from the newest checkpoint they all have)"
        } else {
            "an engine worker failed: the process stops rather than serve views that no longer move; start it again (with --state it resumes from its newest checkpoint)"
        };
        tracing::error!(thread = name.as_deref().unwrap_or_default(), "{why}");
        eprintln!("vendflow run: {why}");
        std::process::exit(1);
    }));
}

fn run_kafka(mut config: Config, options: RunOptions) -> anyhow::Result<()> {
    config.cluster = options.cluster()?;
    exit_when_an_engine_thread_dies(config.cluster.is_some());
    let (service, source) = options.service(config);
    let running = Service::start(service, source, stop_flag()?)?;
    for line in options.banner(&running) {
        eprintln!("{line}");
    }
    let stopped = running.run(|tick| summary_line(&tick.line()))?;
    if let Some((_, line)) = stopped.archive {
        eprintln!("archive: {line}");
    }
    eprintln!("run stopped.");
    Ok(())
}

/// `--credentials-out` and `--registry-out` of `vendflow publish`.
fn publish_setup(fleet: &vendflow_firmware::Fleet, options: &PublishOptions) -> anyhow::Result<()> {
    if let Some(path) = &options.credentials_out {
        let mut creds = Credentials::default();
        for (machine, hash) in mqtt_sim::simulated_credentials(fleet, options.seed) {
            creds.insert(&machine, hash);
        }
        creds.save(path)?;
    }
    if let Some(path) = &options.registry_out {
        vendflow_firmware::publish::write_registry(fleet, path)?;
    }
    Ok(())
}

/// `vendflow publish`: the real controller on every machine.
fn publish_controllers(options: PublishOptions) -> anyhow::Result<()> {
    let (mut controllers, end) = options.controllers(Timestamp::now())?;
    if let Some(fleet) = controllers.fleet() {
        publish_setup(fleet, &options)?;
    }
    if options.dry_run {
        return Ok(());
    }
    let stop = stop_flag()?;
    let published =
        vendflow_firmware::publish::publish_controllers(&options, &mut controllers, end, &stop)?;
    let t = &controllers.tally;
    eprintln!(
        "publish: {} customers, {} receipts, {} units sold (${:.2}, {} offline sales), {} refunds (${:.2}), {} declined, {} cards not read, {} jams, {} outages, {} power cuts ({} mid-write)",
        t.customers,
        t.receipts,
        t.units_sold,
        t.sold_cents as f64 / 100.0,
        t.offline_sales,
        t.refunds,
        t.refunded_cents as f64 / 100.0,
        t.declined,
        t.read_failures,
        t.jams,
        t.outages,
        t.power_cuts,
        t.torn_writes
    );
    outln!("{}", published.summary(&options));
    Ok(())
}

fn publish(options: PublishOptions) -> anyhow::Result<()> {
    if options.runs_controllers() {
        return publish_controllers(options);
    }
    let (mut fleet, end) = options.fleet(Timestamp::now())?;
    publish_setup(&fleet, &options)?;
    if options.dry_run {
        return Ok(());
    }
    if options.linger > 0 {
        eprintln!(
            "publish: after the stream, answering commands for {} s",
            options.linger
        );
    }
    let stop = stop_flag()?;
    let published = vendflow_firmware::publish::publish(&options, &mut fleet, end, &stop)?;
    if options.linger > 0 {
        eprintln!("publish: answered {} command(s)", published.answered);
    }
    outln!("{}", published.summary(&options));
    Ok(())
}

fn demo(config: Config, options: DemoOptions) -> anyhow::Result<()> {
    let (service, source) = options.service(config);
    let running = Service::start(service, source, stop_flag()?)?;
    for line in options.banner(&running)? {
        summary_line(&line);
    }
    let stopped = running.run(|tick| summary_line(&tick.line()))?;
    if let Some((root, line)) = stopped.archive {
        outln!("archive {}: {line}", root.display());
    }
    if let Some(line) = stopped.simulator {
        outln!("{line}");
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
    table: TableOptions,
    telemetry: Option<&std::path::Path>,
    settlement: bool,
) -> anyhow::Result<()> {
    let temporary = tempfile::NamedTempFile::new()?;
    let events_path = table
        .events
        .clone()
        .unwrap_or_else(|| temporary.path().to_owned());
    let converted = table.convert(settlement, telemetry, &events_path)?;
    for line in converted.report(&table.file, settlement) {
        outln!("{line}");
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
            state: None,
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
    let loaded = bulk::load_with_progress(config, load)?;
    for line in loaded.refusals() {
        eprintln!("{line}");
    }
    for line in loaded.report(out)? {
        outln!("{line}");
    }
    Ok(())
}

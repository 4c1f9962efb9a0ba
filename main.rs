//! The `vendflow` binary: parses the command line and wires the crates together.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;
use vendflow_dataflows::{Batch, Config, Engine, FleetSummary};
use vendflow_firmware::{Fault, Fleet, FleetConfig};
use vendflow_ingest::file::{ReplayOptions, load_registry, replay};
use vendflow_ingest::sim::{self, Pace};
use vendflow_protocol::Timestamp;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};

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
    Demo {
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
    },
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
        /// Granularity of the ingestion clock in milliseconds.
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
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
        Command::Demo {
            machines,
            speed,
            seed,
            every,
            duration,
        } => demo(config, machines, speed, seed, every, duration),
        Command::Replay {
            file,
            out,
            registry,
            tick_ms,
            repeat,
            repeat_shift_hours,
            rate,
        } => {
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
    }
}

fn demo(
    config: Config,
    machines: usize,
    speed: f64,
    seed: u64,
    every: f64,
    duration: Option<f64>,
) -> anyhow::Result<()> {
    if machines == 0 || speed <= 0.0 {
        bail!("--machines and --speed must be positive");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let mut engine = Engine::start(config)?;
    let store = engine.store();
    let mut feeders = engine.feeders().context("engine feeders already taken")?;
    let mut fleet = Fleet::new(&FleetConfig {
        machines,
        seed,
        ..FleetConfig::default()
    });
    println!(
        "vendflow demo: {machines} simulated machines at {speed}x from {} (Ctrl-C to stop)",
        fleet.now()
    );
    sim::register(&fleet, &mut feeders)?;
    let started = Instant::now();
    let mut last_print = Instant::now();
    let pace = Pace {
        speed,
        ..Pace::default()
    };
    sim::run(&mut fleet, &mut feeders, &pace, &stop, |_now| {
        if duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d) {
            stop.store(true, Ordering::SeqCst);
        }
        if last_print.elapsed().as_secs_f64() >= every {
            last_print = Instant::now();
            let snapshot = store.snapshot();
            match FleetSummary::from_snapshot(&snapshot) {
                Ok(summary) => println!("[{}] {summary}", Timestamp(snapshot.frontier as i64)),
                Err(e) => tracing::error!(error = %e, "cannot summarize the fleet"),
            }
        }
    })?;
    drop(feeders);
    engine.shutdown()?;
    println!("stopped.");
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
    engine.shutdown()?;
    println!(
        "replayed {} events from {} lines in {:.2}s ({:.0} events/s); {} refused",
        stats.events,
        stats.lines,
        elapsed.as_secs_f64(),
        stats.events as f64 / elapsed.as_secs_f64().max(1e-9),
        stats.errors
    );
    for w in &written {
        println!("  {:>9} rows  {}", w.rows, w.path.display());
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

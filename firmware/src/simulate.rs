//! `vendflow simulate`: a simulated fleet's registry and events written as JSON Lines files,
//! for fixtures and workloads. The same seed gives the same files.

use std::path::{Path, PathBuf};

use vendflow_protocol::Timestamp;
use vendflow_protocol::units::MS_PER_HOUR;

use crate::controlled::{ControlledConfig, Controllers, Resend};
use crate::{Fleet, FleetConfig};

/// The longest span one call simulates: 60 days.
pub const MAX_HOURS: i64 = 24 * 60;

/// What to simulate and where to write it (the options of `vendflow simulate`).
#[derive(clap::Args, Clone, Debug)]
pub struct SimulateOptions {
    /// Output directory: `registry.jsonl` and `events.jsonl` (in delivery order).
    #[arg(long, short)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub machines: usize,
    /// Simulated hours.
    #[arg(long, default_value_t = 24)]
    pub hours: i64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// `golden`: 5 machines with an overheating machine (0), a 5-hour outage (1) and a
    /// machine the restock crew skips (2), no random faults.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Run the event simulator instead of the real controller. By default every machine runs
    /// the real controller (as `vendflow publish` does), with a platform that
    /// acknowledges every envelope at once; `events.jsonl` holds what the machines sent, each
    /// event once, and the run says how fast the fleet was simulated. The event simulator
    /// (also what `--scenario` runs) emits events without a controller, with re-deliveries
    /// after outages.
    #[arg(long)]
    pub event_simulator: bool,
    /// The default (the real controller on every machine); kept so that earlier command lines
    /// still run.
    #[arg(long, hide = true, conflicts_with_all = ["scenario", "event_simulator"])]
    pub controllers: bool,
    /// The controllers' world (heartbeats, outages, the outbox's keep, jams, power cuts), as
    /// `publish` takes it.
    #[command(flatten)]
    pub world: crate::controlled::WorldOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("unknown scenario {0:?}; the scenarios are {known}", known = FleetConfig::SCENARIOS.join(", "))]
    UnknownScenario(String),
    #[error("--hours must be between 1 and {MAX_HOURS}, got {0}")]
    Hours(i64),
    #[error("{0}")]
    Invalid(String),
    #[error("the controllers failed: {0}")]
    Controllers(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl SimulateOptions {
    /// Whether the machines run the real controller: unless `--event-simulator` or a
    /// `--scenario` (an event-simulator script) says otherwise.
    pub fn runs_controllers(&self) -> bool {
        !self.event_simulator && self.scenario.is_none()
    }
}

/// What [`write_files`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Simulated {
    pub events: usize,
    pub machines: usize,
    pub hours: i64,
    /// With `--controllers`: what the fleet did, and the wall time the simulation took.
    pub controllers: Option<(crate::controlled::Tally, std::time::Duration)>,
}

/// Simulates the fleet of `options` for its hours and writes `registry.jsonl` and
/// `events.jsonl` into its directory (created if missing).
pub fn write_files(options: &SimulateOptions) -> Result<Simulated, SimulateError> {
    if options.runs_controllers() {
        return write_controllers(options);
    }
    options
        .world
        .only_for_controllers()
        .map_err(SimulateError::Invalid)?;
    let config = match &options.scenario {
        None => FleetConfig {
            machines: options.machines,
            seed: options.seed,
            ..FleetConfig::default()
        },
        Some(name) => FleetConfig::scenario(name, options.seed)
            .ok_or_else(|| SimulateError::UnknownScenario(name.clone()))?,
    };
    let hours = options.hours;
    let out = prepare(options)?;
    let mut fleet = Fleet::new(&config);
    let registry_path = out.join("registry.jsonl");
    std::fs::write(&registry_path, fleet.registry_json_lines()).map_err(io(&registry_path))?;
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
    let events_path = out.join("events.jsonl");
    std::fs::write(&events_path, events).map_err(io(&events_path))?;
    Ok(Simulated {
        events: count,
        machines: config.machines,
        hours,
        controllers: None,
    })
}

/// Checks the span and creates the output directory.
fn prepare(options: &SimulateOptions) -> Result<&Path, SimulateError> {
    if !(1..=MAX_HOURS).contains(&options.hours) {
        return Err(SimulateError::Hours(options.hours));
    }
    std::fs::create_dir_all(&options.out).map_err(io(&options.out))?;
    Ok(&options.out)
}

/// The error of an I/O on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SimulateError {
    let path = path.display().to_string();
    move |source| SimulateError::Io { path, source }
}

/// `--controllers`: the fleet of controllers over the span, every envelope acknowledged as
/// soon as it is sent; events are written as they are first sent (streamed, not held).
fn write_controllers(options: &SimulateOptions) -> Result<Simulated, SimulateError> {
    use std::io::Write;
    let hours = options.hours;
    let out = prepare(options)?;
    let start = FleetConfig::default().start;
    let end = Timestamp(start.0 + hours * MS_PER_HOUR);
    let mut config = ControlledConfig::new(options.machines, options.seed, start, end);
    options
        .world
        .apply(&mut config)
        .map_err(SimulateError::Invalid)?;
    let started = std::time::Instant::now();
    let failed = |e: crate::machine::MachineError| SimulateError::Controllers(e.to_string());
    let mut fleet = Controllers::new(config).map_err(failed)?;
    let registry_path = out.join("registry.jsonl");
    let registry = fleet.fleet().map(Fleet::registry_json_lines);
    std::fs::write(&registry_path, registry.unwrap_or_default()).map_err(io(&registry_path))?;
    let events_path = out.join("events.jsonl");
    let mut events =
        std::io::BufWriter::new(std::fs::File::create(&events_path).map_err(io(&events_path))?);
    let (mut count, mut write_error) = (0, None);
    let mut t = start.0;
    loop {
        t = (t + 60_000).min(end.0);
        fleet.advance(Timestamp(t)).map_err(failed)?;
        let ready = fleet
            .ready(0, Resend::After(u64::MAX), t == end.0, |e| {
                count += 1;
                if let Err(err) = writeln!(events, "{}", e.to_json_line()) {
                    write_error.get_or_insert(err);
                }
            })
            .map_err(failed)?;
        for (i, _, last) in ready {
            fleet.acknowledged(i, last).map_err(failed)?;
        }
        if t == end.0 && fleet.pending() == 0 {
            break;
        }
    }
    if let Some(e) = write_error {
        return Err(io(&events_path)(e));
    }
    events.flush().map_err(io(&events_path))?;
    Ok(Simulated {
        events: count,
        machines: options.machines,
        hours,
        controllers: Some((fleet.tally.clone(), started.elapsed())),
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    fn options(out: &Path) -> SimulateOptions {
        SimulateOptions {
            out: out.to_owned(),
            machines: 3,
            hours: 2,
            seed: 7,
            scenario: None,
            event_simulator: true,
            controllers: false,
            world: crate::controlled::WorldOptions::default(),
        }
    }

    /// The controllers run unless `--event-simulator` or a scenario says otherwise, and the
    /// event simulator refuses the controllers' world options instead of ignoring them.
    #[test]
    fn controllers_are_the_default_and_the_event_simulator_refuses_their_options() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: SimulateOptions,
        }
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["simulate", "--out", "x"], args].concat()).map(|c| c.options)
        };
        let runs = |args: &[&str]| parse(args).map(|o| o.runs_controllers()).ok();
        assert_eq!(runs(&[]), Some(true));
        assert_eq!(
            runs(&["--controllers", "--heartbeat-secs", "10"]),
            Some(true)
        );
        assert_eq!(runs(&["--event-simulator"]), Some(false));
        assert_eq!(runs(&["--scenario", "golden"]), Some(false));
        assert!(parse(&["--controllers", "--event-simulator"]).is_err());
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut o = options(dir.path());
        o.world.jam_share = 0.5;
        assert!(matches!(write_files(&o), Err(SimulateError::Invalid(_))));
    }

    /// `--controllers` writes what the controllers sent, each event once, numbered without a
    /// gap per machine, and decodable as the platform reads it.
    #[test]
    fn controllers_write_every_event_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut o = options(dir.path());
        o.event_simulator = false;
        o.machines = 20;
        let wrote = write_files(&o)?;
        let (tally, _) = wrote.controllers.clone().context("a tally")?;
        assert!(tally.receipts > 0 && tally.heartbeats > 0, "{tally:?}");
        let text = std::fs::read_to_string(dir.path().join("events.jsonl"))?;
        let mut seqs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for line in text.lines() {
            let event = vendflow_protocol::decode::decode_line(line.as_bytes())
                .into_iter()
                .next()
                .context("an event")??;
            seqs.entry(event.machine_id.to_string())
                .or_default()
                .push(event.seq.context("numbered")?);
        }
        assert_eq!(seqs.len(), 20);
        for (machine, mut s) in seqs {
            s.sort_unstable();
            let n = s.len() as u64;
            assert_eq!(
                s.last().copied(),
                Some(s[0] + n - 1),
                "{machine}: a gap or a repeat"
            );
        }
        assert_eq!(wrote.events, text.lines().count());
        Ok(())
    }

    #[test]
    fn the_same_seed_writes_the_same_files() {
        let dir = std::env::temp_dir().join(format!("vendflow-simulate-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        let wrote = write_files(&options(&a)).expect("simulate a");
        write_files(&options(&b)).expect("simulate b");
        assert_eq!(wrote.machines, 3);
        assert!(wrote.events > 0);
        for file in ["registry.jsonl", "events.jsonl"] {
            let read = |d: &Path| std::fs::read(d.join(file)).expect("read");
            assert_eq!(read(&a), read(&b), "{file}");
        }
        let lines = std::fs::read_to_string(a.join("events.jsonl")).expect("events");
        assert_eq!(lines.lines().count(), wrote.events);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_an_unknown_scenario_and_an_empty_span() {
        let dir = std::env::temp_dir().join("vendflow-simulate-refused");
        let unknown = SimulateOptions {
            scenario: Some("nope".into()),
            ..options(&dir)
        };
        let e = write_files(&unknown).expect_err("unknown scenario");
        assert_eq!(
            e.to_string(),
            "unknown scenario \"nope\"; the scenarios are golden"
        );
        let empty = SimulateOptions {
            hours: 0,
            ..options(&dir)
        };
        assert!(matches!(write_files(&empty), Err(SimulateError::Hours(0))));
    }
}

//! `vendflow simulate`: a simulated fleet's registry and events written as JSON Lines files,
//! for fixtures and workloads. The same seed gives the same files.

use std::path::{Path, PathBuf};

use vendflow_protocol::Timestamp;
use vendflow_protocol::units::MS_PER_HOUR;

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
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("unknown scenario {0:?}; the scenarios are {known}", known = FleetConfig::SCENARIOS.join(", "))]
    UnknownScenario(String),
    #[error("--hours must be between 1 and {MAX_HOURS}, got {0}")]
    Hours(i64),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What [`write_files`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Simulated {
    pub events: usize,
    pub machines: usize,
    pub hours: i64,
}

/// Simulates the fleet of `options` for its hours and writes `registry.jsonl` and
/// `events.jsonl` into its directory (created if missing).
pub fn write_files(options: &SimulateOptions) -> Result<Simulated, SimulateError> {
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
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(SimulateError::Hours(hours));
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SimulateError::Io { path, source }
    };
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(io(out))?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(out: &Path) -> SimulateOptions {
        SimulateOptions {
            out: out.to_owned(),
            machines: 3,
            hours: 2,
            seed: 7,
            scenario: None,
        }
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

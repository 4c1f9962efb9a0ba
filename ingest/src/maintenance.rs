//! `vendflow maintenance train`: the failure model of `maintenance_candidates`, learnt from a
//! simulated history whose failures are known.
//!
//! A fleet with wear ([`vendflow_firmware::Wear`]: failures preceded by days of degradation,
//! and drifts that come to nothing) runs through the engine hour by hour; at the end of each
//! day the engine's own `signal_baselines` give every machine's inputs
//! ([`maintenance::features`]), exactly as the live view reads them. A machine-day is a positive
//! when the machine fails within the horizon (7 days) after it; days when it is failed already
//! are left out (it is in repair, not a candidate). The model is fitted on the first days and
//! scored on the last `--holdout-days`, which it never saw:
//! - **precision**: of the machine-days it flags (probability over the threshold, 70 %), the
//!   share followed by a failure within the horizon;
//! - **recall**: of the failures in the held-out period, the share flagged on at least one of
//!   the horizon's days before them.
//!
//! Beside it, the fixed rule a dashboard would otherwise use (any signal's last 24 h more than
//! 3 deviations above its 30-day mean) on the same days.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vendflow_dataflows::Value;
use vendflow_dataflows::config::Config;
use vendflow_dataflows::engine::{Batch, Engine, EngineError};
use vendflow_dataflows::maintenance::{self, MODEL_SIGNALS, Model, ModelError, SignalState};
use vendflow_dataflows::row::OrdF64;
use vendflow_dataflows::signals::{self, Baseline};
use vendflow_firmware::{Fleet, FleetConfig, Wear};
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{MachineId, Timestamp};

/// The options of `vendflow maintenance train`.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainOptions {
    /// Simulated machines.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(10..))]
    pub machines: u32,
    /// Simulated days (the first weeks fill the machines' 30-day baselines).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(30..))]
    pub days: u32,
    /// Of those, the last days held out to score the model.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(7..))]
    pub holdout_days: u32,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds between a machine's heartbeats (30 live; a longer gap makes a long history cheap
    /// to simulate and changes no average).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(30..=300))]
    pub heartbeat_secs: u32,
    /// Wear-out failures per machine per year.
    #[arg(long, default_value_t = 6.0)]
    pub failures_per_year: f64,
    /// Drifts that come to nothing, per machine per year.
    #[arg(long, default_value_t = 6.0)]
    pub drifts_per_year: f64,
    /// Flag a machine above this probability.
    #[arg(long, default_value_t = 0.7)]
    pub threshold: f64,
    /// Write the model here (JSON; `--maintenance-model FILE` loads it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Options(String),
    #[error("the engine: {0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the engine refused simulated events ({0}): a bug in the simulation")]
    Refused(String),
    #[error("the engine's views did not reach {0} within a minute")]
    Stalled(Timestamp),
    #[error("cannot write the model to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A machine at the end of a day: its inputs, and whether it failed within the horizon after.
#[derive(Clone, Debug)]
struct Sample {
    day: u32,
    machine: MachineId,
    x: [f64; 6],
    fails: bool,
}

/// Precision and recall of a flagging rule on the held-out days.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    pub flagged: usize,
    pub flagged_right: usize,
    pub failures: usize,
    pub failures_flagged: usize,
}

impl Scores {
    pub fn precision(&self) -> Option<f64> {
        (self.flagged > 0).then(|| self.flagged_right as f64 / self.flagged as f64)
    }

    pub fn recall(&self) -> Option<f64> {
        (self.failures > 0).then(|| self.failures_flagged as f64 / self.failures as f64)
    }
}

/// What training found.
#[derive(Debug)]
pub struct Report {
    pub model: Model,
    /// Rule name and its scores on the held-out days: the model at a few thresholds, and the
    /// fixed 3-deviation rule.
    pub scores: Vec<(String, Scores)>,
    pub events: u64,
    pub took: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(t) = &self.model.trained else {
            return Ok(());
        };
        writeln!(
            f,
            "simulated {} machines for {} days ({} events, heartbeat every {} s, {} failures and {} drifts per machine-year) in {:.1} s",
            t.machines,
            t.days,
            self.events,
            t.heartbeat_secs,
            t.failures_per_year,
            t.drifts_per_year,
            self.took.as_secs_f64()
        )?;
        writeln!(
            f,
            "trained on days {}..{}: {} machine-days, {} followed by a failure within {} days",
            t.train_days.0,
            t.train_days.1,
            t.train_samples,
            t.train_positives,
            self.model.horizon_days
        )?;
        writeln!(
            f,
            "held out days {}..{}: {} machine-days ({} positive), {} failures",
            t.holdout_days.0,
            t.holdout_days.1,
            t.holdout_samples,
            t.holdout_positives,
            t.holdout_failures
        )?;
        writeln!(
            f,
            "{:<34} {:>8} {:>10} {:>8}",
            "rule", "flagged", "precision", "recall"
        )?;
        let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1} %", 100.0 * v));
        for (name, s) in &self.scores {
            writeln!(
                f,
                "{name:<34} {:>8} {:>10} {:>8}",
                s.flagged,
                pct(s.precision()),
                pct(s.recall())
            )?;
        }
        write!(
            f,
            "model: intercept {:.3}, weights {}",
            self.model.intercept,
            self.model
                .features
                .iter()
                .zip(&self.model.weights)
                .map(|(n, w)| format!("{n} {w:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Runs the simulation through the engine, fits the model, scores it; `progress(day, days)`
/// after each simulated day.
pub fn train(
    options: &TrainOptions,
    workers: usize,
    mut progress: impl FnMut(u32, u32),
) -> Result<Report, TrainError> {
    let horizon = 7u32;
    if options.holdout_days + 14 > options.days {
        return Err(TrainError::Options(format!(
            "--holdout-days {} leaves too few of --days {} to train on (at least 14)",
            options.holdout_days, options.days
        )));
    }
    if !(0.0..1.0).contains(&options.threshold) {
        return Err(TrainError::Options(
            "--threshold is a probability below 1".into(),
        ));
    }
    if options.failures_per_year <= 0.0 || options.drifts_per_year < 0.0 {
        return Err(TrainError::Options(
            "--failures-per-year must be above 0 and --drifts-per-year at least 0".into(),
        ));
    }
    let started = Instant::now();
    let fleet_config = FleetConfig {
        machines: options.machines as usize,
        seed: options.seed,
        fault_rate: 0.0,
        heartbeat_ms: i64::from(options.heartbeat_secs) * 1000,
        wear: Some(Wear {
            failures_per_year: options.failures_per_year,
            drifts_per_year: options.drifts_per_year,
            // Failures after the last day label its last days.
            days: options.days + horizon,
        }),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::new(&fleet_config);
    let failures = fleet.failures();
    let config = Config {
        workers,
        ..Config::default()
    };
    let mut engine = Engine::start(config.clone())?;
    let store = engine.store();
    let mut feeders = engine
        .feeders()
        .ok_or_else(|| TrainError::Options("the engine has no inputs".into()))?
        .into_vec();
    // Start on a day boundary, so that day ends are whole days of readings.
    let start = Timestamp(fleet.now().0.div_euclid(MS_PER_DAY) * MS_PER_DAY + MS_PER_DAY);
    let _ = fleet.advance(start);
    let mut samples = Vec::new();
    let mut events = 0u64;
    for day in 0..options.days {
        for hour in 0..24 {
            let from = Timestamp(start.0 + i64::from(day) * MS_PER_DAY + hour * MS_PER_HOUR);
            let batch: Vec<_> = fleet
                .advance(Timestamp(from.0 + MS_PER_HOUR))
                .into_iter()
                .flat_map(|e| e.events)
                .collect();
            events += batch.len() as u64;
            // An hour's events, dated within the hour after its ingestion time (a bulk step); a
            // restock visit begun late in the hour ends after it, so the step allows two.
            for (part, feeder) in batch
                .chunks(batch.len().div_ceil(feeders.len()).max(1))
                .zip(feeders.iter_mut())
            {
                let batch = Batch {
                    events: part.to_vec(),
                    ..Batch::default()
                };
                feeder.send_step(from, 2 * MS_PER_HOUR, batch)?;
            }
        }
        let end = Timestamp(start.0 + i64::from(day + 1) * MS_PER_DAY);
        for feeder in &mut feeders {
            feeder.advance(end)?;
        }
        if !store.wait_for(end, Duration::from_secs(60)) {
            return Err(TrainError::Stalled(end));
        }
        let (_, rows) = store
            .sorted_rows(signals::BASELINES.name)
            .map_err(|e| TrainError::Options(e.to_string()))?;
        for (machine, states) in states_of(&rows, &config) {
            let Some(x) = maintenance::features(&states) else {
                continue;
            };
            let mut failed_now = false;
            let mut fails = false;
            for f in failures.iter().filter(|f| f.machine_id == machine) {
                // Failed, or repaired less than a week ago: its 24 h and 7 d still hold the
                // failure's readings, which say nothing of the next one.
                failed_now |= f.at <= end && end.0 < f.repaired.0 + i64::from(horizon) * MS_PER_DAY;
                fails |= end < f.at && f.at.0 <= end.0 + i64::from(horizon) * MS_PER_DAY;
            }
            if !failed_now {
                samples.push(Sample {
                    day: day + 1,
                    machine,
                    x,
                    fails,
                });
            }
        }
        progress(day + 1, options.days);
    }
    // Every simulated event must have counted: a refused one would skew the inputs.
    let (_, refused) = store
        .sorted_rows("error_counts")
        .map_err(|e| TrainError::Options(e.to_string()))?;
    if let Some(row) = refused.first() {
        return Err(TrainError::Refused(format!("{row:?}")));
    }
    drop(feeders);
    engine.shutdown()?;
    let split = options.days - options.holdout_days;
    let (train, holdout): (Vec<&Sample>, Vec<&Sample>) =
        samples.iter().partition(|s| s.day <= split);
    let fit: Vec<([f64; 6], bool)> = train.iter().map(|s| (s.x, s.fails)).collect();
    let mut model = Model::fit(&fit, 1.0, horizon, options.threshold)?;
    // The held-out failures: those whose horizon before them lies within the held-out days.
    let holdout_failures: Vec<_> = failures
        .iter()
        .filter(|f| {
            let day = (f.at.0 - start.0).div_euclid(MS_PER_DAY) as u32;
            day >= split + horizon && day < options.days
        })
        .collect();
    let score = |flag: &dyn Fn(&Sample) -> bool| {
        let mut s = Scores::default();
        let mut flagged_days: BTreeMap<&MachineId, Vec<u32>> = BTreeMap::new();
        for sample in &holdout {
            if flag(sample) {
                s.flagged += 1;
                s.flagged_right += usize::from(sample.fails);
                flagged_days
                    .entry(&sample.machine)
                    .or_default()
                    .push(sample.day);
            }
        }
        for f in &holdout_failures {
            s.failures += 1;
            let at = f.at.0 - start.0;
            let warned = flagged_days.get(&f.machine_id).is_some_and(|days| {
                days.iter().any(|d| {
                    let t = i64::from(*d) * MS_PER_DAY;
                    t < at && at <= t + i64::from(horizon) * MS_PER_DAY
                })
            });
            s.failures_flagged += usize::from(warned);
        }
        s
    };
    let mut scores = Vec::new();
    for threshold in [0.5, options.threshold, 0.9] {
        let name = format!("model, probability > {threshold}");
        if scores.iter().any(|(n, _)| *n == name) {
            continue;
        }
        scores.push((name, score(&|s| model.probability(&s.x) > threshold)));
    }
    scores.push((
        "fixed rule: a 24 h average > +3σ".to_owned(),
        score(&|s| s.x.iter().step_by(2).any(|z| *z > 3.0)),
    ));
    let chosen = score(&|s| model.probability(&s.x) > options.threshold);
    model.trained = Some(maintenance::Trained {
        machines: options.machines as usize,
        days: options.days,
        seed: options.seed,
        heartbeat_secs: options.heartbeat_secs,
        failures_per_year: options.failures_per_year,
        drifts_per_year: options.drifts_per_year,
        train_days: (1, split),
        holdout_days: (split + 1, options.days),
        train_samples: train.len(),
        train_positives: train.iter().filter(|s| s.fails).count(),
        holdout_samples: holdout.len(),
        holdout_positives: holdout.iter().filter(|s| s.fails).count(),
        precision: chosen.precision(),
        recall: chosen.recall(),
        holdout_failures: chosen.failures,
        holdout_flagged: chosen.flagged,
    });
    if let Some(path) = &options.out {
        std::fs::write(path, model.to_json() + "\n").map_err(|source| TrainError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(Report {
        model,
        scores,
        events,
        took: started.elapsed(),
    })
}

/// Per machine, its model signals' states, from `signal_baselines` rows (read by column name).
fn states_of(
    rows: &[vendflow_dataflows::Row],
    config: &Config,
) -> BTreeMap<MachineId, [Option<SignalState>; 3]> {
    let mut out: BTreeMap<MachineId, [Option<SignalState>; 3]> = BTreeMap::new();
    for row in rows {
        let r = signals::BASELINES.named(row);
        let (Some(machine), Some(signal)) = (r.text("machine_id"), r.text("signal")) else {
            continue;
        };
        let Some(i) = MODEL_SIGNALS
            .iter()
            .position(|s| signals::SIGNALS[*s] == signal)
        else {
            continue;
        };
        let Ok(machine_id) = MachineId::parse(&machine) else {
            continue;
        };
        let float = |c: &str| match r.get(c) {
            Value::Float(f) => Some(f),
            _ => None,
        };
        let (Some(avg_24h), Some(avg_7d), Value::Time(hour_start)) =
            (float("avg_24h"), float("avg_7d"), r.get("hour_start"))
        else {
            continue;
        };
        let baseline = Baseline {
            machine_id: machine_id.clone(),
            signal: MODEL_SIGNALS[i],
            hour_start,
            avg_1h: float("avg_1h").unwrap_or(OrdF64(0.0)),
            avg_24h,
            avg_7d,
            mean_30d: float("mean_30d"),
            std_30d: float("std_30d"),
            baseline_hours: r
                .int("baseline_hours")
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
        };
        out.entry(machine_id).or_default()[i] = SignalState::of(&baseline, config);
    }
    out
}

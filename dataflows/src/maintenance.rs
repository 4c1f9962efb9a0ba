//! `maintenance_candidates`: machines likely to fail within 7 days, from their own signals.
//!
//! A worn motor draws a little more current for days before it jams for good, a weakening
//! cooling unit lets the fridge creep up before it stops cooling, a failing card reader refuses
//! a few more cards before it refuses them all. Each machine's `signal_baselines` say how far its
//! last 24 h and 7 d are from its own 30-day mean, in its own deviations; a logistic model
//! ([`Model`]) turns those into the probability that the machine fails within
//! [`Model::horizon_days`] (7). The model is trained on a simulated history whose failures are
//! known (`vendflow maintenance train`), and its precision and recall on a held-out period are
//! part of it ([`Trained`]).
//!
//! ```sql
//! -- per machine, from its signal_baselines rows with a baseline of at least
//! -- signal_min_baseline_hours (72) hours, for temperature, motor_current and card_error_rate:
//! WITH z AS (SELECT machine_id, signal,
//!                   clamp((avg_24h - mean_30d) / greatest(std_30d, floor(signal)), 0, 8) AS z_24h,
//!                   clamp((avg_7d  - mean_30d) / greatest(std_30d, floor(signal)), 0, 8) AS z_7d
//!            FROM signal_baselines WHERE baseline_hours >= 72)
//! SELECT machine_id, max(hour_start),
//!        1 / (1 + exp(-(intercept + sum(weight(signal, '24h') * z_24h + weight(signal, '7d') * z_7d))))
//!            AS failure_probability,
//!        failure_probability > threshold AS flagged,   -- 0.7; published to 4 decimals
//!        reasons                                      -- the terms that raised it most
//! FROM z GROUP BY machine_id HAVING failure_probability >= 0.2
//! ```
//! A signal without a baseline adds nothing (its terms are 0); a machine without any is not
//! scored. The rows change once an hour, as the baselines do. State: one machine's three newest
//! baseline rows.

use std::path::Path;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::{MachineId, Timestamp};

use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Time, hash_of};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, OrdF64, Row, col};
use crate::signals::{self, Baseline};

pub const CANDIDATES: ViewDef = ViewDef {
    name: "maintenance_candidates",
    description: "machines whose own signals say they may fail within 7 days: the model's probability, flagged above 70 %, and the signals that raised it",
    columns: &[
        col("machine_id", Text),
        col("hour_start", Time),
        col("failure_probability", Float),
        col("flagged", Bool),
        col("reasons", Text),
    ],
};

/// A machine is listed from this probability on (flagged from the model's threshold).
pub const CANDIDATE_MIN: f64 = 0.2;

/// How far a deviation counts.
pub const Z_CLIP: f64 = 8.0;

/// The signals the model reads, by index in [`signals::SIGNALS`]: temperature, motor current,
/// card-reader error rate.
pub const MODEL_SIGNALS: [usize; 3] = [0, 1, 2];

/// The model's inputs, in order: per signal of [`MODEL_SIGNALS`], its 24 h then its 7 d
/// deviation above its 30-day mean.
pub const FEATURES: [&str; 6] = [
    "temperature_z_24h",
    "temperature_z_7d",
    "motor_current_z_24h",
    "motor_current_z_7d",
    "card_error_rate_z_24h",
    "card_error_rate_z_7d",
];

/// How a row's `reasons` cell joins its reasons: as `health` does, so readers split both alike.
pub use crate::health::REASON_SEPARATOR;

/// The model file this build carries (`vendflow maintenance train` wrote it).
const BUILTIN: &str = include_str!("maintenance_model.json");

/// A logistic model of failure within `horizon_days`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub version: u32,
    pub horizon_days: u32,
    /// A machine is flagged above this probability.
    pub threshold: f64,
    /// The inputs' names, as in [`FEATURES`] (checked on load).
    pub features: Vec<String>,
    pub intercept: f64,
    pub weights: Vec<f64>,
    /// How it was trained and how it did on its held-out period.
    #[serde(default)]
    pub trained: Option<Trained>,
}

/// What a model was trained on, and its scores on the held-out period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trained {
    pub machines: usize,
    pub days: u32,
    pub seed: u64,
    pub heartbeat_secs: u32,
    pub failures_per_year: f64,
    pub drifts_per_year: f64,
    /// Days (from the simulated start) of the training samples, and of the held-out ones.
    pub train_days: (u32, u32),
    pub holdout_days: (u32, u32),
    pub train_samples: usize,
    pub train_positives: usize,
    pub holdout_samples: usize,
    pub holdout_positives: usize,
    /// Held out: flagged machine-days followed by a failure within the horizon, over all flagged.
    pub precision: Option<f64>,
    /// Held out: failures flagged on one of the horizon's days before them, over all failures.
    pub recall: Option<f64>,
    pub holdout_failures: usize,
    pub holdout_flagged: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read the maintenance model {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the maintenance model {path} is not a model file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("the maintenance model {path} does not fit this version: {message}")]
    Incompatible { path: String, message: String },
    #[error("cannot fit a maintenance model: {0}")]
    Fit(String),
}

/// The model file format this code reads and writes.
pub const MODEL_VERSION: u32 = 1;

impl Model {
    /// The model this build carries.
    pub fn builtin() -> Arc<Model> {
        match Model::parse(BUILTIN, "(built in)") {
            Ok(m) => Arc::new(m),
            // A test (`the_builtin_model_loads`) keeps the file readable.
            Err(e) => unreachable!("{e}"),
        }
    }

    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: name.clone(),
            source,
        })?;
        Model::parse(&text, &name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Model, ModelError> {
        let model: Model = serde_json::from_str(text).map_err(|source| ModelError::Parse {
            path: name.to_owned(),
            source,
        })?;
        let incompatible = |message: String| ModelError::Incompatible {
            path: name.to_owned(),
            message,
        };
        if model.version != MODEL_VERSION {
            return Err(incompatible(format!(
                "its version is {}, this vendflow reads {MODEL_VERSION}",
                model.version
            )));
        }
        if model.features != FEATURES || model.weights.len() != FEATURES.len() {
            return Err(incompatible(format!(
                "it takes {:?} with {} weights, this vendflow computes {FEATURES:?}",
                model.features,
                model.weights.len()
            )));
        }
        if !(0.0..=1.0).contains(&model.threshold)
            || !model.intercept.is_finite()
            || model.weights.iter().any(|w| !w.is_finite())
        {
            return Err(incompatible(
                "its threshold is outside 0..1 or a weight is not a number".into(),
            ));
        }
        Ok(model)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// The probability of failure within the horizon.
    pub fn probability(&self, x: &[f64; 6]) -> f64 {
        let t = self.intercept + self.weights.iter().zip(x).map(|(w, x)| w * x).sum::<f64>();
        1.0 / (1.0 + (-t).exp())
    }

    /// Fits a model to `samples` (inputs, failed within the horizon) by Newton's method on the
    /// L2-penalised log-likelihood (`l2` on the weights, not the intercept).
    pub fn fit(
        samples: &[([f64; 6], bool)],
        l2: f64,
        horizon_days: u32,
        threshold: f64,
    ) -> Result<Model, ModelError> {
        const N: usize = 7;
        if !samples.iter().any(|s| s.1) || !samples.iter().any(|s| !s.1) {
            return Err(ModelError::Fit(
                "the samples need both machines that failed and machines that did not".into(),
            ));
        }
        let mut w = [0.0f64; N];
        for _ in 0..50 {
            let mut gradient = [0.0f64; N];
            let mut hessian = [[0.0f64; N]; N];
            for (x, y) in samples {
                let v: [f64; N] = [1.0, x[0], x[1], x[2], x[3], x[4], x[5]];
                let t: f64 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
                let p = 1.0 / (1.0 + (-t).exp());
                let r = p - f64::from(u8::from(*y));
                let s = (p * (1.0 - p)).max(1e-9);
                for i in 0..N {
                    gradient[i] += r * v[i];
                    for j in 0..N {
                        hessian[i][j] += s * v[i] * v[j];
                    }
                }
            }
            for i in 1..N {
                gradient[i] += l2 * w[i];
                hessian[i][i] += l2;
            }
            let step = solve(hessian, gradient)
                .ok_or_else(|| ModelError::Fit("the inputs do not vary".into()))?;
            let mut largest = 0.0f64;
            for i in 0..N {
                w[i] -= step[i];
                largest = largest.max(step[i].abs());
            }
            if largest < 1e-9 {
                break;
            }
        }
        Ok(Model {
            version: MODEL_VERSION,
            horizon_days,
            threshold,
            features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
            intercept: w[0],
            weights: w[1..].to_vec(),
            trained: None,
        })
    }
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; None when singular.
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let pivot = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..N {
            let f = a[row][col] / pivot_row[col];
            for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for row in (0..N).rev() {
        let rest: f64 = (row + 1..N).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// One signal's baseline as the model reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignalState {
    pub avg_24h: f64,
    pub avg_7d: f64,
    pub mean_30d: f64,
    pub std_30d: f64,
}

impl SignalState {
    /// From a `signal_baselines` row's values, when its baseline is long enough to judge.
    pub fn of(b: &Baseline, config: &Config) -> Option<SignalState> {
        if i64::from(b.baseline_hours) < config.signal_min_baseline_hours {
            return None;
        }
        Some(SignalState {
            avg_24h: b.avg_24h.0,
            avg_7d: b.avg_7d.0,
            mean_30d: b.mean_30d?.0,
            std_30d: b.std_30d?.0,
        })
    }

    /// How far `avg` is above the mean, in deviations (0 below it: a fridge colder, a motor
    /// easier than usual is not wear; and a machine just repaired sits below a baseline that
    /// still holds its failure).
    fn z(&self, signal: usize, avg: f64) -> f64 {
        let std = self.std_30d.max(signals::MIN_STD[signal]);
        ((avg - self.mean_30d) / std).clamp(0.0, Z_CLIP)
    }
}

/// The model's inputs from a machine's signals (by position in [`MODEL_SIGNALS`]); None
/// without any baseline.
pub fn features(states: &[Option<SignalState>; 3]) -> Option<[f64; 6]> {
    if states.iter().all(Option::is_none) {
        return None;
    }
    let mut x = [0.0; 6];
    for (i, state) in states.iter().enumerate() {
        if let Some(s) = state {
            let signal = MODEL_SIGNALS[i];
            x[2 * i] = s.z(signal, s.avg_24h);
            x[2 * i + 1] = s.z(signal, s.avg_7d);
        }
    }
    Some(x)
}

/// What raised a machine's probability: each signal whose terms add at least 0.5 to the
/// log-odds, the larger first, e.g. "motor_current 0.95 over 24 h against 0.80 ± 0.03 (+5.0σ)".
pub fn reasons(model: &Model, states: &[Option<SignalState>; 3], x: &[f64; 6]) -> Vec<String> {
    let mut terms: Vec<(f64, String)> = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let Some(s) = state else { continue };
        let (a, b) = (
            model.weights[2 * i] * x[2 * i],
            model.weights[2 * i + 1] * x[2 * i + 1],
        );
        if a + b < 0.5 {
            continue;
        }
        let (span, avg, z) = if a >= b {
            ("24 h", s.avg_24h, x[2 * i])
        } else {
            ("7 d", s.avg_7d, x[2 * i + 1])
        };
        let signal = MODEL_SIGNALS[i];
        terms.push((
            a + b,
            format!(
                "{} {avg:.3} over {span} against {:.3} ± {:.3} ({z:+.1}σ)",
                signals::SIGNALS[signal],
                s.mean_30d,
                s.std_30d.max(signals::MIN_STD[signal]),
            ),
        ));
    }
    terms.sort_by(|a, b| b.0.total_cmp(&a.0));
    terms.into_iter().map(|t| t.1).collect()
}

/// A `maintenance_candidates` row's values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub machine_id: MachineId,
    pub hour_start: Timestamp,
    pub probability: OrdF64,
    pub flagged: bool,
    pub reasons: Vec<String>,
}

/// A machine's baseline rows of the model's signals, each with its multiplicity (a changed row
/// is retracted and added in one time, in either order).
#[derive(Default, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    rows: Vec<(Baseline, isize)>,
}

/// The machine's candidate row, if its probability reaches [`CANDIDATE_MIN`].
fn judge(machine: &MachineId, b: &Baselines, config: &Config, out: &mut Vec<Candidate>) {
    let mut states = [None; 3];
    let mut newest = None;
    for (i, signal) in MODEL_SIGNALS.iter().enumerate() {
        let row = b
            .rows
            .iter()
            .filter(|(r, c)| r.signal == *signal && *c > 0)
            .map(|(r, _)| r)
            .max_by_key(|r| r.hour_start);
        if let Some(r) = row {
            states[i] = SignalState::of(r, config);
            if states[i].is_some() {
                newest = newest.max(Some(r.hour_start));
            }
        }
    }
    let (Some(x), Some(hour_start)) = (features(&states), newest) else {
        return;
    };
    let model = &config.maintenance;
    let p = model.probability(&x);
    if p < CANDIDATE_MIN {
        return;
    }
    out.push(Candidate {
        machine_id: machine.clone(),
        hour_start,
        probability: OrdF64(round4(p)),
        flagged: p > model.threshold,
        reasons: reasons(model, &states, &x),
    });
}

/// A probability as published: to four decimals (the order terms are added in moves the last
/// bits, which a reader cannot use).
fn round4(p: f64) -> f64 {
    (p * 10_000.0).round() / 10_000.0
}

/// `baselines`: the `signal_baselines` rows as the signals fold publishes them.
pub fn render<'s>(
    baselines: VecCollection<'s, Time, Baseline>,
    config: &Config,
) -> VecCollection<'s, Time, Candidate> {
    let on_output = config.clone();
    baselines
        .flat_map(|b| {
            MODEL_SIGNALS
                .contains(&b.signal)
                .then(|| (b.machine_id.clone(), b))
        })
        .fold_by_key(
            "Maintenance: candidates",
            Published::Recomputed,
            hash_of::<MachineId>,
            |_, state: &mut Baselines, row, diff, _| match state
                .rows
                .iter()
                .position(|(r, _)| *r == row)
            {
                Some(at) => {
                    state.rows[at].1 += diff;
                    if state.rows[at].1 == 0 {
                        state.rows.swap_remove(at);
                    }
                }
                None => state.rows.push((row, diff)),
            },
            |_, _, _| {},
            move |machine, state, out| judge(machine, state, &on_output, out),
        )
}

pub fn row(c: Candidate) -> Row {
    Row::build(|r| {
        r.text(c.machine_id.as_str());
        r.time(c.hour_start);
        r.float(c.probability.0);
        r.bool(c.flagged);
        r.text_joined(&c.reasons, REASON_SEPARATOR);
    })
}

/// The batch answer, written from the module's documentation over the signals' batch answer
/// (`signal_baselines` rows by column name), with its own arithmetic.
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Row> {
    use crate::row::Value;
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let model = &config.maintenance;
    let floors = [0.2, 0.05, 0.005];
    let names = ["temperature", "motor_current", "card_error_rate"];
    // machine → (newest hour, per signal: (avg 24 h, avg 7 d, mean, std))
    type Judged = (Timestamp, [Option<(f64, f64, f64, f64)>; 3]);
    let mut machines: BTreeMap<String, Judged> = BTreeMap::new();
    for r in signals::oracle(scenario).0 {
        let r = signals::BASELINES.named(&r);
        let (Some(machine), Some(signal)) = (r.text("machine_id"), r.text("signal")) else {
            continue;
        };
        let Some(i) = names.iter().position(|n| *n == signal) else {
            continue;
        };
        let float = |c: &str| match r.get(c) {
            Value::Float(f) => Some(f.0),
            _ => None,
        };
        let (Some(a24), Some(a7), Some(mean), Some(std)) = (
            float("avg_24h"),
            float("avg_7d"),
            float("mean_30d"),
            float("std_30d"),
        ) else {
            continue;
        };
        if r.int("baseline_hours").unwrap_or(0) < config.signal_min_baseline_hours {
            continue;
        }
        let Value::Time(hour) = r.get("hour_start") else {
            continue;
        };
        let e = machines.entry(machine).or_insert((hour, [None; 3]));
        e.0 = e.0.max(hour);
        e.1[i] = Some((a24, a7, mean, std));
    }
    let mut rows = Vec::new();
    for (machine, (hour, signals)) in machines {
        let mut logit = model.intercept;
        let mut terms: Vec<(f64, String)> = Vec::new();
        for (i, s) in signals.iter().enumerate() {
            let Some((a24, a7, mean, std)) = s else {
                continue;
            };
            let std = if *std > floors[i] { *std } else { floors[i] };
            let z24 = ((a24 - mean) / std).clamp(0.0, 8.0);
            let z7 = ((a7 - mean) / std).clamp(0.0, 8.0);
            let (t24, t7) = (model.weights[2 * i] * z24, model.weights[2 * i + 1] * z7);
            logit += t24 + t7;
            if t24 + t7 >= 0.5 {
                let (span, avg, z) = if t24 >= t7 {
                    ("24 h", a24, z24)
                } else {
                    ("7 d", a7, z7)
                };
                terms.push((
                    t24 + t7,
                    format!(
                        "{} {avg:.3} over {span} against {mean:.3} ± {std:.3} ({z:+.1}σ)",
                        names[i]
                    ),
                ));
            }
        }
        let p = 1.0 / (1.0 + (-logit).exp());
        if p < 0.2 {
            continue;
        }
        terms.sort_by(|a, b| b.0.total_cmp(&a.0));
        let reasons: Vec<String> = terms.into_iter().map(|t| t.1).collect();
        rows.push(Row::from([
            Value::text(&machine),
            Value::Time(hour),
            Value::Float(OrdF64((p * 1e4).round() / 1e4)),
            Value::Bool(p > model.threshold),
            Value::text(reasons.join("; ")),
        ]));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value;
    use crate::testing;

    #[test]
    fn the_builtin_model_loads() {
        let model = Model::builtin();
        assert_eq!(model.features, FEATURES);
        assert!(
            model.trained.is_some(),
            "the built-in model says how it was trained"
        );
    }

    #[test]
    fn candidates_match_batch_oracle_on_random_streams() {
        let mut listed = 0;
        let mut flagged = 0;
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let expected = oracle(scenario);
            listed += expected.len();
            flagged += expected
                .iter()
                .filter(|r| r.cell(3) == Value::Bool(true))
                .count();
            testing::assert_view(views, "maintenance_candidates", expected, seed);
        }
        assert!(
            listed > 0 && flagged > 0,
            "listed {listed}, flagged {flagged}"
        );
    }

    /// A motor that drew 0.80 A (± 0.02) for ten days creeps up by 0.3 A over its last three:
    /// the built-in model flags the machine, says why, and health counts it.
    #[test]
    fn a_motor_creeping_up_for_days_is_flagged_with_its_reason() {
        use vendflow_protocol::{Event, EventKind, Heartbeat, Milli};
        let mut scenario = testing::Scenario::empty();
        scenario.config.workers = 1;
        let five = 5 * 60_000;
        let (steady, creeping) = (10 * 288, 3 * 288);
        for i in 0..steady + creeping {
            let t = testing::BASE + i * five;
            let creep = (i - steady).max(0) * 300 / creeping;
            let event = Event {
                machine_id: testing::machine("worn"),
                timestamp: Timestamp(t),
                seq: None,
                kind: EventKind::Heartbeat(Heartbeat {
                    temperature: Some(Milli(4_000)),
                    motor_current: Some(Milli(780 + 20 * (i % 3) + creep)),
                    ..Heartbeat::default()
                }),
            };
            scenario.deliver(t, event);
        }
        let views = testing::run(&scenario);
        testing::assert_view(&views, "maintenance_candidates", oracle(&scenario), 0);
        let rows = testing::rows(&views, "maintenance_candidates");
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = CANDIDATES.named(&rows[0]);
        assert_eq!(row.get("flagged"), Value::Bool(true), "{rows:?}");
        let reasons = row.text("reasons").unwrap_or_default();
        assert!(reasons.starts_with("motor_current "), "{reasons}");
        let health = testing::rows(&views, "health");
        assert!(
            crate::health::reasons(&health[0])
                .iter()
                .any(|r| r.starts_with("may fail within 7 days")),
            "{health:?}"
        );
    }

    #[test]
    fn a_model_file_that_does_not_fit_is_refused_with_the_reason() {
        let good = Model::builtin().to_json();
        assert!(Model::parse(&good, "m.json").is_ok());
        let old = good.replacen("\"version\": 1", "\"version\": 9", 1);
        let e = Model::parse(&old, "m.json")
            .err()
            .map_or_else(String::new, |e| e.to_string());
        assert!(e.contains("version is 9"), "{e}");
        let fewer = good.replacen("\"card_error_rate_z_7d\"", "\"door_opens\"", 1);
        let e = Model::parse(&fewer, "m.json")
            .err()
            .map_or_else(String::new, |e| e.to_string());
        assert!(e.contains("this vendflow computes"), "{e}");
        let e = Model::parse("{", "m.json")
            .err()
            .map_or_else(String::new, |e| e.to_string());
        assert!(e.contains("m.json is not a model file"), "{e}");
    }

    /// Samples from a known logistic model: the fit finds its weights back.
    #[test]
    fn the_fit_finds_a_known_model_back() {
        use rand::{Rng, SeedableRng};
        let truth = [1.5, 0.0, -1.0, 0.5, 0.0, 2.0];
        let intercept = -2.0;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let samples: Vec<([f64; 6], bool)> = (0..40_000)
            .map(|_| {
                let x: [f64; 6] = std::array::from_fn(|_| rng.random_range(-2.0..2.0));
                let t: f64 = intercept + truth.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>();
                let p = 1.0 / (1.0 + (-t as f64).exp());
                (x, rng.random_bool(p))
            })
            .collect();
        let model = Model::fit(&samples, 1e-6, 7, 0.7).expect("fits");
        assert!((model.intercept - intercept).abs() < 0.1, "{model:?}");
        for (w, t) in model.weights.iter().zip(truth) {
            assert!((w - t).abs() < 0.1, "{model:?}");
        }
        assert!(Model::fit(&samples[..1], 1e-6, 7, 0.7).is_err());
    }
}

//! `signal_baselines` and `signal_anomalies`: each machine measured against its own history.
//!
//! A reading is one 5-minute window of `anomaly_windows` (its corrections included: a late
//! event that changes a window changes its reading), per signal:
//! - `temperature`: the window's average, °C;
//! - `motor_current`: its highest motor current, A;
//! - `card_error_rate`: card-reader errors over attempts, in windows with attempts;
//! - `door_opens`: door openings, in windows with a heartbeat or a door event;
//! - `network_signal`: its weakest signal, dBm.
//!
//! ```sql
//! -- hours: per machine, signal and hour of event time, the mean of its readings
//! WITH hours AS (SELECT machine_id, signal, hour(window_start) AS hour, avg(reading) AS mean,
//!                       count(*) AS readings FROM readings GROUP BY 1, 2, 3),
//!      -- the baseline: the hours that can no longer change (their windows left retention),
//!      -- of the last `signal_baseline_days` (30) days
//!      baseline AS (SELECT machine_id, signal, avg(mean) AS mean_30d, stddev_pop(mean) AS std_30d,
//!                          count(*) AS baseline_hours FROM hours WHERE final GROUP BY 1, 2)
//! -- signal_baselines: as of the newest complete hour (before the machine's current one, which
//! -- is still filling: the rows change once an hour, not with every heartbeat)
//! SELECT machine_id, signal, avg(reading) over that hour, the 24 h and the 7 days up to it,
//!        mean_30d, std_30d, baseline_hours FROM readings JOIN baseline ...
//! -- signal_anomalies: recent complete hours (not yet final: the last ~2 days) with at least
//! -- `signal_min_readings` (6) readings,
//! -- against a baseline of at least `signal_min_baseline_hours` (72)
//! SELECT machine_id, signal, hour, mean AS value, mean_30d, std_30d,
//!        (mean - mean_30d) / std_30d AS z
//! FROM hours JOIN baseline WHERE NOT final AND abs(z) > 3 AND std_30d >= floor(signal)
//! ```
//! The deviation is that of the machine's *hourly means*, so an hour is compared with the hours
//! it has had, not with single readings. A floor on the deviation per signal (0.2 °C, 0.05 A, half
//! a percent of card errors, 0.2 door openings, 1 dBm) keeps a machine whose reading never moved
//! from raising an alarm at the first flicker.
//!
//! State per machine: its recent hours (until their windows leave retention, ~49 h) and one
//! bucket per day of the baseline (31), each with five signals' sums: about 10 KB, a sixth of what
//! its live windows already take. Readings are kept in exact integers (thousandths; millionths
//! for the error rate); a day's hourly means are summed in hour order, and the days in day order,
//! so the batch oracle gets the same floating-point answers.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{MachineId, Timestamp};

use crate::anomaly_windows::Agg;
use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Time, hash_of, insert_tight};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, OrdF64, Row, Value, col, null};

pub const BASELINES: ViewDef = ViewDef {
    name: "signal_baselines",
    description: "per machine and signal: rolling 1 h, 24 h and 7 d averages of its 5-minute readings, and its own 30-day mean and deviation of hourly means",
    columns: &[
        col("machine_id", Text),
        col("signal", Text),
        col("hour_start", Time),
        col("avg_1h", Float),
        col("avg_24h", Float),
        col("avg_7d", Float),
        null("mean_30d", Float),
        null("std_30d", Float),
        col("baseline_hours", Int),
    ],
};

pub const ANOMALIES: ViewDef = ViewDef {
    name: "signal_anomalies",
    description: "hours of the last two days whose mean reading was more than 3 standard deviations from the machine's own 30-day mean",
    columns: &[
        col("machine_id", Text),
        col("signal", Text),
        col("hour_start", Time),
        col("value", Float),
        col("mean_30d", Float),
        col("std_30d", Float),
        col("z", Float),
    ],
};

/// The signals, in column order of their sums.
pub const SIGNALS: [&str; 5] = [
    "temperature",
    "motor_current",
    "card_error_rate",
    "door_opens",
    "network_signal",
];

/// What a reading's integer is in: thousandths, millionths for the error rate.
const SCALE: [f64; 5] = [1e3, 1e3, 1e6, 1e3, 1e3];

/// The smallest deviation an anomaly is measured against, per signal (in its unit).
pub const MIN_STD: [f64; 5] = [0.2, 0.05, 0.005, 0.2, 1.0];

/// How far from its mean an hour must be, in deviations.
pub const Z_LIMIT: f64 = 3.0;

/// A window's reading of each signal, in integers of [`SCALE`].
pub fn readings(a: &Agg) -> [Option<i64>; 5] {
    let temperature = (a.temperature_readings > 0).then(|| {
        // The average in thousandths, rounded half away from zero.
        let (s, n) = (a.temperature_sum, a.temperature_readings);
        (2 * s + s.signum() * n) / (2 * n)
    });
    let card = (a.card_attempts > 0).then(|| a.card_errors * 1_000_000 / a.card_attempts);
    let door = (a.heartbeats > 0 || a.door_opens > 0).then_some(a.door_opens * 1000);
    [
        temperature,
        a.max_motor_current.map(|m| m.0),
        card,
        door,
        a.min_network_signal.map(|m| m.0),
    ]
}

/// Readings of one hour: per signal their sum and number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Hour {
    hour: i64,
    sums: [i64; 5],
    counts: [u32; 5],
}

impl Hour {
    fn mean(&self, s: usize) -> Option<f64> {
        (self.counts[s] > 0).then(|| self.sums[s] as f64 / f64::from(self.counts[s]) / SCALE[s])
    }
}

/// A day of final hours: per signal the readings' sum and number, and the hourly means' sum,
/// sum of squares and number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Day {
    day: i64,
    sums: [i64; 5],
    counts: [u32; 5],
    mean_sums: [f64; 5],
    mean_squares: [f64; 5],
    hours: [u32; 5],
}

/// One machine's recent hours and baseline days, each in time order.
#[derive(Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    hours: Vec<Hour>,
    days: Vec<Day>,
}

/// A window's readings (with its start), as the fold hears them.
pub type Reading = (Timestamp, [Option<i64>; 5]);

/// When an hour can no longer change: its last window has left retention.
fn hour_final(hour: i64, config: &Config) -> Time {
    Timestamp((hour + 1) * MS_PER_HOUR + config.window_retention_ms)
}

/// When a baseline day leaves it.
fn day_gone(day: i64, config: &Config) -> Time {
    Timestamp((day + 1 + config.signal_baseline_days) * MS_PER_DAY)
}

impl History {
    fn add(&mut self, (start, values): &Reading, diff: isize, config: &Config) -> Option<Time> {
        let hour = start.0.div_euclid(MS_PER_HOUR);
        let (at, new) = match self.hours.binary_search_by_key(&hour, |h| h.hour) {
            Ok(at) => (at, false),
            Err(at) => {
                insert_tight(
                    &mut self.hours,
                    at,
                    Hour {
                        hour,
                        ..Hour::default()
                    },
                );
                (at, true)
            }
        };
        let h = &mut self.hours[at];
        for (s, v) in values.iter().enumerate() {
            if let Some(v) = v {
                h.sums[s] += v * diff as i64;
                h.counts[s] = (i64::from(h.counts[s]) + diff as i64).max(0) as u32;
            }
        }
        new.then(|| hour_final(hour, config))
    }

    /// Moves the hours that can no longer change into their days (in hour order), and drops the
    /// days that left the baseline; the next time anything is due.
    fn expire(&mut self, now: Time, config: &Config) -> Option<Time> {
        let done = self
            .hours
            .iter()
            .take_while(|h| hour_final(h.hour, config) <= now)
            .count();
        for h in self.hours.drain(..done) {
            let day = (h.hour * MS_PER_HOUR).div_euclid(MS_PER_DAY);
            if day_gone(day, config) <= now {
                continue;
            }
            let at = match self.days.binary_search_by_key(&day, |d| d.day) {
                Ok(at) => at,
                Err(at) => {
                    insert_tight(
                        &mut self.days,
                        at,
                        Day {
                            day,
                            ..Day::default()
                        },
                    );
                    at
                }
            };
            let d = &mut self.days[at];
            for s in 0..5 {
                if let Some(mean) = h.mean(s) {
                    d.sums[s] += h.sums[s];
                    d.counts[s] += h.counts[s];
                    d.mean_sums[s] += mean;
                    d.mean_squares[s] += mean * mean;
                    d.hours[s] += 1;
                }
            }
        }
        self.days.retain(|d| day_gone(d.day, config) > now);
        let next_hour = self.hours.first().map(|h| hour_final(h.hour, config));
        let next_day = self.days.first().map(|d| day_gone(d.day, config));
        next_hour.into_iter().chain(next_day).min()
    }

    /// Per signal: the baseline's mean, deviation and hours.
    fn baseline(&self, s: usize) -> (Option<f64>, Option<f64>, u32) {
        let (mut sum, mut squares, mut hours) = (0.0, 0.0, 0u32);
        for d in &self.days {
            sum += d.mean_sums[s];
            squares += d.mean_squares[s];
            hours += d.hours[s];
        }
        if hours == 0 {
            return (None, None, 0);
        }
        let n = f64::from(hours);
        let mean = sum / n;
        let variance = (squares / n - mean * mean).max(0.0);
        (Some(mean), Some(variance.sqrt()), hours)
    }
}

/// A `signal_baselines` row's values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Baseline {
    pub machine_id: MachineId,
    pub signal: usize,
    pub hour_start: Timestamp,
    pub avg_1h: OrdF64,
    pub avg_24h: OrdF64,
    pub avg_7d: OrdF64,
    pub mean_30d: Option<OrdF64>,
    pub std_30d: Option<OrdF64>,
    pub baseline_hours: u32,
}

/// A `signal_anomalies` row's values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Anomaly {
    pub machine_id: MachineId,
    pub signal: usize,
    pub hour_start: Timestamp,
    pub value: OrdF64,
    pub mean_30d: OrdF64,
    pub std_30d: OrdF64,
    pub z: OrdF64,
}

/// What the fold publishes per machine.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Judged {
    Baseline(Baseline),
    Anomaly(Anomaly),
}

/// A machine's rows from its history.
fn judge(machine: &MachineId, h: &History, config: &Config, out: &mut Vec<Judged>) {
    // The machine's current hour (its newest with a reading): still filling, so the rows speak
    // of the hours before it, and change once an hour rather than with every heartbeat.
    let Some(current) = h
        .hours
        .iter()
        .rev()
        .find(|x| x.counts.iter().any(|c| *c > 0))
        .map(|x| x.hour)
    else {
        return;
    };
    for s in 0..5 {
        let (mean, std, baseline_hours) = h.baseline(s);
        // The newest complete hour with a reading of the signal, and the averages up to it.
        let Some(newest) = h
            .hours
            .iter()
            .rev()
            .find(|x| x.hour < current && x.counts[s] > 0)
            .map(|x| x.hour)
        else {
            continue;
        };
        let (mut sum_24, mut n_24, mut sum_7, mut n_7) = (0i64, 0u64, 0i64, 0u64);
        for x in &h.hours {
            if x.hour > newest - 24 && x.hour <= newest {
                sum_24 += x.sums[s];
                n_24 += u64::from(x.counts[s]);
            }
            if x.hour > newest - 7 * 24 && x.hour <= newest {
                sum_7 += x.sums[s];
                n_7 += u64::from(x.counts[s]);
            }
        }
        let first_day = (newest - 7 * 24 + 1) * MS_PER_HOUR / MS_PER_DAY;
        for d in h.days.iter().filter(|d| d.day >= first_day) {
            sum_7 += d.sums[s];
            n_7 += u64::from(d.counts[s]);
        }
        let avg = |sum: i64, n: u64| OrdF64(sum as f64 / n.max(1) as f64 / SCALE[s]);
        let one = h
            .hours
            .iter()
            .find(|x| x.hour == newest)
            .and_then(|x| x.mean(s))
            .unwrap_or(0.0);
        out.push(Judged::Baseline(Baseline {
            machine_id: machine.clone(),
            signal: s,
            hour_start: Timestamp(newest * MS_PER_HOUR),
            avg_1h: OrdF64(one),
            avg_24h: avg(sum_24, n_24),
            avg_7d: avg(sum_7, n_7),
            mean_30d: mean.map(OrdF64),
            std_30d: std.map(OrdF64),
            baseline_hours,
        }));
        let (Some(mean), Some(std)) = (mean, std) else {
            continue;
        };
        if i64::from(baseline_hours) < config.signal_min_baseline_hours {
            continue;
        }
        let std = std.max(MIN_STD[s]);
        for x in h.hours.iter().filter(|x| x.hour < current) {
            let Some(value) = x.mean(s) else { continue };
            if x.counts[s] < config.signal_min_readings {
                continue;
            }
            let z = (value - mean) / std;
            if z.abs() > Z_LIMIT {
                out.push(Judged::Anomaly(Anomaly {
                    machine_id: machine.clone(),
                    signal: s,
                    hour_start: Timestamp(x.hour * MS_PER_HOUR),
                    value: OrdF64(value),
                    mean_30d: OrdF64(mean),
                    std_30d: OrdF64(std),
                    z: OrdF64(z),
                }));
            }
        }
    }
}

pub struct Signals<'s> {
    pub baselines: VecCollection<'s, Time, Baseline>,
    pub anomalies: VecCollection<'s, Time, Anomaly>,
}

/// `readings`: each window's readings as the windows operator publishes them (a changed window
/// retracts its old readings and adds the new; a window leaving retention is not retracted).
pub fn render<'s>(
    readings: VecCollection<'s, Time, (MachineId, Reading)>,
    config: &Config,
) -> Signals<'s> {
    let (on_apply, on_timer, on_output) = (config.clone(), config.clone(), config.clone());
    let judged = readings.fold_by_key(
        "Signals: history",
        Published::Recomputed,
        hash_of::<MachineId>,
        move |_, history: &mut History, reading, diff, ctx| {
            if let Some(due) = history.add(&reading, diff, &on_apply) {
                ctx.wake_at(due);
            }
        },
        move |_, history, ctx| {
            if let Some(next) = history.expire(ctx.now(), &on_timer) {
                ctx.wake_at(next);
            }
        },
        move |machine, history, out| judge(machine, history, &on_output, out),
    );
    let baselines = judged.clone().flat_map(|j| match j {
        Judged::Baseline(b) => Some(b),
        Judged::Anomaly(_) => None,
    });
    let anomalies = judged.flat_map(|j| match j {
        Judged::Anomaly(a) => Some(a),
        Judged::Baseline(_) => None,
    });
    Signals {
        baselines,
        anomalies,
    }
}

pub fn baseline_row(b: Baseline) -> Row {
    Row::from([
        Value::text(b.machine_id.as_str()),
        Value::text(SIGNALS[b.signal]),
        Value::Time(b.hour_start),
        Value::Float(b.avg_1h),
        Value::Float(b.avg_24h),
        Value::Float(b.avg_7d),
        Value::opt(b.mean_30d, Value::Float),
        Value::opt(b.std_30d, Value::Float),
        Value::Int(i64::from(b.baseline_hours)),
    ])
}

pub fn anomaly_row(a: Anomaly) -> Row {
    Row::from([
        Value::text(a.machine_id.as_str()),
        Value::text(SIGNALS[a.signal]),
        Value::Time(a.hour_start),
        Value::Float(a.value),
        Value::Float(a.mean_30d),
        Value::Float(a.std_30d),
        Value::Float(a.z),
    ])
}

/// The batch answer (`signal_baselines` rows, `signal_anomalies` rows), written from the
/// module's documentation: every window the scenario had (the windows oracle, expired ones
/// too), its readings computed here, grouped by hour, final hours summed into their days.
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> (Vec<Row>, Vec<Row>) {
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let now = scenario.now();
    let hour_ms = MS_PER_HOUR;
    // (machine, signal) → hour → (sum, count) of its windows' readings.
    type Hours = BTreeMap<i64, (i64, u64)>;
    let mut hours: BTreeMap<(MachineId, usize), Hours> = BTreeMap::new();
    for w in crate::anomaly_windows::every_window_oracle(scenario) {
        let a = w.totals;
        let mut values: [Option<i64>; 5] = [None; 5];
        if a.temperature_readings > 0 {
            values[0] =
                Some((a.temperature_sum as f64 / a.temperature_readings as f64).round() as i64);
        }
        values[1] = a.max_motor_current.map(|m| m.0);
        if a.card_attempts > 0 {
            values[2] = Some(a.card_errors * 1_000_000 / a.card_attempts);
        }
        if a.heartbeats > 0 || a.door_opens > 0 {
            values[3] = Some(1000 * a.door_opens);
        }
        values[4] = a.min_network_signal.map(|m| m.0);
        let hour = w.start.0.div_euclid(hour_ms);
        for (s, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let e = hours
                    .entry((w.machine_id.clone(), s))
                    .or_default()
                    .entry(hour)
                    .or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    // Each machine's current hour: its newest not yet final with any reading.
    let mut current: BTreeMap<MachineId, i64> = BTreeMap::new();
    for ((machine, _), hours) in &hours {
        for h in hours.keys() {
            if (h + 1) * hour_ms + config.window_retention_ms > now.0 {
                let c = current.entry(machine.clone()).or_insert(*h);
                *c = (*c).max(*h);
            }
        }
    }
    let (mut baselines, mut anomalies) = (Vec::new(), Vec::new());
    for ((machine, s), hours) in hours {
        let Some(&current) = current.get(&machine) else {
            continue;
        };
        let scale = SCALE[s];
        let is_final = |h: i64| (h + 1) * hour_ms + config.window_retention_ms <= now.0;
        let day_of = |h: i64| (h * hour_ms).div_euclid(MS_PER_DAY);
        let kept_day = |d: i64| (d + 1 + config.signal_baseline_days) * MS_PER_DAY > now.0;
        // Baseline: per kept day, in day order, its final hours' means in hour order.
        let mut days: BTreeMap<i64, (f64, f64, u32, i64, u64)> = BTreeMap::new();
        for (h, (sum, n)) in &hours {
            if is_final(*h) && kept_day(day_of(*h)) {
                let mean = *sum as f64 / *n as f64 / scale;
                let d = days.entry(day_of(*h)).or_default();
                d.0 += mean;
                d.1 += mean * mean;
                d.2 += 1;
                d.3 += sum;
                d.4 += n;
            }
        }
        let (mut total, mut squares, mut count) = (0.0, 0.0, 0u32);
        for d in days.values() {
            total += d.0;
            squares += d.1;
            count += d.2;
        }
        let baseline = (count > 0).then(|| {
            let mean = total / f64::from(count);
            (
                mean,
                (squares / f64::from(count) - mean * mean).max(0.0).sqrt(),
            )
        });
        // Complete recent hours: not final, before the current one.
        let recent: Vec<(i64, i64, u64)> = hours
            .iter()
            .filter(|(h, _)| !is_final(**h) && **h < current)
            .map(|(h, (sum, n))| (*h, *sum, *n))
            .collect();
        let Some(newest) = recent.iter().map(|r| r.0).max() else {
            continue;
        };
        let window_avg = |from: i64| {
            let (sum, n) = recent
                .iter()
                .filter(|r| r.0 > from && r.0 <= newest)
                .fold((0i64, 0u64), |(s, c), r| (s + r.1, c + r.2));
            (sum, n)
        };
        let (s24, n24) = window_avg(newest - 24);
        let (mut s7, mut n7) = window_avg(newest - 168);
        let first_day = (newest - 167) * hour_ms / MS_PER_DAY;
        for (d, v) in &days {
            if *d >= first_day {
                s7 += v.3;
                n7 += v.4;
            }
        }
        let newest_mean = recent
            .iter()
            .find(|r| r.0 == newest)
            .map_or(0.0, |r| r.1 as f64 / r.2 as f64 / scale);
        baselines.push(Row::from([
            Value::text(machine.as_str()),
            Value::text(SIGNALS[s]),
            Value::Time(Timestamp(newest * hour_ms)),
            Value::Float(OrdF64(newest_mean)),
            Value::Float(OrdF64(s24 as f64 / n24.max(1) as f64 / scale)),
            Value::Float(OrdF64(s7 as f64 / n7.max(1) as f64 / scale)),
            Value::opt(baseline.map(|b| OrdF64(b.0)), Value::Float),
            Value::opt(baseline.map(|b| OrdF64(b.1)), Value::Float),
            Value::Int(i64::from(count)),
        ]));
        let Some((mean, std)) = baseline else {
            continue;
        };
        if i64::from(count) < config.signal_min_baseline_hours {
            continue;
        }
        let std = std.max(MIN_STD[s]);
        for (h, sum, n) in &recent {
            let value = *sum as f64 / *n as f64 / scale;
            let z = (value - mean) / std;
            if *n >= u64::from(config.signal_min_readings) && z.abs() > 3.0 {
                anomalies.push(Row::from([
                    Value::text(machine.as_str()),
                    Value::text(SIGNALS[s]),
                    Value::Time(Timestamp(h * hour_ms)),
                    Value::Float(OrdF64(value)),
                    Value::Float(OrdF64(mean)),
                    Value::Float(OrdF64(std)),
                    Value::Float(OrdF64(z)),
                ]));
            }
        }
    }
    (baselines, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn signals_match_batch_oracle_on_random_streams() {
        let mut judged = 0;
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let (baselines, anomalies) = oracle(scenario);
            judged += anomalies.len();
            assert!(
                baselines.iter().any(|r| r.cell(6) != Value::Null),
                "seed {seed}: no baseline learnt"
            );
            testing::assert_view(views, "signal_baselines", baselines, seed);
            testing::assert_view(views, "signal_anomalies", anomalies, seed);
        }
        assert!(judged > 0, "no anomaly in any random stream");
    }

    /// A fridge that held 4.0 °C for days warms to 4.9 °C for two hours: within the fixed
    /// thresholds (2–5 °C is normal), but far from its own history. Those two hours are the
    /// anomalies, and health says so.
    #[test]
    fn a_fridge_warmer_than_its_own_history_is_an_anomaly_within_the_fixed_thresholds() {
        let mut scenario = crate::testing::Scenario::empty();
        let start = testing::BASE;
        let five = 5 * 60_000;
        let readings = 6 * 288;
        for i in 0..readings {
            let t = start + i * five;
            // The two hours before the last (still filling) one.
            let warm = (readings - 36..readings - 12).contains(&i);
            // ±0.1 °C around 4.0 within each hour, or 4.9 for the last two hours.
            let temperature = if warm { 4_900 } else { 3_900 + 100 * (i % 3) };
            scenario.deliver(t, testing::heartbeat("fridge", t, temperature));
        }
        let views = testing::run(&scenario);
        let (baselines, anomalies) = oracle(&scenario);
        testing::assert_view(&views, "signal_baselines", baselines, 0);
        testing::assert_view(&views, "signal_anomalies", anomalies, 0);
        let rows = testing::rows(&views, "signal_anomalies");
        assert_eq!(rows.len(), 2, "{rows:?}");
        for r in &rows {
            assert_eq!(r.cell(1), Value::text("temperature"));
            assert_eq!(r.cell(3), Value::Float(OrdF64(4.9)));
            // Hourly means of exactly 4.0: the deviation is the floor, 0.2 °C.
            assert_eq!(r.cell(5), Value::Float(OrdF64(0.2)));
            assert!(matches!(r.cell(6), Value::Float(z) if z.0 > 4.0), "{r:?}");
        }
        let windows = testing::rows(&views, "anomaly_windows");
        assert!(windows.iter().all(|w| w.cell(11) == Value::text("normal")));
        let health = testing::rows(&views, "health");
        assert!(
            crate::health::reasons(&health[0])
                .contains(&"temperature unusual for this machine (2 h)".to_owned()),
            "{health:?}"
        );
    }
}

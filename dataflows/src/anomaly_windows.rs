//! `anomaly_windows`: 5-minute tumbling windows per machine, on event time.
//!
//! ```sql
//! SELECT machine_id, window_start(timestamp, 5 min) AS window_start,
//!        count(heartbeat) AS heartbeats, max(temperature), avg(temperature),
//!        count(door opened) AS door_opens,               -- heartbeat doorStatus=open or a door event
//!        count(card sale) + count(card error) AS card_attempts, count(card error) AS card_errors,
//!        count(jam or dispense error) AS motor_faults, max(motor_current), min(network_signal),
//!        classify(...) AS temperature_status, ..., worst(...) AS status
//! FROM events GROUP BY 1, 2
//! ```
//! Thresholds (DESIGN.md): temperature normal 2–5 °C, warning 5–8 (or below 2), critical > 8;
//! door opens 0 / 1–3 / > 3; card-reader error rate < 1 % / 1–5 % / > 5 %; motor current up to
//! 1.2 A / 1.2–1.8 / > 1.8; network signal > −75 dBm / −75 to −90 / < −90.
//!
//! A late event corrects its own window (the old row is retracted, the new one published) for
//! `window_retention_ms` after the window closed; then the window is retracted and later events
//! for it are counted as too late. Additive measures ride in the diff; extremes are kept as
//! distinct readings with counts, so a window's state grows with the number of *distinct*
//! readings, not with the number of heartbeats.

use differential_dataflow::VecCollection;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};
use vendflow_protocol::{DoorStatus, ErrorCode, Event, EventKind, MachineId, Milli, Timestamp};

use crate::config::Config;
use crate::operators::{Temporal, Time, as_time, count_records};
use crate::row::{ColumnType::*, OrdF64, Row, Value, col, null};
use crate::sales::SaleLine;
use crate::views::ViewDef;

pub const WINDOWS: ViewDef = ViewDef {
    name: "anomaly_windows",
    description: "5-minute sensor windows per machine, each measure classified normal / warning / critical",
    columns: &[
        col("machine_id", Text),
        col("window_start", Time),
        col("heartbeats", Int),
        null("max_temperature", Reading),
        null("avg_temperature", Float),
        col("door_opens", Int),
        col("card_attempts", Int),
        col("card_errors", Int),
        col("motor_faults", Int),
        null("max_motor_current", Reading),
        null("min_network_signal", Reading),
        col("temperature_status", Text),
        col("door_status", Text),
        col("card_status", Text),
        col("motor_status", Text),
        col("network_status", Text),
        col("status", Text),
    ],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    Normal,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

pub fn classify_temperature(max: Option<Milli>) -> Level {
    match max.map(|m| m.0) {
        Some(t) if t > 8_000 => Level::Critical,
        Some(t) if !(2_000..=5_000).contains(&t) => Level::Warning,
        _ => Level::Normal,
    }
}

pub fn classify_door(opens: i64) -> Level {
    match opens {
        0 => Level::Normal,
        1..=3 => Level::Warning,
        _ => Level::Critical,
    }
}

pub fn classify_card(attempts: i64, errors: i64) -> Level {
    // Compare errors/attempts with 1 % and 5 % in integers.
    if attempts <= 0 || errors * 100 < attempts {
        Level::Normal
    } else if errors * 100 <= attempts * 5 {
        Level::Warning
    } else {
        Level::Critical
    }
}

pub fn classify_motor(max: Option<Milli>, faults: i64) -> Level {
    match max.map(|m| m.0) {
        Some(c) if c > 1_800 => Level::Critical,
        _ if faults > 0 => Level::Warning,
        Some(c) if c > 1_200 => Level::Warning,
        _ => Level::Normal,
    }
}

pub fn classify_network(min: Option<Milli>) -> Level {
    match min.map(|m| m.0) {
        Some(s) if s < -90_000 => Level::Critical,
        Some(s) if s <= -75_000 => Level::Warning,
        _ => Level::Normal,
    }
}

/// One distinct reading kept per window, for the extremes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Probe {
    Count,
    Temperature(Milli),
    MotorCurrent(Milli),
    NetworkSignal(Milli),
}

/// The additive part of a window, carried in the diff field.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Agg {
    /// How many probe records this is (keeps every record non-zero while it exists).
    pub records: i64,
    pub heartbeats: i64,
    pub temperature_sum: i64,
    pub temperature_readings: i64,
    pub door_opens: i64,
    pub card_attempts: i64,
    pub card_errors: i64,
    pub motor_faults: i64,
}

impl Agg {
    fn one() -> Agg {
        Agg {
            records: 1,
            ..Agg::default()
        }
    }
}

impl IsZero for Agg {
    fn is_zero(&self) -> bool {
        *self == Agg::default()
    }
}
impl Semigroup for Agg {
    fn plus_equals(&mut self, o: &Self) {
        self.records += o.records;
        self.heartbeats += o.heartbeats;
        self.temperature_sum += o.temperature_sum;
        self.temperature_readings += o.temperature_readings;
        self.door_opens += o.door_opens;
        self.card_attempts += o.card_attempts;
        self.card_errors += o.card_errors;
        self.motor_faults += o.motor_faults;
    }
}
impl Monoid for Agg {
    fn zero() -> Self {
        Agg::default()
    }
}
impl Abelian for Agg {
    fn negate(&mut self) {
        *self = self.multiply(&-1);
    }
}
impl Multiply<isize> for Agg {
    type Output = Agg;
    fn multiply(self, rhs: &isize) -> Agg {
        let k = *rhs as i64;
        Agg {
            records: self.records * k,
            heartbeats: self.heartbeats * k,
            temperature_sum: self.temperature_sum * k,
            temperature_readings: self.temperature_readings * k,
            door_opens: self.door_opens * k,
            card_attempts: self.card_attempts * k,
            card_errors: self.card_errors * k,
            motor_faults: self.motor_faults * k,
        }
    }
}

/// A finished window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    pub machine_id: MachineId,
    pub start: Timestamp,
    pub totals: Agg,
    pub max_temperature: Option<Milli>,
    pub max_motor_current: Option<Milli>,
    pub min_network_signal: Option<Milli>,
}

impl Window {
    pub fn levels(&self) -> [Level; 5] {
        [
            classify_temperature(self.max_temperature),
            classify_door(self.totals.door_opens),
            classify_card(self.totals.card_attempts, self.totals.card_errors),
            classify_motor(self.max_motor_current, self.totals.motor_faults),
            classify_network(self.min_network_signal),
        ]
    }

    pub fn status(&self) -> Level {
        self.levels().into_iter().max().unwrap_or(Level::Normal)
    }

    pub fn avg_temperature(&self) -> Option<f64> {
        let t = &self.totals;
        (t.temperature_readings > 0)
            .then(|| t.temperature_sum as f64 / t.temperature_readings as f64 / 1000.0)
    }

    /// Folds one window's probes (each with its accumulated diff) into a window.
    pub fn from_probes<'a>(
        machine_id: MachineId,
        start: Timestamp,
        probes: impl Iterator<Item = (&'a Probe, Agg)>,
    ) -> Window {
        let mut w = Window {
            machine_id,
            start,
            totals: Agg::default(),
            max_temperature: None,
            max_motor_current: None,
            min_network_signal: None,
        };
        for (probe, agg) in probes {
            w.totals.plus_equals(&agg);
            if agg.records <= 0 {
                continue;
            }
            match *probe {
                Probe::Count => {}
                Probe::Temperature(t) => w.max_temperature = w.max_temperature.max(Some(t)),
                Probe::MotorCurrent(c) => w.max_motor_current = w.max_motor_current.max(Some(c)),
                Probe::NetworkSignal(s) => {
                    w.min_network_signal = Some(w.min_network_signal.map_or(s, |m| m.min(s)))
                }
            }
        }
        w
    }
}

pub type WindowKey = (MachineId, Timestamp);

/// The probes one event contributes to its window.
pub fn probes(event: &Event, width: i64) -> Vec<(WindowKey, Probe, Agg)> {
    let key = (
        event.machine_id.clone(),
        event.timestamp.window_start(width),
    );
    let mut out = Vec::new();
    match &event.kind {
        EventKind::Heartbeat(h) => {
            let mut agg = Agg {
                heartbeats: 1,
                ..Agg::one()
            };
            if h.door_status == Some(DoorStatus::Open) {
                agg.door_opens = 1;
            }
            match h.temperature {
                Some(t) => {
                    agg.temperature_sum = t.0;
                    agg.temperature_readings = 1;
                    out.push((key.clone(), Probe::Temperature(t), agg));
                }
                None => out.push((key.clone(), Probe::Count, agg)),
            }
            if let Some(c) = h.motor_current {
                out.push((key.clone(), Probe::MotorCurrent(c), Agg::one()));
            }
            if let Some(s) = h.network_signal {
                out.push((key, Probe::NetworkSignal(s), Agg::one()));
            }
        }
        EventKind::Door(DoorStatus::Open) => out.push((
            key,
            Probe::Count,
            Agg {
                door_opens: 1,
                ..Agg::one()
            },
        )),
        EventKind::Error(e) => match e.code {
            ErrorCode::CardReadFailure => out.push((
                key,
                Probe::Count,
                Agg {
                    card_attempts: 1,
                    card_errors: 1,
                    ..Agg::one()
                },
            )),
            ErrorCode::MotorJam | ErrorCode::DispenseFailure => out.push((
                key,
                Probe::Count,
                Agg {
                    motor_faults: 1,
                    ..Agg::one()
                },
            )),
            _ => out.push((key, Probe::Count, Agg::one())),
        },
        _ => {}
    }
    out
}

fn card_probe(line: &SaleLine, width: i64) -> Option<(WindowKey, Probe, Agg)> {
    line.card.then(|| {
        let key = (line.machine_id.clone(), line.timestamp.window_start(width));
        (
            key,
            Probe::Count,
            Agg {
                card_attempts: 1,
                ..Agg::one()
            },
        )
    })
}

pub struct Windows<'s> {
    pub windows: VecCollection<'s, Time, Window>,
    pub too_late: VecCollection<'s, Time, (WindowKey, Probe)>,
}

pub fn render<'s>(
    events: VecCollection<'s, Time, Event>,
    accepted: VecCollection<'s, Time, SaleLine>,
    config: &Config,
) -> Windows<'s> {
    let width = config.window_ms;
    let retention = config.window_retention_ms;
    let probes = events
        .explode(move |e| probes(&e, width).into_iter().map(|(k, p, a)| ((k, p), a)))
        .concat(accepted.explode(move |l| card_probe(&l, width).map(|(k, p, a)| ((k, p), a))));
    let (live, too_late) = probes.retain_between(move |((_, start), _): &(WindowKey, Probe)| {
        (0, as_time(start.0 + width + retention))
    });
    let windows = live
        .reduce_named(
            "Windows: reduce",
            |(m, start): &WindowKey, input, output| {
                let w = Window::from_probes(m.clone(), *start, input.iter().map(|(p, a)| (*p, *a)));
                output.push((w, 1isize));
            },
        )
        .map(|(_k, w)| w);
    // Count late probes by record, not by their measures.
    let too_late = count_records(too_late, |agg: &Agg| agg.records as isize);
    Windows { windows, too_late }
}

pub fn row(w: Window) -> Row {
    let levels = w.levels();
    let t = w.totals;
    let mut row = vec![
        Value::text(w.machine_id.as_str()),
        Value::Time(w.start),
        Value::Int(t.heartbeats),
        Value::opt(w.max_temperature, Value::Reading),
        Value::opt(w.avg_temperature(), |f| Value::Float(OrdF64(f))),
        Value::Int(t.door_opens),
        Value::Int(t.card_attempts),
        Value::Int(t.card_errors),
        Value::Int(t.motor_faults),
        Value::opt(w.max_motor_current, Value::Reading),
        Value::opt(w.min_network_signal, Value::Reading),
    ];
    row.extend(levels.iter().map(|l| Value::text(l.as_str())));
    row.push(Value::text(w.status().as_str()));
    row
}

/// Batch definition of the windows, for oracle tests and the golden scenario.
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Window> {
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let now = scenario.now();
    let width = config.window_ms;
    let alive = |t: Time, start: Timestamp| {
        let until = as_time(start.0 + width + config.window_retention_ms);
        until > t && until > now
    };
    let mut per_window: BTreeMap<WindowKey, Vec<(Probe, Agg)>> = BTreeMap::new();
    for (t, e) in &scenario.deliveries {
        for (k, p, a) in probes(e, width) {
            if alive(*t, k.1) {
                per_window.entry(k).or_default().push((p, a));
            }
        }
    }
    for (t, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        if let Some((k, p, a)) = card_probe(&l, width)
            && alive(t, k.1)
        {
            per_window.entry(k).or_default().push((p, a));
        }
    }
    per_window
        .into_iter()
        .map(|((m, start), probes)| {
            Window::from_probes(m, start, probes.iter().map(|(p, a)| (p, *a)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Scenario};

    #[test]
    fn windows_match_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let expected = oracle(scenario).into_iter().map(row).collect();
            testing::assert_view(views, "anomaly_windows", expected, seed);
        }
    }

    #[test]
    fn thresholds_follow_the_design() {
        assert_eq!(classify_temperature(Some(Milli(5_000))), Level::Normal);
        assert_eq!(classify_temperature(Some(Milli(5_100))), Level::Warning);
        assert_eq!(classify_temperature(Some(Milli(8_100))), Level::Critical);
        assert_eq!(classify_temperature(Some(Milli(1_000))), Level::Warning);
        assert_eq!(classify_door(3), Level::Warning);
        assert_eq!(classify_door(4), Level::Critical);
        assert_eq!(classify_card(200, 1), Level::Normal);
        assert_eq!(classify_card(100, 5), Level::Warning);
        assert_eq!(classify_card(100, 6), Level::Critical);
        assert_eq!(classify_motor(Some(Milli(1_900)), 0), Level::Critical);
        assert_eq!(classify_network(Some(Milli(-91_000))), Level::Critical);
        assert_eq!(classify_network(Some(Milli(-80_000))), Level::Warning);
    }

    #[test]
    fn late_heartbeat_corrects_its_own_window() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        scenario.deliver(t, testing::heartbeat("m1", t, 4_000));
        scenario.deliver(t + 600_000, testing::heartbeat("m1", t + 600_000, 4_000));
        // Arrives 10 minutes late for the first window, hotter than anything seen there.
        scenario.deliver(t + 601_000, testing::heartbeat("m1", t + 1_000, 9_000));
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "anomaly_windows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][3], Value::Reading(Milli(9_000)));
        assert_eq!(rows[0][16], Value::text("critical"));
        assert_eq!(rows[1][16], Value::text("normal"));
    }
}

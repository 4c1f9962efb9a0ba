//! The backtest: day by day, each method forecasts every slot's units from the days before, and
//! is scored against what the slot sold.
//!
//! - A day is scored from `warmup_days` after the history's first day (every method then has
//!   its whole window), for each machine seen before it and each of its slots that had sold
//!   before it (a slot not yet stocked is not forecast; a stocked slot that sells nothing on
//!   a day is scored with 0).
//! - **WAPE**: Σ |forecast − actual| / Σ actual, over every slot-day (and per slot).
//! - **MAPE**: the mean of |forecast − actual| / actual over the slot-days that sold (a day that
//!   sold nothing has no percentage error; WAPE counts it).
//! - **Bias**: Σ (forecast − actual) / Σ actual.

use std::collections::BTreeMap;

use serde::Serialize;
use vendflow_protocol::registry::LocationType;

use crate::history::{History, ReadStats};
use crate::model::{
    INDEX_DAYS, Inputs, LONG_DAYS, Method, WINDOW_DAYS, demand, dispersion, weekday_index,
};

#[derive(Clone, Debug)]
pub struct Options {
    /// Days from the history's start before the first scored day.
    pub warmup_days: usize,
    pub methods: Vec<Method>,
    /// Holidays, as days since the epoch (UTC): the holidays step runs only with some.
    pub holidays: std::collections::BTreeSet<i64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            warmup_days: crate::model::LONG_DAYS,
            methods: Method::ALL.to_vec(),
            holidays: Default::default(),
        }
    }
}

/// Error sums of one method over a set of slot-days.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    abs_error: f64,
    actual: f64,
    forecast: f64,
    ape: f64,
    ape_days: u64,
}

impl Sums {
    fn add(&mut self, forecast: f64, actual: f64) {
        self.abs_error += (forecast - actual).abs();
        self.actual += actual;
        self.forecast += forecast;
        if actual > 0.0 {
            self.ape += (forecast - actual).abs() / actual;
            self.ape_days += 1;
        }
    }

    fn wape(&self) -> Option<f64> {
        (self.actual > 0.0).then(|| self.abs_error / self.actual)
    }

    fn mape(&self) -> Option<f64> {
        (self.ape_days > 0).then(|| self.ape / self.ape_days as f64)
    }
}

/// One method's score.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub method: Method,
    pub name: &'static str,
    pub wape: Option<f64>,
    pub mape: Option<f64>,
    pub bias: Option<f64>,
    /// The median of the slots' own WAPE (slots that sold in the scored days).
    pub median_slot_wape: Option<f64>,
    pub median_slot_mape: Option<f64>,
    pub forecast_units: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LocationScores {
    pub location_type: String,
    pub machines: usize,
    pub scores: Vec<Score>,
}

/// One slot's score by each method (in the order of [`Report::scores`]).
#[derive(Clone, Debug, Serialize)]
pub struct SlotScore {
    pub machine_id: String,
    pub slot_number: u32,
    pub location_type: Option<String>,
    pub units: f64,
    pub wape: Vec<Option<f64>>,
    pub mape: Vec<Option<f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub first_scored_day: String,
    pub last_day: String,
    pub scored_days: usize,
    pub machines: usize,
    pub slots: usize,
    pub slot_days: u64,
    pub units: f64,
    pub scores: Vec<Score>,
    pub by_location: Vec<LocationScores>,
    #[serde(skip)]
    pub per_slot: Vec<SlotScore>,
    pub read: ReadStats,
}

fn date(epoch_day: i64) -> String {
    vendflow_protocol::Timestamp(epoch_day * vendflow_protocol::units::MS_PER_DAY)
        .to_rfc3339()
        .chars()
        .take(10)
        .collect()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The weekday index of each location type over the window before each day: every machine of
/// the type pooled (its units and observed days).
fn location_indexes(history: &History, holidays: &[bool]) -> BTreeMap<LocationType, Vec<[f64; 7]>> {
    let w0 = history.weekday_of_0();
    let mut out = BTreeMap::new();
    let mut types: Vec<LocationType> = history
        .machines
        .iter()
        .filter_map(|m| m.location_type)
        .collect();
    types.sort();
    types.dedup();
    for t in types {
        // Units and observed machine-days per day, then a sliding window over them.
        let mut units = vec![0i64; history.days];
        let mut machines = vec![0i64; history.days];
        for m in history
            .machines
            .iter()
            .filter(|m| m.location_type == Some(t))
        {
            for d in m.first_day..history.days {
                units[d] += i64::from(m.units[d]);
                machines[d] += 1;
            }
        }
        let indexes = (0..history.days)
            .map(|d| {
                let (mut u, mut n) = ([0i64; 7], [0i64; 7]);
                for day in d.saturating_sub(LONG_DAYS)..d {
                    if holidays.get(day).copied().unwrap_or(false) {
                        continue;
                    }
                    u[(w0 + day) % 7] += units[day];
                    n[(w0 + day) % 7] += machines[day];
                }
                weekday_index(&u, &n)
            })
            .collect();
        out.insert(t, indexes);
    }
    out
}

/// A holiday's effect learned so far, per location type (None: machines without one) and day
/// `d`: Σ units on the holidays before `d` / Σ what the same machines sold on average on the
/// same weekday in the 4 weeks before each (holidays left out), leaned toward 1 by
/// [`HOLIDAY_PRIOR_UNITS`]. Pooled over the type: one machine sees a handful of holidays a year.
fn holiday_factors(
    history: &History,
    holidays: &[bool],
) -> BTreeMap<Option<LocationType>, Vec<f64>> {
    let mut sums: BTreeMap<Option<LocationType>, Vec<(f64, f64)>> = BTreeMap::new();
    for m in &history.machines {
        let per_day = sums
            .entry(m.location_type)
            .or_insert_with(|| vec![(0.0, 0.0); history.days]);
        for h in (0..history.days).filter(|h| holidays.get(*h).copied().unwrap_or(false)) {
            let before: Vec<f64> = (1..=4)
                .filter_map(|k| h.checked_sub(7 * k))
                .filter(|day| *day >= m.first_day && !holidays.get(*day).copied().unwrap_or(false))
                .map(|day| f64::from(m.units[day]))
                .collect();
            if h < m.first_day || before.is_empty() {
                continue;
            }
            per_day[h].0 += f64::from(m.units[h]);
            per_day[h].1 += before.iter().sum::<f64>() / before.len() as f64;
        }
    }
    sums.into_iter()
        .map(|(t, per_day)| {
            let (mut actual, mut expected) = (0.0, 0.0);
            let factors = per_day
                .iter()
                .map(|(a, e)| {
                    // The factor for day d is what the holidays before d showed.
                    let f = (actual + HOLIDAY_PRIOR_UNITS) / (expected + HOLIDAY_PRIOR_UNITS);
                    actual += a;
                    expected += e;
                    f
                })
                .collect();
            (t, factors)
        })
        .collect()
}

/// Units of evidence a holiday factor needs before it moves far from 1.
pub const HOLIDAY_PRIOR_UNITS: f64 = 50.0;

/// The engine's forecasts ([`demand`]) of each of `machine`'s slots (in its order) on each
/// day from `first`: the model sees the machine's days before the day (from its first) and
/// the slots that had sold before it, as the engine sees the days its windows hold.
fn engine_forecasts(
    history: &History,
    machine: &crate::history::MachineSeries,
    first: usize,
    holidays: &[bool],
) -> Vec<Vec<f64>> {
    let epoch = |day: usize| history.start_day + day as i64;
    let holiday = |day: i64| {
        usize::try_from(day - history.start_day)
            .ok()
            .and_then(|d| holidays.get(d).copied())
            .unwrap_or(false)
    };
    let mut out = vec![vec![0.0; history.days]; machine.slots.len()];
    for d in first.max(machine.first_day + 1)..history.days {
        let from = d.saturating_sub(INDEX_DAYS as usize).max(machine.first_day);
        let days: Vec<(i64, i64)> = (from..d)
            .map(|day| (epoch(day), i64::from(machine.units[day])))
            .collect();
        let from = d.saturating_sub(WINDOW_DAYS).max(machine.first_day);
        let (mut at, mut sold): (Vec<usize>, Vec<Vec<(i64, i64)>>) = (Vec::new(), Vec::new());
        for (i, slot) in machine.slots.iter().enumerate() {
            if slot.first_sale < d {
                at.push(i);
                sold.push(
                    (from..d)
                        .filter(|day| slot.units[*day] > 0)
                        .map(|day| (epoch(day), i64::from(slot.units[day])))
                        .collect(),
                );
            }
        }
        let slots: Vec<&[(i64, i64)]> = sold.iter().map(Vec::as_slice).collect();
        let model = demand(
            epoch(d),
            &days,
            &slots,
            WINDOW_DAYS as i64,
            INDEX_DAYS,
            holiday,
        );
        for (k, i) in at.iter().enumerate() {
            if let Some(f) = out.get_mut(*i).and_then(|slot| slot.get_mut(d)) {
                *f = model.point(k, epoch(d), holiday(epoch(d)));
            }
        }
    }
    out
}

/// Scores every method on `history`.
pub fn run(history: &History, options: &Options) -> Report {
    let methods: Vec<Method> = options
        .methods
        .iter()
        .copied()
        .filter(|m| {
            (*m != Method::LocationType
                || history.machines.iter().any(|m| m.location_type.is_some()))
                && (*m != Method::Holidays || !options.holidays.is_empty())
        })
        .collect();
    let w0 = history.weekday_of_0();
    let holidays: Vec<bool> = (0..history.days)
        .map(|d| options.holidays.contains(&(history.start_day + d as i64)))
        .collect();
    let locations = location_indexes(history, &[]);
    let (workdays, factors) = if methods.contains(&Method::Holidays) {
        (
            location_indexes(history, &holidays),
            holiday_factors(history, &holidays),
        )
    } else {
        (BTreeMap::new(), BTreeMap::new())
    };
    let mut total = vec![Sums::default(); methods.len()];
    let mut by_location: BTreeMap<String, (usize, Vec<Sums>)> = BTreeMap::new();
    let mut per_slot = Vec::new();
    let mut slot_days = 0u64;
    let mut slots = 0;
    let first = options.warmup_days.min(history.days);
    for machine in &history.machines {
        let kind = machine.location_type.map(|t| t.as_str().to_owned());
        let group = &mut by_location
            .entry(kind.clone().unwrap_or_else(|| "unknown".into()))
            .or_insert_with(|| (0, vec![Sums::default(); methods.len()]));
        group.0 += 1;
        let dispersions: Vec<f64> =
            if methods.contains(&Method::Median) || methods.contains(&Method::Holidays) {
                (0..history.days)
                    .map(|d| {
                        if d < first {
                            return 1.0;
                        }
                        dispersion(
                            machine
                                .slots
                                .iter()
                                .filter(|s| s.first_sale < d)
                                .map(|s| s.units.as_slice()),
                            &machine.units,
                            machine.first_day,
                            w0,
                            d,
                        )
                    })
                    .collect()
            } else {
                vec![1.0; history.days]
            };
        let engine = if methods.contains(&Method::Engine) {
            engine_forecasts(history, machine, first, &holidays)
        } else {
            Vec::new()
        };
        for (slot_at, slot) in machine.slots.iter().enumerate() {
            let mut own = vec![Sums::default(); methods.len()];
            let start = first.max(slot.first_sale + 1).max(machine.first_day + 1);
            for (d, dispersion) in dispersions.iter().enumerate().skip(start) {
                let inputs = Inputs {
                    slot: &slot.units,
                    machine: &machine.units,
                    first_day: machine.first_day,
                    weekday_of_0: w0,
                    location_index: machine
                        .location_type
                        .and_then(|t| locations.get(&t))
                        .and_then(|i| i.get(d).copied()),
                    location_workdays: machine
                        .location_type
                        .and_then(|t| workdays.get(&t))
                        .and_then(|i| i.get(d).copied()),
                    dispersion: *dispersion,
                    holidays: &holidays,
                    holiday_factor: factors
                        .get(&machine.location_type)
                        .and_then(|f| f.get(d).copied())
                        .unwrap_or(1.0),
                    engine: engine
                        .get(slot_at)
                        .and_then(|f| f.get(d).copied())
                        .unwrap_or(0.0),
                };
                let actual = f64::from(slot.units[d]);
                for (i, method) in methods.iter().enumerate() {
                    let forecast = inputs.forecast(*method, d);
                    own[i].add(forecast, actual);
                    total[i].add(forecast, actual);
                    group.1[i].add(forecast, actual);
                }
                slot_days += 1;
            }
            if start < history.days {
                slots += 1;
                per_slot.push((
                    SlotScore {
                        machine_id: machine.machine_id.as_str().to_owned(),
                        slot_number: slot.slot_number,
                        location_type: kind.clone(),
                        units: own.first().map_or(0.0, |s| s.actual),
                        wape: own.iter().map(Sums::wape).collect(),
                        mape: own.iter().map(Sums::mape).collect(),
                    },
                    own,
                ));
            }
        }
    }
    let scores = |sums: &[Sums], slots: Option<&[(SlotScore, Vec<Sums>)]>| -> Vec<Score> {
        methods
            .iter()
            .enumerate()
            .map(|(i, m)| Score {
                method: *m,
                name: m.name(),
                wape: sums[i].wape(),
                mape: sums[i].mape(),
                bias: (sums[i].actual > 0.0)
                    .then(|| (sums[i].forecast - sums[i].actual) / sums[i].actual),
                median_slot_wape: slots
                    .and_then(|s| median(s.iter().filter_map(|(_, o)| o[i].wape()).collect())),
                median_slot_mape: slots
                    .and_then(|s| median(s.iter().filter_map(|(_, o)| o[i].mape()).collect())),
                forecast_units: sums[i].forecast,
            })
            .collect()
    };
    let overall = scores(&total, Some(&per_slot));
    Report {
        first_scored_day: date(history.start_day + first as i64),
        last_day: date(history.start_day + history.days as i64 - 1),
        scored_days: history.days.saturating_sub(first),
        machines: history.machines.len(),
        slots,
        slot_days,
        units: total.first().map_or(0.0, |s| s.actual),
        scores: overall,
        by_location: by_location
            .into_iter()
            .map(|(location_type, (machines, sums))| LocationScores {
                location_type,
                machines,
                scores: scores(&sums, None),
            })
            .collect(),
        per_slot: per_slot.into_iter().map(|(s, _)| s).collect(),
        read: history.stats.clone(),
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{:.1} %", v * 100.0))
}

impl Report {
    /// The comparison as a text table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let naive = self
            .scores
            .iter()
            .find(|s| s.method == Method::Naive)
            .and_then(|s| s.wape);
        let _ = writeln!(
            out,
            "Next-day demand per slot, {} machines, {} slots, {} … {} ({} days, {} slot-days, {} units sold)\n",
            self.machines,
            self.slots,
            self.first_scored_day,
            self.last_day,
            self.scored_days,
            self.slot_days,
            self.units
        );
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>8} {:>8} {:>12} {:>12} {:>14}",
            "method", "WAPE", "MAPE", "bias", "slot WAPE", "slot MAPE", "WAPE vs naive"
        );
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>8} {:>8} {:>12} {:>12} {:>14}",
            "", "", "", "", "(median)", "(median)", ""
        );
        for s in &self.scores {
            let vs = match (s.wape, naive) {
                (Some(w), Some(n)) if n > 0.0 && s.method != Method::Naive => {
                    format!("{:+.1} %", (w / n - 1.0) * 100.0)
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                out,
                "{:<34} {:>8} {:>8} {:>8} {:>12} {:>12} {:>14}",
                s.name,
                percent(s.wape),
                percent(s.mape),
                s.bias
                    .map_or("—".into(), |b| format!("{:+.1} %", b * 100.0)),
                percent(s.median_slot_wape),
                percent(s.median_slot_mape),
                vs
            );
        }
        let _ = writeln!(out, "\nWAPE by location type:");
        let _ = write!(out, "{:<12} {:>8}", "type", "machines");
        for s in &self.scores {
            let _ = write!(out, " {:>12}", short(s.method));
        }
        let _ = writeln!(out);
        for l in &self.by_location {
            let _ = write!(out, "{:<12} {:>8}", l.location_type, l.machines);
            for s in &l.scores {
                let _ = write!(out, " {:>12}", percent(s.wape));
            }
            let _ = writeln!(out);
        }
        let r = &self.read;
        let _ = writeln!(
            out,
            "\nRead {} lines: {} events, {} sale lines ({} delivered again, counted once), {} errors",
            r.lines, r.events, r.sale_lines, r.duplicates, r.errors
        );
        for e in &r.first_errors {
            let _ = writeln!(out, "  {e}");
        }
        out
    }

    /// Per slot, as CSV: machine, slot, location type, units, then each method's WAPE and MAPE.
    pub fn write_per_slot(&self, out: impl std::io::Write) -> Result<(), csv::Error> {
        let mut w = csv::Writer::from_writer(out);
        let mut header = vec![
            "machine_id".to_owned(),
            "slot_number".into(),
            "location_type".into(),
            "units".into(),
        ];
        for s in &self.scores {
            header.push(format!("wape_{}", serde_method(s.method)));
            header.push(format!("mape_{}", serde_method(s.method)));
        }
        w.write_record(&header)?;
        let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
        for s in &self.per_slot {
            let mut row = vec![
                s.machine_id.clone(),
                s.slot_number.to_string(),
                s.location_type.clone().unwrap_or_default(),
                s.units.to_string(),
            ];
            for (wape, mape) in s.wape.iter().zip(&s.mape) {
                row.push(cell(*wape));
                row.push(cell(*mape));
            }
            w.write_record(&row)?;
        }
        w.flush()?;
        Ok(())
    }
}

fn short(m: Method) -> &'static str {
    match m {
        Method::Naive => "naive",
        Method::SlotWeekday => "slot wkday",
        Method::MachineWeekday => "machine wkday",
        Method::LocationType => "+location",
        Method::Recency => "+recency",
        Method::Trend => "+trend",
        Method::Median => "median",
        Method::Holidays => "+holidays",
        Method::Engine => "engine",
    }
}

fn serde_method(m: Method) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{MachineSeries, SlotSeries};
    use vendflow_protocol::MachineId;

    /// Two office machines of one slot over 20 weeks from a Monday: 10 units a weekday, 1 a
    /// weekend day, and 1 on the holidays, every fourth Monday from week 3.
    fn offices() -> (History, std::collections::BTreeSet<i64>) {
        // 2024-01-01 is a Monday.
        let start_day = vendflow_protocol::Timestamp::parse_date("2024-01-01")
            .map(|t| t.day())
            .unwrap_or_else(|e| panic!("{e}"));
        let days = 140;
        let holidays: Vec<usize> = (3..20).step_by(4).map(|week| week * 7).collect();
        let units: Vec<u32> = (0..days)
            .map(|d| match d % 7 {
                _ if holidays.contains(&d) => 1,
                5 | 6 => 1,
                _ => 10,
            })
            .collect();
        let machine = |id: &str| MachineSeries {
            machine_id: MachineId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            location_type: Some(LocationType::Office),
            first_day: 0,
            units: units.clone(),
            slots: vec![SlotSeries {
                slot_number: 101,
                first_sale: 0,
                units: units.clone(),
            }],
        };
        let history = History {
            start_day,
            days,
            machines: vec![machine("m1"), machine("m2")],
            stats: Default::default(),
        };
        let calendar = holidays.iter().map(|d| start_day + *d as i64).collect();
        (history, calendar)
    }

    #[test]
    fn holidays_learn_what_they_do_to_a_location_type_from_the_ones_before() {
        let (history, calendar) = offices();
        let marks: Vec<bool> = (0..history.days)
            .map(|d| calendar.contains(&(history.start_day + d as i64)))
            .collect();
        let factors = holiday_factors(&history, &marks);
        let office = &factors[&Some(LocationType::Office)];
        // Nothing known before the first holiday (day 21); after it, 2 units where 20 were
        // expected, leaned toward 1 by the prior.
        assert_eq!(office[21], 1.0);
        let after_one = (2.0 + HOLIDAY_PRIOR_UNITS) / (20.0 + HOLIDAY_PRIOR_UNITS);
        assert!((office[22] - after_one).abs() < 1e-12, "{}", office[22]);
        // It keeps falling as holidays go by.
        assert!(office[139] < office[60] && office[60] < office[22]);
    }

    #[test]
    fn the_holidays_step_forecasts_a_holiday_low_and_the_monday_after_it_as_a_monday() {
        let (history, calendar) = offices();
        let run = |holidays| {
            run(
                &history,
                &Options {
                    warmup_days: 56,
                    methods: vec![Method::Median, Method::Holidays, Method::Engine],
                    holidays,
                },
            )
        };
        let without = run(Default::default());
        assert_eq!(without.scores.len(), 2, "no calendar, no holidays step");
        let with = run(calendar);
        let wape = |m: Method| {
            with.scores
                .iter()
                .find(|s| s.method == m)
                .and_then(|s| s.wape)
                .unwrap_or(f64::NAN)
        };
        assert!(
            wape(Method::Holidays) < 0.6 * wape(Method::Median),
            "holidays {} against median {}",
            wape(Method::Holidays),
            wape(Method::Median)
        );
        // The engine learns the holidays from each machine's own.
        assert!(
            wape(Method::Engine) < 0.6 * wape(Method::Median),
            "engine {} against median {}",
            wape(Method::Engine),
            wape(Method::Median)
        );
    }
}

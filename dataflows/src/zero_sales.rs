//! `zero_sales`: machines that usually sell and have sold nothing for longer than they ever do.
//!
//! A stuck door, a jammed spiral or a dead payment reader shows as silence: no error, no sale.
//! Each machine learns its sales per weekday and hour of day over the trailing `demand_days`
//! (28) days of its own sales; from its newest sale on, the units it would normally have sold
//! are added up hour by hour. When they reach `zero_sales_expected_units` (5: "several") on a
//! weekday when it usually sells at least `zero_sales_min_daily_units` (10) a day, and still no
//! sale has come, the machine is listed, until its next sale.
//!
//! ```sql
//! WITH profile AS (SELECT machine_id, dow(timestamp) AS dow, hour(timestamp) AS hour,
//!                         sum(quantity) / weeks_observed(dow) AS units  -- an hour's usual units
//!                  FROM accepted_sale_lines
//!                  WHERE day(timestamp) > day(last_sale) - 28 GROUP BY 1, 2, 3)
//! SELECT machine_id, last_sale, alarm_at, usual_daily_units, expected_units
//! FROM machines
//! WHERE alarm_at <= now()  -- the first hour boundary where sum(profile units since
//!                          -- last_sale) >= 5 on a day that usually sells >= 10
//! ```
//! A late sale older than the newest one changes the profile, not the silence; a sale newer than
//! it ends the silence. The alarm time is found when a sale arrives (up to 7 days ahead) and the
//! machine wakes then: no clock needs to reach every machine every hour.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{MachineId, Timestamp};

use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Time, hash_of, insert_tight};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, OrdF64, Row, Value, col};
use crate::sales::SaleLine;

pub const ZERO_SALES: ViewDef = ViewDef {
    name: "zero_sales",
    description: "machines that usually sell (10 a day on the weekday) and have sold nothing since they would normally have sold 5 units",
    columns: &[
        col("machine_id", Text),
        col("last_sale", Time),
        col("alarm_at", Time),
        col("usual_daily_units", Float),
        col("expected_units", Float),
    ],
};

/// How far ahead of the newest sale a silence is looked for.
const LOOK_AHEAD_HOURS: i64 = 7 * 24;

/// A machine's units per hour of day, per day, over the trailing window, and its newest sale.
#[derive(Default, PartialEq, Serialize, Deserialize)]
pub struct Sales {
    /// (day, units per hour of day), in day order. A machine's hour holds at most 65,535 units
    /// (655 sale lines of the most one line may carry): 56 bytes a day, where 32-bit counts
    /// took 104, for 28 days of every machine.
    days: Vec<(i64, [u16; 24])>,
    last_sale: Timestamp,
    /// Whether the ingestion clock has passed the alarm time (as of the last input or wake-up).
    alarmed: bool,
    /// Whether the alarm is to be judged again at the end of this time's sales (set by the
    /// first of them): once per machine and time, not once per sale, since each judgement
    /// reads every hour of the trailing window. Never set between times (not checkpointed).
    #[serde(skip)]
    judging: bool,
}

/// A `zero_sales` row's values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Silence {
    pub machine_id: MachineId,
    pub last_sale: Timestamp,
    pub alarm_at: Timestamp,
    pub usual_daily_units: OrdF64,
    pub expected_units: OrdF64,
}

fn weekday(day: i64) -> usize {
    usize::from(Timestamp(day * MS_PER_DAY).weekday())
}

impl Sales {
    fn add(&mut self, ts: Timestamp, units: i64, window_days: i64) {
        if ts > self.last_sale {
            self.last_sale = ts;
        }
        let newest = self.last_sale.day();
        let day = ts.day();
        if day > newest - window_days {
            let at = match self.days.binary_search_by_key(&day, |d| d.0) {
                Ok(at) => at,
                Err(at) => {
                    insert_tight(&mut self.days, at, (day, [0; 24]));
                    at
                }
            };
            let hour = usize::from(ts.hour()) % 24;
            let cell = &mut self.days[at].1[hour];
            *cell = u16::try_from((i64::from(*cell) + units).max(0)).unwrap_or(u16::MAX);
        }
        self.days.retain(|d| d.0 > newest - window_days);
    }

    /// Usual units per (weekday, hour): the units over the number of that weekday's days from
    /// the first day with a sale to the newest.
    fn profile(&self) -> [[f64; 24]; 7] {
        let mut units = [[0u64; 24]; 7];
        for (day, hours) in &self.days {
            for (h, u) in hours.iter().enumerate() {
                units[weekday(*day)][h] += u64::from(*u);
            }
        }
        let mut days_of = [0u64; 7];
        if let Some(first) = self.days.first().map(|d| d.0) {
            for day in first..=self.last_sale.day() {
                days_of[weekday(day)] += 1;
            }
        }
        let mut out = [[0.0; 24]; 7];
        for w in 0..7 {
            if days_of[w] > 0 {
                for h in 0..24 {
                    out[w][h] = units[w][h] as f64 / days_of[w] as f64;
                }
            }
        }
        out
    }

    /// When the silence since the newest sale becomes an alarm, with the usual daily units of
    /// that day and the units expected by then.
    fn alarm(&self, config: &Config) -> Option<(Timestamp, f64, f64)> {
        if self.days.is_empty() {
            return None;
        }
        let profile = self.profile();
        let usual: [f64; 7] = std::array::from_fn(|w| profile[w].iter().sum());
        // A machine that sells less than the minimum every weekday is never listed (most
        // machines of a short history, at the cost of a sum).
        if usual.iter().all(|u| *u < config.zero_sales_min_daily_units) {
            return None;
        }
        let mut expected = 0.0;
        let mut from = self.last_sale;
        for _ in 0..LOOK_AHEAD_HOURS {
            let hour_start = from.0 - from.0.rem_euclid(MS_PER_HOUR);
            let end = Timestamp(hour_start + MS_PER_HOUR);
            let w = usize::from(from.weekday());
            let share = (end.0 - from.0) as f64 / MS_PER_HOUR as f64;
            expected += profile[w][usize::from(from.hour()) % 24] * share;
            let usual = usual[w];
            if expected >= config.zero_sales_expected_units
                && usual >= config.zero_sales_min_daily_units
            {
                return Some((end, usual, expected));
            }
            from = end;
        }
        None
    }
}

pub fn render<'s>(
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    config: &Config,
) -> VecCollection<'s, Time, Silence> {
    let (on_apply, on_timer, on_output) = (config.clone(), config.clone(), config.clone());
    accepted
        .map(|l| (l.machine_id.clone(), (l.timestamp, i64::from(l.quantity))))
        .fold_by_key(
            "Zero sales",
            Published::Recomputed,
            hash_of::<MachineId>,
            move |_, sales: &mut Sales, (ts, units), diff, ctx| {
                sales.add(ts, units * diff as i64, on_apply.demand_days);
                sales.alarmed = false;
                if !sales.judging {
                    sales.judging = true;
                    // Now, after this time's records.
                    ctx.wake_at(ctx.now());
                }
            },
            // Judged after this time's sales: alarmed now, or woken again at the alarm time.
            // Woken at an alarm time: the alarm holds if the silence it was for still does.
            move |_, sales, ctx| {
                let judging = std::mem::take(&mut sales.judging);
                sales.alarmed = match sales.alarm(&on_timer) {
                    Some((at, _, _)) if at <= ctx.now() => true,
                    Some((at, _, _)) => {
                        if judging {
                            ctx.wake_at(at);
                        }
                        false
                    }
                    None => false,
                };
            },
            move |machine, sales, out| {
                if !sales.alarmed {
                    return;
                }
                if let Some((at, usual, expected)) = sales.alarm(&on_output) {
                    out.push(Silence {
                        machine_id: machine.clone(),
                        last_sale: sales.last_sale,
                        alarm_at: at,
                        usual_daily_units: OrdF64(usual),
                        expected_units: OrdF64(expected),
                    });
                }
            },
        )
}

pub fn row(s: Silence) -> Row {
    Row::from([
        Value::text(s.machine_id.as_str()),
        Value::Time(s.last_sale),
        Value::Time(s.alarm_at),
        Value::Float(s.usual_daily_units),
        Value::Float(s.expected_units),
    ])
}

/// The batch answer, from the accepted sales oracle: per machine its newest sale, the units per
/// weekday and hour of its last 28 days of sales, and the hour where the units it would
/// normally have sold since reach 5 on a day that usually sells 10; listed if that is by now.
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Row> {
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let now = scenario.now();
    let mut lines: BTreeMap<MachineId, Vec<(Timestamp, i64)>> = BTreeMap::new();
    for (_, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        lines
            .entry(l.machine_id.clone())
            .or_default()
            .push((l.timestamp, i64::from(l.quantity)));
    }
    let mut rows = Vec::new();
    for (machine, sales) in lines {
        let Some(last) = sales.iter().map(|s| s.0).max() else {
            continue;
        };
        let newest_day = last.0.div_euclid(MS_PER_DAY);
        let kept: Vec<&(Timestamp, i64)> = sales
            .iter()
            .filter(|s| s.0.0.div_euclid(MS_PER_DAY) > newest_day - config.demand_days)
            .collect();
        let Some(first_day) = kept.iter().map(|s| s.0.0.div_euclid(MS_PER_DAY)).min() else {
            continue;
        };
        // Units per weekday and hour, over the number of each weekday from the first day.
        let mut units = [[0i64; 24]; 7];
        for (ts, q) in &kept {
            units[usize::from(ts.weekday())][usize::from(ts.hour())] += q;
        }
        let mut weekdays = [0i64; 7];
        for day in first_day..=newest_day {
            weekdays[usize::from(Timestamp(day * MS_PER_DAY).weekday())] += 1;
        }
        let rate = |w: usize, h: usize| {
            if weekdays[w] == 0 {
                0.0
            } else {
                units[w][h] as f64 / weekdays[w] as f64
            }
        };
        let mut expected = 0.0;
        let mut t = last.0;
        for _ in 0..7 * 24 {
            let end = (t.div_euclid(MS_PER_HOUR) + 1) * MS_PER_HOUR;
            let at = Timestamp(t);
            let (w, h) = (usize::from(at.weekday()), usize::from(at.hour()));
            expected += rate(w, h) * ((end - t) as f64 / MS_PER_HOUR as f64);
            let usual: f64 = (0..24).map(|h| rate(w, h)).sum();
            if expected >= config.zero_sales_expected_units
                && usual >= config.zero_sales_min_daily_units
            {
                if Timestamp(end) <= now {
                    rows.push(Row::from([
                        Value::text(machine.as_str()),
                        Value::Time(last),
                        Value::Time(Timestamp(end)),
                        Value::Float(OrdF64(usual)),
                        Value::Float(OrdF64(expected)),
                    ]));
                }
                break;
            }
            t = end;
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn zero_sales_match_batch_oracle_on_random_streams() {
        let mut listed = 0;
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let expected = oracle(scenario);
            listed += expected.len();
            testing::assert_view(views, "zero_sales", expected, seed);
        }
        assert!(listed > 0, "no silent machine in any random stream");
    }

    /// A machine that sells 2 units every hour of the day for two weeks, then nothing: listed
    /// once it has been silent for the 3 hours its usual 2 an hour take to reach 5 units; its
    /// next sale clears it.
    #[test]
    fn a_machine_that_stops_selling_is_listed_until_it_sells_again() {
        let mut scenario = testing::Scenario::empty();
        let start = testing::BASE - testing::BASE.rem_euclid(MS_PER_DAY);
        let sale = |i: i64, at: i64| {
            let mut e = testing::sale("busy", at, 1, 100, &format!("t{i}"));
            if let vendflow_protocol::EventKind::Sale(s) = &mut e.kind {
                s.quantity = 2;
            }
            e
        };
        let hours = 14 * 24;
        for i in 0..hours {
            let at = start + i * MS_PER_HOUR + 60_000;
            scenario.deliver(at, sale(i, at));
        }
        let last = start + (hours - 1) * MS_PER_HOUR + 60_000;
        // A heartbeat two and a half hours later: silent, not yet listed.
        let quiet = last + 150 * 60_000;
        scenario.deliver(quiet, testing::heartbeat("busy", quiet, 4_000));
        let views = testing::run(&scenario);
        assert!(testing::rows(&views, "zero_sales").is_empty());
        testing::assert_view(&views, "zero_sales", oracle(&scenario), 0);
        // Four hours later: 48 a day usual, 5 units expected by 3 h after the last sale.
        let later = last + 4 * MS_PER_HOUR;
        scenario.deliver(later, testing::heartbeat("busy", later, 4_000));
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "zero_sales");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].cell(1), Value::Time(Timestamp(last)));
        assert_eq!(rows[0].cell(3), Value::Float(OrdF64(48.0)));
        testing::assert_view(&views, "zero_sales", oracle(&scenario), 0);
        // A sale: no longer silent.
        let sold = later + 60_000;
        scenario.deliver(sold, sale(hours, sold));
        let views = testing::run(&scenario);
        assert!(testing::rows(&views, "zero_sales").is_empty());
    }
}

//! The forecasting methods: how many units a slot will sell on a day, from the days before it.
//!
//! Every method sees a slot's units per day and its machine's (all slots together) over a
//! trailing window, and the days the machine was observed in it: a day without a sale on an
//! observed day is a real zero, a day before the machine was first seen is not a day at all.
//!
//! [`weekday_rates`] is the method the engine's `stockout_forecast` runs (the backtest's
//! `machine weekday`): a slot's level times its machine's weekday index. The others are the
//! baseline the product's design document names (the naive 30-day average), the engine's former
//! method (a slot's own weekday profile), and the steps the backtest weighs on top of the pooled
//! index (location type, recency, trend), each with its measured effect in the README.

use serde::Serialize;

/// Per-weekday daily units of one slot (Monday first): the slot's level times its machine's
/// weekday index.
///
/// - `slot`: the slot's units sold on each weekday over the window;
/// - `machine`: the machine's units (every slot) on each weekday over the window;
/// - `days`: the machine's observed days on each weekday in the window.
///
/// The index of a weekday is the machine's average on it over its average across weekdays (1
/// where the weekday was not observed): pooled over every slot, it is learnt from thirty
/// times the sales a slot has, so an office's quiet weekend shows in a slot that sold twice a
/// week. The level is the slot's units over its observed days, each weighed by its weekday's
/// index (a slot that sold 10 in a week of office days has a higher level than one that sold 10
/// over a weekend). A slot without sales has rates of zero.
pub fn weekday_rates(slot: &[i64; 7], machine: &[i64; 7], days: &[i64; 7]) -> [f64; 7] {
    let index = weekday_index(machine, days);
    level_rates(slot.iter().sum::<i64>() as f64, days, &index)
}

/// A machine's weekday index from its units and observed days by weekday (see
/// [`weekday_rates`]).
pub fn weekday_index(units: &[i64; 7], days: &[i64; 7]) -> [f64; 7] {
    let mut average = [0.0; 7];
    let (mut sum, mut observed) = (0.0, 0);
    for w in 0..7 {
        if days[w] > 0 {
            average[w] = units[w].max(0) as f64 / days[w] as f64;
            sum += average[w];
            observed += 1;
        }
    }
    if observed == 0 || sum <= 0.0 {
        return [1.0; 7];
    }
    let mean = sum / f64::from(observed);
    let mut index = [1.0; 7];
    for w in 0..7 {
        if days[w] > 0 {
            index[w] = average[w] / mean;
        }
    }
    index
}

/// Rates per weekday of a slot that sold `units` over the observed `days`, at `index`.
fn level_rates(units: f64, days: &[i64; 7], index: &[f64; 7]) -> [f64; 7] {
    let weight: f64 = (0..7).map(|w| days[w].max(0) as f64 * index[w]).sum();
    if units <= 0.0 || weight <= 0.0 {
        return [0.0; 7];
    }
    let level = units / weight;
    index.map(|i| level * i)
}

/// A method the backtest scores. Each after `SlotWeekday` adds one thing to the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The design document's method: average daily sales of the last 30 days.
    Naive,
    /// The slot's own weekday profile over 28 days (the engine's method before the backtest).
    SlotWeekday,
    /// The slot's level times its machine's weekday index, over 28 days ([`weekday_rates`],
    /// the engine's method).
    MachineWeekday,
    /// The machine's index over 56 days, leaned toward its location type's (by how little the
    /// machine sold): needs the registry.
    LocationType,
    /// The level weighted toward recent days (half-life 14 days, over 56).
    Recency,
    /// A damped trend on the level (recent 14 days against the 28 before them).
    Trend,
    /// The median of the day's demand rather than its mean, from the recency-weighted mean and
    /// the machine's dispersion (a negative binomial): the point forecast that minimises the
    /// absolute error WAPE counts. Stock planning keeps the mean (a slot drains at its mean
    /// rate); this is the number to quote for "how many will it sell tomorrow".
    Median,
    /// A holiday calendar on top of the median point: holidays are left out of the level and
    /// the weekday index, and a holiday's forecast is scaled by what holidays did to machines
    /// of the same location type before it (needs `--holidays`).
    Holidays,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Naive,
        Method::SlotWeekday,
        Method::MachineWeekday,
        Method::LocationType,
        Method::Recency,
        Method::Trend,
        Method::Median,
        Method::Holidays,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive: 30-day average",
            Method::SlotWeekday => "slot's own weekday profile",
            Method::MachineWeekday => "machine weekday index (engine)",
            Method::LocationType => "+ location type",
            Method::Recency => "+ recency weighting",
            Method::Trend => "+ trend",
            Method::Median => "recency, median point",
            Method::Holidays => "+ holidays",
        }
    }

    /// The longest window the method reads, in days.
    pub fn window(self) -> usize {
        match self {
            Method::Naive => NAIVE_DAYS,
            Method::SlotWeekday | Method::MachineWeekday | Method::LocationType => WINDOW_DAYS,
            Method::Recency | Method::Trend | Method::Median | Method::Holidays => LONG_DAYS,
        }
    }
}

/// The naive method's window.
pub const NAIVE_DAYS: usize = 30;
/// The weekday methods' window (the engine's `demand_days`).
pub const WINDOW_DAYS: usize = 28;
/// The recency-weighted level's window.
pub const LONG_DAYS: usize = 56;
/// The recency weights' half-life, in days.
pub const HALF_LIFE_DAYS: f64 = 14.0;
/// A machine's index counts as this many units of its location type's (shrinkage).
pub const LOCATION_PRIOR_UNITS: f64 = 1000.0;

/// What the methods see of one slot on one day `d` (an index into the series): the series end
/// before `d`.
pub struct Inputs<'a> {
    /// The slot's units per day.
    pub slot: &'a [u32],
    /// The machine's units per day (every slot).
    pub machine: &'a [u32],
    /// The first day the machine was observed.
    pub first_day: usize,
    /// The weekday (Monday 0) of day 0.
    pub weekday_of_0: usize,
    /// The weekday index of the machine's location type over the window before `d`, if known.
    pub location_index: Option<[f64; 7]>,
    /// The same over the window's days that are not holidays (with a holiday calendar).
    pub location_workdays: Option<[f64; 7]>,
    /// The machine's dispersion over the window before `d` (variance over mean of its slots'
    /// daily units around the engine's rates; 1 is Poisson): see [`dispersion`].
    pub dispersion: f64,
    /// Per day of the series, whether it is a holiday (empty: no calendar).
    pub holidays: &'a [bool],
    /// What a holiday does to the machine's sales, as a factor (learned from the holidays before
    /// the day, pooled over the machine's location type; 1 when nothing is known).
    pub holiday_factor: f64,
}

impl Inputs<'_> {
    fn weekday(&self, d: usize) -> usize {
        (self.weekday_of_0 + d) % 7
    }

    /// Observed days in the `n` days before `d`.
    fn observed(&self, d: usize, n: usize) -> std::ops::Range<usize> {
        d.saturating_sub(n).max(self.first_day)..d
    }

    fn holiday(&self, day: usize) -> bool {
        self.holidays.get(day).copied().unwrap_or(false)
    }

    /// The observed days of the `n` before `d`, holidays left out when `workdays`.
    fn days(&self, d: usize, n: usize, workdays: bool) -> impl Iterator<Item = usize> + '_ {
        self.observed(d, n)
            .filter(move |day| !(workdays && self.holiday(*day)))
    }

    /// Units by weekday of `series`, and observed days by weekday, over the `n` days before `d`.
    fn by_weekday(&self, series: &[u32], d: usize, n: usize) -> ([i64; 7], [i64; 7]) {
        self.by_weekday_of(series, d, n, false)
    }

    fn by_weekday_of(
        &self,
        series: &[u32],
        d: usize,
        n: usize,
        workdays: bool,
    ) -> ([i64; 7], [i64; 7]) {
        let (mut units, mut days) = ([0i64; 7], [0i64; 7]);
        for day in self.days(d, n, workdays) {
            let w = self.weekday(day);
            units[w] += i64::from(series.get(day).copied().unwrap_or(0));
            days[w] += 1;
        }
        (units, days)
    }

    /// The machine's index over the long window, leaned toward its location type's when known
    /// (holidays left out when `workdays`).
    fn index(&self, d: usize, workdays: bool) -> [f64; 7] {
        let (units, days) = self.by_weekday_of(self.machine, d, LONG_DAYS, workdays);
        let own = weekday_index(&units, &days);
        let pooled = if workdays {
            self.location_workdays
        } else {
            self.location_index
        };
        match pooled {
            Some(pooled) => {
                let n = units.iter().sum::<i64>() as f64;
                let k = LOCATION_PRIOR_UNITS;
                std::array::from_fn(|w| (n * own[w] + k * pooled[w]) / (n + k))
            }
            None => own,
        }
    }

    /// The recency-weighted level over the long window at `index`, and the level of the days
    /// `from..to` days before `d` (unweighted), for the trend.
    fn weighted_level(&self, d: usize, index: &[f64; 7], workdays: bool) -> f64 {
        let decay = 0.5f64.powf(1.0 / HALF_LIFE_DAYS);
        let (mut units, mut weight) = (0.0, 0.0);
        for day in self.days(d, LONG_DAYS, workdays) {
            let w = decay.powi((d - 1 - day) as i32);
            units += w * f64::from(self.slot.get(day).copied().unwrap_or(0));
            weight += w * index[self.weekday(day)];
        }
        if weight > 0.0 { units / weight } else { 0.0 }
    }

    fn plain_level(&self, range: std::ops::Range<usize>, index: &[f64; 7]) -> Option<f64> {
        let (mut units, mut weight) = (0.0, 0.0);
        for day in range {
            units += f64::from(self.slot.get(day).copied().unwrap_or(0));
            weight += index[self.weekday(day)];
        }
        (weight > 0.0).then(|| units / weight)
    }

    /// `method`'s forecast of the slot's units on day `d`.
    pub fn forecast(&self, method: Method, d: usize) -> f64 {
        let target = self.weekday(d);
        match method {
            Method::Naive => {
                let days = self.observed(d, NAIVE_DAYS);
                let n = days.len().max(1) as f64;
                let units: u64 = days
                    .map(|day| u64::from(self.slot.get(day).copied().unwrap_or(0)))
                    .sum();
                units as f64 / n
            }
            Method::SlotWeekday => {
                // units on the weekday × 7 / observed days (the engine's former `daily_rates`).
                let (units, _) = self.by_weekday(self.slot, d, WINDOW_DAYS);
                let n = self.observed(d, WINDOW_DAYS).len().max(1) as f64;
                units[target] as f64 * 7.0 / n
            }
            Method::MachineWeekday => {
                let (slot, days) = self.by_weekday(self.slot, d, WINDOW_DAYS);
                let (machine, _) = self.by_weekday(self.machine, d, WINDOW_DAYS);
                weekday_rates(&slot, &machine, &days)[target]
            }
            Method::LocationType => {
                let index = self.index(d, false);
                let (slot, days) = self.by_weekday(self.slot, d, WINDOW_DAYS);
                level_rates(slot.iter().sum::<i64>() as f64, &days, &index)[target]
            }
            Method::Recency => {
                let index = self.index(d, false);
                self.weighted_level(d, &index, false) * index[target]
            }
            Method::Trend => {
                let index = self.index(d, false);
                let level = self.weighted_level(d, &index, false);
                let recent = self.plain_level(self.observed(d, 14), &index);
                let older = self.plain_level(
                    d.saturating_sub(42).max(self.first_day)..d.saturating_sub(14),
                    &index,
                );
                let trend = match (recent, older) {
                    // Growth per day between the two spans' middles (28 days apart), damped and
                    // applied over the ~2 weeks between the weighted level's centre and `d`.
                    (Some(r), Some(o)) if r > 0.0 && o > 0.0 => {
                        let daily = (r / o).powf(1.0 / 28.0).clamp(0.98, 1.02);
                        daily.powf(0.5 * HALF_LIFE_DAYS)
                    }
                    _ => 1.0,
                };
                level * trend * index[target]
            }
            Method::Median => median(self.forecast(Method::Recency, d), self.dispersion),
            Method::Holidays => {
                let index = self.index(d, true);
                let mean = self.weighted_level(d, &index, true) * index[target];
                let factor = if self.holiday(d) {
                    self.holiday_factor
                } else {
                    1.0
                };
                median(mean * factor, self.dispersion)
            }
        }
    }
}

/// A machine's dispersion over the window before `d`: Σ (units − rate)² / Σ rate over its
/// slots' observed days, each slot at its engine rates ([`weekday_rates`]); at least 1.
pub fn dispersion<'a>(
    slots: impl Iterator<Item = &'a [u32]>,
    machine: &[u32],
    first_day: usize,
    weekday_of_0: usize,
    d: usize,
) -> f64 {
    let inputs = |slot: &'a [u32]| Inputs {
        slot,
        machine,
        first_day,
        weekday_of_0,
        location_index: None,
        location_workdays: None,
        dispersion: 1.0,
        holidays: &[],
        holiday_factor: 1.0,
    };
    let (mut squares, mut mean) = (0.0, 0.0);
    for slot in slots {
        let i = inputs(slot);
        let (units, days) = i.by_weekday(slot, d, WINDOW_DAYS);
        let (all, _) = i.by_weekday(machine, d, WINDOW_DAYS);
        let rates = weekday_rates(&units, &all, &days);
        for day in i.observed(d, WINDOW_DAYS) {
            let rate = rates[i.weekday(day)];
            let x = f64::from(slot.get(day).copied().unwrap_or(0));
            squares += (x - rate) * (x - rate);
            mean += rate;
        }
    }
    if mean > 0.0 {
        (squares / mean).clamp(1.0, 20.0)
    } else {
        1.0
    }
}

/// The median of a count with this mean and variance-to-mean ratio: Poisson at 1, else the
/// negative binomial of that mean and variance.
pub fn median(mean: f64, dispersion: f64) -> f64 {
    if mean <= 0.0 || !mean.is_finite() {
        return 0.0;
    }
    // P(X = 0) and the ratio P(k + 1) / P(k) as a function of k.
    let (mut p, step): (f64, Box<dyn Fn(f64) -> f64>) = if dispersion <= 1.0 + 1e-9 {
        ((-mean).exp(), Box::new(move |k| mean / (k + 1.0)))
    } else {
        let r = mean / (dispersion - 1.0);
        let q = r / (r + mean);
        (
            q.powf(r),
            Box::new(move |k| (k + r) / (k + 1.0) * (1.0 - q)),
        )
    };
    let mut cdf = p;
    let mut k = 0.0;
    // Far beyond any slot's day; the loop ends long before.
    while cdf < 0.5 && k < 10_000.0 {
        p *= step(k);
        k += 1.0;
        cdf += p;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_office_slot_sells_on_weekdays_even_when_its_own_sales_missed_one() {
        // The machine: 100 a weekday, 5 a weekend day, over 4 weeks.
        let machine = [400, 400, 400, 400, 400, 20, 20];
        let days = [4; 7];
        // The slot sold 8 over the four weeks, none of them on a Tuesday.
        let slot = [2, 0, 2, 2, 2, 0, 0];
        let rates = weekday_rates(&slot, &machine, &days);
        // Its own profile would say nothing sells on Tuesdays; the pooled index says a
        // Tuesday is like any weekday.
        assert!((rates[1] - rates[0]).abs() < 1e-12);
        // The index: 100 / (510 / 7) on a weekday; its days sum to 7 a week, 28 in all, so the
        // level is 8 / 28.
        let weekday = 100.0 / (510.0 / 7.0);
        assert!((rates[0] - 8.0 / 28.0 * weekday).abs() < 1e-12);
        // Over the four weeks the rates give back the slot's 8 units.
        let total: f64 = (0..7).map(|w| rates[w] * 4.0).sum();
        assert!((total - 8.0).abs() < 1e-9);
        assert!(rates[5] < rates[0] / 10.0);
    }

    #[test]
    fn unobserved_weekdays_and_empty_machines_have_a_neutral_index() {
        assert_eq!(weekday_index(&[0; 7], &[4; 7]), [1.0; 7]);
        let index = weekday_index(&[10, 0, 0, 0, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(index, [1.0; 7]);
        assert_eq!(weekday_rates(&[0; 7], &[5; 7], &[1; 7]), [0.0; 7]);
        // One observed day: the slot's units are that day's rate.
        let rates = weekday_rates(
            &[3, 0, 0, 0, 0, 0, 0],
            &[9, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(rates[0], 3.0);
    }

    #[test]
    fn medians_of_poisson_and_negative_binomial_counts() {
        // Poisson(0.5): P(0) = 0.61, so the median is 0; Poisson(2): P(≤1) = 0.41, P(≤2) = 0.68.
        assert_eq!(median(0.5, 1.0), 0.0);
        assert_eq!(median(2.0, 1.0), 2.0);
        assert_eq!(median(0.0, 3.0), 0.0);
        // A dispersed count of mean 2 has more zeros: NB(r = 2, q = 0.5): P(0) = 0.25,
        // P(1) = 0.25, so P(≤1) = 0.5 and the median is 1.
        assert_eq!(median(2.0, 2.0), 1.0);
        assert_eq!(median(f64::NAN, 1.0), 0.0);
    }
}

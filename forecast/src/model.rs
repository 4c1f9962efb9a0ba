//! The forecasting methods: how many units a slot will sell on a day, from the days before it.
//!
//! Every method sees a slot's units per day and its machine's (all slots together) over a
//! trailing window, and the days the machine was observed in it: a day without a sale on an
//! observed day is a real zero, a day before the machine was first seen is not a day at all.
//!
//! [`demand`] is the model the engine's `stockout_forecast` runs (the backtest's `engine`): a
//! slot's recency-weighted level times its machine's weekday index, learnt from working days,
//! with the machine's own holiday factor, as a negative binomial whose median is the point
//! forecast. The others are the baseline the product's design document names (the naive
//! 30-day average), the engine's former methods (a slot's own weekday profile, then
//! [`weekday_rates`]), and the steps the backtest weighs on top of the pooled index (location
//! type, recency, trend, median, a location type's holidays), each with its measured effect in
//! the README.

use serde::Serialize;
use smallvec::SmallVec;

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

/// Days of a machine's sales its weekday index and holiday factor are learnt from, in the
/// engine's model ([`demand`]): sixteen weeks (the backtest: 0.3 points of WAPE over eight).
pub const INDEX_DAYS: i64 = 112;
/// Units of evidence a machine's own holiday factor needs before it moves far from 1.
pub const OWN_HOLIDAY_PRIOR_UNITS: f64 = 20.0;

/// The weekday (Monday 0) of a day since the epoch.
pub fn weekday_of_day(day: i64) -> usize {
    usize::from(vendflow_protocol::Timestamp::of_day(day).weekday())
}

/// What the engine's model ([`demand`]) learns of one machine's slots.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// Per slot, in the order given: its mean units on each weekday (Monday first) that is not a
    /// holiday.
    pub rates: Vec<[f64; 7]>,
    /// What a holiday does to the machine's sales: a factor on the rates.
    pub holiday_factor: f64,
    /// The variance over the mean of its slots' daily units around their rates (1: Poisson),
    /// to two decimals; a day's units are a negative binomial of that mean and dispersion.
    pub dispersion: f64,
}

impl Demand {
    /// Slot `slot`'s mean units on `day` (a holiday or not).
    pub fn mean(&self, slot: usize, day: i64, holiday: bool) -> f64 {
        let rate = self.rates.get(slot).map_or(0.0, |r| r[weekday_of_day(day)]);
        if holiday {
            rate * self.holiday_factor
        } else {
            rate
        }
    }

    /// Slot `slot`'s point forecast of its units on `day`: the median of the day's demand, the
    /// number that minimises the absolute error (what the backtest scores).
    pub fn point(&self, slot: usize, day: i64, holiday: bool) -> f64 {
        median(self.mean(slot, day, holiday), self.dispersion)
    }
}

/// The engine's demand model (`stockout_forecast`, and so `restock_needed` and the restock
/// routes; the backtest's `engine` row), for one machine:
///
/// - the **weekday index** from the machine's working days (holidays left out) over the
///   `index_days` before `end`: its average on a weekday over its average across weekdays;
/// - each slot's **level**: its units over the `level_days` before `end`, each day weighed by
///   recency (half-life [`HALF_LIFE_DAYS`]) and by its weekday's index, holidays left out; the
///   slot's rate on a weekday is its level times that weekday's index;
/// - the **holiday factor**: what the machine sold on the holidays in the index window over its
///   average on their weekdays, leaned toward 1 by [`OWN_HOLIDAY_PRIOR_UNITS`];
/// - the **dispersion** of its slots' daily units around their rates (for the median).
///
/// `machine`: the machine's observed days, ascending, each once (a day since the epoch, the
/// units every slot of it sold that day), a day with no sale included with 0; `slots`: each
/// slot's (day, units). The days used are those in `end - n .. end`.
pub fn demand(
    end: i64,
    machine: &[(i64, i64)],
    slots: &[&[(i64, i64)]],
    level_days: i64,
    index_days: i64,
    holiday: impl Fn(i64) -> bool,
) -> Demand {
    let in_index = |day: i64| day >= end - index_days && day < end;
    let in_level = |day: i64| day >= end - level_days && day < end;
    let (mut units, mut days) = ([0i64; 7], [0i64; 7]);
    debug_assert!(
        machine.windows(2).all(|w| w[0].0 < w[1].0),
        "days ascending, once"
    );
    let observed = || machine.iter().copied().filter(|(day, _)| in_index(*day));
    for (day, u) in observed() {
        if !holiday(day) {
            let w = weekday_of_day(day);
            units[w] += u.max(0);
            days[w] += 1;
        }
    }
    let index = weekday_index(&units, &days);
    let (mut actual, mut expected) = (0.0, 0.0);
    for (day, u) in observed() {
        let w = weekday_of_day(day);
        if holiday(day) && days[w] > 0 {
            actual += u.max(0) as f64;
            expected += units[w] as f64 / days[w] as f64;
        }
    }
    let holiday_factor = (actual + OWN_HOLIDAY_PRIOR_UNITS) / (expected + OWN_HOLIDAY_PRIOR_UNITS);
    // The level's days: the observed working days of its window, with their recency weights.
    let decay = 0.5f64.powf(1.0 / HALF_LIFE_DAYS);
    let level: SmallVec<[(i64, f64); 32]> = observed()
        .filter(|(day, _)| in_level(*day) && !holiday(*day))
        .map(|(day, _)| (day, decay.powi((end - 1 - day) as i32)))
        .collect();
    let weight: f64 = level
        .iter()
        .map(|(day, w)| w * index[weekday_of_day(*day)])
        .sum();
    let mut rates = Vec::with_capacity(slots.len());
    let (mut squares, mut mean) = (0.0, 0.0);
    let mut sold_days: SmallVec<[f64; 32]> = SmallVec::new();
    for slot in slots {
        // The slot's units on each of the level's days (a sale on a holiday or outside the
        // window is not one of them).
        sold_days.clear();
        sold_days.resize(level.len(), 0.0);
        for (day, u) in slot.iter() {
            if let Ok(at) = level.binary_search_by_key(day, |(d, _)| *d) {
                sold_days[at] += *u as f64;
            }
        }
        let weighted: f64 = level.iter().zip(&sold_days).map(|((_, w), u)| w * u).sum();
        let r = if weighted > 0.0 && weight > 0.0 {
            let l = weighted / weight;
            index.map(|i| l * i)
        } else {
            [0.0; 7]
        };
        for ((day, _), x) in level.iter().zip(&sold_days) {
            let rate = r[weekday_of_day(*day)];
            squares += (x - rate) * (x - rate);
            mean += rate;
        }
        rates.push(r);
    }
    let dispersion = if mean > 0.0 {
        ((squares / mean).clamp(1.0, 20.0) * 100.0).round() / 100.0
    } else {
        1.0
    };
    Demand {
        rates,
        holiday_factor,
        dispersion,
    }
}

/// P(X = 0), P(X = 1), … for a count of this mean and variance-to-mean ratio: Poisson at 1,
/// else the negative binomial of that mean and variance; each from the one before.
fn probabilities(mean: f64, dispersion: f64) -> impl Iterator<Item = f64> {
    let poisson = dispersion <= 1.0 + 1e-9;
    let r = if poisson {
        0.0
    } else {
        mean / (dispersion - 1.0)
    };
    let first = if poisson {
        (-mean).exp()
    } else {
        (1.0 / dispersion).powf(r)
    };
    let mut k = 0.0;
    std::iter::successors(Some(first), move |p| {
        let ratio = if poisson {
            mean / (k + 1.0)
        } else {
            (k + r) / (k + 1.0) * (1.0 - 1.0 / dispersion)
        };
        k += 1.0;
        Some(p * ratio)
    })
}

/// P(X ≤ `k`) for a count of this mean and variance-to-mean ratio (see [`probabilities`]).
pub fn cdf(k: i64, mean: f64, dispersion: f64) -> f64 {
    if mean <= 0.0 || !mean.is_finite() {
        return 1.0;
    }
    let Ok(k) = usize::try_from(k) else {
        return 0.0;
    };
    probabilities(mean, dispersion)
        .take(k.saturating_add(1))
        .sum::<f64>()
        .min(1.0)
}

thread_local! {
    /// [`empty_threshold`]'s answers by units and dispersion (two decimals in the model: a
    /// few thousand pairs in a fleet).
    static THRESHOLDS: std::cell::RefCell<hashbrown::HashMap<(i64, u64), f64, foldhash::fast::RandomState>> =
        Default::default();
}

/// The mean demand at which a slot with `units` left is as likely as not to be empty: the
/// smallest mean whose median ([`median`]) is `units` or more. Over a span of days the units
/// are the sum of each day's, a negative binomial of the same dispersion with the days' means
/// summed, so a slot's median time to empty is when its expected demand since now reaches
/// this. 0 for a slot with nothing left.
pub fn empty_threshold(units: i64, dispersion: f64) -> f64 {
    if units <= 0 {
        return 0.0;
    }
    let key = (units, dispersion.to_bits());
    if let Some(t) = THRESHOLDS.with(|t| t.borrow().get(&key).copied()) {
        return t;
    }
    // median ≥ units ⇔ P(X ≤ units − 1) < 1/2, which falls as the mean grows.
    let below = |mean: f64| cdf(units - 1, mean, dispersion) >= 0.5;
    let (mut lo, mut hi) = (0.0, units as f64 + 1.0);
    while below(hi) && hi < 1e9 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if below(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    THRESHOLDS.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= 1 << 16 {
            t.clear();
        }
        t.insert(key, hi);
    });
    hi
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
    /// the engine's method until session 61).
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
    /// The engine's model ([`demand`]): the machine's weekday index over sixteen weeks of
    /// working days, the slot's recency-weighted level over four, the machine's own holiday
    /// factor, and the median point. Holidays are known only with a calendar.
    Engine,
}

impl Method {
    pub const ALL: [Method; 9] = [
        Method::Naive,
        Method::SlotWeekday,
        Method::MachineWeekday,
        Method::LocationType,
        Method::Recency,
        Method::Trend,
        Method::Median,
        Method::Holidays,
        Method::Engine,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive: 30-day average",
            Method::SlotWeekday => "slot's own weekday profile",
            Method::MachineWeekday => "machine weekday index",
            Method::LocationType => "+ location type",
            Method::Recency => "+ recency weighting",
            Method::Trend => "+ trend",
            Method::Median => "recency, median point",
            Method::Holidays => "+ holidays",
            Method::Engine => "engine (own holidays, median)",
        }
    }

    /// The longest window the method reads, in days.
    pub fn window(self) -> usize {
        match self {
            Method::Naive => NAIVE_DAYS,
            Method::SlotWeekday | Method::MachineWeekday | Method::LocationType => WINDOW_DAYS,
            Method::Recency | Method::Trend | Method::Median | Method::Holidays => LONG_DAYS,
            Method::Engine => INDEX_DAYS as usize,
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
    /// The engine's forecast of the day ([`Method::Engine`]): its model learns from every slot
    /// of the machine (the dispersion), so the caller computes it with [`demand`].
    pub engine: f64,
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
            Method::Engine => self.engine,
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
        engine: 0.0,
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

/// The median of a count with this mean and variance-to-mean ratio (see [`probabilities`]).
pub fn median(mean: f64, dispersion: f64) -> f64 {
    if mean <= 0.0 || !mean.is_finite() {
        return 0.0;
    }
    let mut cdf = 0.0;
    // Far beyond any slot's day; the walk ends long before.
    for (k, p) in probabilities(mean, dispersion).take(10_001).enumerate() {
        cdf += p;
        if cdf >= 0.5 {
            return k as f64;
        }
    }
    10_000.0
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

    #[test]
    fn the_engine_model_learns_weekdays_from_working_days_and_holidays_from_its_own() {
        // Four weeks of an office machine from Monday 2024-01-01 (epoch day 19723): 100 a
        // weekday, 10 a weekend day; the slot sells a tenth of it. Monday the 15th is a
        // holiday: the machine sold 20 on it.
        let monday = 19723;
        let holiday = monday + 14;
        let machine: Vec<(i64, i64)> = (0..28)
            .map(|d| {
                let day = monday + d;
                let units = match (day == holiday, weekday_of_day(day) < 5) {
                    (true, _) => 20,
                    (false, true) => 100,
                    (false, false) => 10,
                };
                (day, units)
            })
            .collect();
        let slot: Vec<(i64, i64)> = machine.iter().map(|(d, u)| (*d, u / 10)).collect();
        let end = monday + 28;
        let model = demand(end, &machine, &[&slot], 28, INDEX_DAYS, |d| d == holiday);
        // The index left the holiday out: a Monday is like any weekday.
        let rates = model.rates[0];
        assert!((rates[0] - 10.0).abs() < 1e-9, "{rates:?}");
        assert!((rates[1] - 10.0).abs() < 1e-9 && (rates[5] - 1.0).abs() < 1e-9);
        // 20 sold where 100 were expected, leaned toward 1 by the prior.
        let factor = (20.0 + OWN_HOLIDAY_PRIOR_UNITS) / (100.0 + OWN_HOLIDAY_PRIOR_UNITS);
        assert!((model.holiday_factor - factor).abs() < 1e-12);
        assert!((model.mean(0, end, true) - 10.0 * factor).abs() < 1e-9);
        // The slot sold exactly its rates: no more spread than Poisson.
        assert_eq!(model.dispersion, 1.0);
        // Without the calendar the holiday is a poor Monday.
        let plain = demand(end, &machine, &[&slot], 28, INDEX_DAYS, |_| false);
        assert!(plain.rates[0][0] < plain.rates[0][1]);
        assert_eq!(plain.holiday_factor, 1.0);
        // Days outside the windows do not count; a slot that sold nothing has no rates.
        let later = demand(end + 200, &machine, &[&slot, &[]], 28, INDEX_DAYS, |_| {
            false
        });
        assert_eq!(later.rates, vec![[0.0; 7]; 2]);
    }

    #[test]
    fn recent_days_weigh_more_in_the_level() {
        // A machine observed every day of two weeks; the slot sold 1 a day in the first and 3
        // in the second: the level is nearer 3 than the average 2.
        let machine: Vec<(i64, i64)> = (0..14).map(|d| (19723 + d, 10)).collect();
        let slot: Vec<(i64, i64)> = (0..14)
            .map(|d| (19723 + d, if d < 7 { 1 } else { 3 }))
            .collect();
        let model = demand(19723 + 14, &machine, &[&slot], 28, INDEX_DAYS, |_| false);
        let level = model.rates[0][0];
        assert!(level > 2.1 && level < 3.0, "{level}");
    }

    #[test]
    fn a_slot_is_as_likely_as_not_empty_at_the_threshold() {
        // Poisson: P(0) = e^-m is 1/2 at m = ln 2.
        assert!((empty_threshold(1, 1.0) - std::f64::consts::LN_2).abs() < 1e-9);
        assert_eq!(empty_threshold(0, 1.0), 0.0);
        for dispersion in [1.0, 1.5, 3.0, 20.0] {
            for units in [1, 2, 5, 12, 40] {
                let t = empty_threshold(units, dispersion);
                assert!(median(t * (1.0 + 1e-9), dispersion) >= units as f64);
                assert!(median(t * (1.0 - 1e-6), dispersion) < units as f64);
                // Asked again (the cache), the same answer.
                assert_eq!(empty_threshold(units, dispersion), t);
            }
        }
        // The more dispersed the demand, the more of it it takes to be as likely as not empty.
        assert!(empty_threshold(5, 3.0) > empty_threshold(5, 1.0));
    }

    #[test]
    fn the_cdf_sums_the_probabilities() {
        // Poisson(2): P(≤ 2) = e^-2 (1 + 2 + 2).
        assert!((cdf(2, 2.0, 1.0) - 5.0 * (-2.0f64).exp()).abs() < 1e-12);
        // NB(r = 2, q = 1/2) (mean 2, dispersion 2): P(0) = 1/4, P(1) = 1/4.
        assert!((cdf(1, 2.0, 2.0) - 0.5).abs() < 1e-12);
        assert_eq!(cdf(-1, 2.0, 1.0), 0.0);
        assert_eq!(cdf(3, 0.0, 1.0), 1.0);
    }
}

//! Restock routes: which machines each crew visits in its next shift, in which order, starting and
//! ending at its region's depot, with an estimated time per stop and what to load per product.
//!
//! The product's restocking design: ~200 crews, ~20 machines per crew shift, one depot per
//! region. The machines to visit are those that will run out within 48 h, or already have an empty
//! or low slot ([`Stop`]); a stop is **urgent** when a slot will be empty before the shift ends
//! (the next shift would come too late), and every urgent stop must be visited.
//!
//! [`plan`] solves each region as a capacitated vehicle-routing problem with shift-length limits
//! (vrp-core's evolutionary solver: it assigns stops to crews and orders them together), urgent
//! stops weighing a hundred times an optional one in the unassigned objective, total distance
//! second. [`replan`] keeps a plan that crews are already driving: what is behind them stays, a
//! machine that needs a visit now is inserted where it costs least, and a crew that has finished
//! takes the stops it reaches sooner than their own crew would.
//!
//! Loads are **pre-kitted**: for each slot, what the machine will lack at the estimated arrival
//! (capacity less the units expected left then, at the slot's daily demand), not what it lacks now.
//!
//! # Layout
//! - [`geo`]: distances on the map (haversine, times a road factor) and travel times.
//! - [`solve`]: one region's routing problem through vrp-core.
//! - `improve`: a local search (2-opt, relocate, or-opt, 2-opt*, swap) that polishes the
//!   solver's routes.
//! - [`replan`]: a plan kept up to date during the shift.
//! - [`sheet`]: a crew's route sheet as CSV.

pub mod geo;
mod improve;
mod replan;
pub mod sheet;
mod solve;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use improve::Matrix;
pub use replan::replan;
use serde::{Deserialize, Serialize};

/// A region's depot (warehouse), where its crews load and start and end their shift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Depot {
    pub region: String,
    /// Degrees.
    pub lat: f64,
    pub lng: f64,
}

/// A slot's state and demand: what its load is computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Need {
    pub slot_number: u32,
    pub product_id: String,
    pub capacity: i64,
    /// Units in the slot now.
    pub units: i64,
    /// Units sold per day (the stockout forecast's).
    pub daily_demand: f64,
}

/// A machine that needs a visit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub machine_id: String,
    pub region: String,
    pub lat: f64,
    pub lng: f64,
    /// Hours from `now` until its first slot is empty (0 when one already is).
    pub hours_to_empty: f64,
    pub needs: Vec<Need>,
}

/// How crews work, and how long the solver may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// Crews in the whole fleet, shared among the regions.
    pub crews: usize,
    /// The most machines one crew restocks in a shift.
    pub stops_per_crew: usize,
    /// From leaving the depot to being back.
    pub shift_minutes: u32,
    /// Average driving speed between stops.
    pub speed_kmh: f64,
    /// Road distance over straight-line distance.
    pub road_factor: f64,
    /// Time at a stop, besides loading.
    pub service_minutes: f64,
    /// Time to put one unit in a slot.
    pub seconds_per_unit: f64,
    /// The solver's time for the whole fleet, shared among the regions by their size.
    pub time_limit_secs: usize,
    /// The solver's generations per region (it stops at whichever limit comes first).
    pub generations: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            crews: 200,
            stops_per_crew: 20,
            shift_minutes: 8 * 60,
            speed_kmh: 30.0,
            road_factor: 1.3,
            service_minutes: 10.0,
            seconds_per_unit: 5.0,
            time_limit_secs: 30,
            generations: 3000,
        }
    }
}

/// The shift being planned: `now` is the views' time, the shift runs from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shift {
    pub now_ms: i64,
    pub start_ms: i64,
}

impl Shift {
    /// The shift of `now`: the one under way (yesterday's, for a shift past midnight), else
    /// today's from `start_hour` (UTC) if it has not ended, else tomorrow's.
    pub fn next(now_ms: i64, start_hour: u32, options: &Options) -> Shift {
        const DAY: i64 = 86_400_000;
        let length = i64::from(options.shift_minutes) * 60_000;
        let today = now_ms.div_euclid(DAY) * DAY + i64::from(start_hour) * 3_600_000;
        let start_ms = if now_ms < today - DAY + length {
            today - DAY
        } else if now_ms < today + length {
            today
        } else {
            today + DAY
        };
        Shift { now_ms, start_ms }
    }

    pub fn end_ms(&self, options: &Options) -> i64 {
        self.start_ms + i64::from(options.shift_minutes) * 60_000
    }

    /// When the crews leave their depots: the shift's start, or now when it has begun.
    pub fn departure_ms(&self) -> i64 {
        self.start_ms.max(self.now_ms)
    }
}

/// Units of one product to bring to one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub slot_number: u32,
    pub product_id: String,
    pub units: i64,
}

/// One stop of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    pub machine_id: String,
    pub lat: f64,
    pub lng: f64,
    pub urgent: bool,
    pub hours_to_empty: f64,
    /// Estimated arrival and departure (epoch ms).
    pub arrive_ms: i64,
    pub depart_ms: i64,
    /// Road metres from the previous stop (or the depot).
    pub leg_m: f64,
    pub loads: Vec<Load>,
}

/// One crew's shift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `north-03`: the region and the crew's number in it.
    pub crew: String,
    pub region: String,
    pub depot: Depot,
    pub visits: Vec<Visit>,
    /// When the crew leaves the depot (epoch ms).
    pub start_ms: i64,
    /// Road metres from the depot back to the depot.
    pub distance_m: f64,
    /// When the crew is back at the depot (epoch ms).
    pub back_ms: i64,
}

/// A machine that needs a visit and got none this shift, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unassigned {
    pub machine_id: String,
    pub region: String,
    pub urgent: bool,
    pub reason: String,
}

/// Every crew's route for one shift.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub shift_start_ms: i64,
    pub shift_end_ms: i64,
    /// The views' time the plan was made (or last re-planned) at.
    pub planned_at_ms: i64,
    pub routes: Vec<Route>,
    pub unassigned: Vec<Unassigned>,
    /// Crews each region was given.
    pub crews: BTreeMap<String, usize>,
}

impl Plan {
    pub fn distance_m(&self) -> f64 {
        self.routes.iter().map(|r| r.distance_m).sum()
    }

    pub fn visits(&self) -> usize {
        self.routes.iter().map(|r| r.visits.len()).sum()
    }
}

impl Route {
    /// Units to load per product: the crew's van kit for the shift (its stops' loads summed).
    pub fn kit(&self) -> BTreeMap<String, i64> {
        let mut kit = BTreeMap::new();
        for load in self.visits.iter().flat_map(|v| &v.loads) {
            *kit.entry(load.product_id.clone()).or_insert(0) += load.units;
        }
        kit
    }
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Bad input: a setting that makes every plan empty.
    #[error("invalid routing options: {0}")]
    Options(String),
    /// Bad input: a stop or depot off the map.
    #[error("{0}")]
    Input(String),
    /// The solver failed: a bug here or in it.
    #[error("the routing solver failed for region {region}: {message}")]
    Solver { region: String, message: String },
}

impl Options {
    fn check(&self) -> Result<(), RouteError> {
        let bad = |m: &str| Err(RouteError::Options(m.to_owned()));
        if self.crews == 0 {
            return bad("crews must be at least 1");
        }
        if self.stops_per_crew == 0 {
            return bad("stops per crew must be at least 1");
        }
        if self.shift_minutes == 0 {
            return bad("the shift must be longer than 0 minutes");
        }
        if !(self.speed_kmh.is_finite() && self.speed_kmh > 0.0) {
            return bad("the speed must be a positive number of km/h");
        }
        if !(self.road_factor.is_finite() && self.road_factor >= 1.0) {
            return bad("the road factor must be at least 1");
        }
        let valid = |v: f64| v.is_finite() && v >= 0.0;
        if !valid(self.service_minutes) || !valid(self.seconds_per_unit) {
            return bad("service times must be 0 or more");
        }
        Ok(())
    }
}

impl Stop {
    /// Whether a slot will be empty before the shift ends.
    pub fn urgent(&self, shift: &Shift, options: &Options) -> bool {
        let empty_at = shift.now_ms as f64 + self.hours_to_empty * 3_600_000.0;
        empty_at <= shift.end_ms(options) as f64
    }

    /// What each slot will lack at `at_ms`: capacity less the units expected left then.
    pub fn loads_at(&self, now_ms: i64, at_ms: i64) -> Vec<Load> {
        self.lacking(now_ms, at_ms)
            .map(|(n, units)| Load {
                slot_number: n.slot_number,
                product_id: n.product_id.clone(),
                units,
            })
            .collect()
    }

    /// Each slot that will lack units at `at_ms`, and how many (the one formula of a load).
    fn lacking(&self, now_ms: i64, at_ms: i64) -> impl Iterator<Item = (&Need, i64)> + '_ {
        let days = ((at_ms - now_ms).max(0)) as f64 / 86_400_000.0;
        self.needs.iter().filter_map(move |n| {
            let left = (n.units as f64 - n.daily_demand.max(0.0) * days).max(0.0);
            let units = (n.capacity - left.floor() as i64).clamp(0, n.capacity.max(0));
            (units > 0).then_some((n, units))
        })
    }

    /// Seconds at the stop: the fixed part and the loading of what it lacks when the shift begins.
    pub fn service_secs(&self, shift: &Shift, options: &Options) -> f64 {
        let units: i64 = self
            .lacking(shift.now_ms, shift.departure_ms())
            .map(|(_, units)| units)
            .sum();
        options.service_minutes * 60.0 + units as f64 * options.seconds_per_unit
    }

    fn check(&self) -> Result<(), RouteError> {
        if !geo::on_map(self.lat, self.lng) {
            return Err(RouteError::Input(format!(
                "machine {} is off the map ({}, {})",
                self.machine_id, self.lat, self.lng
            )));
        }
        Ok(())
    }
}

/// Shares `crews` among regions that need `needed` crews each (a stop count over stops per crew,
/// rounded up): each region its need when there are enough, else shares in proportion to need
/// (largest remainder), at least one each while crews last.
pub fn share_crews(needed: &BTreeMap<String, usize>, crews: usize) -> BTreeMap<String, usize> {
    let total: usize = needed.values().sum();
    if total <= crews {
        return needed.clone();
    }
    let mut given: BTreeMap<String, usize> = BTreeMap::new();
    let mut remainders: Vec<(usize, &String)> = Vec::new();
    let mut left = crews;
    for (region, &need) in needed {
        let exact = need * crews;
        let share = (exact / total).min(left);
        left -= share;
        given.insert(region.clone(), share);
        remainders.push((exact % total, region));
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    // Regions given nothing come first for the leftovers, then the largest remainders.
    remainders.sort_by_key(|(_, r)| given.get(*r).copied().unwrap_or(0) > 0);
    for (_, region) in remainders {
        if left == 0 {
            break;
        }
        if let Some(g) = given.get_mut(region) {
            *g += 1;
            left -= 1;
        }
    }
    given
}

/// Plans the shift: each region's stops routed from its depot by its share of the crews. A region
/// with no depot starts from the middle of its stops (logged). Every stop appears once: in a route
/// or among the unassigned, with the reason.
pub fn plan(
    depots: &[Depot],
    stops: &[Stop],
    shift: Shift,
    options: &Options,
) -> Result<Plan, RouteError> {
    plan_until(
        depots,
        stops,
        shift,
        options,
        &Arc::new(AtomicBool::new(false)),
    )
}

/// [`plan`], cut short once `stop` is raised (the service's shutdown): the solver then answers
/// with the best routes it has found so far.
pub fn plan_until(
    depots: &[Depot],
    stops: &[Stop],
    shift: Shift,
    options: &Options,
    stop: &Arc<AtomicBool>,
) -> Result<Plan, RouteError> {
    options.check()?;
    for stop in stops {
        stop.check()?;
    }
    if let Some(d) = depots.iter().find(|d| !geo::on_map(d.lat, d.lng)) {
        return Err(RouteError::Input(format!(
            "the depot of region {} is off the map ({}, {})",
            d.region, d.lat, d.lng
        )));
    }
    let mut by_region: BTreeMap<&str, Vec<&Stop>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for stop in stops {
        if seen.insert(stop.machine_id.as_str()) {
            by_region
                .entry(stop.region.as_str())
                .or_default()
                .push(stop);
        }
    }
    let needed: BTreeMap<String, usize> = by_region
        .iter()
        .map(|(r, s)| (r.to_string(), s.len().div_ceil(options.stops_per_crew)))
        .collect();
    let crews = share_crews(&needed, options.crews);
    let total_stops: usize = by_region.values().map(Vec::len).sum();
    let mut plan = Plan {
        shift_start_ms: shift.start_ms,
        shift_end_ms: shift.end_ms(options),
        planned_at_ms: shift.now_ms,
        crews: crews.clone(),
        ..Plan::default()
    };
    for (region, stops) in by_region {
        let depot = depot_of(depots, region, &stops);
        let given = crews.get(region).copied().unwrap_or(0);
        if given == 0 {
            plan.unassigned.extend(stops.iter().map(|s| Unassigned {
                machine_id: s.machine_id.clone(),
                region: region.to_owned(),
                urgent: s.urgent(&shift, options),
                reason: "no crew left for this region".into(),
            }));
            continue;
        }
        // The time limit is shared by region size; at least a tenth of a second each.
        let secs = (options.time_limit_secs as f64 * stops.len() as f64
            / total_stops.max(1) as f64)
            .max(0.1);
        let (routes, unassigned) =
            solve::region(&depot, &stops, given, shift, options, secs, stop)?;
        plan.routes.extend(routes);
        plan.unassigned.extend(unassigned);
    }
    Ok(plan)
}

/// The region's depot, or the middle of its stops when it has none.
fn depot_of(depots: &[Depot], region: &str, stops: &[&Stop]) -> Depot {
    if let Some(d) = depots.iter().find(|d| d.region == region) {
        return d.clone();
    }
    let n = stops.len().max(1) as f64;
    let lat = stops.iter().map(|s| s.lat).sum::<f64>() / n;
    let lng = stops.iter().map(|s| s.lng).sum::<f64>() / n;
    tracing::info!(
        region,
        lat,
        lng,
        "the region has no depot (a warehouse location): its crews start from the middle of its stops"
    );
    Depot {
        region: region.to_owned(),
        lat,
        lng,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crews_go_where_the_stops_are() {
        let needed: BTreeMap<String, usize> = [("a".into(), 10), ("b".into(), 5), ("c".into(), 1)]
            .into_iter()
            .collect();
        assert_eq!(share_crews(&needed, 100), needed);
        let shared = share_crews(&needed, 8);
        assert_eq!(shared.values().sum::<usize>(), 8);
        assert!(shared.values().all(|&c| c >= 1), "{shared:?}");
        assert!(shared["a"] > shared["b"], "{shared:?}");
        let few = share_crews(&needed, 2);
        assert_eq!(few.values().sum::<usize>(), 2, "{few:?}");
    }

    #[test]
    fn a_load_is_what_the_slot_will_lack_at_the_visit() {
        let stop = Stop {
            machine_id: "m".into(),
            region: "r".into(),
            lat: 40.7,
            lng: -74.0,
            hours_to_empty: 10.0,
            needs: vec![
                Need {
                    slot_number: 1,
                    product_id: "cola".into(),
                    capacity: 10,
                    units: 6,
                    daily_demand: 4.0,
                },
                Need {
                    slot_number: 2,
                    product_id: "chips".into(),
                    capacity: 8,
                    units: 8,
                    daily_demand: 0.0,
                },
            ],
        };
        // Half a day later: 6 - 2 = 4 left, 6 to load; the full slot that does not sell needs none.
        let loads = stop.loads_at(0, 43_200_000);
        assert_eq!(
            loads,
            vec![Load {
                slot_number: 1,
                product_id: "cola".into(),
                units: 6
            }]
        );
        // Two days later the slot is empty: all 10.
        assert_eq!(stop.loads_at(0, 2 * 86_400_000)[0].units, 10);
    }

    #[test]
    fn the_next_shift_is_todays_until_it_ends() {
        let o = Options::default();
        let day = 20_000 * 86_400_000_i64;
        assert_eq!(
            Shift::next(day + 3_600_000, 8, &o).start_ms,
            day + 8 * 3_600_000
        );
        assert_eq!(
            Shift::next(day + 10 * 3_600_000, 8, &o).start_ms,
            day + 8 * 3_600_000
        );
        assert_eq!(
            Shift::next(day + 17 * 3_600_000, 8, &o).start_ms,
            day + 86_400_000 + 8 * 3_600_000
        );
        // A night shift from 20:00: at 02:00 the one that began yesterday is under way.
        assert_eq!(
            Shift::next(day + 2 * 3_600_000, 20, &o).start_ms,
            day - 4 * 3_600_000
        );
        assert_eq!(
            Shift::next(day + 5 * 3_600_000, 20, &o).start_ms,
            day + 20 * 3_600_000
        );
    }
}

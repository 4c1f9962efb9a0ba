//! A plan kept up to date while the crews drive it.
//!
//! What a crew has already reached (planned arrival at or before `now`) stays as it was. Of what is
//! ahead, a stop whose machine no longer needs a visit (restocked, or its forecast moved) is
//! dropped. A machine that now needs one is inserted where it adds the fewest metres, in a crew
//! of its region that can still take it within its stops and its shift, or given to an idle
//! crew of the region. Then a crew with nothing left ahead (it finished early) takes, one by one,
//! the nearest stop of another crew that it would reach sooner than that crew would.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::geo::Roads;
use crate::solve::{drive, timing};
use crate::{Depot, Options, Plan, Route, RouteError, Shift, Stop, Unassigned, Visit};

/// One crew during the re-plan.
struct Crew<'s> {
    crew: String,
    region: String,
    depot: Depot,
    start_ms: i64,
    /// Reached already: kept.
    behind: Vec<Visit>,
    behind_m: f64,
    /// Where the crew is free from, and when.
    from: (f64, f64),
    free_ms: i64,
    ahead: Vec<&'s Stop>,
}

impl<'s> Crew<'s> {
    /// The crew's schedule with `ahead`: (visits ahead, metres from `from` back to the depot, back).
    fn drive(&self, ahead: &[&Stop], shift: &Shift, options: &Options) -> (Vec<Visit>, f64, i64) {
        drive(&self.depot, self.from, self.free_ms, ahead, shift, options)
    }

    fn fits(&self, ahead: &[&Stop], shift: &Shift, options: &Options) -> Option<f64> {
        if self.behind.len() + ahead.len() > options.stops_per_crew {
            return None;
        }
        let (metres, back) = timing(&self.depot, self.from, self.free_ms, ahead, shift, options);
        (back <= shift.end_ms(options)).then_some(metres)
    }
}

/// `previous` brought up to `now_ms` with the machines that need a visit now (`stops`). Planning
/// before the shift starts is better done afresh with [`crate::plan`]; after it ends, for the
/// next shift.
pub fn replan(
    previous: &Plan,
    depots: &[Depot],
    stops: &[Stop],
    now_ms: i64,
    options: &Options,
) -> Result<Plan, RouteError> {
    options.check()?;
    for stop in stops {
        stop.check()?;
    }
    let shift = Shift {
        now_ms,
        start_ms: previous.shift_start_ms,
    };
    let current: HashMap<&str, &Stop> = stops.iter().map(|s| (s.machine_id.as_str(), s)).collect();
    let mut crews: Vec<Crew> = previous
        .routes
        .iter()
        .map(|route| crew_now(route, &current, &shift))
        .collect();

    // Machines that need a visit and are in no route: the most urgent first.
    let planned: HashSet<&str> = crews
        .iter()
        .flat_map(|c| {
            c.behind
                .iter()
                .map(|v| v.machine_id.as_str())
                .chain(c.ahead.iter().map(|s| s.machine_id.as_str()))
        })
        .collect();
    let mut new: Vec<&Stop> = Vec::new();
    let mut seen = HashSet::new();
    for stop in stops {
        if !planned.contains(stop.machine_id.as_str()) && seen.insert(stop.machine_id.as_str()) {
            new.push(stop);
        }
    }
    new.sort_by(|a, b| {
        b.urgent(&shift, options)
            .cmp(&a.urgent(&shift, options))
            .then(a.hours_to_empty.total_cmp(&b.hours_to_empty))
            .then(a.machine_id.cmp(&b.machine_id))
    });
    // Crews per region: the shares the current needs call for, and never fewer than a region
    // already has on the road (a region that needed none at the last plan may need some now).
    let mut needed: BTreeMap<String, usize> = BTreeMap::new();
    for stop in stops {
        *needed.entry(stop.region.clone()).or_default() += 1;
    }
    for n in needed.values_mut() {
        *n = n.div_ceil(options.stops_per_crew);
    }
    let mut given = crate::share_crews(&needed, options.crews);
    for crew in &crews {
        let used = crews.iter().filter(|c| c.region == crew.region).count();
        let g = given.entry(crew.region.clone()).or_default();
        *g = (*g).max(used);
    }
    let mut unassigned = Vec::new();
    for stop in new {
        if insert(&mut crews, stop, &shift, options) {
            continue;
        }
        if let Some(crew) = idle_crew(&given, &crews, stops, depots, &stop.region, &shift) {
            crews.push(crew);
            if insert(&mut crews, stop, &shift, options) {
                continue;
            }
        }
        unassigned.push(Unassigned {
            machine_id: stop.machine_id.clone(),
            region: stop.region.clone(),
            urgent: stop.urgent(&shift, options),
            reason: "no crew of the region can take it in the rest of the shift".into(),
        });
    }
    rebalance(&mut crews, &shift, options);

    let routes = crews
        .into_iter()
        .filter(|c| !c.behind.is_empty() || !c.ahead.is_empty())
        .map(|c| {
            let (ahead, metres, back_ms) = c.drive(&c.ahead, &shift, options);
            let mut visits = c.behind;
            visits.extend(ahead);
            Route {
                crew: c.crew,
                region: c.region,
                depot: c.depot,
                visits,
                start_ms: c.start_ms,
                distance_m: c.behind_m + metres,
                back_ms,
            }
        })
        .collect();
    Ok(Plan {
        shift_start_ms: previous.shift_start_ms,
        shift_end_ms: shift.end_ms(options),
        planned_at_ms: now_ms,
        routes,
        unassigned,
        crews: given,
    })
}

/// A route as it stands at `now`: what it has reached, where it is free from, what is still needed ahead.
fn crew_now<'s>(route: &Route, current: &HashMap<&str, &'s Stop>, shift: &Shift) -> Crew<'s> {
    let behind: Vec<Visit> = route
        .visits
        .iter()
        .filter(|v| v.arrive_ms <= shift.now_ms)
        .cloned()
        .collect();
    let ahead = route
        .visits
        .iter()
        .filter(|v| v.arrive_ms > shift.now_ms)
        .filter_map(|v| current.get(v.machine_id.as_str()).copied())
        .collect();
    let (from, free_ms) = match behind.last() {
        Some(v) => ((v.lat, v.lng), v.depart_ms.max(shift.now_ms)),
        None => ((route.depot.lat, route.depot.lng), shift.departure_ms()),
    };
    Crew {
        crew: route.crew.clone(),
        region: route.region.clone(),
        depot: route.depot.clone(),
        start_ms: route.start_ms,
        behind_m: behind.iter().map(|v| v.leg_m).sum(),
        behind,
        from,
        free_ms,
        ahead,
    }
}

/// Puts `stop` where it adds the fewest metres in a crew of its region that can take it.
fn insert<'s>(crews: &mut [Crew<'s>], stop: &'s Stop, shift: &Shift, options: &Options) -> bool {
    let mut best: Option<(f64, usize, usize)> = None;
    for (c, crew) in crews.iter().enumerate() {
        if crew.region != stop.region {
            continue;
        }
        let Some(before) = crew.fits(&crew.ahead, shift, options) else {
            continue;
        };
        for at in 0..=crew.ahead.len() {
            let mut ahead = crew.ahead.clone();
            ahead.insert(at, stop);
            if let Some(after) = crew.fits(&ahead, shift, options) {
                let added = after - before;
                if best.is_none_or(|(b, _, _)| added < b) {
                    best = Some((added, c, at));
                }
            }
        }
    }
    match best {
        Some((_, c, at)) => {
            crews[c].ahead.insert(at, stop);
            true
        }
        None => false,
    }
}

/// A crew of `region` the plan gave it but that has no route yet, leaving its depot now.
fn idle_crew<'s>(
    given: &BTreeMap<String, usize>,
    crews: &[Crew<'s>],
    stops: &[Stop],
    depots: &[Depot],
    region: &str,
    shift: &Shift,
) -> Option<Crew<'s>> {
    let given = given.get(region).copied().unwrap_or(0);
    let used: Vec<&Crew> = crews.iter().filter(|c| c.region == region).collect();
    if used.len() >= given {
        return None;
    }
    let depot = depots
        .iter()
        .find(|d| d.region == region)
        .or_else(|| used.first().map(|c| &c.depot))
        .cloned()
        .unwrap_or_else(|| {
            let mine: Vec<&Stop> = stops.iter().filter(|s| s.region == region).collect();
            crate::depot_of(depots, region, &mine)
        });
    let names: HashSet<&str> = used.iter().map(|c| c.crew.as_str()).collect();
    let crew = (1..)
        .map(|k| format!("{region}-{k:02}"))
        .find(|n| !names.contains(n.as_str()))?;
    Some(Crew {
        crew,
        region: region.to_owned(),
        from: (depot.lat, depot.lng),
        depot,
        start_ms: shift.departure_ms(),
        behind: Vec::new(),
        behind_m: 0.0,
        free_ms: shift.departure_ms(),
        ahead: Vec::new(),
    })
}

/// Crews with nothing ahead take the nearest stop they reach sooner than its own crew, until none.
fn rebalance(crews: &mut [Crew], shift: &Shift, options: &Options) {
    let roads = Roads::new(options);
    let finished: Vec<usize> = (0..crews.len())
        .filter(|&c| crews[c].ahead.is_empty())
        .collect();
    for c in finished {
        loop {
            let (from, free_ms) = match crews[c].ahead.last() {
                Some(_) => {
                    let (visits, _, _) = crews[c].drive(&crews[c].ahead, shift, options);
                    match visits.last() {
                        Some(v) => ((v.lat, v.lng), v.depart_ms),
                        None => (crews[c].from, crews[c].free_ms),
                    }
                }
                None => (crews[c].from, crews[c].free_ms),
            };
            // (metres from here, owner, position)
            let mut best: Option<(f64, usize, usize)> = None;
            for (o, owner) in crews.iter().enumerate() {
                if o == c || owner.region != crews[c].region || owner.ahead.is_empty() {
                    continue;
                }
                let (visits, _, _) = owner.drive(&owner.ahead, shift, options);
                for (at, visit) in visits.iter().enumerate() {
                    let metres = roads.metres(from, (visit.lat, visit.lng));
                    let ours = free_ms + (roads.secs(metres) * 1000.0).round() as i64;
                    if ours < visit.arrive_ms && best.is_none_or(|(m, _, _)| metres < m) {
                        best = Some((metres, o, at));
                    }
                }
            }
            let Some((_, o, at)) = best else { break };
            let stop = crews[o].ahead[at];
            let mut ahead = crews[c].ahead.clone();
            ahead.push(stop);
            if crews[c].fits(&ahead, shift, options).is_none() {
                break;
            }
            crews[o].ahead.remove(at);
            crews[c].ahead = ahead;
        }
    }
}

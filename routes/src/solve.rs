//! One region's routing problem through vrp-core: a capacitated vehicle-routing problem with a
//! shift-length limit, every crew starting and ending at the region's depot.
//!
//! The solver decides which crew visits which stop and in what order; the times, distances and
//! loads of the result are then computed by [`drive`], the one schedule the planner and the
//! re-planner share.

use std::sync::Arc;

use vrp_core::prelude::*;
use vrp_core::rosomaxa::evolution::TelemetryMode;
use vrp_core::rosomaxa::utils::{Parallelism, Quota, TimeQuota};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::geo::Roads;
use crate::improve::{Limits, Matrix, improve};
use crate::{Depot, Options, Route, RouteError, Shift, Stop, Unassigned, Visit};

/// The solver's time, cut short when the caller stops.
struct Budget {
    time: TimeQuota,
    stop: Arc<AtomicBool>,
}

impl Quota for Budget {
    fn is_reached(&self) -> bool {
        self.time.is_reached() || self.stop.load(Ordering::Relaxed)
    }
}

/// The solver's progress messages, to `tracing` (it prints them on stdout by default).
fn solver_log() -> InfoLogger {
    Arc::new(|message: &str| tracing::trace!(target: "vendflow_routes::solver", "{message}"))
}

/// A stop's weight in the unassigned objective: an urgent one left out costs a hundred optional ones.
const URGENT_WEIGHT: f64 = 100.0;

/// A crew's stops driven in order from `from` at `start_ms`, then back to the depot: each visit's
/// arrival, departure, leg and loads, the metres driven and when the crew is back.
pub(crate) fn drive(
    depot: &Depot,
    from: (f64, f64),
    start_ms: i64,
    stops: &[&Stop],
    shift: &Shift,
    options: &Options,
) -> (Vec<Visit>, f64, i64) {
    let mut visits = Vec::with_capacity(stops.len());
    let (metres, back_ms) = walk(
        depot,
        from,
        start_ms,
        stops,
        shift,
        options,
        |stop, arrive_ms, depart_ms, leg| {
            visits.push(Visit {
                machine_id: stop.machine_id.clone(),
                lat: stop.lat,
                lng: stop.lng,
                urgent: stop.urgent(shift, options),
                hours_to_empty: stop.hours_to_empty,
                arrive_ms,
                depart_ms,
                leg_m: leg,
                loads: stop.loads_at(shift.now_ms, arrive_ms),
            });
        },
    );
    (visits, metres, back_ms)
}

/// [`drive`]'s metres and return time alone, with nothing allocated (what a feasibility check needs).
pub(crate) fn timing(
    depot: &Depot,
    from: (f64, f64),
    start_ms: i64,
    stops: &[&Stop],
    shift: &Shift,
    options: &Options,
) -> (f64, i64) {
    walk(
        depot,
        from,
        start_ms,
        stops,
        shift,
        options,
        |_, _, _, _| {},
    )
}

/// The one schedule: each stop's (arrival, departure, leg) to `at_stop`; the metres and the return.
fn walk(
    depot: &Depot,
    from: (f64, f64),
    start_ms: i64,
    stops: &[&Stop],
    shift: &Shift,
    options: &Options,
    mut at_stop: impl FnMut(&Stop, i64, i64, f64),
) -> (f64, i64) {
    let roads = Roads::new(options);
    let mut t = start_ms as f64;
    let mut at = from;
    let mut metres = 0.0;
    for stop in stops {
        let here = (stop.lat, stop.lng);
        let leg = roads.metres(at, here);
        metres += leg;
        t += roads.secs(leg) * 1000.0;
        let arrive_ms = t.round() as i64;
        t += stop.service_secs(shift, options) * 1000.0;
        at_stop(stop, arrive_ms, t.round() as i64, leg);
        at = here;
    }
    let home = roads.metres(at, (depot.lat, depot.lng));
    metres += home;
    t += roads.secs(home) * 1000.0;
    (metres, t.round() as i64)
}

/// Routes `stops` with `crews` crews from `depot` in about `secs` seconds.
pub(crate) fn region(
    depot: &Depot,
    stops: &[&Stop],
    crews: usize,
    shift: Shift,
    options: &Options,
    secs: f64,
    stop: &Arc<AtomicBool>,
) -> Result<(Vec<Route>, Vec<Unassigned>), RouteError> {
    let region = depot.region.clone();
    let failed = |e: GenericError| RouteError::Solver {
        region: region.clone(),
        message: e.to_string(),
    };
    let unassigned = |stop: &Stop, reason: &str| Unassigned {
        machine_id: stop.machine_id.clone(),
        region: region.clone(),
        urgent: stop.urgent(&shift, options),
        reason: reason.to_owned(),
    };
    // Seconds from the crews' departure to the end of the shift, one second kept in hand so that
    // rounding to milliseconds never puts a crew back after it.
    let available = (shift.end_ms(options) - shift.departure_ms()) as f64 / 1000.0 - 1.0;
    if stops.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    if available <= 0.0 {
        let left = stops
            .iter()
            .map(|s| unassigned(s, "the shift is over"))
            .collect();
        return Ok((Vec::new(), left));
    }
    let matrix = Matrix::of(depot, stops, &shift, options);
    // The region's time: nine tenths to the solver, the rest (at most) to polishing its routes
    // (which mostly needs far less).
    let until = Instant::now() + std::time::Duration::from_secs_f64(secs);
    let solver_secs = secs * 0.9;
    let budget = Budget {
        time: TimeQuota::new(solver_secs as Float),
        stop: stop.clone(),
    };
    let (orders, left) =
        solve_orders(&matrix, stops, crews, shift, options, budget, available).map_err(failed)?;
    let mut routes: Vec<Vec<usize>> = orders
        .into_iter()
        .map(|o| o.into_iter().map(|i| i + 1).collect())
        .collect();
    let limits = Limits {
        stops: options.stops_per_crew,
        secs: available,
    };
    let saved = improve(&mut routes, &matrix, &limits, until);
    tracing::debug!(region = %depot.region, saved_m = saved, "routes polished");
    let mut orders: Vec<Vec<&Stop>> = routes
        .into_iter()
        .map(|order| {
            order
                .into_iter()
                .filter_map(|p| p.checked_sub(1).and_then(|i| stops.get(i)).copied())
                .collect::<Vec<&Stop>>()
        })
        .filter(|order| !order.is_empty())
        .collect();
    // Crews numbered in an order that does not depend on the solver's.
    orders.sort_by(|a, b| a[0].machine_id.cmp(&b[0].machine_id));
    let routes = orders
        .into_iter()
        .enumerate()
        .map(|(k, order)| {
            let (visits, distance_m, back_ms) = drive(
                depot,
                (depot.lat, depot.lng),
                shift.departure_ms(),
                &order,
                &shift,
                options,
            );
            Route {
                crew: format!("{}-{:02}", depot.region, k + 1),
                region: depot.region.clone(),
                depot: depot.clone(),
                visits,
                start_ms: shift.departure_ms(),
                distance_m,
                back_ms,
            }
        })
        .collect();
    let left = left
        .into_iter()
        .filter_map(|i| stops.get(i))
        .map(|stop| {
            unassigned(
                stop,
                "no crew of the region has room for it this shift (stops per crew or shift length)",
            )
        })
        .collect();
    Ok((routes, left))
}

/// The solver's answer for one region: each crew's stops in order, and the stops left out (as
/// indices into `stops`).
fn solve_orders(
    matrix: &Matrix,
    stops: &[&Stop],
    crews: usize,
    shift: Shift,
    options: &Options,
    budget: Budget,
    available: f64,
) -> GenericResult<(Vec<Vec<usize>>, Vec<usize>)> {
    let transport: Arc<dyn TransportCost> = Arc::new(SimpleTransportCost::new(
        matrix.secs.clone(),
        matrix.metres.clone(),
    )?);

    // Location i + 1 is stop i; the depot is location 0.
    let weights: Vec<f64> = std::iter::once(0.0)
        .chain(stops.iter().map(|s| {
            if s.urgent(&shift, options) {
                URGENT_WEIGHT
            } else {
                1.0
            }
        }))
        .collect();
    let minimize_unassigned = MinimizeUnassignedBuilder::new("min-unassigned")
        .set_job_estimator(move |_, job| {
            job.as_single()
                .and_then(|s| s.places.first())
                .and_then(|p| p.location)
                .and_then(|l| weights.get(l).copied())
                .unwrap_or(1.0)
        })
        .build()?;
    let capacity = CapacityFeatureBuilder::<SingleDimLoad>::new("capacity").build()?;
    let distance = TransportFeatureBuilder::new("min-distance")
        .set_transport_cost(transport.clone())
        .set_time_constrained(true)
        .build_minimize_distance()?;
    let goal =
        GoalContextBuilder::with_features(&[minimize_unassigned, distance, capacity])?.build()?;

    let jobs = stops
        .iter()
        .enumerate()
        .map(|(i, s)| {
            SingleBuilder::default()
                .id(&s.machine_id)
                .demand(Demand::delivery(1))
                .location(i + 1)?
                .duration(s.service_secs(&shift, options))?
                .build_as_job()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let per_crew = i32::try_from(options.stops_per_crew).unwrap_or(i32::MAX);
    let vehicles = (0..crews)
        .map(|k| {
            VehicleBuilder::default()
                .id(&format!("crew{k}"))
                .add_detail(
                    VehicleDetailBuilder::default()
                        .set_start_location(0)
                        .set_start_time(0.0)
                        .set_end_location(0)
                        .set_end_time(available)
                        .build()?,
                )
                .capacity(SingleDimLoad::new(per_crew))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let problem = Arc::new(
        ProblemBuilder::default()
            .add_jobs(jobs.into_iter())
            .add_vehicles(vehicles.into_iter())
            .with_goal(goal)
            .with_transport_cost(transport)
            .with_logger(solver_log())
            .build()?,
    );
    let environment = Arc::new(Environment::new(
        Arc::new(DefaultRandom::default()),
        Some(Arc::new(budget)),
        Parallelism::default(),
        solver_log(),
        false,
    ));
    let config = VrpConfigBuilder::new(problem.clone())
        .set_environment(environment)
        .set_telemetry_mode(TelemetryMode::None)
        .prebuild()?
        // The quota above stops it (the evolution's own limit takes whole seconds only).
        .with_max_time(None)
        .with_max_generations(Some(options.generations))
        .build()?;
    let solution = Solver::new(problem, config).solve()?;
    // Location i + 1 is stop i.
    let stop_of = |location: Option<usize>| location.and_then(|l| l.checked_sub(1));
    let orders = solution
        .routes
        .iter()
        .map(|route| {
            route
                .tour
                .all_activities()
                .filter(|a| a.job.is_some())
                .filter_map(|a| stop_of(Some(a.place.location)))
                .collect::<Vec<usize>>()
        })
        .filter(|order| !order.is_empty())
        .collect();
    let left = solution
        .unassigned
        .iter()
        .filter_map(|(job, _)| {
            stop_of(
                job.as_single()
                    .and_then(|s| s.places.first())
                    .and_then(|p| p.location),
            )
        })
        .collect();
    Ok((orders, left))
}

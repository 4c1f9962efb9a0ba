//! The service's route planner: every `--replan-secs` it reads one snapshot of the views and the
//! registry, plans the crews' next shift (or re-plans the one they are driving) with
//! `vendflow-routes`, publishes it as the views `restock_routes` and `restock_loads`, and keeps
//! it for `GET /api/routes`.
//!
//! **Which machines:** those in `restock_needed` (a slot empty within 48 h) and those with a
//! low or sold-out slot in `inventory`, unless registered in maintenance. A machine's place and
//! region are its location's; its depot is its region's location of type `warehouse` (without
//! one, the middle of the region's stops). A machine with no location on the map cannot be
//! routed: it is listed in `restock_routes` with no crew and the reason.
//!
//! **When:** "now" is the views' frontier. Before the shift starts the plan is made afresh at
//! each period (crews have not left); once it has started, [`vendflow_routes::replan`] keeps
//! what each crew has reached and fits the rest around it; after it ends, the next shift is
//! planned. The planner runs on its own thread: a solve of the whole fleet takes up to
//! `--routing-secs` and holds no lock meanwhile (the views are copied first).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use vendflow_dataflows::{Row, Snapshot, Value, ViewStore};
use vendflow_protocol::{LocationType, MachineStatus};
use vendflow_routes::{Depot, Need, Options, Plan, RouteError, Shift, Stop, Unassigned};

use crate::api::fleet::{Fleet, Registry};

/// How the planner plans, and how often.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub options: Options,
    /// The hour (UTC) the crews' shift starts.
    pub shift_start_hour: u32,
    pub every: Duration,
}

/// The latest plan, shared by the planner thread and the API.
#[derive(Default)]
pub struct Planner {
    latest: RwLock<Option<Arc<Plan>>>,
    /// Plans made and failed (for `/metrics` and the tests).
    pub planned: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl Planner {
    pub fn latest(&self) -> Option<Arc<Plan>> {
        self.latest.read().map(|p| p.clone()).unwrap_or_default()
    }

    fn set(&self, plan: Arc<Plan>) {
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some(plan);
        }
    }

    /// Plans (or re-plans) once from the store and registry as they are now, and publishes the
    /// plan. `None` when the views hold nothing yet.
    pub fn plan_once(
        &self,
        config: &RouteConfig,
        store: &ViewStore,
        fleet: &Fleet,
        stop: &Arc<AtomicBool>,
    ) -> Result<Option<Arc<Plan>>, RouteError> {
        let snapshot = store.snapshot_of(&["inventory", "stockout_forecast", "restock_needed"]);
        let now = snapshot.frontier.ms();
        if now <= 0 {
            return Ok(None);
        }
        let (depots, stops, unroutable) = {
            let registry = fleet.read();
            candidates(&snapshot, &registry)
        };
        let shift = Shift::next(now, config.shift_start_hour, &config.options);
        let previous = self.latest();
        let mut plan = match previous {
            // Crews on the road: keep their routes. Otherwise (before the shift, or nobody has
            // left yet) the solver plans afresh.
            Some(p)
                if p.shift_start_ms == shift.start_ms
                    && now >= shift.start_ms
                    && !p.routes.is_empty() =>
            {
                vendflow_routes::replan(&p, &depots, &stops, now, &config.options)?
            }
            _ => vendflow_routes::plan_until(&depots, &stops, shift, &config.options, stop)?,
        };
        plan.unassigned.extend(unroutable);
        let plan = Arc::new(plan);
        let (routes, loads) = rows(&plan);
        for (view, rows) in [("restock_routes", routes), ("restock_loads", loads)] {
            if let Err(e) = store.replace(view, rows) {
                tracing::error!(view, error = %e, "cannot publish the restock plan");
            }
        }
        self.set(plan.clone());
        Ok(Some(plan))
    }

    /// Plans every `config.every` until `stop`; the first plan as soon as the views hold rows.
    /// A solve under way stops early (with its best routes so far) once `stop` is raised.
    pub fn run(
        &self,
        config: &RouteConfig,
        store: &ViewStore,
        fleet: &Fleet,
        stop: &Arc<AtomicBool>,
    ) {
        let mut next = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(100).min(config.every));
                continue;
            }
            let started = Instant::now();
            match self.plan_once(config, store, fleet, stop) {
                Ok(Some(plan)) => {
                    self.planned.fetch_add(1, Ordering::Relaxed);
                    // Nothing to restock yet (a fleet just started): look again sooner.
                    let wait = if plan.routes.is_empty() && plan.unassigned.is_empty() {
                        config.every.min(Duration::from_secs(10))
                    } else {
                        config.every
                    };
                    tracing::info!(
                        crews = plan.routes.len(),
                        visits = plan.visits(),
                        unassigned = plan.unassigned.len(),
                        km = plan.distance_m() / 1000.0,
                        secs = started.elapsed().as_secs_f64(),
                        "restock routes planned"
                    );
                    next = Instant::now() + wait;
                }
                // Nothing to plan from yet: look again soon.
                Ok(None) => next = Instant::now() + Duration::from_secs(1).min(config.every),
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot plan the restock routes");
                    next = Instant::now() + config.every;
                }
            }
        }
    }
}

/// Degrees from the registry's micro-degrees.
fn degrees(micro: i64) -> f64 {
    micro as f64 / 1_000_000.0
}

/// The region of a location without one.
pub const NO_REGION: &str = "default";

/// The depots (warehouse locations), the machines to visit, and those that cannot be routed.
pub fn candidates(
    snapshot: &Snapshot,
    registry: &Registry,
) -> (Vec<Depot>, Vec<Stop>, Vec<Unassigned>) {
    let region =
        |l: &vendflow_protocol::Location| l.region.clone().unwrap_or_else(|| NO_REGION.into());
    let mut depots: Vec<Depot> = Vec::new();
    for l in registry.locations.values() {
        if l.location_type == LocationType::Warehouse
            && !depots.iter().any(|d| d.region == region(l))
        {
            depots.push(Depot {
                region: region(l),
                lat: degrees(l.lat.0),
                lng: degrees(l.lng.0),
            });
        }
    }
    // Per machine: hours until its first slot is empty, and each slot's state.
    let mut hours: BTreeMap<String, f64> = BTreeMap::new();
    let mut demand: HashMap<(String, i64), f64> = HashMap::new();
    if let Ok(rows) = snapshot.named("stockout_forecast") {
        for r in rows {
            let (Some(m), Some(slot)) = (r.text("machine_id"), r.int("slot_number")) else {
                continue;
            };
            if let Value::Float(d) = r.get("daily_demand") {
                demand.insert((m.clone(), slot), d.0);
            }
        }
    }
    if let Ok(rows) = snapshot.named("restock_needed") {
        for r in rows {
            if let (Some(m), Value::Float(h)) =
                (r.text("machine_id"), r.get("hours_to_first_empty"))
            {
                hours.insert(m, h.0.max(0.0));
            }
        }
    }
    let mut needs: BTreeMap<String, Vec<Need>> = BTreeMap::new();
    if let Ok(rows) = snapshot.named("inventory") {
        for r in rows {
            let (Some(m), Some(slot), Some(units)) =
                (r.text("machine_id"), r.int("slot_number"), r.int("units"))
            else {
                continue;
            };
            if r.flag("sold_out") {
                hours.insert(m.clone(), 0.0);
            } else if r.flag("low_stock") {
                // Low but not forecast to run out soon (or not selling): worth a visit, not urgent.
                hours.entry(m.clone()).or_insert(48.0);
            }
            let Some(capacity) = r.int("capacity") else {
                continue;
            };
            needs.entry(m.clone()).or_default().push(Need {
                slot_number: u32::try_from(slot).unwrap_or(0),
                product_id: r.text("product_id").unwrap_or_default(),
                capacity,
                units: units.clamp(0, capacity.max(0)),
                daily_demand: demand.get(&(m, slot)).copied().unwrap_or(0.0),
            });
        }
    }
    let mut stops = Vec::new();
    let mut unroutable = Vec::new();
    for (machine_id, hours_to_empty) in hours {
        let machine = registry.machines.get(&machine_id);
        if machine.is_some_and(|m| m.status == MachineStatus::Maintenance) {
            continue;
        }
        let location = machine
            .and_then(|m| m.location_id.as_ref())
            .and_then(|l| registry.locations.get(l));
        let Some(location) = location else {
            unroutable.push(Unassigned {
                machine_id,
                region: NO_REGION.into(),
                urgent: hours_to_empty <= 24.0,
                reason: "the machine has no location in the registry".into(),
            });
            continue;
        };
        stops.push(Stop {
            needs: needs.remove(&machine_id).unwrap_or_default(),
            machine_id,
            region: region(location),
            lat: degrees(location.lat.0),
            lng: degrees(location.lng.0),
            hours_to_empty,
        });
    }
    (depots, stops, unroutable)
}

/// The plan as the rows of `restock_routes` and `restock_loads`.
pub fn rows(plan: &Plan) -> (Vec<Row>, Vec<Row>) {
    use vendflow_protocol::Timestamp;
    let time = |ms: i64| Value::Time(Timestamp(ms));
    let float = |f: f64| Value::Float(vendflow_dataflows::row::OrdF64(f));
    let mut routes = Vec::new();
    let mut loads = Vec::new();
    for route in &plan.routes {
        for (i, v) in route.visits.iter().enumerate() {
            routes.push(Row::from_iter(&[
                Value::text(&v.machine_id),
                Value::text(&route.region),
                Value::text(&route.crew),
                Value::Int(i as i64 + 1),
                time(v.arrive_ms),
                time(v.depart_ms),
                float(v.leg_m / 1000.0),
                Value::Bool(v.urgent),
                float(v.hours_to_empty),
                Value::Int(v.loads.iter().map(|l| l.units).sum()),
                float(v.lat),
                float(v.lng),
                time(plan.shift_start_ms),
                time(plan.planned_at_ms),
                Value::Null,
            ]));
            for l in &v.loads {
                loads.push(Row::from_iter(&[
                    Value::text(&v.machine_id),
                    Value::text(&route.crew),
                    Value::Int(i64::from(l.slot_number)),
                    Value::text(&l.product_id),
                    Value::Int(l.units),
                ]));
            }
        }
    }
    for u in &plan.unassigned {
        routes.push(Row::from_iter(&[
            Value::text(&u.machine_id),
            Value::text(&u.region),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Bool(u.urgent),
            Value::Null,
            Value::Int(0),
            Value::Null,
            Value::Null,
            time(plan.shift_start_ms),
            time(plan.planned_at_ms),
            Value::text(&u.reason),
        ]));
    }
    (routes, loads)
}

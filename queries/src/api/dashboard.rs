//! The operations dashboard's data: a fleet summary, and a live stream of what changes.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc::Sender;
use vendflow_dataflows::health::HEALTH;
use vendflow_dataflows::inventory::INVENTORY;
use vendflow_dataflows::liveness::LIVENESS;
use vendflow_dataflows::revenue::MACHINE_LOCAL_DAILY;
use vendflow_dataflows::row::Named;
use vendflow_dataflows::summary::Scope;
use vendflow_dataflows::summary::is_local_today;
use vendflow_dataflows::{Change, FleetSummary, Row, Subscription, Value};
use vendflow_protocol::{Cents, MachineStatus};

use super::fleet::Fleet;
use utoipa::{IntoParams, ToSchema};

use super::machines::{HealthScore, alerts_of, by_machine, live_status};
use super::{ApiError, ApiQuery, ApiState, Auth, ErrorBody, Unauthenticated};
use crate::auth::Principal;
use crate::cell;

/// The region the dashboard shows (all of the caller's machines when absent).
#[derive(Deserialize, Clone, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Region {
    /// a region
    region: Option<String>,
}

/// The fleet summary of the caller's machines, at one frontier of the views.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct FleetBody {
    region: Option<String>,
    /// The views' frontier (epoch ms).
    time: i64,
    /// The frontier's day (UTC), YYYY-MM-DD.
    day: String,
    totals: Totals,
    /// One per reason in `health`, over all machines.
    alert_count: i64,
    machines_with_alerts: usize,
    /// Each machine's own today (its location's calendar), exact decimal.
    today_revenue: String,
    low_stock_machines: usize,
    /// The 20 machines with the most sold-out, then low, slots.
    low_stock: Vec<LowStock>,
    /// Up to 20 machines `restock_needed` lists.
    needs_restock: Vec<Restock>,
    /// The 5 machines with the most revenue today.
    top_performing: Vec<TopMachine>,
    /// Up to 20 machines `maintenance_candidates` lists, the likeliest to fail first.
    maintenance: Vec<MaintenanceCandidate>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MaintenanceCandidate {
    machine_id: String,
    /// Of failing within the model's horizon (7 days), 0–1.
    failure_probability: f64,
    /// Over the model's threshold (70 %).
    flagged: bool,
    /// The signals that raised it, most first.
    reasons: Vec<String>,
}

/// Machines by status.
#[derive(Serialize, ToSchema)]
pub(super) struct Totals {
    total: usize,
    active: usize,
    maintenance: usize,
    offline: usize,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LowStock {
    machine_id: String,
    low_slots: usize,
    sold_out_slots: usize,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Restock {
    machine_id: String,
    /// How many of its slots will run out, from `restock_needed`.
    #[schema(value_type = Option<i64>)]
    slots: Json,
    #[schema(value_type = Option<f64>)]
    hours_to_first_empty: Json,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TopMachine {
    machine_id: String,
    /// Exact decimal.
    revenue: String,
}

/// Every machine of the caller's as a compact row, and the machines with alerts.
#[derive(Serialize, ToSchema)]
pub(super) struct FleetMap {
    /// The views' frontier (epoch ms).
    time: i64,
    /// The names of each row's cells.
    columns: [&'static str; 6],
    /// `[machineId, locationId, lat, lng, status, alertCount]` per machine.
    #[schema(value_type = Vec<Vec<Value>>)]
    machines: Vec<Json>,
    /// Up to 100 machines with alerts, lowest health score first.
    alerts: Vec<MapAlert>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MapAlert {
    machine_id: String,
    alerts: Vec<String>,
    #[serde(flatten)]
    health: HealthScore,
}

/// The machines `who` sees (in `region`, if given), with their client.
fn machines_in_scope(
    fleet: &Fleet,
    who: &Principal,
    region: Option<&str>,
) -> HashMap<String, Option<String>> {
    let registry = fleet.read();
    registry
        .machines
        .keys()
        .filter_map(|id| {
            let location = registry.machines[id]
                .location_id
                .as_ref()
                .and_then(|l| registry.locations.get(l));
            let client = location.map(|l| l.client_id.clone());
            let sees = match &who.tenant {
                crate::auth::Tenant::All => true,
                crate::auth::Tenant::Client(c) => client.as_deref() == Some(c.as_str()),
            };
            let in_region =
                region.is_none_or(|r| location.and_then(|l| l.region.as_deref()) == Some(r));
            (sees && in_region).then(|| (id.clone(), client))
        })
        .collect()
}

fn text(row: &Named<'_>, name: &str) -> String {
    row.text(name).unwrap_or_default()
}

/// `GET /api/dashboard/fleet?region=`: status totals, alerts, today's revenue, low stock,
/// machines to restock and the top sellers, over the caller's machines, at one frontier.
#[utoipa::path(
    get,
    path = "/api/dashboard/fleet",
    operation_id = "getFleet",
    tag = "dashboard",
    summary = "Fleet summary: status totals, alerts, today's revenue, low stock, top machines",
    params(Region),
    responses(
        (status = 200, description = "ok", body = FleetBody),
        (status = 400, description = "invalid query", body = ErrorBody),
        Unauthenticated,
    ),
)]
pub(super) async fn fleet(
    State(state): State<ApiState>,
    auth: Auth,
    ApiQuery(Region { region }): ApiQuery<Region>,
) -> Result<Response, ApiError> {
    let machines = machines_in_scope(&state.fleet, &auth.0, region.as_deref());
    let statuses: HashMap<String, MachineStatus> = {
        let registry = state.fleet.read();
        machines
            .keys()
            .map(|id| (id.clone(), registry.machines[id].status))
            .collect()
    };
    let scope = Scope::Machines(&statuses);
    let mut views = FleetSummary::views(scope).to_vec();
    views.push(vendflow_dataflows::maintenance::CANDIDATES.name);
    let snapshot = state.store.snapshot_of(&views);
    let summary = FleetSummary::of(&snapshot, scope)
        .map_err(|e| ApiError::internal(format!("fleet summary: {e}")))?;
    let today = summary.day;
    let rows = |view: &str| snapshot.named(view).into_iter().flatten();
    let mine = |r: &Named<'_>| machines.contains_key(text(r, "machine_id").as_str());
    // The lists: the machines with low stock, to restock, and the top sellers today. The two
    // large views (a row per slot, per machine-day) are read by positions resolved once.
    let bug = |view: &str| ApiError::internal(format!("{view} lacks a column the dashboard reads"));
    let owned = |row: &Row, at: usize| match row.cell(at) {
        Value::Text(t) if machines.contains_key(t.as_str()) => Some(t),
        _ => None,
    };
    let [id, low_at, sold_at] = INVENTORY
        .columns(["machine_id", "low_stock", "sold_out"])
        .ok_or_else(|| bug(INVENTORY.name))?;
    let mut low: HashMap<String, (usize, usize)> = HashMap::new();
    for r in snapshot.rows(INVENTORY.name).unwrap_or_default() {
        if let Some(machine) = owned(r, id) {
            let entry = low.entry(machine.into()).or_default();
            entry.0 += usize::from(r.cell(low_at) == Value::Bool(true));
            entry.1 += usize::from(r.cell(sold_at) == Value::Bool(true));
        }
    }
    let mut low: Vec<(String, usize, usize)> = low
        .into_iter()
        .filter(|(_, (l, _))| *l > 0)
        .map(|(m, (l, s))| (m, l, s))
        .collect();
    low.sort_by(|a, b| (b.2, b.1, &a.0).cmp(&(a.2, a.1, &b.0)));
    // Each machine's own today (its location's calendar).
    let [id, zone_at, day_at, revenue_at] = MACHINE_LOCAL_DAILY
        .columns(["machine_id", "time_zone", "day", "revenue"])
        .ok_or_else(|| bug(MACHINE_LOCAL_DAILY.name))?;
    let now = snapshot.frontier.ms();
    let mut revenue: Vec<(String, i64)> = snapshot
        .rows(MACHINE_LOCAL_DAILY.name)
        .unwrap_or_default()
        .iter()
        .filter(|r| is_local_today(r, zone_at, day_at, now))
        .filter_map(|r| match (owned(r, id), r.cell(revenue_at)) {
            (Some(machine), Value::Money(c)) => Some((machine.into(), c.0)),
            _ => None,
        })
        .collect();
    revenue.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let needs_restock = rows("restock_needed")
        .filter(mine)
        .take(20)
        .map(|r| Restock {
            machine_id: text(&r, "machine_id"),
            slots: cell(&r.get("slots")),
            hours_to_first_empty: cell(&r.get("hours_to_first_empty")),
        })
        .collect();
    let mut maintenance: Vec<MaintenanceCandidate> = rows("maintenance_candidates")
        .filter(mine)
        .map(|r| MaintenanceCandidate {
            machine_id: text(&r, "machine_id"),
            failure_probability: match r.get("failure_probability") {
                Value::Float(p) => p.0,
                _ => 0.0,
            },
            flagged: r.get("flagged") == Value::Bool(true),
            reasons: text(&r, "reasons")
                .split(vendflow_dataflows::maintenance::REASON_SEPARATOR)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
        .collect();
    maintenance.sort_by(|a, b| {
        b.failure_probability
            .total_cmp(&a.failure_probability)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
    });
    maintenance.truncate(20);
    let low_stock_machines = low.len();
    Ok(axum::Json(FleetBody {
        region,
        time: snapshot.frontier.ms(),
        day: vendflow_dataflows::Value::Date(today).render(),
        totals: Totals {
            total: summary.machines,
            active: summary.active,
            maintenance: summary.maintenance,
            offline: summary.offline,
        },
        alert_count: summary.alerts,
        machines_with_alerts: summary.machines_with_alerts,
        today_revenue: summary.revenue_today.to_string(),
        low_stock_machines,
        low_stock: low
            .into_iter()
            .take(20)
            .map(|(machine_id, low_slots, sold_out_slots)| LowStock {
                machine_id,
                low_slots,
                sold_out_slots,
            })
            .collect(),
        needs_restock,
        top_performing: revenue
            .into_iter()
            .take(5)
            .map(|(machine_id, c)| TopMachine {
                machine_id,
                revenue: Cents(c).to_string(),
            })
            .collect(),
        maintenance,
    })
    .into_response())
}

/// `GET /api/dashboard/map?region=`: every machine of the caller's with its location's
/// coordinates and live status, as compact rows `[machineId, locationId, lat, lng, status,
/// alertCount]` (50,000 machines are a few MB), and the machines with alerts, worst first.
#[utoipa::path(
    get,
    path = "/api/dashboard/map",
    operation_id = "getFleetMap",
    tag = "dashboard",
    summary = "Every machine with coordinates and live status, and the machines with alerts",
    params(Region),
    responses(
        (status = 200, description = "ok", body = FleetMap),
        (status = 400, description = "invalid query", body = ErrorBody),
        Unauthenticated,
    ),
)]
pub(super) async fn map(
    State(state): State<ApiState>,
    auth: Auth,
    ApiQuery(Region { region }): ApiQuery<Region>,
) -> Result<Response, ApiError> {
    let machines = machines_in_scope(&state.fleet, &auth.0, region.as_deref());
    let snapshot = state.store.snapshot_of(&["liveness", "health"]);
    let (liveness, health) = (
        by_machine(&snapshot, "liveness"),
        by_machine(&snapshot, "health"),
    );
    let registry = state.fleet.read();
    let mut ids: Vec<&String> = machines.keys().collect();
    ids.sort();
    let mut rows = Vec::with_capacity(ids.len());
    let mut alerting = Vec::new();
    for id in ids {
        let machine = &registry.machines[id];
        let location = machine
            .location_id
            .as_ref()
            .and_then(|l| registry.locations.get(l));
        let status = live_status(
            machine.status,
            liveness
                .get(id.as_str())
                .and_then(|r| r.text("status"))
                .as_deref(),
        );
        let row = health.get(id.as_str()).copied();
        let alerts = alerts_of(row);
        let coordinate = |micro: i64| Json::from(micro as f64 / 1e6);
        rows.push(json!([
            id,
            machine.location_id,
            location.map_or(Json::Null, |l| coordinate(l.lat.0)),
            location.map_or(Json::Null, |l| coordinate(l.lng.0)),
            status,
            alerts.len(),
        ]));
        if let Some(r) = row.filter(|_| !alerts.is_empty()) {
            alerting.push((
                r.int("score").unwrap_or(i64::MAX),
                MapAlert {
                    machine_id: id.clone(),
                    alerts,
                    health: HealthScore::of(&r),
                },
            ));
        }
    }
    // Lowest health score first: the worst machines lead the feed.
    alerting.sort_by_key(|(score, _)| *score);
    Ok(axum::Json(FleetMap {
        time: snapshot.frontier.ms(),
        columns: [
            "machineId",
            "locationId",
            "lat",
            "lng",
            "status",
            "alertCount",
        ],
        machines: rows,
        alerts: alerting.into_iter().take(100).map(|(_, a)| a).collect(),
    })
    .into_response())
}

/// What the stream's relay for one view turns a change into.
type Translate =
    Box<dyn FnMut(&Change, &HashMap<String, Option<String>>) -> Vec<(&'static str, Json)> + Send>;

/// Machines whose status changed: `status` events.
fn statuses() -> Translate {
    Box::new(|change, machines| {
        let named = |r| LIVENESS.named(r);
        let before: HashMap<String, String> = change
            .deleted
            .iter()
            .map(named)
            .map(|r| (text(&r, "machine_id"), text(&r, "status")))
            .collect();
        change
            .inserted
            .iter()
            .map(named)
            .filter(|r| machines.contains_key(text(r, "machine_id").as_str()))
            .filter(|r| before.get(&text(r, "machine_id")) != Some(&text(r, "status")))
            .map(|r| {
                (
                    "status",
                    json!({"machineId": text(&r, "machine_id"), "status": text(&r, "status"),
                           "previous": before.get(&text(&r, "machine_id")), "lastHeartbeat": cell(&r.get("last_heartbeat")),
                           "time": change.frontier}),
                )
            })
            .collect()
    })
}

/// Alerts a machine did not have before: `alert` events.
fn alerts() -> Translate {
    Box::new(|change, machines| {
        let named = |r| HEALTH.named(r);
        let before: HashMap<String, HashSet<String>> = change
            .deleted
            .iter()
            .map(named)
            .map(|r| {
                (
                    text(&r, "machine_id"),
                    alerts_of(Some(r)).into_iter().collect(),
                )
            })
            .collect();
        change
            .inserted
            .iter()
            .map(named)
            .filter(|r| machines.contains_key(text(r, "machine_id").as_str()))
            .filter_map(|r| {
                let now = alerts_of(Some(r));
                let id = text(&r, "machine_id");
                let new: Vec<&String> = now
                    .iter()
                    .filter(|a| !before.get(&id).is_some_and(|b| b.contains(*a)))
                    .collect();
                (!new.is_empty()).then(|| {
                    (
                        "alert",
                        json!({"machineId": id, "new": new, "alerts": now,
                               "score": cell(&r.get("score")), "grade": cell(&r.get("grade")), "time": change.frontier}),
                    )
                })
            })
            .collect()
    })
}

/// Sales as they land: `revenue` events with the machine's day (of its own calendar) and the
/// scope's today total (each machine's own today).
fn revenue() -> Translate {
    // (machine, zone, local day) → revenue, seeded by the first change (the snapshot).
    let mut known: HashMap<(String, String, i64), i64> = HashMap::new();
    Box::new(move |change, machines| {
        let now = change.frontier.ms();
        let mut out = Vec::new();
        let mut moved: HashMap<(String, i64), i64> = HashMap::new();
        let key = |r: &Named<'_>| {
            r.date("day")
                .map(|day| (text(r, "machine_id"), text(r, "time_zone"), day))
        };
        for r in change.deleted.iter().map(|r| MACHINE_LOCAL_DAILY.named(r)) {
            if let Some(k) = key(&r) {
                known.remove(&k);
            }
        }
        for r in change.inserted.iter().map(|r| MACHINE_LOCAL_DAILY.named(r)) {
            if let Some(k) = key(&r) {
                let cents = r.cents("revenue").unwrap_or(0);
                moved.insert((k.0.clone(), k.2), cents);
                known.insert(k, cents);
            }
        }
        let total: i64 = known
            .iter()
            .filter(|((m, zone, d), _)| {
                machines.contains_key(m)
                    && *d == vendflow_protocol::registry::local_day_in(now, zone)
            })
            .map(|(_, c)| c)
            .sum();
        for ((machine, day), cents) in moved {
            if machines.contains_key(&machine) {
                out.push((
                    "revenue",
                    json!({"machineId": machine, "day": Value::Date(day).render(),
                           "revenue": Cents(cents).to_string(), "todayRevenue": Cents(total).to_string(),
                           "time": change.frontier}),
                ));
            }
        }
        out
    })
}

/// Relays `subscription` through `translate` into `tx` until the client goes away.
/// Relays one view's changes as dashboard events until the client goes away (async: no thread
/// is held per subscriber).
async fn relay(
    mut subscription: Subscription,
    mut translate: Translate,
    scope: impl Fn() -> Arc<HashMap<String, Option<String>>>,
    tx: Sender<Result<Event, Infallible>>,
) {
    let mut first = true;
    loop {
        let change = tokio::select! {
            change = subscription.next() => change,
            () = tx.closed() => return,
        };
        match change {
            Ok(change) => {
                let machines = scope();
                let events = translate(&change, &machines);
                // The first change is the snapshot: it seeds the relay, the summary the page
                // loaded shows it.
                if std::mem::take(&mut first) {
                    continue;
                }
                for (kind, data) in events {
                    let event = Event::default().event(kind).data(data.to_string());
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
            Err(end) => {
                let _ = tx
                    .send(Ok(Event::default()
                        .event("error")
                        .data(json!({"error": end.to_string()}).to_string())))
                    .await;
                return;
            }
        }
    }
}

/// `GET /api/dashboard/stream?region=`: Server-Sent Events `status` (a machine's status
/// changed), `alert` (a machine has new alerts), `revenue` (a machine's day revenue moved,
/// with the caller's total for today), only about the caller's machines.
#[utoipa::path(
    get,
    path = "/api/dashboard/stream",
    operation_id = "streamDashboard",
    tag = "dashboard",
    summary = "Server-Sent Events: status, alert and revenue (token also as ?access_token=)",
    params(
        Region,
        ("access_token" = Option<String>, Query, description = "the token, for EventSource"),
    ),
    responses(
        (status = 200, description = "events `hello`, then `status`, `alert` and `revenue`, each a JSON object", body = String, content_type = "text/event-stream"),
        Unauthenticated,
        (status = 429, description = "too many open streams for this token", body = ErrorBody),
    ),
)]
pub(super) async fn stream(
    State(state): State<ApiState>,
    auth: Auth,
    ApiQuery(Region { region }): ApiQuery<Region>,
) -> Result<Response, ApiError> {
    let slot = state.streams.admit(&auth.0.token_id)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    let relays: [(&str, Translate); 3] = [
        ("liveness", statuses()),
        ("health", alerts()),
        ("revenue_machine_local_daily", revenue()),
    ];
    let fleet = state.fleet.clone();
    let who = Arc::new(auth.0);
    // The machines in scope, looked up again at most every few seconds (new registrations).
    let cache = Arc::new(std::sync::Mutex::new((
        std::time::Instant::now(),
        Arc::new(machines_in_scope(&fleet, &who, region.as_deref())),
    )));
    for (view, translate) in relays {
        let subscription = state
            .store
            .subscribe(view)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let (fleet, who, region, cache) =
            (fleet.clone(), who.clone(), region.clone(), cache.clone());
        let scope = move || {
            let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
            if c.0.elapsed() > Duration::from_secs(5) {
                *c = (
                    std::time::Instant::now(),
                    Arc::new(machines_in_scope(&fleet, &who, region.as_deref())),
                );
            }
            c.1.clone()
        };
        let (tx, slot) = (tx.clone(), slot.clone());
        tokio::spawn(async move {
            relay(subscription, translate, scope, tx).await;
            drop(slot);
        });
    }
    drop(tx);
    let hello = Event::default().event("hello").data(
        json!({"subscribed": ["status", "alert", "revenue"], "time": state.store.frontier()})
            .to_string(),
    );
    let stream = tokio_stream::StreamExt::chain(
        tokio_stream::once(Ok::<_, Infallible>(hello)),
        tokio_stream::wrappers::ReceiverStream::new(rx),
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

//! `GET /api/routes`: the restock crews' routes for their shift, and each crew's route sheet
//! (`/api/routes/{crew}/sheet.csv`, and a printable page at `/api/routes/{crew}/sheet`).
//!
//! The plan is the service planner's latest ([`crate::service::planner`]), the same one the
//! views `restock_routes` and `restock_loads` hold. A tenant's token sees only its machines'
//! stops (a crew with none of them is left out, and its van's kit counts only theirs).

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vendflow_routes::sheet::clock;
use vendflow_routes::{Plan, Route};

use super::{ApiError, ApiState, Auth, ErrorBody, Unauthenticated};

fn rfc3339(ms: i64) -> String {
    vendflow_protocol::Timestamp(ms).to_string()
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LoadBody {
    slot_number: u32,
    product_id: String,
    units: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct StopBody {
    /// 1 for the crew's first stop.
    stop: usize,
    machine_id: String,
    lat: f64,
    lng: f64,
    /// Estimated arrival and departure (RFC 3339, UTC).
    arrive: String,
    depart: String,
    /// Road kilometres from the previous stop (or the depot).
    leg_km: f64,
    /// A slot will be empty before the shift ends.
    urgent: bool,
    hours_to_empty: f64,
    /// What each slot will lack at the arrival (pre-kitting).
    loads: Vec<LoadBody>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct KitBody {
    product_id: String,
    units: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CrewBody {
    crew: String,
    region: String,
    depot_lat: f64,
    depot_lng: f64,
    /// Leaves the depot, and is back (RFC 3339).
    start: String,
    back: String,
    distance_km: f64,
    stops: Vec<StopBody>,
    /// Units per product to load into the van at the depot.
    kit: Vec<KitBody>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct UnassignedBody {
    machine_id: String,
    region: String,
    urgent: bool,
    reason: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RoutesBody {
    /// The shift's day (YYYY-MM-DD, UTC), start and end; null while there is no plan.
    date: Option<String>,
    shift_start: Option<String>,
    shift_end: Option<String>,
    /// The views' time the plan was made or last re-planned at.
    planned_at: Option<String>,
    /// Why there is no plan: no planner on this server, or none made yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    crews: Vec<CrewBody>,
    /// Machines that need a visit and have none this shift, with the reason.
    unassigned: Vec<UnassignedBody>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RoutesQuery {
    /// The shift's day (YYYY-MM-DD, UTC); default: the latest plan's.
    date: Option<String>,
    /// Only this region's crews.
    region: Option<String>,
}

/// The latest plan, or why there is none.
fn latest(state: &ApiState) -> Result<std::sync::Arc<Plan>, ApiError> {
    let Some(planner) = &state.routes else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_planner",
            "this server does not plan restock routes (it was started with --replan-secs 0)",
        ));
    };
    planner.latest().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_plan_yet",
            "no restock plan yet: the planner makes the first once the views hold inventory, then one every --replan-secs",
        )
    })
}

/// The plan's routes as the caller may see them: only its machines' stops.
fn visible(state: &ApiState, auth: &Auth, plan: &Plan) -> (Vec<Route>, Vec<UnassignedBody>) {
    let registry = state.fleet.read();
    let sees = |machine: &str| auth.sees(registry.machine_client(machine));
    let routes = plan
        .routes
        .iter()
        .map(|r| Route {
            visits: r
                .visits
                .iter()
                .filter(|v| sees(&v.machine_id))
                .cloned()
                .collect(),
            ..r.clone()
        })
        .filter(|r| !r.visits.is_empty())
        .collect();
    let unassigned = plan
        .unassigned
        .iter()
        .filter(|u| sees(&u.machine_id))
        .map(|u| UnassignedBody {
            machine_id: u.machine_id.clone(),
            region: u.region.clone(),
            urgent: u.urgent,
            reason: u.reason.clone(),
        })
        .collect();
    (routes, unassigned)
}

fn kit(route: &Route) -> Vec<KitBody> {
    route
        .kit()
        .into_iter()
        .map(|(product_id, units)| KitBody { product_id, units })
        .collect()
}

fn crew_body(route: &Route) -> CrewBody {
    CrewBody {
        crew: route.crew.clone(),
        region: route.region.clone(),
        depot_lat: route.depot.lat,
        depot_lng: route.depot.lng,
        start: rfc3339(route.start_ms),
        back: rfc3339(route.back_ms),
        distance_km: (route.distance_m / 100.0).round() / 10.0,
        stops: route
            .visits
            .iter()
            .enumerate()
            .map(|(i, v)| StopBody {
                stop: i + 1,
                machine_id: v.machine_id.clone(),
                lat: v.lat,
                lng: v.lng,
                arrive: rfc3339(v.arrive_ms),
                depart: rfc3339(v.depart_ms),
                leg_km: (v.leg_m / 100.0).round() / 10.0,
                urgent: v.urgent,
                hours_to_empty: (v.hours_to_empty * 10.0).round() / 10.0,
                loads: v
                    .loads
                    .iter()
                    .map(|l| LoadBody {
                        slot_number: l.slot_number,
                        product_id: l.product_id.clone(),
                        units: l.units,
                    })
                    .collect(),
            })
            .collect(),
        kit: kit(route),
    }
}

fn shift_date(plan: &Plan) -> String {
    chrono::DateTime::from_timestamp_millis(plan.shift_start_ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/api/routes",
    operation_id = "getRoutes",
    tag = "routes",
    summary = "The restock crews' routes for their shift: stops in order with arrival times and what to load",
    description = "The planner's latest plan (re-planned every --replan-secs: during the shift around what the crews have done). A tenant's token sees only its machines' stops.",
    params(RoutesQuery),
    responses(
        (status = 200, description = "the plan (with no crew and a `message` when this server plans no routes or has made no plan yet)", body = RoutesBody),
        (status = 400, description = "not a date", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "no plan for that date", body = ErrorBody),
    ),
)]
pub(super) async fn routes(
    State(state): State<ApiState>,
    auth: Auth,
    Query(query): Query<RoutesQuery>,
) -> Result<Response, ApiError> {
    if let Some(d) = &query.date {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| ApiError::invalid(format!("date {d:?} is not YYYY-MM-DD")))?;
    }
    let plan = match latest(&state) {
        Ok(plan) => plan,
        // No plan to show is an answer, not a failure: an empty plan that says why (a page
        // polling for routes does not fail before the first plan).
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
            let body = RoutesBody {
                date: None,
                shift_start: None,
                shift_end: None,
                planned_at: None,
                message: Some(e.message),
                crews: Vec::new(),
                unassigned: Vec::new(),
            };
            return Ok(axum::Json(body).into_response());
        }
        Err(e) => return Err(e),
    };
    let date = shift_date(&plan);
    if query.date.as_ref().is_some_and(|d| *d != date) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no restock plan for {}: the current plan is for the shift of {date}",
                query.date.as_deref().unwrap_or_default()
            ),
        ));
    }
    let (routes, mut unassigned) = visible(&state, &auth, &plan);
    let in_region = |r: &str| query.region.as_deref().is_none_or(|q| q == r);
    unassigned.retain(|u| in_region(&u.region));
    let body = RoutesBody {
        date: Some(date),
        shift_start: Some(rfc3339(plan.shift_start_ms)),
        shift_end: Some(rfc3339(plan.shift_end_ms)),
        planned_at: Some(rfc3339(plan.planned_at_ms)),
        message: None,
        crews: routes
            .iter()
            .filter(|r| in_region(&r.region))
            .map(crew_body)
            .collect(),
        unassigned,
    };
    Ok(axum::Json(body).into_response())
}

/// One crew's route as the caller may see it.
fn crew_route(
    state: &ApiState,
    auth: &Auth,
    crew: &str,
) -> Result<(Route, std::sync::Arc<Plan>), ApiError> {
    let plan = latest(state)?;
    let (routes, _) = visible(state, auth, &plan);
    let route = routes
        .into_iter()
        .find(|r| r.crew == crew)
        .ok_or_else(|| ApiError::not_found("crew", crew))?;
    Ok((route, plan))
}

#[utoipa::path(
    get,
    path = "/api/routes/{crew}/sheet.csv",
    operation_id = "getRouteSheetCsv",
    tag = "routes",
    summary = "A crew's route sheet as CSV: depot, stops in order with arrival and loads, depot",
    params(("crew" = String, Path, description = "the crew, e.g. north-03")),
    responses(
        (status = 200, description = "the sheet", content_type = "text/csv", body = String),
        Unauthenticated,
        (status = 404, description = "no such crew in the plan", body = ErrorBody),
        (status = 503, description = "no planner, or no plan yet", body = ErrorBody),
    ),
)]
pub(super) async fn sheet_csv(
    State(state): State<ApiState>,
    auth: Auth,
    Path(crew): Path<String>,
) -> Result<Response, ApiError> {
    let (route, _) = crew_route(&state, &auth, &crew)?;
    let csv = vendflow_routes::sheet::csv(&route).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"route-{}.csv\"", route.crew),
            ),
        ],
        csv,
    )
        .into_response())
}

/// Text made safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[utoipa::path(
    get,
    path = "/api/routes/{crew}/sheet",
    operation_id = "getRouteSheet",
    tag = "routes",
    summary = "A crew's route sheet as a printable page: the van's kit, then each stop with what to load",
    params(("crew" = String, Path, description = "the crew, e.g. north-03")),
    responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        Unauthenticated,
        (status = 404, description = "no such crew in the plan", body = ErrorBody),
        (status = 503, description = "no planner, or no plan yet", body = ErrorBody),
    ),
)]
pub(super) async fn sheet_page(
    State(state): State<ApiState>,
    auth: Auth,
    Path(crew): Path<String>,
) -> Result<Response, ApiError> {
    let (route, plan) = crew_route(&state, &auth, &crew)?;
    let mut html = String::new();
    html.push_str(&format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Route {crew}</title></head><body>\
         <h1>Route {crew}</h1><p>Region {region}. Shift {start} to {end} (UTC). Depot at {lat:.5}, {lng:.5}; \
         leave {leave}, back {back}; {km:.1} km, {stops} stops. Planned at {planned}.</p>",
        crew = escape(&route.crew),
        region = escape(&route.region),
        start = clock(plan.shift_start_ms),
        end = clock(plan.shift_end_ms),
        lat = route.depot.lat,
        lng = route.depot.lng,
        leave = clock(route.start_ms),
        back = clock(route.back_ms),
        km = route.distance_m / 1000.0,
        stops = route.visits.len(),
        planned = clock(plan.planned_at_ms),
    ));
    html.push_str("<h2>Load at the depot</h2><table border=\"1\" cellpadding=\"4\" cellspacing=\"0\"><tr><th>product</th><th>units</th></tr>");
    for k in kit(&route) {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&k.product_id),
            k.units
        ));
    }
    html.push_str(
        "</table><h2>Stops</h2><table border=\"1\" cellpadding=\"4\" cellspacing=\"0\" width=\"100%\"><tr><th>#</th><th>machine</th><th>arrive</th><th>km</th>\
         <th>runs out in (h)</th><th>load</th><th>done</th></tr>",
    );
    for (i, v) in route.visits.iter().enumerate() {
        html.push_str(&format!(
            "<tr><td>{n}</td><td>{machine}<br><small>{lat:.5}, {lng:.5}</small></td>\
             <td>{arrive}</td><td>{km:.1}</td><td>{hours:.1}{urgent}</td><td>{loads}</td><td>&#9744;</td></tr>",
            n = i + 1,
            machine = escape(&v.machine_id),
            lat = v.lat,
            lng = v.lng,
            arrive = clock(v.arrive_ms),
            km = v.leg_m / 1000.0,
            hours = v.hours_to_empty,
            urgent = if v.urgent { " <b>urgent</b>" } else { "" },
            loads = escape(&vendflow_routes::sheet::loads_text(&v.loads)).replace("; ", "<br>"),
        ));
    }
    html.push_str("</table></body></html>");
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

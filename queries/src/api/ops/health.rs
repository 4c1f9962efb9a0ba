//! `GET /health`: every part's status, 200 when all are ok, 503 when one is not.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use crate::api::ApiState;

/// Devices by live status, from the `liveness` view.
pub(super) fn devices(state: &ApiState) -> BTreeMap<&'static str, usize> {
    let snapshot = state.store.snapshot_of(&["liveness"]);
    let mut counts = BTreeMap::from([("active", 0), ("offline", 0), ("maintenance", 0)]);
    for row in snapshot.named("liveness").into_iter().flatten() {
        if let Some(status) = row.text("status")
            && let Some(n) = counts.get_mut(status.as_str())
        {
            *n += 1;
        }
    }
    counts
}

/// Every part's status.
#[derive(Serialize, ToSchema)]
pub(in crate::api) struct HealthReport {
    /// `ok`, or `degraded` when a component is not ok
    status: &'static str,
    engine: EngineHealth,
    /// The parts around the engine (source, lag, archive), each with its own `status`.
    #[schema(value_type = Object)]
    components: BTreeMap<String, Json>,
    devices: Devices,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct EngineHealth {
    status: &'static str,
    /// Ingestion time (epoch ms) every view is complete up to.
    frontier: i64,
    /// The frontier as RFC 3339.
    frontier_time: String,
}

/// Machines by live status.
#[derive(Serialize, ToSchema)]
struct Devices {
    online: usize,
    offline: usize,
    maintenance: usize,
    total: usize,
}

/// `GET /health`: 200 when every part is ok, 503 when one is not.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "operations",
    summary = "Engine, brokers, sink; devices online / offline / total (no token)",
    security(()),
    responses(
        (status = 200, description = "every part is ok", body = HealthReport),
        (status = 503, description = "a component is down", body = HealthReport),
    ),
)]
pub(in crate::api) async fn health(State(state): State<ApiState>) -> Response {
    let frontier = state.store.frontier();
    let components = state.health.components();
    let ok = components
        .values()
        .all(|c| c["status"].as_str() == Some("ok"));
    let d = devices(&state);
    let body = HealthReport {
        status: if ok { "ok" } else { "degraded" },
        engine: EngineHealth {
            status: "ok",
            frontier: frontier.ms(),
            frontier_time: frontier.to_rfc3339(),
        },
        components,
        devices: Devices {
            online: d["active"],
            offline: d["offline"],
            maintenance: d["maintenance"],
            total: d.values().sum::<usize>(),
        },
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

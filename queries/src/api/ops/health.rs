//! `GET /health`: every part's status, 200 when all are ok, 503 when one is not.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use vendflow_protocol::Timestamp;

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

/// `GET /health`: 200 when every part is ok, 503 when one is not.
pub(in crate::api) async fn health(State(state): State<ApiState>) -> Response {
    let frontier = state.store.frontier();
    let components = state.health.components();
    let ok = components
        .values()
        .all(|c| c["status"].as_str() == Some("ok"));
    let d = devices(&state);
    let online = d["active"];
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "engine": {
            "status": "ok",
            "frontier": frontier,
            "frontierTime": Timestamp(i64::try_from(frontier).unwrap_or(0)).to_rfc3339(),
        },
        "components": components,
        "devices": {
            "online": online, "offline": d["offline"], "maintenance": d["maintenance"],
            "total": d.values().sum::<usize>(),
        },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

//! `GET /metrics`: Prometheus text exposition.

use std::fmt::Write;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use vendflow_dataflows::CATALOG;
use vendflow_protocol::Timestamp;

use crate::api::ApiState;

use super::health::devices;

/// `GET /metrics`: Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics (no token)",
    security(()),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")),
)]
pub(in crate::api) async fn metrics(State(state): State<ApiState>) -> Response {
    let mut out = state.health.metrics();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    // Counted under the store's lock, not copied: a scrape must not hold back publication.
    let (frontier, rows) = state.store.row_counts();
    let age = (Timestamp::now() - frontier).max(0) as f64 / 1e3;
    out.push_str(
        "# HELP vendflow_view_frontier_ms Ingestion time (epoch ms) every view is complete up to.\n\
         # TYPE vendflow_view_frontier_ms gauge\n",
    );
    for def in CATALOG {
        let _ = writeln!(
            out,
            "vendflow_view_frontier_ms{{view=\"{}\"}} {}",
            def.name,
            frontier.ms()
        );
    }
    out.push_str(
        "# HELP vendflow_view_freshness_seconds Wall-clock time since the ingestion time each view reflects (views publish together).\n\
         # TYPE vendflow_view_freshness_seconds gauge\n",
    );
    for def in CATALOG {
        let _ = writeln!(
            out,
            "vendflow_view_freshness_seconds{{view=\"{}\"}} {age}",
            def.name
        );
    }
    out.push_str("# HELP vendflow_view_rows Rows in each view.\n# TYPE vendflow_view_rows gauge\n");
    for (name, rows) in rows {
        let _ = writeln!(out, "vendflow_view_rows{{view=\"{name}\"}} {rows}");
    }
    out.push_str(
        "# HELP vendflow_view_rows_on_disk Rows of a view kept on disk, of vendflow_view_rows (views that keep their old rows there).\n\
         # TYPE vendflow_view_rows_on_disk gauge\n",
    );
    for (name, rows) in state.store.rows_on_disk() {
        let _ = writeln!(out, "vendflow_view_rows_on_disk{{view=\"{name}\"}} {rows}");
    }
    if let Some(operators) = &state.operators {
        let sizes = operators.current();
        type Pick = fn(&(String, usize, usize)) -> usize;
        let gauges: [(&str, &str, Pick); 2] = [
            (
                "keys",
                "Keys each keyed operator of the engine holds in memory, over its workers.",
                |s| s.1,
            ),
            (
                "bytes",
                "Bytes of each keyed operator's tables in memory, over its workers (their slots, not what a state points to on the heap).",
                |s| s.2,
            ),
        ];
        for (gauge, help, pick) in gauges {
            let _ = write!(
                out,
                "# HELP vendflow_operator_state_{gauge} {help}\n# TYPE vendflow_operator_state_{gauge} gauge\n"
            );
            for size in &sizes {
                let _ = writeln!(
                    out,
                    "vendflow_operator_state_{gauge}{{operator=\"{}\"}} {}",
                    size.0,
                    pick(size)
                );
            }
        }
    }
    out.push_str(
        "# HELP vendflow_devices Machines by live status.\n# TYPE vendflow_devices gauge\n",
    );
    for (status, n) in devices(&state) {
        let _ = writeln!(out, "vendflow_devices{{status=\"{status}\"}} {n}");
    }
    if let Some(planner) = &state.routes {
        use std::sync::atomic::Ordering;
        let plan = planner.latest();
        let _ = write!(
            out,
            "# HELP vendflow_routes_plans_total Restock plans made (and re-plans).\n\
             # TYPE vendflow_routes_plans_total counter\nvendflow_routes_plans_total {}\n\
             # HELP vendflow_routes_failed_total Restock plans that failed (logged).\n\
             # TYPE vendflow_routes_failed_total counter\nvendflow_routes_failed_total {}\n\
             # HELP vendflow_routes_crews Crews with a route in the latest plan.\n\
             # TYPE vendflow_routes_crews gauge\nvendflow_routes_crews {}\n\
             # HELP vendflow_routes_visits Machines visited in the latest plan.\n\
             # TYPE vendflow_routes_visits gauge\nvendflow_routes_visits {}\n\
             # HELP vendflow_routes_unassigned Machines that need a visit and have none this shift.\n\
             # TYPE vendflow_routes_unassigned gauge\nvendflow_routes_unassigned {}\n",
            planner.planned.load(Ordering::Relaxed),
            planner.failed.load(Ordering::Relaxed),
            plan.as_ref().map_or(0, |p| p.routes.len()),
            plan.as_ref().map_or(0, |p| p.visits()),
            plan.as_ref().map_or(0, |p| p.unassigned.len()),
        );
    }
    out.push_str(&state.sql.latency().prometheus());
    out.push('\n');
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

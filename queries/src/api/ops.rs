//! `/health`, `/metrics` (Prometheus text) and the OpenAPI document.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use vendflow_dataflows::CATALOG;
use vendflow_protocol::Timestamp;

use super::ApiState;

/// What the binary knows about the parts around the engine.
pub trait Health: Send + Sync {
    /// Components by name (`brokers`, `sink`, …), each an object with a `status` of `ok` or
    /// something else that says what is wrong.
    fn components(&self) -> BTreeMap<String, Json>;
    /// Prometheus text of the sources and sinks: events in, rejected, lag.
    fn metrics(&self) -> String;
}

/// The engine alone (tests, servers without sources of their own).
pub struct EngineOnly;

impl Health for EngineOnly {
    fn components(&self) -> BTreeMap<String, Json> {
        BTreeMap::new()
    }

    fn metrics(&self) -> String {
        String::new()
    }
}

/// What a source has taken in so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct SourceCounters {
    pub messages: u64,
    pub events: u64,
    pub refused: u64,
}

/// The latest lag measurement (taken in the background: it asks the brokers): per partition,
/// `(topic, partition, the engine's next offset, the log's end)`.
#[derive(Clone, Debug)]
pub struct LagReading {
    pub taken: std::time::Instant,
    pub result: Result<Vec<(String, i32, i64, i64)>, String>,
}

/// What the archive has written so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchiveCounters {
    pub files: u64,
    pub events: u64,
    pub errors: u64,
}

/// Health and metrics of a running pipeline: its source (`mqtt` in the demo, `kafka` with
/// `run`), the source's lag when it has one, and the Parquet archive when there is one.
pub struct Pipeline {
    pub source: &'static str,
    /// Where the source reads (broker addresses), for people reading `/health`.
    pub address: String,
    pub counters: Box<dyn Fn() -> SourceCounters + Send + Sync>,
    pub lag: Option<Box<dyn Fn() -> Option<LagReading> + Send + Sync>>,
    pub archive: Option<Box<dyn Fn() -> ArchiveCounters + Send + Sync>>,
    /// The archive's error count last seen to change, and when: an error makes the archive
    /// `failing` for five minutes, not for ever.
    archive_seen: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// Messages of one partition the engine has not read yet.
fn lag_of((_, _, position, end): &(String, i32, i64, i64)) -> i64 {
    (end - position).max(0)
}

/// How old a lag reading may be before the brokers count as unreachable.
const LAG_STALE: std::time::Duration = std::time::Duration::from_secs(30);
const ARCHIVE_FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(300);

impl Pipeline {
    pub fn new(
        source: &'static str,
        address: impl Into<String>,
        counters: Box<dyn Fn() -> SourceCounters + Send + Sync>,
    ) -> Pipeline {
        Pipeline {
            source,
            address: address.into(),
            counters,
            lag: None,
            archive: None,
            archive_seen: std::sync::Mutex::new((0, None)),
        }
    }

    pub fn with_lag(mut self, lag: Box<dyn Fn() -> Option<LagReading> + Send + Sync>) -> Pipeline {
        self.lag = Some(lag);
        self
    }

    pub fn with_archive(
        mut self,
        archive: Box<dyn Fn() -> ArchiveCounters + Send + Sync>,
    ) -> Pipeline {
        self.archive = Some(archive);
        self
    }

    fn source_json(&self) -> Json {
        let c = (self.counters)();
        let mut out = json!({
            "status": "ok", "address": self.address,
            "messages": c.messages, "events": c.events, "refused": c.refused,
        });
        if let Some(lag) = &self.lag {
            match lag() {
                None => out["status"] = json!("starting: lag not measured yet"),
                Some(reading) => {
                    let age = reading.taken.elapsed();
                    match &reading.result {
                        Err(e) => out["status"] = json!(format!("unreachable: {e}")),
                        Ok(_) if age > LAG_STALE => {
                            out["status"] = json!(format!(
                                "unreachable: no answer from the brokers for {} s",
                                age.as_secs()
                            ))
                        }
                        Ok(parts) => {
                            out["lag"] = json!(parts.iter().map(lag_of).sum::<i64>());
                            out["partitions"] = parts
                                .iter()
                                .map(|p @ (topic, partition, at, end)| json!({"topic": topic, "partition": partition, "position": at, "end": end, "lag": lag_of(p)}))
                                .collect();
                        }
                    }
                    out["lagMeasuredSecondsAgo"] = json!(age.as_secs_f64());
                }
            }
        }
        out
    }

    fn archive_json(&self, archive: &(dyn Fn() -> ArchiveCounters + Send + Sync)) -> Json {
        let a = archive();
        let mut seen = self.archive_seen.lock().unwrap_or_else(|e| e.into_inner());
        if a.errors != seen.0 {
            *seen = (a.errors, Some(std::time::Instant::now()));
        }
        let failing = seen.1.is_some_and(|at| at.elapsed() < ARCHIVE_FAILING_FOR);
        json!({
            "status": if failing {
                format!("failing: {} write error(s), the latest {} s ago (see the log)", a.errors, seen.1.map_or(0, |t| t.elapsed().as_secs()))
            } else {
                "ok".to_owned()
            },
            "filesWritten": a.files, "eventsWritten": a.events, "errors": a.errors,
        })
    }
}

impl Health for Pipeline {
    fn components(&self) -> BTreeMap<String, Json> {
        let mut out = BTreeMap::from([(self.source.to_owned(), self.source_json())]);
        if let Some(archive) = &self.archive {
            out.insert("archive".to_owned(), self.archive_json(archive.as_ref()));
        }
        out
    }

    fn metrics(&self) -> String {
        let c = (self.counters)();
        let source = self.source;
        let mut out = String::new();
        for (name, help, value) in [
            (
                "messages",
                "Messages (envelopes) the source consumed.",
                c.messages,
            ),
            (
                "events",
                "Events the source fed to the dataflows.",
                c.events,
            ),
            (
                "refused",
                "Records the source refused (each is an error record).",
                c.refused,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP vendflow_source_{name}_total {help}\n# TYPE vendflow_source_{name}_total counter\n\
                 vendflow_source_{name}_total{{source=\"{source}\"}} {value}\n"
            );
        }
        if let Some(Some(LagReading {
            result: Ok(parts), ..
        })) = self.lag.as_ref().map(|l| l())
        {
            out.push_str(
                "# HELP vendflow_source_lag_messages Messages in the log the engine has not read yet, per partition.\n\
                 # TYPE vendflow_source_lag_messages gauge\n",
            );
            for p @ (topic, partition, _, _) in &parts {
                let _ = writeln!(
                    out,
                    "vendflow_source_lag_messages{{source=\"{source}\",topic=\"{topic}\",partition=\"{partition}\"}} {}",
                    lag_of(p)
                );
            }
        }
        if let Some(archive) = &self.archive {
            let a = archive();
            for (name, help, value) in [
                ("files_written", "Parquet files the archive wrote.", a.files),
                ("events_written", "Events the archive wrote.", a.events),
                (
                    "errors",
                    "Archive writes that failed (retried at the next flush).",
                    a.errors,
                ),
            ] {
                let _ = write!(
                    out,
                    "# HELP vendflow_archive_{name}_total {help}\n# TYPE vendflow_archive_{name}_total counter\n\
                     vendflow_archive_{name}_total {value}\n"
                );
            }
        }
        out
    }
}

/// Devices by live status, from the `liveness` view.
fn devices(state: &ApiState) -> BTreeMap<&'static str, usize> {
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
pub(super) async fn health(State(state): State<ApiState>) -> Response {
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

/// `GET /metrics`: Prometheus text exposition.
pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
    let mut out = state.health.metrics();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    // Counted under the store's lock, not copied: a scrape must not hold back publication.
    let (frontier, rows) = state.store.row_counts();
    let age = (Timestamp::now().0 - i64::try_from(frontier).unwrap_or(0)).max(0) as f64 / 1e3;
    out.push_str(
        "# HELP vendflow_view_frontier_ms Ingestion time (epoch ms) every view is complete up to.\n\
         # TYPE vendflow_view_frontier_ms gauge\n",
    );
    for def in CATALOG {
        let _ = writeln!(
            out,
            "vendflow_view_frontier_ms{{view=\"{}\"}} {frontier}",
            def.name
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
        "# HELP vendflow_devices Machines by live status.\n# TYPE vendflow_devices gauge\n",
    );
    for (status, n) in devices(&state) {
        let _ = writeln!(out, "vendflow_devices{{status=\"{status}\"}} {n}");
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

pub(super) async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

/// One operation of the document: method, path, summary, least role, request and answer
/// schemas, refusals.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    role: Option<&'static str>,
    request: Option<&'static str>,
    answer: (u16, &'static str),
    errors: &'static [u16],
    params: &'static [(&'static str, &'static str, &'static str)],
}

const OPS: &[Op] = &[
    Op {
        method: "post",
        path: "/api/machines",
        summary: "Register a machine at a location; answers its secret, shown once",
        role: Some("admin"),
        request: Some("NewMachine"),
        answer: (201, "MachineCreated"),
        errors: &[400, 401, 403, 404, 409, 413],
        params: &[],
    },
    Op {
        method: "get",
        path: "/api/machines",
        summary: "List machines, filtered and paginated",
        role: None,
        request: None,
        answer: (200, "MachineList"),
        errors: &[400, 401],
        params: &[
            ("status", "query", "active, maintenance or offline"),
            ("locationId", "query", "a location"),
            ("region", "query", "a region"),
            ("clientId", "query", "a client"),
            ("page", "query", "1-based page"),
            ("pageSize", "query", "1 to 500, default 50"),
        ],
    },
    Op {
        method: "get",
        path: "/api/machines/{id}",
        summary: "A machine: status, last heartbeat, temperature, location, inventory, alerts",
        role: None,
        request: None,
        answer: (200, "Machine"),
        errors: &[401, 404],
        params: &[("id", "path", "machine id")],
    },
    Op {
        method: "patch",
        path: "/api/machines/{id}",
        summary: "Put a machine into maintenance or back; set its firmware version",
        role: Some("operator"),
        request: Some("MachinePatch"),
        answer: (200, "Machine"),
        errors: &[400, 401, 403, 404, 413],
        params: &[("id", "path", "machine id")],
    },
    Op {
        method: "post",
        path: "/api/locations",
        summary: "Add a client's location",
        role: Some("admin"),
        request: Some("NewLocation"),
        answer: (201, "Location"),
        errors: &[400, 401, 403, 409, 413],
        params: &[],
    },
    Op {
        method: "get",
        path: "/api/locations",
        summary: "The caller's locations",
        role: None,
        request: None,
        answer: (200, "LocationList"),
        errors: &[401],
        params: &[],
    },
    Op {
        method: "post",
        path: "/api/leases",
        summary: "Sign a lease (DRAFT): machine exists, no overlapping active lease, start < end, term of at least 3 months",
        role: Some("admin"),
        request: Some("NewLease"),
        answer: (201, "LeaseCreated"),
        errors: &[400, 401, 403, 404, 409, 413],
        params: &[],
    },
    Op {
        method: "get",
        path: "/api/leases",
        summary: "List leases",
        role: None,
        request: None,
        answer: (200, "LeaseList"),
        errors: &[400, 401],
        params: &[
            ("machineId", "query", "a machine"),
            (
                "status",
                "query",
                "DRAFT, ACTIVE, RENEWED, EXPIRED or TERMINATED",
            ),
        ],
    },
    Op {
        method: "get",
        path: "/api/leases/{id}",
        summary: "A lease and its lifecycle events",
        role: None,
        request: None,
        answer: (200, "Lease"),
        errors: &[401, 404],
        params: &[("id", "path", "lease id")],
    },
    Op {
        method: "post",
        path: "/api/leases/{id}/activate",
        summary: "DRAFT to ACTIVE",
        role: Some("admin"),
        request: None,
        answer: (200, "Lease"),
        errors: &[401, 403, 404, 409],
        params: &[("id", "path", "lease id")],
    },
    Op {
        method: "post",
        path: "/api/leases/{id}/renew",
        summary: "ACTIVE to RENEWED, creating the next term",
        role: Some("admin"),
        request: None,
        answer: (200, "Lease"),
        errors: &[401, 403, 404, 409],
        params: &[("id", "path", "lease id")],
    },
    Op {
        method: "post",
        path: "/api/leases/{id}/terminate",
        summary: "DRAFT or ACTIVE to TERMINATED",
        role: Some("admin"),
        request: Some("Termination"),
        answer: (200, "Lease"),
        errors: &[400, 401, 403, 404, 409],
        params: &[("id", "path", "lease id")],
    },
    Op {
        method: "get",
        path: "/api/leases/{id}/invoices",
        summary: "The invoice of a month: monthlyRate + machine revenue in the month x revenueSharePercent / 100",
        role: None,
        request: None,
        answer: (200, "Invoice"),
        errors: &[400, 401, 404],
        params: &[("id", "path", "lease id"), ("month", "query", "YYYY-MM")],
    },
    Op {
        method: "get",
        path: "/api/dashboard/fleet",
        summary: "Fleet summary: status totals, alerts, today's revenue, low stock, top machines",
        role: None,
        request: None,
        answer: (200, "Fleet"),
        errors: &[400, 401],
        params: &[("region", "query", "a region")],
    },
    Op {
        method: "get",
        path: "/api/dashboard/map",
        summary: "Every machine with coordinates and live status, and the machines with alerts",
        role: None,
        request: None,
        answer: (200, "FleetMap"),
        errors: &[400, 401],
        params: &[("region", "query", "a region")],
    },
    Op {
        method: "get",
        path: "/api/dashboard/stream",
        summary: "Server-Sent Events: status, alert and revenue (token also as ?access_token=)",
        role: None,
        request: None,
        answer: (200, "EventStream"),
        errors: &[401],
        params: &[
            ("region", "query", "a region"),
            ("access_token", "query", "the token, for EventSource"),
        ],
    },
    Op {
        method: "get",
        path: "/api/whoami",
        summary: "The caller's role and tenant",
        role: None,
        request: None,
        answer: (200, "Whoami"),
        errors: &[401],
        params: &[],
    },
    Op {
        method: "get",
        path: "/health",
        summary: "Engine, brokers, sink; devices online / offline / total (no token)",
        role: None,
        request: None,
        answer: (200, "Health"),
        errors: &[503],
        params: &[],
    },
    Op {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics (no token)",
        role: None,
        request: None,
        answer: (200, "Text"),
        errors: &[],
        params: &[],
    },
    Op {
        method: "get",
        path: "/api/openapi.json",
        summary: "This document (no token)",
        role: None,
        request: None,
        answer: (200, "Object"),
        errors: &[],
        params: &[],
    },
    Op {
        method: "get",
        path: "/views",
        summary: "The views the caller may read",
        role: None,
        request: None,
        answer: (200, "Object"),
        errors: &[401],
        params: &[],
    },
    Op {
        method: "get",
        path: "/views/{name}",
        summary: "A view's rows (the caller's)",
        role: None,
        request: None,
        answer: (200, "Object"),
        errors: &[401, 403, 404],
        params: &[("name", "path", "view name")],
    },
    Op {
        method: "get",
        path: "/views/{name}/subscribe",
        summary: "Server-Sent Events: a view's snapshot then its changes",
        role: None,
        request: None,
        answer: (200, "EventStream"),
        errors: &[400, 401, 403, 404],
        params: &[
            ("name", "path", "view name"),
            ("where", "query", "SQL condition on the view's columns"),
            ("access_token", "query", "the token, for EventSource"),
        ],
    },
    Op {
        method: "post",
        path: "/sql",
        summary: "A read-only SQL query over one snapshot (JSON, CSV or Arrow)",
        role: None,
        request: Some("Sql"),
        answer: (200, "Object"),
        errors: &[400, 401, 403, 408],
        params: &[],
    },
];

fn reason(code: u16) -> &'static str {
    match code {
        400 => "invalid request (validation errors in details)",
        401 => "missing or unknown token",
        403 => "the token's role or tenant does not allow it",
        404 => "not found (or another tenant's)",
        408 => "over the query time limit",
        409 => "conflicts with the current state",
        413 => "body too large",
        503 => "a component is down",
        _ => "error",
    }
}

fn schemas() -> Json {
    let s = |t: &str| json!({"type": t});
    // OpenAPI 3.0 wants `required` absent rather than empty.
    let obj = |props: Json, required: &[&str]| {
        if required.is_empty() {
            json!({"type": "object", "properties": props})
        } else {
            json!({"type": "object", "properties": props, "required": required})
        }
    };
    let money = json!({"type": "string", "description": "exact decimal, e.g. 2.50"});
    json!({
        "Error": obj(json!({
            "error": obj(json!({"code": s("string"), "message": s("string"), "details": {}, "timestamp": s("string"), "requestId": s("string")}), &["code", "message", "timestamp", "requestId"]),
            "success": {"type": "boolean", "enum": [false]},
        }), &["error", "success"]),
        "NewSlot": obj(json!({"slotNumber": s("integer"), "productId": s("string"), "maxCapacity": s("integer"), "price": {"type": "number", "description": "at most 2 decimals"}, "lowStockThreshold": s("integer")}), &["slotNumber", "productId", "maxCapacity", "price"]),
        "NewMachine": obj(json!({"machineId": s("string"), "serialNumber": s("string"), "model": s("string"), "locationId": s("string"), "firmwareVersion": s("string"), "slots": {"type": "array", "items": {"$ref": "#/components/schemas/NewSlot"}}}), &["serialNumber", "model", "locationId", "slots"]),
        "MachineCreated": obj(json!({"machineId": s("string"), "status": s("string"), "registeredAt": s("string"), "machineSecret": s("string")}), &["machineId", "status", "registeredAt", "machineSecret"]),
        "MachinePatch": obj(json!({"status": {"type": "string", "enum": ["active", "maintenance"]}, "firmwareVersion": s("string")}), &[]),
        "Machine": obj(json!({"machineId": s("string"), "serialNumber": s("string"), "model": s("string"), "status": s("string"), "lastHeartbeat": {"type": "string", "nullable": true}, "temperature": {"type": "string", "nullable": true}, "location": {"$ref": "#/components/schemas/Location"}, "inventory": {"type": "array", "items": s("object")}, "alerts": {"type": "array", "items": s("string")}, "alertCount": s("integer")}), &["machineId", "status", "inventory", "alerts"]),
        "MachineList": obj(json!({"items": {"type": "array", "items": s("object")}, "page": s("integer"), "pageSize": s("integer"), "total": s("integer")}), &["items", "page", "pageSize", "total"]),
        "NewLocation": obj(json!({"locationId": s("string"), "clientId": s("string"), "address": s("string"), "lat": s("number"), "lng": s("number"), "type": {"type": "string", "enum": ["office", "hospital", "airport", "gym", "other"]}, "region": s("string")}), &["address", "lat", "lng"]),
        "Location": obj(json!({"locationId": s("string"), "clientId": s("string"), "address": s("string"), "lat": s("number"), "lng": s("number"), "type": s("string"), "region": {"type": "string", "nullable": true}}), &["locationId", "clientId"]),
        "LocationList": obj(json!({"items": {"type": "array", "items": {"$ref": "#/components/schemas/Location"}}, "total": s("integer")}), &["items"]),
        "NewLease": obj(json!({"leaseId": s("string"), "machineId": s("string"), "clientId": s("string"), "start": {"type": "string", "format": "date"}, "end": {"type": "string", "format": "date"}, "monthlyRate": s("number"), "revenueSharePercent": s("number"), "autoRenew": s("boolean")}), &["machineId", "start", "end", "monthlyRate", "revenueSharePercent"]),
        "LeaseCreated": obj(json!({"leaseId": s("string"), "status": s("string")}), &["leaseId", "status"]),
        "Lease": obj(json!({"leaseId": s("string"), "clientId": s("string"), "machineId": s("string"), "start": s("string"), "end": s("string"), "monthlyRate": money, "revenueSharePercent": s("string"), "status": {"type": "string", "enum": ["DRAFT", "ACTIVE", "RENEWED", "EXPIRED", "TERMINATED"]}, "autoRenew": s("boolean"), "events": {"type": "array", "items": s("object")}}), &["leaseId", "status"]),
        "LeaseList": obj(json!({"items": {"type": "array", "items": {"$ref": "#/components/schemas/Lease"}}, "total": s("integer")}), &["items"]),
        "Termination": obj(json!({"reason": s("string")}), &[]),
        "Invoice": obj(json!({"leaseId": s("string"), "month": s("string"), "monthlyRate": money, "machineRevenue": money, "revenueSharePercent": s("string"), "revenueShare": money, "total": money}), &["leaseId", "month", "total"]),
        "Fleet": obj(json!({"totals": s("object"), "alertCount": s("integer"), "todayRevenue": money, "lowStockMachines": s("integer"), "topPerforming": {"type": "array", "items": s("object")}}), &["totals", "alertCount", "todayRevenue", "lowStockMachines", "topPerforming"]),
        "FleetMap": obj(json!({"time": s("integer"), "columns": {"type": "array", "items": s("string")}, "machines": {"type": "array", "items": {"type": "array", "items": {}}}, "alerts": {"type": "array", "items": s("object")}}), &["columns", "machines", "alerts"]),
        "Health": obj(json!({"status": s("string"), "engine": s("object"), "components": s("object"), "devices": obj(json!({"online": s("integer"), "offline": s("integer"), "total": s("integer")}), &["online", "offline", "total"])}), &["status", "engine", "devices"]),
        "Whoami": obj(json!({"role": s("string"), "tenant": s("string")}), &["role", "tenant"]),
        "Sql": obj(json!({"sql": s("string")}), &["sql"]),
        "Object": s("object"),
        "Text": s("string"),
        "EventStream": {"type": "string", "description": "text/event-stream"},
    })
}

/// The OpenAPI 3.0 document of every route.
pub fn openapi() -> Json {
    let mut paths = serde_json::Map::new();
    for op in OPS {
        let mut responses = serde_json::Map::new();
        let content_type = match op.answer.1 {
            "EventStream" => "text/event-stream",
            "Text" => "text/plain",
            _ => "application/json",
        };
        responses.insert(
            op.answer.0.to_string(),
            json!({"description": "ok", "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{}", op.answer.1)}}}}),
        );
        for code in op.errors {
            responses.insert(
                code.to_string(),
                json!({"description": reason(*code), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        let open = matches!(op.path, "/health" | "/metrics" | "/api/openapi.json");
        let mut operation = json!({
            "summary": op.summary,
            "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', '.'], "_")),
            "responses": responses,
            "parameters": op.params.iter().map(|(name, at, description)| json!({
                "name": name, "in": at, "required": *at == "path", "description": description,
                "schema": {"type": "string"},
            })).collect::<Vec<_>>(),
        });
        if open {
            operation["security"] = json!([]);
        }
        if let Some(role) = op.role {
            operation["description"] = json!(format!("Needs a token with role {role} or above."));
        }
        if let Some(request) = op.request {
            let content = if request == "Sql" {
                json!({"application/json": {"schema": {"$ref": "#/components/schemas/Sql"}}, "text/plain": {"schema": {"type": "string"}}})
            } else {
                json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{request}")}}})
            };
            operation["requestBody"] =
                json!({"required": request != "Termination", "content": content});
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "vendflow",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Fleet registry, leases, dashboard and views of the vendflow engine. Errors: {\"error\":{code,message,details,timestamp,requestId},\"success\":false}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "vf_… token from `vendflow token create`"}},
        },
        "security": [{"bearer": []}],
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_pipeline_reports_its_source_lag_and_archive() {
        let lag: Arc<Mutex<Option<LagReading>>> = Arc::new(Mutex::new(None));
        let errors = Arc::new(AtomicU64::new(0));
        let (l, e) = (lag.clone(), errors.clone());
        let pipeline = Pipeline::new(
            "kafka",
            "127.0.0.1:9092",
            Box::new(|| SourceCounters {
                messages: 7,
                events: 9,
                refused: 1,
            }),
        )
        .with_lag(Box::new(move || {
            l.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }))
        .with_archive(Box::new(move || ArchiveCounters {
            files: 2,
            events: 9,
            errors: e.load(Ordering::SeqCst),
        }));
        let status = |c: &BTreeMap<String, Json>, part: &str| {
            c[part]["status"].as_str().unwrap_or_default().to_owned()
        };
        // Not measured yet, then measured, then failing, then stale.
        let c = pipeline.components();
        assert!(status(&c, "kafka").starts_with("starting"), "{c:?}");
        *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagReading {
            taken: Instant::now(),
            result: Ok(vec![
                ("machine-telemetry".into(), 0, 10, 15),
                ("machine-telemetry".into(), 1, 4, 4),
            ]),
        });
        let c = pipeline.components();
        assert_eq!(status(&c, "kafka"), "ok");
        assert_eq!(c["kafka"]["lag"], 5);
        assert_eq!(status(&c, "archive"), "ok");
        let metrics = pipeline.metrics();
        for line in [
            "vendflow_source_messages_total{source=\"kafka\"} 7",
            "vendflow_source_refused_total{source=\"kafka\"} 1",
            "vendflow_source_lag_messages{source=\"kafka\",topic=\"machine-telemetry\",partition=\"0\"} 5",
            "vendflow_archive_files_written_total 2",
        ] {
            assert!(metrics.contains(line), "{line} missing:\n{metrics}");
        }
        errors.store(1, Ordering::SeqCst);
        assert!(status(&pipeline.components(), "archive").starts_with("failing: 1 write error"));
        *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagReading {
            taken: Instant::now() - Duration::from_secs(60),
            result: Ok(Vec::new()),
        });
        assert!(status(&pipeline.components(), "kafka").starts_with("unreachable"));
        *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagReading {
            taken: Instant::now(),
            result: Err("broker down".into()),
        });
        assert_eq!(
            status(&pipeline.components(), "kafka"),
            "unreachable: broker down"
        );
    }
}

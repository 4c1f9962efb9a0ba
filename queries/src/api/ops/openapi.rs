//! The OpenAPI document of every route, checked against the router by a test and by
//! openapi-spec-validator.

use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

pub(in crate::api) async fn openapi_json() -> Response {
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
        method: "delete",
        path: "/api/machines/{id}",
        summary: "Take a machine out of the registry (decommissioned); refused while a lease on it is in force",
        role: Some("admin"),
        request: None,
        answer: (204, "None"),
        errors: &[401, 403, 404, 409],
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
        method: "delete",
        path: "/api/locations/{id}",
        summary: "Remove a location no machine is at",
        role: Some("admin"),
        request: None,
        answer: (204, "None"),
        errors: &[401, 403, 404, 409],
        params: &[("id", "path", "location id")],
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
        "NewLocation": obj(json!({"locationId": s("string"), "clientId": s("string"), "address": s("string"), "lat": s("number"), "lng": s("number"), "type": {"type": "string", "enum": ["office", "hospital", "airport", "gym", "other"]}, "region": s("string"), "timeZone": s("string")}), &["address", "lat", "lng"]),
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
        let answer = if op.answer.1 == "None" {
            json!({"description": "done; no content"})
        } else {
            json!({"description": "ok", "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{}", op.answer.1)}}}})
        };
        responses.insert(op.answer.0.to_string(), answer);
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

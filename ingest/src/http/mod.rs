//! HTTPS telemetry: `POST /api/telemetry` for machines that speak HTTP instead of MQTT.
//!
//! Headers `X-Machine-Id` and `X-Machine-Token` (the machine's secret, checked against its stored
//! hash), body = the signed envelope. The same checks as over MQTT ([`crate::auth::Verifier`]);
//! an accepted envelope goes the same way into Kafka, and the answer — `{"ack":true,
//! "commands":[…]}` — is sent only once Kafka has acknowledged it, so a machine that got `ack`
//! may drop its copy. Refusals answer with one JSON error shape:
//! `{"error":{"code","message","details","timestamp","requestId"},"success":false}` and status
//! 400 (malformed), 401 (unknown machine or wrong token), 403 (signature, machine mismatch,
//! stale, replay), 413 (body over the limit) or 503 (Kafka unavailable).
//! Serve it behind a TLS-terminating proxy, or on a trusted network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use vendflow_protocol::Timestamp;

use crate::auth::{Admission, Refusal, Verifier};
use crate::kafka::{REJECTED_TOPIC, Rejection, TELEMETRY_TOPIC};

/// Largest accepted envelope.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// Shared by the handlers.
pub struct Telemetry {
    pub verifier: Arc<Mutex<Verifier>>,
    pub producer: FutureProducer,
    pub requests: AtomicU64,
    /// Commands the machines have not answered yet, offered in each answer.
    pub pending_commands: Arc<crate::bridge::PendingCommands>,
    /// The bridge's counters, served at `GET /metrics`.
    pub stats: Arc<crate::bridge::BridgeStats>,
}

/// The one error shape of the API.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    details: serde_json::Value,
) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let request_id = format!(
        "req_{:x}_{}",
        Timestamp::now().0,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let timestamp = chrono::DateTime::from_timestamp_millis(Timestamp::now().0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    (
        status,
        axum::Json(json!({
            "error": {"code": code, "message": message, "details": details,
                      "timestamp": timestamp, "requestId": request_id},
            "success": false
        })),
    )
        .into_response()
}

pub fn router(state: Arc<Telemetry>, body_limit: usize) -> Router {
    Router::new()
        .route("/api/telemetry", post(telemetry))
        .route("/metrics", axum::routing::get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<Telemetry>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.stats.prometheus(),
    )
        .into_response()
}

fn refusal_status(r: &Refusal) -> StatusCode {
    match r {
        Refusal::Auth(vendflow_protocol::auth::AuthError::Malformed(_)) | Refusal::Topic(_) => {
            StatusCode::BAD_REQUEST
        }
        Refusal::Auth(vendflow_protocol::auth::AuthError::UnknownMachine(_)) => {
            StatusCode::UNAUTHORIZED
        }
        _ => StatusCode::FORBIDDEN,
    }
}

async fn telemetry(
    State(state): State<Arc<Telemetry>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the envelope is over the size limit; send fewer events per request",
                json!({"limitBytes": DEFAULT_BODY_LIMIT}),
            );
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &rejection.body_text(),
                json!({}),
            );
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(machine) = header("x-machine-id") else {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "X-Machine-Id header is missing",
            json!({}),
        );
    };
    let token_ok = {
        let v = state.verifier.lock().unwrap_or_else(|p| p.into_inner());
        v.token_matches(&machine, header("x-machine-token").as_deref())
    };
    {
        if !token_ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "unknown machine or wrong X-Machine-Token",
                json!({"machineId": machine}),
            );
        }
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            &format!("the body is not JSON: {e}"),
            json!({"line": e.line(), "column": e.column()}),
        );
    }
    let verdict = {
        let mut v = state.verifier.lock().unwrap_or_else(|p| p.into_inner());
        v.check(&machine, &body, Timestamp::now().0)
    };
    match verdict {
        Ok(Admission::AlreadyForwarded { .. }) => {
            let commands = state
                .pending_commands
                .for_machine(&machine, Timestamp::now().0);
            axum::Json(json!({"ack": true, "commands": commands, "duplicate": true}))
                .into_response()
        }
        Ok(Admission::Forward(signed)) => {
            let record = FutureRecord::to(TELEMETRY_TOPIC)
                .key(machine.as_str())
                .payload(body.as_ref())
                .timestamp(Timestamp::now().0);
            match state.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    if let Some(s) = signed {
                        state
                            .verifier
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .forwarded(&s, &body);
                    }
                    state.pending_commands.answered(&machine, &body);
                    let commands = state
                        .pending_commands
                        .for_machine(&machine, Timestamp::now().0);
                    axum::Json(json!({"ack": true, "commands": commands})).into_response()
                }
                Err((e, _)) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the telemetry log is unavailable; keep the envelope and retry",
                    json!({"kafka": e.to_string()}),
                ),
            }
        }
        Err(refusal) => {
            tracing::warn!(machine_id = %machine, code = refusal.code(), "http telemetry refused: {refusal}");
            let mut rejected = Rejection::new(
                Timestamp::now().0,
                refusal.code(),
                refusal.to_string(),
                &body,
            );
            rejected.http_machine_id = Some(machine.clone());
            let rejected = rejected.to_bytes();
            let record = FutureRecord::to(REJECTED_TOPIC)
                .key(machine.as_str())
                .payload(&rejected);
            if let Err((e, _)) = state.producer.send(record, Duration::from_secs(10)).await {
                tracing::error!(error = %e, "cannot record a refused envelope in {REJECTED_TOPIC}");
            }
            error(
                refusal_status(&refusal),
                &refusal.code().to_uppercase(),
                &refusal.to_string(),
                json!({"machineId": machine}),
            )
        }
    }
}

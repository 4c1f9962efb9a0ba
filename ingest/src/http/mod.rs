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
use vendflow_protocol::topics::Topic;

use crate::auth::{Admission, Refusal, Verifier};
use crate::kafka::{REJECTED_TOPIC, Rejection, TELEMETRY_TOPIC};
use crate::server::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("http on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("tls certificate {cert} / key {key}: {error}")]
    Tls {
        cert: String,
        key: String,
        error: std::io::Error,
    },
}

/// Serves [`router`] over `state`, plus `extra` routes, on `addr`; see [`serve`].
pub fn spawn(
    addr: std::net::SocketAddr,
    tls: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    state: Telemetry,
    driver: Option<rumqttc::EventLoop>,
    extra: Router,
) -> Result<Server, ServeError> {
    let app = router(Arc::new(state), DEFAULT_BODY_LIMIT).merge(extra);
    serve(addr, tls, app, driver)
}

/// Serves `app` on `addr` (HTTPS with `tls` = (certificate, key) PEM files) on a runtime of its
/// own until the returned [`Server`] is stopped; `driver` is an MQTT event loop a
/// [`Sink::Broker`] client needs polled. Errors are start-up errors: the address, the certificate.
pub fn serve(
    addr: impl Into<crate::server::Listen>,
    tls: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    app: Router,
    driver: Option<rumqttc::EventLoop>,
) -> Result<Server, ServeError> {
    let addr: crate::server::Listen = addr.into();
    let tls = match tls {
        Some((cert, key)) => {
            // ring, the one provider built in; installing twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let bad = |error| ServeError::Tls {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                error,
            };
            // Reading the PEM files is async in axum-server; no runtime is needed after it.
            let config = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(bad)?
                .block_on(axum_server::tls_rustls::RustlsConfig::from_pem_file(
                    cert, key,
                ))
                .map_err(bad)?;
            Some(config)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = Server::spawn(
        "vendflow-http",
        addr,
        2,
        move |listener, shutdown| async move {
            if let Some(mut eventloop) = driver {
                tokio::spawn(async move {
                    loop {
                        if let Err(e) = eventloop.poll().await {
                            tracing::warn!(error = %e, "http → mqtt: broker unavailable; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                });
            }
            let served = match tls {
                Some(config) => {
                    let handle = axum_server::Handle::new();
                    let stopper = handle.clone();
                    tokio::spawn(async move {
                        shutdown.requested().await;
                        stopper.graceful_shutdown(Some(crate::server::GRACE));
                    });
                    match listener.into_std() {
                        Ok(listener) => match axum_server::from_tcp_rustls(listener, config) {
                            Ok(server) => {
                                server.handle(handle).serve(app.into_make_service()).await
                            }
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                }
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown.requested())
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "{scheme} server stopped");
            }
        },
    )
    .map_err(|e| ServeError::Bind(addr.addr, e))?;
    tracing::info!("serving {scheme}://{}", server.addr());
    Ok(server)
}

/// Machines on HTTP in the embedded mode: verified like over MQTT, then published to the MQTT
/// broker on 127.0.0.1:`broker_port`, from which the MQTT source takes them like any machine's.
pub fn spawn_into_broker(
    addr: impl Into<crate::server::Listen>,
    tls: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    broker_port: u16,
    verifier: Verifier,
    extra: Router,
) -> Result<Server, ServeError> {
    let mut options = rumqttc::MqttOptions::new("vendflow-http", "127.0.0.1", broker_port);
    options.set_max_packet_size(DEFAULT_BODY_LIMIT * 2, DEFAULT_BODY_LIMIT * 2);
    let (client, eventloop) = rumqttc::AsyncClient::new(options, 1024);
    let state = Telemetry {
        verifier: Arc::new(Mutex::new(verifier)),
        sink: Sink::Broker(client),
        requests: AtomicU64::new(0),
        pending_commands: Default::default(),
        stats: Default::default(),
        rate: MachineRate::default(),
    };
    // `extra` (the REST API) serves `/metrics` itself: only the telemetry route is added.
    let app = telemetry_router(Arc::new(state), DEFAULT_BODY_LIMIT).merge(extra);
    serve(addr, tls, app, Some(eventloop))
}

/// Largest accepted envelope.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// Where accepted envelopes go.
pub enum Sink {
    /// `machine-telemetry` (refusals to `telemetry-rejected`): the production path.
    Kafka(FutureProducer),
    /// The embedded MQTT broker's `machines/{id}/telemetry`, which the MQTT source feeds
    /// straight into the dataflows (`vendflow demo --http`); refusals are answered and logged.
    Broker(rumqttc::AsyncClient),
    /// Accepts and forgets: only in fuzz builds (`cfg(fuzzing)`, `fuzz/`), where the handler
    /// runs millions of times with no broker.
    #[cfg(fuzzing)]
    Discard,
}

/// Why an accepted envelope did not reach its sink: the sink (Kafka, the embedded broker) is
/// away, so the machine is told to retry (503) and keeps its copy.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(rdkafka::error::KafkaError),
    #[error("mqtt broker: {0}")]
    Broker(rumqttc::ClientError),
}

impl Sink {
    async fn telemetry(&self, machine: &str, body: &Bytes) -> Result<(), SinkError> {
        match self {
            Sink::Kafka(producer) => {
                let record = FutureRecord::to(TELEMETRY_TOPIC)
                    .key(machine)
                    .payload(body.as_ref())
                    .timestamp(Timestamp::now().0);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| SinkError::Kafka(e))
            }
            Sink::Broker(client) => client
                .publish(
                    Topic::Telemetry.of(machine),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body.to_vec(),
                )
                .await
                .map_err(SinkError::Broker),
            #[cfg(fuzzing)]
            Sink::Discard => Ok(()),
        }
    }

    async fn rejected(&self, machine: &str, rejection: &[u8]) {
        if let Sink::Kafka(producer) = self {
            let record = FutureRecord::to(REJECTED_TOPIC)
                .key(machine)
                .payload(rejection);
            if let Err((e, _)) = producer.send(record, Duration::from_secs(10)).await {
                tracing::error!(error = %e, "cannot record a refused envelope in {REJECTED_TOPIC}");
            }
        }
    }
}

/// Shared by the handlers.
pub struct Telemetry {
    pub verifier: Arc<Mutex<Verifier>>,
    /// Where accepted envelopes go.
    pub sink: Sink,
    pub requests: AtomicU64,
    /// Commands the machines have not answered yet, offered in each answer.
    pub pending_commands: Arc<crate::gateway::PendingCommands>,
    /// The bridge's counters, served at `GET /metrics`.
    pub stats: Arc<crate::gateway::BridgeStats>,
    /// Requests per machine.
    pub rate: MachineRate,
}

/// Requests per machine on `POST /api/telemetry` (GCRA, from `governor`): a machine reports
/// every half minute and flushes a backlog after an outage, so [`MachineRate::PER_SECOND`] with
/// bursts of [`MachineRate::BURST`] leaves it room, and one machine (or a stolen token) cannot
/// flood the endpoint.
pub struct MachineRate {
    limiter: governor::DefaultKeyedRateLimiter<String>,
}

impl Default for MachineRate {
    fn default() -> Self {
        MachineRate::new(MachineRate::PER_SECOND, MachineRate::BURST)
    }
}

impl MachineRate {
    pub const PER_SECOND: u32 = 20;
    pub const BURST: u32 = 120;

    pub fn new(per_second: u32, burst: u32) -> MachineRate {
        use std::num::NonZeroU32;
        let quota =
            governor::Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        MachineRate {
            limiter: governor::RateLimiter::keyed(quota),
        }
    }

    /// `Err(seconds to wait)` when `machine` is over its rate.
    fn check(&self, machine: &str) -> Result<(), u64> {
        use governor::clock::{Clock, DefaultClock};
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&machine.to_owned())
            .map_err(|not_until| {
                not_until
                    .wait_time_from(DefaultClock::default().now())
                    .as_secs()
                    .max(1)
            })
    }
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

/// [`router`] without `/metrics`, for merging into a server that has its own.
pub fn telemetry_router(state: Arc<Telemetry>, body_limit: usize) -> Router {
    Router::new()
        .route("/api/telemetry", post(telemetry))
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
        let mut v = state.verifier.lock().unwrap_or_else(|p| p.into_inner());
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
    if let Err(wait) = state.rate.check(&machine) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            &format!("too many requests from this machine; retry in {wait} s"),
            json!({"machineId": machine, "retryAfterSeconds": wait}),
        );
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, wait.into());
        return response;
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
        Ok(Admission::Forward(signed)) => match state.sink.telemetry(&machine, &body).await {
            Ok(()) => {
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
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the telemetry log is unavailable; keep the envelope and retry",
                json!({"cause": e.to_string()}),
            ),
        },
        Err(refusal) => {
            tracing::warn!(machine_id = %machine, code = refusal.code(), "http telemetry refused: {refusal}");
            let mut rejected = Rejection::new(
                Timestamp::now().0,
                refusal.code(),
                refusal.to_string(),
                &body,
            );
            rejected.http_machine_id = Some(machine.clone());
            state.sink.rejected(&machine, &rejected.to_bytes()).await;
            error(
                refusal_status(&refusal),
                &refusal.code().to_uppercase(),
                &refusal.to_string(),
                json!({"machineId": machine}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MachineRate;

    #[test]
    fn a_machine_over_its_rate_waits_and_others_do_not() {
        let rate = MachineRate::new(1, 2);
        assert!(rate.check("m1").is_ok() && rate.check("m1").is_ok());
        assert!(rate.check("m1").is_err_and(|wait| wait >= 1));
        assert!(rate.check("m2").is_ok());
    }
}

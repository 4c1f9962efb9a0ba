//! The REST API: the product's contract with the operations team, admins and the dashboard.
//!
//! # Layout
//! - [`fleet`]: the API's copy of the registry, and how changes reach the dataflows.
//! - `machines`: register, read, list, put into maintenance.
//! - `leases`: sign, activate, renew, terminate; the lifecycle sweep; invoices.
//! - `dashboard`: the fleet summary and the live stream (SSE).
//! - `ops`: `/health`, `/metrics`, `/api/openapi.json`.
//! - `views`: the views, their subscriptions and SQL, scoped to the caller's tenant.
//! - [`limits`]: live streams per token and overall, and requests per token (429 past them).
//! - [`web`]: the embedded dashboard, and the security headers of every response.
//!
//! Every request but `/health`, `/metrics` and the OpenAPI document needs a bearer token
//! (`Authorization: Bearer vf_…`, or `?access_token=` where a browser cannot set headers, as
//! for `EventSource`) unless the server runs without access control. Errors have one shape:
//! `{"error":{"code","message","details","timestamp","requestId"},"success":false}`.

mod dashboard;
pub mod fleet;
mod leases;
pub mod limits;
mod machines;
mod ops;
mod views;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use vendflow_dataflows::ViewStore;
use vendflow_protocol::Timestamp;

use crate::auth::{Principal, Role, Tenant, Tokens};
use crate::sql::{Scope, Sql, TenantScope};
use fleet::{ClientAssets, Fleet};
use vendflow_ingest::auth::KeyStore;

pub use leases::sweep as sweep_leases;
pub use ops::{ArchiveCounters, Health, LagReading, Pipeline, SourceCounters, openapi};

/// "Now" for the lifecycle of leases: the engine's ingestion frontier when it has one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    pub store: ViewStore,
    pub sql: Arc<Sql>,
    pub fleet: Arc<Fleet>,
    /// `None`: no access control (every caller is the platform's admin).
    pub tokens: Option<Arc<Tokens>>,
    pub clock: Clock,
    /// Where `POST /api/machines` issues a machine's key and `DELETE` revokes it (the file the
    /// bridge follows, or the demo's in-process credentials).
    pub keys: Option<KeyStore>,
    pub health: Arc<dyn Health>,
    /// Open live streams, by token.
    pub streams: Arc<limits::Streams>,
    /// Requests per token.
    pub rate: Arc<limits::Rate>,
}

impl ApiState {
    /// The API over `store` and `sql` with registry `fleet`; no access control, no machine
    /// secrets, the store's frontier as the clock, and a health report of the engine alone.
    pub fn new(store: ViewStore, sql: Arc<Sql>, fleet: Arc<Fleet>) -> ApiState {
        let clock_store = store.clone();
        ApiState {
            store,
            sql,
            fleet,
            tokens: None,
            clock: Arc::new(move || frontier_or_now(&clock_store)),
            keys: None,
            health: Arc::new(ops::EngineOnly),
            streams: Arc::new(limits::Streams::default()),
            rate: Arc::new(limits::Rate::default()),
        }
    }

    pub fn with_limits(mut self, streams: limits::Streams, rate: limits::Rate) -> ApiState {
        self.streams = Arc::new(streams);
        self.rate = Arc::new(rate);
        self
    }

    pub fn with_tokens(mut self, tokens: Arc<Tokens>) -> ApiState {
        self.tokens = Some(tokens);
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> ApiState {
        self.clock = clock;
        self
    }

    pub fn with_keys(mut self, keys: KeyStore) -> ApiState {
        self.keys = Some(keys);
        self
    }

    pub fn with_health(mut self, health: Arc<dyn Health>) -> ApiState {
        self.health = health;
        self
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The SQL scope of `who`.
    pub fn scope(&self, who: &Principal) -> Scope {
        ApiState::scope_of(&self.fleet, &who.tenant)
    }

    /// The scope of `tenant` as the registry stands now.
    pub fn scope_of(fleet: &Fleet, tenant: &Tenant) -> Scope {
        match tenant {
            Tenant::All => Scope::All,
            Tenant::Client(c) => Scope::Tenant(TenantScope {
                client: c.clone(),
                owners: Arc::new(ClientAssets::of(fleet, c)),
            }),
        }
    }
}

/// The views' frontier (ingestion time, epoch ms) once there is one; the wall clock before.
pub fn frontier_or_now(store: &ViewStore) -> Timestamp {
    match store.frontier() {
        0 => Timestamp::now(),
        t => Timestamp(i64::try_from(t).unwrap_or(i64::MAX)),
    }
}

/// Every route: the REST API, the views, SQL, health and metrics.
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/machines",
            post(machines::register).get(machines::list),
        )
        .route(
            "/api/machines/{id}",
            get(machines::detail)
                .patch(machines::update)
                .delete(machines::delete),
        )
        .route(
            "/api/locations",
            post(machines::add_location).get(machines::locations),
        )
        .route(
            "/api/locations/{id}",
            axum::routing::delete(machines::delete_location),
        )
        .route("/api/leases", post(leases::create).get(leases::list))
        .route("/api/leases/{id}", get(leases::detail))
        .route("/api/leases/{id}/activate", post(leases::activate))
        .route("/api/leases/{id}/renew", post(leases::renew))
        .route("/api/leases/{id}/terminate", post(leases::terminate))
        .route("/api/leases/{id}/invoices", get(leases::invoice))
        .route("/api/dashboard/fleet", get(dashboard::fleet))
        .route("/api/dashboard/map", get(dashboard::map))
        .route("/api/dashboard/stream", get(dashboard::stream))
        .route("/api/whoami", get(whoami))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/api/openapi.json", get(ops::openapi_json))
        .route("/views", get(views::catalog))
        .route("/views/{name}", get(views::snapshot))
        .route("/views/{name}/subscribe", get(views::subscribe))
        .route("/sql", post(views::sql))
        .merge(web::routes())
        .fallback(no_route)
        .layer(axum::middleware::map_response(web::security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Largest request body the API reads.
pub const BODY_LIMIT: usize = 256 * 1024;

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route {}; see /api/openapi.json", uri.path()),
    )
}

async fn whoami(Auth(who): Auth) -> Response {
    axum::Json(json!({
        "role": who.role.as_str(), "tenant": who.tenant.as_str(), "tokenId": who.token_id,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Errors.

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// A refusal or failure, answered as `{"error":{…},"success":false}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Json,
    /// `Retry-After` (seconds), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Json::Null,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_details(mut self, details: Json) -> ApiError {
        self.details = details;
        self
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", message)
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {id:?}"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The dataflows did not take a change (the engine stopped, Kafka refused it).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

/// A registry write the log did not take: the log (Kafka) is away or the engine is stopping,
/// so the client may retry later (503 with Retry-After).
impl From<vendflow_ingest::registry::RegistryLogError> for ApiError {
    fn from(e: vendflow_ingest::registry::RegistryLogError) -> ApiError {
        ApiError::unavailable(format!("the registry log did not take the change: {e}"))
            .with_retry_after(5)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("req_{:x}_{n:x}", std::process::id());
        if self.status.is_server_error() {
            tracing::error!(code = self.code, %request_id, message = %self.message, "api error");
        } else {
            tracing::debug!(code = self.code, %request_id, message = %self.message, "api refusal");
        }
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "timestamp": Timestamp::now().to_rfc3339(),
                "requestId": request_id,
            },
            "success": false,
        });
        let mut response = (
            self.status,
            [("x-request-id", request_id)],
            axum::Json(body),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// A JSON body whose problems answer in the API's error shape (400, 413 or 415).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let text = rejection.body_text();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "payload_too_large",
            format!("the body is over {BODY_LIMIT} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", text),
    }
}

// ---------------------------------------------------------------------------------------------
// Who is asking.

/// The caller, from its bearer token.
pub struct Auth(pub Principal);

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let Some(tokens) = &state.tokens else {
            return Ok(Auth(Principal::platform()));
        };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(str::to_owned)
        });
        let Some(token) = header.or(query) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send a token: Authorization: Bearer vf_… (create one with `vendflow token create`)",
            ));
        };
        let who = tokens.verify(&token).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is unknown or malformed",
            )
        })?;
        state.rate.check(&who.token_id)?;
        Ok(Auth(who))
    }
}

impl Auth {
    /// Refuses a caller below `role`.
    pub fn require(&self, role: Role, action: &str) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{action} needs the {} role; this token is a {}",
                role.as_str(),
                self.0.role.as_str()
            )))
        }
    }

    /// Whether the caller sees what belongs to `client`.
    pub fn sees(&self, client: Option<&str>) -> bool {
        match (&self.0.tenant, client) {
            (Tenant::All, _) => true,
            (Tenant::Client(c), Some(owner)) => c == owner,
            (Tenant::Client(_), None) => false,
        }
    }
}

/// Page and size from `?page=&pageSize=` (1-based, at most 500 a page).
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub page: Option<usize>,
    pub page_size: Option<usize>,
}

impl Page {
    pub const MAX: usize = 500;

    /// (page, size, offset), or a refusal of a size over the maximum or a page 0.
    pub fn resolve(self) -> Result<(usize, usize, usize), ApiError> {
        let page = self.page.unwrap_or(1);
        let size = self.page_size.unwrap_or(50);
        if page == 0 {
            return Err(ApiError::invalid("page starts at 1"));
        }
        if size == 0 || size > Self::MAX {
            return Err(ApiError::invalid(format!(
                "pageSize must be 1 to {}",
                Self::MAX
            )));
        }
        // A page far past any list (`?page=18446744073709551615`) overflowed the offset.
        let offset = (page - 1).checked_mul(size).ok_or_else(|| {
            ApiError::invalid(format!("page {page} is past any list at pageSize {size}"))
        })?;
        Ok((page, size, offset))
    }
}

/// Query parameters whose problems answer in the API's error shape (400).
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

#[cfg(test)]
mod page_tests {
    use super::Page;

    #[test]
    fn a_huge_page_is_refused_not_overflowed() {
        let huge = Page {
            page: Some(usize::MAX),
            page_size: Some(500),
        };
        assert!(huge.resolve().is_err());
        let ok = Page {
            page: Some(3),
            page_size: Some(10),
        };
        assert_eq!(ok.resolve().ok(), Some((3, 10, 20)));
    }
}

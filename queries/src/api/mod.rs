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
mod receipts;
mod routes;
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
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::{IntoResponses, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vendflow_dataflows::ViewStore;
use vendflow_protocol::Timestamp;

use crate::auth::{Principal, Role, Tenant, Tokens};
use crate::sql::{Scope, Sql, TenantScope};
use fleet::{ClientAssets, Fleet};
use vendflow_ingest::auth::KeyStore;

pub use leases::sweep as sweep_leases;
pub use ops::{
    ArchiveCounters, CheckpointCounters, Health, LagReading, LatestCheckpoint, Pipeline,
    SourceCounters, openapi,
};

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
    /// The restock planner (`GET /api/routes`); none: routes are not planned here.
    pub routes: Option<Arc<crate::service::planner::Planner>>,
    /// What the engine's keyed operators hold (`/metrics`); none: an API without an engine of
    /// its own in this process.
    pub operators: Option<vendflow_dataflows::OperatorState>,
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
            routes: None,
            operators: None,
        }
    }

    pub fn with_operators(mut self, operators: vendflow_dataflows::OperatorState) -> ApiState {
        self.operators = Some(operators);
        self
    }

    pub fn with_routes(mut self, planner: Arc<crate::service::planner::Planner>) -> ApiState {
        self.routes = Some(planner);
        self
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
        Timestamp::EPOCH => Timestamp::now(),
        t => t,
    }
}

/// Every route: the REST API, the views, SQL, health and metrics, and the embedded dashboard.
pub fn app(state: ApiState) -> Router {
    let (documented, _) = documented().split_for_parts();
    documented
        .merge(web::routes())
        .fallback(no_route)
        .layer(axum::middleware::map_response(web::security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The API's routes with their OpenAPI operations: one list, so the router and the document
/// (`GET /api/openapi.json`) cannot disagree.
pub(crate) fn documented() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ops::ApiDoc::openapi())
        .routes(routes!(machines::register, machines::list))
        .routes(routes!(
            machines::detail,
            machines::update,
            machines::delete
        ))
        .routes(routes!(machines::add_location, machines::locations))
        .routes(routes!(machines::delete_location))
        .routes(routes!(leases::create, leases::list))
        .routes(routes!(leases::detail))
        .routes(routes!(leases::activate))
        .routes(routes!(leases::renew))
        .routes(routes!(leases::terminate))
        .routes(routes!(leases::invoice))
        .routes(routes!(receipts::receipt))
        .routes(routes!(routes::routes))
        .routes(routes!(routes::sheet_csv))
        .routes(routes!(routes::sheet_page))
        .routes(routes!(dashboard::fleet))
        .routes(routes!(dashboard::map))
        .routes(routes!(dashboard::stream))
        .routes(routes!(whoami))
        .routes(routes!(ops::health::health))
        .routes(routes!(ops::metrics::metrics))
        .routes(routes!(ops::openapi::openapi_json))
        .routes(routes!(views::catalog))
        .routes(routes!(views::snapshot))
        .routes(routes!(views::subscribe))
        .routes(routes!(views::sql))
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

/// Who a token is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Whoami {
    /// viewer, operator or admin
    role: &'static str,
    /// A client id, or `*` for the platform
    tenant: String,
    token_id: String,
}

/// `GET /api/whoami`: the caller's role and tenant.
#[utoipa::path(
    get,
    path = "/api/whoami",
    operation_id = "whoami",
    tag = "access",
    summary = "The caller's role and tenant",
    responses(
        (status = 200, description = "ok", body = Whoami),
        Unauthenticated,
    ),
)]
async fn whoami(Auth(who): Auth) -> axum::Json<Whoami> {
    axum::Json(Whoami {
        role: who.role.as_str(),
        tenant: who.tenant.as_str().to_owned(),
        token_id: who.token_id,
    })
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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
                timestamp: Timestamp::now().to_rfc3339(),
                request_id: request_id.clone(),
            },
            success: false,
        };
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

/// The body of every refusal and failure.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// Always false.
    pub success: bool,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// A stable code: `validation_failed`, `not_found`, `forbidden`, `conflict`, …
    pub code: &'static str,
    pub message: String,
    /// The fields at fault (`[{field, message}]`) or other context; null when there is none.
    pub details: serde_json::Value,
    /// RFC 3339
    pub timestamp: String,
    /// Also in the `x-request-id` header and the server's log.
    pub request_id: String,
}

/// The refusal of a request without a valid token (every route but `/health`, `/metrics` and
/// the OpenAPI document), for the OpenAPI operations.
#[derive(IntoResponses)]
#[response(status = 401, description = "missing or unknown token")]
#[allow(dead_code)] // describes what `Auth` answers
pub(crate) struct Unauthenticated(ErrorBody);

/// The refusal of a request whose fields are not valid (each field's problem in `details`),
/// for the OpenAPI operations.
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "invalid request (validation errors in details)"
)]
#[allow(dead_code)] // describes what `Problems::check` answers
pub(crate) struct Invalid(ErrorBody);

/// The refusal of a token whose role is below what the route needs, for the OpenAPI operations.
#[derive(IntoResponses)]
#[response(status = 403, description = "the token's role does not allow it")]
#[allow(dead_code)] // describes what `Auth::require` answers
pub(crate) struct RoleRefused(ErrorBody);

/// The refusal of a write whose token's role is too low or whose tenant may not touch what it
/// names (the admin routes that create a machine, a location or a lease).
#[derive(IntoResponses)]
#[response(
    status = 403,
    description = "the token's role or tenant does not allow it"
)]
#[allow(dead_code)] // describes what `Auth::require` and the tenant checks answer
pub(crate) struct RoleOrTenantRefused(ErrorBody);

/// The refusal of a body over [`BODY_LIMIT`], for the OpenAPI operations.
#[derive(IntoResponses)]
#[response(status = 413, description = "body too large")]
#[allow(dead_code)] // describes what `ApiJson` answers
pub(crate) struct TooLarge(ErrorBody);

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

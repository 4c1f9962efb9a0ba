//! The views, their live subscriptions and SQL, each seen through the caller's tenant.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use vendflow_dataflows::views::find;
use vendflow_dataflows::{CATALOG, Row, ViewDef};

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ApiQuery, ApiState, Auth, ErrorBody, Unauthenticated};

/// A query as JSON (the body may also be the SQL text itself).
#[derive(ToSchema)]
#[allow(dead_code)] // documents the body `sql` reads by hand (JSON or plain text)
pub(super) struct SqlRequest {
    sql: String,
}
use crate::sql::{Caller, QueryError, Scope};
use crate::{filter, row_json, type_name};

/// The views the caller may read.
#[derive(Serialize, ToSchema)]
pub(super) struct Catalog {
    views: Vec<ViewInfo>,
}

/// A view: its name, what it holds, its columns.
#[derive(Serialize, ToSchema)]
pub(super) struct ViewInfo {
    name: &'static str,
    description: &'static str,
    columns: Vec<ColumnInfo>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ColumnInfo {
    name: &'static str,
    /// boolean, integer, float, text, money, timestamp, date, …
    #[serde(rename = "type")]
    column_type: &'static str,
    nullable: bool,
}

/// A view's rows the caller may read, at one frontier.
#[derive(Serialize, ToSchema)]
pub(super) struct ViewRows {
    /// The views' frontier (epoch ms).
    time: i64,
    /// One object per row, by column name.
    #[schema(value_type = Vec<Object>)]
    rows: Vec<Json>,
}

/// `GET /views`: the views the caller may read.
#[utoipa::path(
    get,
    path = "/views",
    operation_id = "listViews",
    tag = "views",
    summary = "The views the caller may read",
    responses(
        (status = 200, description = "ok", body = Catalog),
        Unauthenticated,
    ),
)]
pub(super) async fn catalog(State(state): State<ApiState>, auth: Auth) -> Response {
    let scope = state.scope(&auth.0);
    let views = CATALOG
        .iter()
        .filter(|v| scope.sees_view(v))
        .map(|v| ViewInfo {
            name: v.name,
            description: v.description,
            columns: v
                .columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name,
                    column_type: type_name(c.ty),
                    nullable: c.nullable,
                })
                .collect(),
        })
        .collect();
    axum::Json(Catalog { views }).into_response()
}

/// The view named `name`, if the scope may read it.
fn visible(scope: &Scope, name: &str) -> Result<&'static ViewDef, ApiError> {
    let Some((_, view)) = find(name) else {
        return Err(ApiError::not_found("view", name));
    };
    if !scope.sees_view(view) {
        return Err(ApiError::forbidden(format!(
            "view {name} spans the whole fleet: it needs a token of tenant *"
        )));
    }
    Ok(view)
}

/// `GET /views/{name}`: a view's rows, the caller's only.
#[utoipa::path(
    get,
    path = "/views/{name}",
    operation_id = "getView",
    tag = "views",
    summary = "A view's rows (the caller's)",
    params(("name" = String, Path, description = "view name")),
    responses(
        (status = 200, description = "ok", body = ViewRows),
        Unauthenticated,
        (status = 403, description = "a fleet-wide view, and the token is a client's", body = ErrorBody),
        (status = 404, description = "no such view", body = ErrorBody),
    ),
)]
pub(super) async fn snapshot(
    State(state): State<ApiState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let scope = state.scope(&auth.0);
    let view = visible(&scope, &name)?;
    let snapshot = state.store.snapshot_of(&[view.name]);
    let rows = snapshot
        .rows(&name)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let rows: Vec<Json> = rows
        .iter()
        .filter(|r| scope.keeps(view, r))
        .map(|r| row_json(view, r))
        .collect();
    Ok(axum::Json(ViewRows {
        time: snapshot.frontier.ms(),
        rows,
    })
    .into_response())
}

/// What a subscription keeps.
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SubscribeParams {
    /// SQL condition on the view's columns
    #[serde(rename = "where")]
    #[param(rename = "where")]
    condition: Option<String>,
}

/// `GET /views/{name}/subscribe?where=`: the view's rows, then its changes, as they happen.
#[utoipa::path(
    get,
    path = "/views/{name}/subscribe",
    operation_id = "subscribeView",
    tag = "views",
    summary = "Server-Sent Events: a view's snapshot then its changes",
    params(
        ("name" = String, Path, description = "view name"),
        SubscribeParams,
        ("access_token" = Option<String>, Query, description = "the token, for EventSource"),
    ),
    responses(
        (status = 200, description = "an event `snapshot` ({time, inserted}), then `change` ({time, inserted, deleted})", body = String, content_type = "text/event-stream"),
        (status = 400, description = "the condition is not valid", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "a fleet-wide view, and the token is a client's", body = ErrorBody),
        (status = 404, description = "no such view", body = ErrorBody),
        (status = 429, description = "too many open streams for this token", body = ErrorBody),
    ),
)]
pub(super) async fn subscribe(
    State(state): State<ApiState>,
    auth: Auth,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<SubscribeParams>,
) -> Result<Response, ApiError> {
    let scope = state.scope(&auth.0);
    let view = visible(&scope, &name)?;
    let filter = params
        .condition
        .as_deref()
        .map(|c| filter::Filter::new(view, c))
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", e.to_string()))?;
    let slot = state.streams.admit(&auth.0.token_id)?;
    let mut subscription = state
        .store
        .subscribe(&name)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // An async task relays the store's subscription into a small channel (no thread is held per
    // subscriber). A client that does not read fills that, the relay stops taking changes, and
    // the store cuts the subscription off at its own bound. The tenant's machines are looked
    // up again for every change, so a machine registered meanwhile shows up.
    let fleet = state.fleet.clone();
    let principal = auth.0.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(16);
    let scoped = move || ApiState::scope_of(&fleet, &principal.tenant);
    tokio::spawn(async move {
        let _slot = slot;
        let mut first = true;
        loop {
            let change = tokio::select! {
                change = subscription.next() => change,
                () = tx.closed() => return, // the client went away
            };
            let event = match change {
                Ok(change) => {
                    let scope = scoped();
                    let rows = |rows: &[Row]| -> Vec<Json> {
                        let kept: Vec<&Row> = match &filter {
                            Some(f) => f.keep(rows),
                            None => rows.iter().collect(),
                        };
                        kept.into_iter()
                            .filter(|r| scope.keeps(view, r))
                            .map(|r| row_json(view, r))
                            .collect()
                    };
                    let (kind, data) = if first {
                        first = false;
                        (
                            "snapshot",
                            json!({"time": change.frontier, "inserted": rows(&change.inserted)}),
                        )
                    } else {
                        let (inserted, deleted) = (rows(&change.inserted), rows(&change.deleted));
                        if inserted.is_empty() && deleted.is_empty() {
                            continue; // nothing of this tenant's changed
                        }
                        (
                            "change",
                            json!({"time": change.frontier, "inserted": inserted, "deleted": deleted}),
                        )
                    };
                    Event::default().event(kind).data(data.to_string())
                }
                Err(end) => {
                    let _ = tx
                        .send(Ok(Event::default()
                            .event("error")
                            .data(json!({"error": end.to_string()}).to_string())))
                        .await;
                    return;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `POST /sql`: the body is one SQL query (or `{"sql": "…"}`). The answer is JSON
/// (`{"time", "columns", "rows": [{column: value}]}`) unless `Accept` asks for `text/csv` or
/// Arrow IPC (`application/vnd.apache.arrow.stream`). Refusals: 403 (not read-only, or a table
/// outside the tenant's), 400 (not valid SQL, unknown table or column), 408 (over the time
/// limit).
#[utoipa::path(
    post,
    path = "/sql",
    operation_id = "querySql",
    tag = "views",
    summary = "A read-only SQL query over one snapshot (JSON, CSV or Arrow)",
    request_body(content(
        (SqlRequest = "application/json"),
        (String = "text/plain"),
    )),
    responses(
        (status = 200, description = "`{time, columns, rows}`, or CSV or Arrow IPC as `Accept` asks", content(
            (Object = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
        )),
        (status = 400, description = "not valid SQL, an unknown table or column, or too large a result", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "not read-only, or a table outside the tenant's", body = ErrorBody),
        (status = 408, description = "over the query time limit", body = ErrorBody),
        (status = 429, description = "too many queries at once", body = ErrorBody),
    ),
)]
pub(super) async fn sql(
    State(state): State<ApiState>,
    auth: Auth,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let text = if body.trim_start().starts_with('{') {
        let v: Json = serde_json::from_str(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {e}"),
            )
        })?;
        v["sql"].as_str().unwrap_or_default().to_owned()
    } else {
        body
    };
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let caller = Caller {
        key: auth.0.token_id.clone(),
        scope: state.scope(&auth.0),
    };
    let answer = state.sql.query_in(&caller, &text).await?;
    let (content_type, bytes) =
        crate::sql::encode(&answer, &accept).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// A query's failure as the API answers it: refused 403, bad SQL or too large a result 400,
/// timed out 408, busy 429 (retry in a second), failed 500.
impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        let (status, code) = match e {
            QueryError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
            QueryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_sql"),
            QueryError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            QueryError::TooLarge(_) => (StatusCode::BAD_REQUEST, "result_too_large"),
            QueryError::Busy(_) => {
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string())
                    .with_retry_after(1);
            }
            QueryError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "query_failed"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

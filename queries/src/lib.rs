//! Reading the views and the archive: what the dashboard, analysts and scripts use.
//!
//! # Layout
//! - [`sql`]: the DataFusion engine: live views, archive tables, ready views, read-only rules.
//! - [`pg`]: the Postgres wire protocol over the same engine (`psql`, BI tools).
//! - this file: the HTTP routes.
//!
//! # HTTP
//! - `POST /sql`: a read-only SQL query over one snapshot of every view (see [`sql`]).
//! - `GET /views`: the catalog (name, description, columns).
//! - `GET /views/{name}`: the view's rows as of the store's frontier, as JSON objects.
//! - `GET /views/{name}/subscribe`: Server-Sent Events. First an event `snapshot`
//!   (`{"time", "inserted"}` with every current row), then one `change` per publication
//!   (`{"time", "inserted", "deleted"}`), all at the store's consistent frontiers. A client that
//!   falls [`vendflow_dataflows::view_store::SUBSCRIBER_BUFFER`] changes behind gets an `error`
//!   event saying so and the stream ends: memory does not grow for a slow reader.
//!   `?where=<SQL condition on the view's columns>` (e.g. `where=units <= 2 AND machine_id =
//!   'mach_00001'`) keeps only matching rows, in the snapshot and in every change.
//!
//! Values: money and readings as decimal strings (`"2.75"`, exact, never a binary float),
//! instants as RFC 3339 (UTC), days as `YYYY-MM-DD`.

mod filter;
pub mod pg;
pub mod sql;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value as Json, json};
use vendflow_dataflows::row::ColumnType;
use vendflow_dataflows::views::find;
use vendflow_dataflows::{CATALOG, Row, Value, ViewDef, ViewStore};

#[derive(Clone)]
struct AppState {
    store: ViewStore,
    sql: Arc<sql::Sql>,
}

/// The views API over `store`, with SQL through `sql`.
pub fn router(store: ViewStore, sql: Arc<sql::Sql>) -> Router {
    Router::new()
        .route("/views", get(catalog))
        .route("/views/{name}", get(snapshot))
        .route("/views/{name}/subscribe", get(subscribe))
        .route("/sql", axum::routing::post(sql_endpoint))
        .with_state(AppState { store, sql })
}

/// One cell as JSON: nulls, booleans and numbers as themselves; everything else (text,
/// money, readings, instants, days) as its display text ([`Value::render`]).
pub fn cell(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(f.0).map_or(Json::Null, Json::Number),
        other => Json::String(other.render()),
    }
}

/// A row as a JSON object named by `view`'s columns.
pub fn row_json(view: &ViewDef, row: &Row) -> Json {
    let mut object = Map::new();
    for (column, value) in view.columns.iter().zip(row.iter()) {
        object.insert(column.name.to_owned(), cell(value));
    }
    Json::Object(object)
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message}, "success": false})),
    )
        .into_response()
}

fn type_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Bool => "boolean",
        ColumnType::Int => "integer",
        ColumnType::Float => "float",
        ColumnType::Text => "text",
        ColumnType::Money => "money",
        ColumnType::Reading => "reading",
        ColumnType::Time => "timestamp",
        ColumnType::Date => "date",
    }
}

async fn catalog() -> Response {
    let views: Vec<Json> = CATALOG
        .iter()
        .map(|v| {
            let columns: Vec<Json> = v
                .columns
                .iter()
                .map(|c| json!({"name": c.name, "type": type_name(c.ty), "nullable": c.nullable}))
                .collect();
            json!({"name": v.name, "description": v.description, "columns": columns})
        })
        .collect();
    axum::Json(json!({ "views": views })).into_response()
}

async fn snapshot(
    State(AppState { store, .. }): State<AppState>,
    Path(name): Path<String>,
) -> Response {
    let Some((_, view)) = find(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no view named {name:?}"));
    };
    let snapshot = store.snapshot();
    match snapshot.rows(&name) {
        Ok(rows) => {
            let rows: Vec<Json> = rows.iter().map(|r| row_json(view, r)).collect();
            axum::Json(json!({"time": snapshot.frontier, "rows": rows})).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct SubscribeParams {
    #[serde(rename = "where")]
    condition: Option<String>,
}

async fn subscribe(
    State(AppState { store, .. }): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<SubscribeParams>,
) -> Response {
    let Some((_, view)) = find(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no view named {name:?}"));
    };
    let filter = match params
        .condition
        .as_deref()
        .map(|c| filter::Filter::new(view, c))
    {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let subscription = match store.subscribe(&name) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
    };
    // The store's subscription is a blocking channel: a blocking task relays it into a small
    // async one. A client that does not read fills that, the relay stops taking changes, and
    // the store cuts the subscription off at its own bound.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::task::spawn_blocking(move || {
        let mut first = true;
        loop {
            let event = match subscription.next_timeout(Duration::from_secs(1)) {
                Ok(None) => {
                    if tx.is_closed() {
                        return; // the client went away
                    }
                    continue;
                }
                Ok(Some(change)) => {
                    let rows = |rows: &[Row]| -> Vec<Json> {
                        match &filter {
                            Some(f) => f
                                .keep(rows)
                                .into_iter()
                                .map(|r| row_json(view, r))
                                .collect(),
                            None => rows.iter().map(|r| row_json(view, r)).collect(),
                        }
                    };
                    let (kind, data) = if first {
                        first = false;
                        (
                            "snapshot",
                            json!({"time": change.frontier, "inserted": rows(&change.inserted)}),
                        )
                    } else {
                        (
                            "change",
                            json!({"time": change.frontier, "inserted": rows(&change.inserted),
                                   "deleted": rows(&change.deleted)}),
                        )
                    };
                    Event::default().event(kind).data(data.to_string())
                }
                Err(end) => {
                    let _ = tx.blocking_send(Ok(Event::default()
                        .event("error")
                        .data(json!({"error": end.to_string()}).to_string())));
                    return;
                }
            };
            if tx.blocking_send(Ok(event)).is_err() {
                return;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /sql`: the body is one SQL query (or `{"sql": "…"}`). The answer is JSON
/// (`{"time", "columns", "rows": [{column: value}]}`) unless `Accept` asks for `text/csv` or
/// Arrow IPC (`application/vnd.apache.arrow.stream`). Refusals: 403 (not read-only), 400 (not
/// valid SQL, unknown table or column), 408 (over the time limit).
async fn sql_endpoint(
    State(AppState { sql, .. }): State<AppState>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let text = if body.trim_start().starts_with('{') {
        match serde_json::from_str::<Json>(&body) {
            Ok(v) => v["sql"].as_str().unwrap_or_default().to_owned(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                );
            }
        }
    } else {
        body
    };
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let answer = match sql.query(&text).await {
        Ok(a) => a,
        Err(e) => {
            let status = match e {
                sql::QueryError::Refused(_) => StatusCode::FORBIDDEN,
                sql::QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
                sql::QueryError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                sql::QueryError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, e.to_string());
        }
    };
    match sql::encode(&answer, &accept) {
        Ok((content_type, bytes)) => {
            ([(axum::http::header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendflow_protocol::{Cents, Milli, Timestamp};

    #[test]
    fn cells_keep_exact_decimals_and_readable_times() {
        assert_eq!(cell(&Value::Money(Cents(275))), json!("2.75"));
        assert_eq!(cell(&Value::Money(Cents(-5))), json!("-0.05"));
        assert_eq!(cell(&Value::Reading(Milli(4_500))), json!("4.5"));
        assert_eq!(
            cell(&Value::Time(Timestamp(1_705_305_600_000))),
            json!("2024-01-15T08:00:00.000Z")
        );
        assert_eq!(cell(&Value::Date(19_737)), json!("2024-01-15"));
        assert_eq!(cell(&Value::Null), Json::Null);
        assert_eq!(cell(&Value::Int(3)), json!(3));
    }
}

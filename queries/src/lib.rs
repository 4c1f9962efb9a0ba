//! Serving the views, the archive and the fleet: what the dashboard, operators, analysts and
//! scripts use.
//!
//! # Layout
//! - [`api`]: the HTTP routes: the REST API (machines, locations, leases, invoices, dashboard),
//!   health and metrics, the views, their subscriptions and SQL.
//! - [`auth`]: bearer tokens with a role and a tenant, and `vendflow token create`.
//! - [`gate`]: the one gate every SQL statement of every protocol passes (parsed once).
//! - [`sql`]: the DataFusion engine: live views, archive tables, ready views, read-only rules,
//!   tenant scopes.
//! - [`pg`]: the Postgres wire protocol over the same engine (`psql`, BI tools).
//! - `filter`: the `?where=` condition of subscriptions.
//! - [`service`]: the running service, assembled once (engine, source, servers, registry,
//!   archive, one ticker, an orderly shutdown): what `vendflow demo` and `vendflow run` start,
//!   with their options (and `vendflow replay`'s, in `service::bulk`).
//!
//! # Views over HTTP
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

pub mod api;
pub mod auth;
mod filter;
pub mod gate;
pub mod pg;
pub mod service;
pub mod sql;

use serde_json::{Map, Value as Json};
use vendflow_dataflows::row::ColumnType;
use vendflow_dataflows::{Row, Value, ViewDef};

pub use api::{ApiState, app};

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
        object.insert(column.name.to_owned(), cell(&value));
    }
    Json::Object(object)
}

pub(crate) fn type_name(ty: ColumnType) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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

//! `GET /api/receipts/{machineId}/{transactionId}`: the receipt of one cart, as the machine
//! recorded it (its sale lines and any refunds), for a customer who kept the receipt code.
//!
//! Receipts are read from the archive's raw events (`events`, Parquet), through the same SQL
//! gate as every query, in the caller's scope: a tenant sees only its machines' receipts. The
//! archive is written every `--archive-flush-secs`, so a receipt appears that long after the
//! sale at most. A re-delivered event is in the archive twice; the receipt counts it once.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::{ApiError, ApiState, Auth, ErrorBody, Unauthenticated};
use crate::sql::Caller;

/// One line of a cart: units of one slot delivered.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReceiptLine {
    slot_number: Option<i64>,
    product_id: Option<String>,
    quantity: i64,
    /// The line's total, e.g. "5.00".
    amount: String,
}

/// Money given back: units paid for that did not drop, or a late approval voided.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReceiptRefund {
    slot_number: Option<i64>,
    quantity: i64,
    amount: String,
    /// jam, power_loss or late_approval.
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Receipt {
    machine_id: String,
    transaction_id: String,
    /// The machine's time of its first record of the cart (RFC 3339, UTC).
    time: Option<String>,
    payment_method: Option<String>,
    lines: Vec<ReceiptLine>,
    refunds: Vec<ReceiptRefund>,
    /// What the lines come to, what was refunded, and the two together (what was paid).
    total: String,
    refunded: String,
    paid: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReceiptQuery {
    /// The day of the sale (YYYY-MM-DD, UTC), when known: only that day's archive is read.
    day: Option<String>,
}

/// Up to 64 letters, digits and `_ - . :` (a transaction id or an app order id).
fn valid_transaction(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Cents from a decimal as arrow's JSON writes it (a string or a number, e.g. "2.50").
fn cents(value: &Json) -> i64 {
    let text = match value {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return 0,
    };
    vendflow_protocol::Cents::parse(&text).map_or(0, |c| c.0)
}

fn money(cents: i64) -> String {
    vendflow_protocol::Cents(cents).to_string()
}

#[utoipa::path(
    get,
    path = "/api/receipts/{machine_id}/{transaction_id}",
    operation_id = "getReceipt",
    tag = "receipts",
    summary = "A cart's receipt: its sale lines and refunds as the machine recorded them",
    description = "Read from the archive (the server needs --archive); a sale appears there within --archive-flush-secs.",
    params(
        ("machine_id" = String, Path, description = "machine id"),
        ("transaction_id" = String, Path, description = "the receipt code: the cart's transaction id (or the app order id)"),
        ReceiptQuery
    ),
    responses(
        (status = 200, description = "the receipt", body = Receipt),
        (status = 400, description = "not a machine id, transaction id or day", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "no such receipt (or another tenant's machine)", body = ErrorBody),
        (status = 503, description = "this server keeps no archive", body = ErrorBody),
    ),
)]
pub(super) async fn receipt(
    State(state): State<ApiState>,
    auth: Auth,
    Path((machine_id, transaction_id)): Path<(String, String)>,
    Query(query): Query<ReceiptQuery>,
) -> Result<Response, ApiError> {
    let machine = vendflow_protocol::MachineId::parse(&machine_id)
        .map_err(|e| ApiError::invalid(format!("machine id {machine_id:?}: {e}")))?;
    if !valid_transaction(&transaction_id) {
        return Err(ApiError::invalid(format!(
            "transaction id {transaction_id:?}: 1 to 64 letters, digits and _ - . :"
        )));
    }
    let day = match &query.day {
        Some(d) => Some(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| ApiError::invalid(format!("day {d:?} is not YYYY-MM-DD")))?,
        ),
        None => None,
    };
    let not_found = || ApiError::not_found("receipt", &format!("{machine_id}/{transaction_id}"));
    {
        let registry = state.fleet.read();
        if !auth.sees(registry.machine_client(&machine_id)) {
            return Err(not_found());
        }
    }
    if !state.sql.archived() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_archive",
            "receipts are read from the archive, and this server keeps none (start it with --archive)",
        ));
    }
    // Both values are checked above: letters, digits and `_ - . :` only.
    let day_filter = day.map_or_else(String::new, |d| format!(" AND date = DATE '{d}'"));
    let sql = format!(
        "SELECT DISTINCT type, event_time, seq, slot_number, product_id, quantity, amount, payment_method, payload \
         FROM events WHERE machine_id = '{}' AND transaction_id = '{transaction_id}' \
         AND type IN ('sale', 'refund'){day_filter} ORDER BY event_time, seq",
        machine.as_str()
    );
    let caller = Caller {
        key: auth.0.token_id.clone(),
        scope: state.scope(&auth.0),
    };
    let answer = state.sql.query_in(&caller, &sql).await?;
    let (_, bytes) = crate::sql::encode(&answer, "application/json")
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let body: Json =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return Err(not_found());
    }
    let mut receipt = Receipt {
        machine_id,
        transaction_id,
        time: None,
        payment_method: None,
        lines: Vec::new(),
        refunds: Vec::new(),
        total: String::new(),
        refunded: String::new(),
        paid: String::new(),
    };
    let (mut total, mut refunded) = (0i64, 0i64);
    for row in &rows {
        let payload: Json = row["payload"]
            .as_str()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(Json::Null);
        if receipt.time.is_none() {
            receipt.time = row["event_time"].as_str().map(str::to_owned);
        }
        let amount = cents(&row["amount"]);
        match row["type"].as_str() {
            Some("sale") => {
                total += amount;
                if receipt.payment_method.is_none() {
                    receipt.payment_method = row["payment_method"].as_str().map(str::to_owned);
                }
                receipt.lines.push(ReceiptLine {
                    slot_number: row["slot_number"].as_i64(),
                    product_id: row["product_id"].as_str().map(str::to_owned),
                    quantity: row["quantity"].as_i64().unwrap_or(1),
                    amount: money(amount),
                });
            }
            _ => {
                refunded += amount;
                receipt.refunds.push(ReceiptRefund {
                    slot_number: row["slot_number"].as_i64(),
                    quantity: row["quantity"].as_i64().unwrap_or(0),
                    amount: money(amount),
                    reason: payload["payload"]["reason"]
                        .as_str()
                        .or_else(|| payload["reason"].as_str())
                        .map(str::to_owned),
                });
            }
        }
    }
    receipt.total = money(total);
    receipt.refunded = money(refunded);
    receipt.paid = money(total + refunded);
    Ok(axum::Json(receipt).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_codes_are_checked_before_they_reach_sql() {
        assert!(valid_transaction("txn_1796300000_12"));
        assert!(valid_transaction("ord-77.a:b"));
        for bad in ["", "x' OR '1'='1", "a b", &"x".repeat(65), "txn;DROP"] {
            assert!(!valid_transaction(bad), "{bad}");
        }
        assert_eq!(cents(&Json::String("2.50".into())), 250);
        assert_eq!(money(1234), "12.34");
    }
}

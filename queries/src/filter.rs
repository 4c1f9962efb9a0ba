//! The SQL condition of a live subscription (`?where=…`), applied to each published row.
//!
//! Parsed and type-checked against the view's columns once, when the subscription starts (a bad
//! condition is a 400 with DataFusion's reason); then evaluated over each change as one Arrow
//! batch, so a subscription filters at the cost of a vectorised scan.

use std::sync::Arc;

use arrow_array::{Array, BooleanArray};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use vendflow_dataflows::row::to_batch;
use vendflow_dataflows::{Row, ViewDef};

/// Why a subscription's condition was refused: always the caller's input (a 400).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("the condition is {0} bytes; at most {MAX_CONDITION_BYTES}")]
    TooLong(usize),
    #[error("the condition has {0} terms; at most {MAX_CONDITION_NODES}")]
    TooManyTerms(usize),
    #[error("cannot filter {view} by {condition:?}: {source}")]
    Invalid {
        view: &'static str,
        condition: String,
        source: Box<datafusion::error::DataFusionError>,
    },
}

pub struct Filter {
    view: &'static ViewDef,
    predicate: Arc<dyn PhysicalExpr>,
}

/// The longest condition text, and the most expression nodes, a subscription may filter by: it
/// is evaluated over every change for as long as the subscription lives.
pub const MAX_CONDITION_BYTES: usize = 1024;
pub const MAX_CONDITION_NODES: usize = 64;

impl Filter {
    pub fn new(view: &'static ViewDef, condition: &str) -> Result<Filter, FilterError> {
        if condition.len() > MAX_CONDITION_BYTES {
            return Err(FilterError::TooLong(condition.len()));
        }
        let why = |e: datafusion::error::DataFusionError| FilterError::Invalid {
            view: view.name,
            condition: condition.to_owned(),
            source: Box::new(e),
        };
        let schema = DFSchema::try_from(view.schema().as_ref().clone()).map_err(why)?;
        let ctx = SessionContext::new();
        let expr = ctx.parse_sql_expr(condition, &schema).map_err(why)?;
        let mut nodes = 0usize;
        let _ = expr.apply(|_| {
            nodes += 1;
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        if nodes > MAX_CONDITION_NODES {
            return Err(FilterError::TooManyTerms(nodes));
        }
        let predicate = ctx.create_physical_expr(expr, &schema).map_err(why)?;
        Ok(Filter { view, predicate })
    }

    /// The rows the condition holds for (a row where it is null is left out, as in `WHERE`).
    pub fn keep<'a>(&self, rows: &'a [Row]) -> Vec<&'a Row> {
        if rows.is_empty() {
            return Vec::new();
        }
        let mask = to_batch(self.view.columns, rows)
            .map_err(|e| e.to_string())
            .and_then(|batch| {
                self.predicate
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .map_err(|e| e.to_string())
            });
        match mask {
            Ok(array) => match array.as_any().downcast_ref::<BooleanArray>() {
                Some(mask) => rows
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask.is_valid(*i) && mask.value(*i))
                    .map(|(_, r)| r)
                    .collect(),
                None => {
                    tracing::warn!(
                        view = self.view.name,
                        "subscription filter is not a condition"
                    );
                    Vec::new()
                }
            },
            Err(e) => {
                tracing::warn!(view = self.view.name, error = %e, "subscription filter failed on a change");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vendflow_dataflows::Value;
    use vendflow_dataflows::views::find;
    use vendflow_protocol::Cents;

    use super::*;

    #[test]
    fn a_condition_keeps_matching_rows_and_a_bad_one_is_refused() {
        let Some((_, view)) = find("slot_sales") else {
            panic!("no slot_sales view");
        };
        let row = |m: &str, slot: i64, cents: i64| -> Row {
            vec![
                Value::text(m),
                Value::Int(slot),
                Value::Int(1),
                Value::Int(1),
                Value::Money(Cents(cents)),
            ]
            .into()
        };
        assert_eq!(
            view.columns.len(),
            5,
            "the test's rows follow slot_sales' columns"
        );
        let rows = vec![row("m1", 1, 250), row("m1", 2, 100), row("m2", 1, 900)];
        let f = Filter::new(view, "machine_id = 'm1' AND revenue > 1.5")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.keep(&rows), vec![&rows[0]]);
        assert!(Filter::new(view, "no_such_column > 1").is_err());
        assert!(Filter::new(view, "machine_id = ").is_err());
        // Bounded cost: a long or deeply built condition is refused up front.
        let many = vec!["units > 1"; 40].join(" OR ");
        assert!(Filter::new(view, &many).is_err_and(
            |e| matches!(e, FilterError::TooManyTerms(_)) && e.to_string().contains("terms")
        ));
        let long = format!("machine_id = '{}'", "x".repeat(MAX_CONDITION_BYTES));
        assert!(Filter::new(view, &long).is_err_and(
            |e| matches!(e, FilterError::TooLong(_)) && e.to_string().contains("bytes")
        ));
    }
}

//! `health`: a 0–100 score per machine, with the reasons that lowered it.
//!
//! ```sql
//! SELECT machine_id,
//!        100 - 40 * (status = 'offline')
//!            - sum(per measure of the latest window: 10 if warning, 25 if critical)
//!            - least(20, 5 * sold_out_slots) - least(10, 2 * low_stock_slots) AS score,
//!        reasons
//! FROM liveness LEFT JOIN latest_window LEFT JOIN inventory ... GROUP BY machine_id
//! ```
//! Grades: `good` from 80, `degraded` from 50, else `poor`. The reasons are the alerts an
//! operator sees ("temperature critical", "offline", "2 slots sold out", …). Every input is
//! already bounded (latest window within retention, one liveness row, one level per slot), so
//! this view adds no state of its own beyond one group per machine.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::MachineId;

use crate::anomaly_windows::Level;
use crate::fold::{KeyedFold, Published};
use crate::inventory;
use crate::liveness::Status;
use crate::operators::{Time, hash_of};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col};

pub const HEALTH: ViewDef = ViewDef {
    name: "health",
    description: "health score per machine (0-100), grade and the reasons that lowered it",
    columns: &[
        col("machine_id", Text),
        col("score", Int),
        col("grade", Text),
        col("alerts", Int),
        col("reasons", Text),
    ],
};

/// How a row's `reasons` cell joins its reasons (one per alert).
pub const REASON_SEPARATOR: &str = "; ";

/// The reasons of a `health` row, one per alert, in the order the row lists them.
pub fn reasons(row: &Row) -> Vec<String> {
    match HEALTH.get(row, "reasons") {
        Some(Value::Text(t)) => t
            .split(REASON_SEPARATOR)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

const MEASURES: [&str; 5] = ["temperature", "door", "card reader", "motor", "network"];

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Fact {
    Status(Status),
    /// The levels of the machine's latest window.
    Window([Level; 5]),
    SoldOut,
    LowStock,
    RestockSoon,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Health {
    pub machine_id: MachineId,
    pub score: i64,
    pub alerts: i64,
    pub reasons: Vec<String>,
}

impl Health {
    pub fn grade(&self) -> &'static str {
        match self.score {
            80.. => "good",
            50.. => "degraded",
            _ => "poor",
        }
    }
}

/// The scoring rule, shared with the oracle: facts with their multiplicities.
pub fn score(machine_id: MachineId, facts: &[(Fact, i64)]) -> Health {
    let mut score = 100i64;
    let mut reasons = Vec::new();
    let mut alerts = 0;
    let count = |f: &Fact| {
        facts
            .iter()
            .filter(|(x, _)| x == f)
            .map(|(_, c)| *c)
            .sum::<i64>()
    };
    for (fact, c) in facts {
        if *c <= 0 {
            continue;
        }
        match fact {
            Fact::Status(Status::Offline) => {
                score -= 40;
                alerts += 1;
                reasons.push("offline".to_owned());
            }
            Fact::Status(Status::Maintenance) => reasons.push("in maintenance".to_owned()),
            _ => {}
        }
    }
    let latest = facts
        .iter()
        .filter(|(_, c)| *c > 0)
        .find_map(|(f, _)| match f {
            Fact::Window(levels) => Some(*levels),
            _ => None,
        });
    if let Some(levels) = latest {
        for (name, level) in MEASURES.iter().zip(levels) {
            match level {
                Level::Normal => {}
                Level::Warning => {
                    score -= 10;
                    alerts += 1;
                    reasons.push(format!("{name} warning"));
                }
                Level::Critical => {
                    score -= 25;
                    alerts += 1;
                    reasons.push(format!("{name} critical"));
                }
            }
        }
    }
    let sold_out = count(&Fact::SoldOut);
    if sold_out > 0 {
        score -= (5 * sold_out).min(20);
        alerts += 1;
        reasons.push(format!("{sold_out} slot(s) sold out"));
    }
    let low = count(&Fact::LowStock);
    if low > 0 {
        score -= (2 * low).min(10);
        reasons.push(format!("{low} slot(s) low on stock"));
    }
    if count(&Fact::RestockSoon) > 0 {
        reasons.push("needs restock within 48 h".to_owned());
    }
    Health {
        machine_id,
        score: score.clamp(0, 100),
        alerts,
        reasons,
    }
}

pub fn facts<'s>(
    latest_window: VecCollection<'s, Time, (MachineId, [Level; 5])>,
    status: VecCollection<'s, Time, (MachineId, Status)>,
    levels: VecCollection<'s, Time, inventory::Level>,
    restock: VecCollection<'s, Time, MachineId>,
) -> VecCollection<'s, Time, (MachineId, Fact)> {
    let windows = latest_window.map(|(m, levels)| (m, Fact::Window(levels)));
    let status = status.map(|(m, s)| (m, Fact::Status(s)));
    let stock = levels.flat_map(|l| {
        let fact = if l.sold_out() {
            Some(Fact::SoldOut)
        } else if l.low_stock() {
            Some(Fact::LowStock)
        } else {
            None
        };
        fact.map(|f| (l.machine_id, f))
    });
    let restock = restock.map(|m| (m, Fact::RestockSoon));
    windows.concat(status).concat(stock).concat(restock)
}

/// Each machine's facts (a sorted multiset), scored in ingestion-time order: a change that does
/// not move the score or the reasons publishes nothing.
/// The fold publishes the view's rows themselves: a retraction is the kept row, not a row built
/// again from a kept `Health`.
pub fn render<'s>(
    facts: VecCollection<'s, Time, (MachineId, Fact)>,
) -> VecCollection<'s, Time, Row> {
    facts.fold_by_key(
        "Health",
        Published::Kept,
        hash_of::<MachineId>,
        |_m, state: &mut Vec<(Fact, i64)>, fact, diff, _ctx| match state
            .binary_search_by(|(f, _)| f.cmp(&fact))
        {
            Ok(i) => {
                state[i].1 += diff as i64;
                if state[i].1 == 0 {
                    state.remove(i);
                }
            }
            Err(i) => state.insert(i, (fact, diff as i64)),
        },
        |_, _, _| {},
        |m, state, out| {
            if !state.is_empty() {
                out.push(row(score(m.clone(), state)));
            }
        },
    )
}

pub fn row(h: Health) -> Row {
    Row::build(|r| {
        r.text(h.machine_id.as_str());
        r.int(h.score);
        r.text(h.grade());
        r.int(h.alerts);
        r.text_joined(&h.reasons, REASON_SEPARATOR);
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::row::Value;
    use crate::testing::{self};

    #[test]
    fn a_rows_reasons_read_back_one_per_alert() {
        let health = Health {
            machine_id: testing::machine("m1"),
            score: 40,
            alerts: 2,
            reasons: vec!["temperature critical".into(), "2 slots sold out".into()],
        };
        assert_eq!(
            reasons(&row(health.clone())),
            ["temperature critical", "2 slots sold out"]
        );
        let quiet = Health {
            reasons: Vec::new(),
            alerts: 0,
            score: 100,
            ..health
        };
        assert!(reasons(&row(quiet)).is_empty());
    }

    #[test]
    fn health_matches_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let mut facts: BTreeMap<MachineId, BTreeMap<Fact, i64>> = BTreeMap::new();
            let mut add =
                |m: MachineId, f: Fact| *facts.entry(m).or_default().entry(f).or_default() += 1;
            // The levels of each machine's latest window still within retention.
            let mut latest: BTreeMap<MachineId, (vendflow_protocol::Timestamp, [Level; 5])> =
                BTreeMap::new();
            for w in crate::anomaly_windows::oracle(scenario) {
                let candidate = (w.start, w.levels());
                let slot = latest.entry(w.machine_id).or_insert(candidate);
                *slot = (*slot).max(candidate);
            }
            for (m, (_, levels)) in latest {
                add(m, Fact::Window(levels));
            }
            for l in crate::liveness::oracle(scenario) {
                add(l.machine_id, Fact::Status(l.status));
            }
            for l in crate::inventory::oracle(scenario) {
                if l.sold_out() {
                    add(l.machine_id, Fact::SoldOut);
                } else if l.low_stock() {
                    add(l.machine_id, Fact::LowStock);
                }
            }
            for row in testing::rows(views, "restock_needed") {
                if let Value::Text(m) = &row.cell(0) {
                    add(testing::machine(m), Fact::RestockSoon);
                }
            }
            let expected = facts
                .into_iter()
                .map(|(m, f)| row(score(m, &f.into_iter().collect::<Vec<_>>())))
                .collect();
            testing::assert_view(views, "health", expected, seed);
        }
    }

    #[test]
    fn reasons_explain_the_score() {
        let m = testing::machine("m1");
        let h = score(
            m,
            &[
                (Fact::Status(Status::Offline), 1),
                (
                    Fact::Window([
                        Level::Critical,
                        Level::Normal,
                        Level::Normal,
                        Level::Warning,
                        Level::Normal,
                    ]),
                    1,
                ),
                (Fact::SoldOut, 2),
            ],
        );
        assert_eq!(h.score, 100 - 40 - 25 - 10 - 10);
        assert_eq!(
            h.reasons,
            vec![
                "offline",
                "temperature critical",
                "motor warning",
                "2 slot(s) sold out"
            ]
        );
        assert_eq!(h.grade(), "poor");
    }
}

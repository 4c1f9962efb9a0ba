//! `health`: a 0–100 score per machine, with the reasons that lowered it.
//!
//! ```sql
//! SELECT machine_id,
//!        100 - 40 * (status = 'offline')
//!            - sum(per measure of the latest window: 10 if warning, 25 if critical)
//!            - least(20, 5 * sold_out_slots) - least(10, 2 * low_stock_slots)
//!            - 10 per signal with an hour in signal_anomalies - 15 if in zero_sales
//!            - 20 if flagged in maintenance_candidates AS score,
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
use crate::signals;

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
    /// An hour of the last two days when a signal (its index in [`signals::SIGNALS`]) was more
    /// than 3 deviations from the machine's own mean.
    Unusual(usize),
    /// Silent for longer than its sales history allows (`zero_sales`).
    Silent,
    /// Flagged in `maintenance_candidates`: its probability of failing within the model's
    /// horizon (days), in whole percent.
    FailureLikely {
        percent: u8,
        days: u32,
    },
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
    if count(&Fact::Silent) > 0 {
        score -= 15;
        alerts += 1;
        reasons.push("no sales for longer than usual".to_owned());
    }
    for (fact, c) in facts {
        if let (Fact::FailureLikely { percent, days }, 1..) = (fact, c) {
            score -= 20;
            alerts += 1;
            reasons.push(format!(
                "may fail within {days} days ({percent} %): see maintenance_candidates"
            ));
        }
    }
    for (s, name) in signals::SIGNALS.iter().enumerate() {
        let hours = count(&Fact::Unusual(s));
        if hours > 0 {
            score -= 10;
            alerts += 1;
            reasons.push(format!("{name} unusual for this machine ({hours} h)"));
        }
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
    levels: &mut crate::operators::FanOut<'s, inventory::Level>,
    restock: VecCollection<'s, Time, MachineId>,
    unusual: VecCollection<'s, Time, signals::Anomaly>,
    silent: VecCollection<'s, Time, MachineId>,
    failing: VecCollection<'s, Time, (MachineId, Fact)>,
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
        fact.map(|f| (l.machine_id.clone(), f))
    });
    let restock = restock.map(|m| (m, Fact::RestockSoon));
    let unusual = unusual.map(|a| (a.machine_id, Fact::Unusual(a.signal)));
    windows
        .concat(status)
        .concat(stock)
        .concat(restock)
        .concat(unusual)
        .concat(silent.map(|m| (m, Fact::Silent)))
        .concat(failing)
}

/// The machines `maintenance_candidates` flags, as facts.
pub fn failure_likely<'s>(
    candidates: VecCollection<'s, Time, crate::maintenance::Candidate>,
    horizon_days: u32,
) -> VecCollection<'s, Time, (MachineId, Fact)> {
    candidates.flat_map(move |c| {
        c.flagged.then(|| {
            let percent = (c.probability.0 * 100.0).floor().clamp(0.0, 100.0) as u8;
            let fact = Fact::FailureLikely {
                percent,
                days: horizon_days,
            };
            (c.machine_id, fact)
        })
    })
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

    /// The batch answer, written from the rule in the module's documentation: the inputs come
    /// from the other views' oracles (never from the engine's rows) and the score is computed
    /// here, not with [`score`].
    #[test]
    fn health_matches_batch_oracle_on_random_streams() {
        const NAMES: [&str; 5] = ["temperature", "door", "card reader", "motor", "network"];
        #[derive(Default)]
        struct Machine {
            status: Option<Status>,
            window: Option<(vendflow_protocol::Timestamp, [Level; 5])>,
            sold_out: i64,
            low: i64,
            restock: bool,
            /// Unusual hours per signal name.
            unusual: BTreeMap<String, i64>,
            silent: bool,
            /// Flagged by the maintenance model: its probability.
            failing: Option<f64>,
        }
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let mut machines: BTreeMap<MachineId, Machine> = BTreeMap::new();
            // The levels of each machine's latest window still within retention.
            for w in crate::anomaly_windows::oracle(scenario) {
                let m = machines.entry(w.machine_id.clone()).or_default();
                let candidate = (w.start, w.levels());
                m.window = Some(m.window.map_or(candidate, |c| c.max(candidate)));
            }
            for l in crate::liveness::oracle(scenario) {
                machines.entry(l.machine_id).or_default().status = Some(l.status);
            }
            for l in crate::inventory::oracle(scenario) {
                let Some(plan) = &l.plan else { continue };
                if l.units <= 0 {
                    machines.entry(l.machine_id.clone()).or_default().sold_out += 1;
                } else if l.units <= i64::from(plan.low_stock_threshold) {
                    machines.entry(l.machine_id.clone()).or_default().low += 1;
                }
            }
            for row in crate::stockout::oracle(scenario).1 {
                if let Value::Text(m) = &row.cell(0) {
                    machines.entry(testing::machine(m)).or_default().restock = true;
                }
            }
            for row in crate::zero_sales::oracle(scenario) {
                if let Value::Text(m) = &row.cell(0) {
                    machines.entry(testing::machine(m)).or_default().silent = true;
                }
            }
            for row in crate::maintenance::oracle(scenario) {
                if let (Value::Text(m), Value::Float(p), Value::Bool(true)) =
                    (&row.cell(0), &row.cell(2), &row.cell(3))
                {
                    machines.entry(testing::machine(m)).or_default().failing = Some(p.0);
                }
            }
            for row in crate::signals::oracle(scenario).1 {
                if let (Value::Text(m), Value::Text(signal)) = (&row.cell(0), &row.cell(1)) {
                    let m = machines.entry(testing::machine(m)).or_default();
                    *m.unusual.entry(signal.to_string()).or_default() += 1;
                }
            }
            let mut expected = Vec::new();
            for (id, m) in machines {
                let (mut score, mut alerts, mut reasons) = (100i64, 0i64, Vec::<String>::new());
                match m.status {
                    Some(Status::Offline) => {
                        score -= 40;
                        alerts += 1;
                        reasons.push("offline".into());
                    }
                    Some(Status::Maintenance) => reasons.push("in maintenance".into()),
                    _ => {}
                }
                for (name, level) in NAMES
                    .iter()
                    .zip(m.window.map_or([Level::Normal; 5], |w| w.1))
                {
                    let (penalty, word) = match level {
                        Level::Normal => continue,
                        Level::Warning => (10, "warning"),
                        Level::Critical => (25, "critical"),
                    };
                    score -= penalty;
                    alerts += 1;
                    reasons.push(format!("{name} {word}"));
                }
                if m.sold_out > 0 {
                    score -= (5 * m.sold_out).min(20);
                    alerts += 1;
                    reasons.push(format!("{} slot(s) sold out", m.sold_out));
                }
                if m.low > 0 {
                    score -= (2 * m.low).min(10);
                    reasons.push(format!("{} slot(s) low on stock", m.low));
                }
                if m.restock {
                    reasons.push("needs restock within 48 h".into());
                }
                if m.silent {
                    score -= 15;
                    alerts += 1;
                    reasons.push("no sales for longer than usual".into());
                }
                if let Some(p) = m.failing {
                    score -= 20;
                    alerts += 1;
                    reasons.push(format!(
                        "may fail within {} days ({} %): see maintenance_candidates",
                        scenario.config.maintenance.horizon_days,
                        (p * 100.0) as u8
                    ));
                }
                for signal in [
                    "temperature",
                    "motor_current",
                    "card_error_rate",
                    "door_opens",
                    "network_signal",
                ] {
                    if let Some(hours) = m.unusual.get(signal) {
                        score -= 10;
                        alerts += 1;
                        reasons.push(format!("{signal} unusual for this machine ({hours} h)"));
                    }
                }
                let score = score.clamp(0, 100);
                let grade = match score {
                    80.. => "good",
                    50.. => "degraded",
                    _ => "poor",
                };
                expected.push(Row::from([
                    Value::text(id.as_str()),
                    Value::Int(score),
                    Value::text(grade),
                    Value::Int(alerts),
                    Value::text(reasons.join("; ")),
                ]));
            }
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

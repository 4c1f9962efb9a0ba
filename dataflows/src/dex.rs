//! `dex_audits` and `reconciliation`: the machines' own audit counters (EVA-DTS / DEX) against
//! what their telemetry reported.
//!
//! A machine's DEX audit holds, per column (coil), cumulative counters: paid vends and their
//! value since the machine was initialised (PA201, PA202). Two consecutive audits of a machine
//! give each column's sales over the period between them:
//! ```sql
//! -- dex_audits: one row per column of each audit; the first audit of a machine is its baseline
//! SELECT machine, prev.read_at AS period_start, cur.read_at AS period_end, column,
//!        cur.vends - prev.vends AS vends, cur.value - prev.value AS value
//! FROM audits cur LEFT JOIN audits prev ON prev is the machine's audit just before cur
//! -- reconciliation: per machine, period and slot (the column code as a number)
//! SELECT machine, period_start, period_end, slot,
//!        sum(telemetry units, value of accepted sale lines with period_start <= ts < period_end),
//!        audit vends, audit value, telemetry value - audit value AS difference, status
//! ```
//! A counter lower than in the previous audit is a **counter reset** (a new controller, a
//! cleared board): the period counts the since-reset counters (PA203, PA204) if the audit has
//! them, else the counter from zero, and the row says so. A column present in only one of the two
//! audits is reported, with no count. `status`: `matched`, `missing_in_telemetry` (the audit
//! counted more vends), `missing_in_audit` (telemetry counted more), `amount_differs` (same
//! vends, different value), `audit_unreadable` (no count for the column).
//!
//! State per machine: its audits of the last `dex_retention_days` (and always its newest), and
//! its accepted sale lines from its oldest kept audit on; a machine that has sent no audit keeps
//! only its lines of the last `dex_grace_ms` (an audit read at a restock visit arrives soon after
//! the sales it covers). Audits are expected in read order; one that arrives late is placed
//! where it belongs, and its periods are computed from the lines still kept.

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::dex::DexAudit;
use vendflow_protocol::{Cents, MachineId, Timestamp};

use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Fork, Time, fork, hash_of, insert_tight};
use crate::row::{ColumnType::*, Row, RowWriter, ViewDef, col, null};
use crate::sales::SaleLine;

pub const AUDITS: ViewDef = ViewDef {
    name: "dex_audits",
    description: "per machine, DEX audit and column: the sales between the previous audit and this one (the first audit is the baseline)",
    columns: &[
        col("machine_id", Text),
        null("period_start", Time),
        col("period_end", Time),
        col("column", Text),
        null("slot_number", Int),
        null("price", Money),
        null("vends", Int),
        null("value", Money),
        col("note", Text),
    ],
};

pub const RECONCILIATION: ViewDef = ViewDef {
    name: "reconciliation",
    description: "per machine, period between two DEX audits and slot: telemetry sales against the audit's counters",
    columns: &[
        col("machine_id", Text),
        col("period_start", Time),
        col("period_end", Time),
        col("slot_number", Int),
        col("telemetry_units", Int),
        col("telemetry_value", Money),
        null("audit_units", Int),
        null("audit_value", Money),
        null("difference", Money),
        col("status", Text),
    ],
};

/// One column of an audit, as the views need it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Counter {
    pub code: String,
    pub slot: Option<u32>,
    pub price: Option<i64>,
    pub vends: Option<i64>,
    pub value: Option<i64>,
    pub vends_since_reset: Option<i64>,
    pub value_since_reset: Option<i64>,
}

/// An audit as the views need it (no raw text).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Read {
    pub at: i64,
    pub counters: Vec<Counter>,
    /// The parser's problems, joined.
    pub problems: String,
}

impl Read {
    /// The audit of a `dex` event read at `at`.
    pub fn of(audit: &DexAudit, at: Timestamp) -> Read {
        Read {
            at: at.0,
            counters: audit
                .columns
                .iter()
                .map(|c| Counter {
                    code: c.code.clone(),
                    slot: c.slot_number(),
                    price: c.price.map(|p| p.0),
                    vends: c.vends,
                    value: c.value.map(|v| v.0),
                    vends_since_reset: c.vends_since_reset,
                    value_since_reset: c.value_since_reset.map(|v| v.0),
                })
                .collect(),
            problems: audit.problems.join("; "),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum In {
    Audit(Box<Read>),
    /// (event time, slot, units, cents)
    Sale(i64, u32, i64, i64),
}

/// An accepted sale line: (event time, slot, units, cents).
type Line = (i64, u32, i64, i64);

#[derive(Default, PartialEq, Serialize, Deserialize)]
struct Machine {
    reads: BTreeMap<i64, Read>,
    /// Accepted sale lines in event-time order (lines of one instant in arrival order). A
    /// vector, not a map by time: most machines hold a line or two (a map's first node is
    /// ~450 bytes), and lines mostly arrive in time order, so an insert is usually a push.
    lines: Vec<Line>,
}

impl Machine {
    /// Drops what no period will need (see the module's documentation).
    fn trim(&mut self, now: i64, config: &Config) {
        let keep_reads = now - config.dex_retention_days * vendflow_protocol::units::MS_PER_DAY;
        while self.reads.len() > 1
            && self
                .reads
                .first_key_value()
                .is_some_and(|(t, _)| *t < keep_reads)
        {
            self.reads.pop_first();
        }
        let keep_lines = match self.reads.first_key_value() {
            Some((first, _)) => (*first).min(now - config.dex_grace_ms),
            None => now - config.dex_grace_ms,
        };
        let old = self.lines.partition_point(|l| l.0 < keep_lines);
        if old == self.lines.len() {
            self.lines = Vec::new();
        } else if old > 0 {
            self.lines.drain(..old);
        }
    }

    /// Adds a line after every line at or before its time.
    fn add_line(&mut self, line: Line) {
        let at = self.lines.partition_point(|l| l.0 <= line.0);
        insert_tight(&mut self.lines, at, line);
    }

    /// The lines of `from <= time < until`.
    fn lines_between(&self, from: i64, until: i64) -> &[Line] {
        let start = self.lines.partition_point(|l| l.0 < from);
        let end = self.lines.partition_point(|l| l.0 < until).max(start);
        &self.lines[start..end]
    }
}

/// A row of one of the two views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Out {
    Audit(AuditRow),
    Recon(ReconRow),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuditRow {
    pub machine_id: MachineId,
    pub period_start: Option<i64>,
    pub period_end: i64,
    pub column: String,
    pub slot: Option<u32>,
    pub price: Option<i64>,
    pub vends: Option<i64>,
    pub value: Option<i64>,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReconRow {
    pub machine_id: MachineId,
    pub period_start: i64,
    pub period_end: i64,
    pub slot: u32,
    pub telemetry_units: i64,
    pub telemetry_value: i64,
    pub audit_units: Option<i64>,
    pub audit_value: Option<i64>,
    pub status: Status,
}

/// How a slot's telemetry and audit agree over a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Matched,
    /// The audit counted more vends than telemetry reported.
    MissingInTelemetry,
    /// Telemetry reported more vends than the audit counted.
    MissingInAudit,
    /// The same vends, a different value.
    AmountDiffers,
    /// The audit has no count for the column.
    AuditUnreadable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Matched => "matched",
            Status::MissingInTelemetry => "missing_in_telemetry",
            Status::MissingInAudit => "missing_in_audit",
            Status::AmountDiffers => "amount_differs",
            Status::AuditUnreadable => "audit_unreadable",
        }
    }
}

pub struct Dex<'s> {
    pub audits: VecCollection<'s, Time, AuditRow>,
    pub reconciliation: VecCollection<'s, Time, ReconRow>,
}

/// A column's sales between two audits, and what to say about them.
pub fn period_counts(
    prev: Option<&Counter>,
    cur: Option<&Counter>,
) -> (Option<(i64, i64)>, String) {
    match (prev, cur) {
        (Some(p), Some(c)) => match (p.vends, p.value, c.vends, c.value) {
            (Some(pv), Some(pval), Some(cv), Some(cval)) => {
                if cv >= pv && cval >= pval {
                    (Some((cv - pv, cval - pval)), String::new())
                } else {
                    match (c.vends_since_reset, c.value_since_reset) {
                        (Some(v), Some(val)) => (
                            Some((v, val)),
                            "counter reset: counted since the reset (PA203, PA204)".into(),
                        ),
                        _ => (Some((cv, cval)), "counter reset: counted from zero".into()),
                    }
                }
            }
            _ => (None, "counter missing or unreadable".into()),
        },
        (None, Some(_)) => (None, "column not in the previous audit".into()),
        (Some(_), None) => (None, "column missing from this audit".into()),
        (None, None) => (None, String::new()),
    }
}

pub fn status(telemetry: (i64, i64), audit: Option<(i64, i64)>) -> Status {
    match audit {
        None => Status::AuditUnreadable,
        Some((units, value)) => {
            if telemetry.0 < units {
                Status::MissingInTelemetry
            } else if telemetry.0 > units {
                Status::MissingInAudit
            } else if telemetry.1 != value {
                Status::AmountDiffers
            } else {
                Status::Matched
            }
        }
    }
}

fn outputs(machine: &MachineId, state: &Machine, out: &mut Vec<Out>) {
    let mut previous: Option<&Read> = None;
    for read in state.reads.values() {
        // Columns of this audit, then those only in the previous one.
        let mut codes: Vec<&str> = read.counters.iter().map(|c| c.code.as_str()).collect();
        if let Some(p) = previous {
            for c in &p.counters {
                if !codes.contains(&c.code.as_str()) {
                    codes.push(&c.code);
                }
            }
        }
        let mut audit_by_slot: BTreeMap<u32, Option<(i64, i64)>> = BTreeMap::new();
        for code in codes {
            let cur = read.counters.iter().find(|c| c.code == code);
            let prev = previous.and_then(|p| p.counters.iter().find(|c| c.code == code));
            let (counts, mut note) = match previous {
                Some(_) => period_counts(prev, cur),
                None => (None, "baseline: the machine's first audit".into()),
            };
            if !read.problems.is_empty() {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str(&read.problems);
            }
            let slot = cur.or(prev).and_then(|c| c.slot);
            if previous.is_some()
                && let Some(s) = slot
            {
                audit_by_slot.insert(s, counts);
            }
            out.push(Out::Audit(AuditRow {
                machine_id: machine.clone(),
                period_start: previous.map(|p| p.at),
                period_end: read.at,
                column: code.to_owned(),
                slot,
                price: cur.and_then(|c| c.price),
                vends: counts.map(|c| c.0),
                value: counts.map(|c| c.1),
                note,
            }));
        }
        if let Some(p) = previous {
            let mut telemetry: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
            for (_, slot, units, cents) in state.lines_between(p.at, read.at) {
                let t = telemetry.entry(*slot).or_default();
                t.0 += units;
                t.1 += cents;
            }
            let mut slots: Vec<u32> = telemetry.keys().copied().collect();
            slots.extend(audit_by_slot.keys().copied());
            slots.sort_unstable();
            slots.dedup();
            for slot in slots {
                let t = telemetry.get(&slot).copied().unwrap_or_default();
                let audit = audit_by_slot.get(&slot).copied().unwrap_or(Some((0, 0)));
                if t == (0, 0) && audit == Some((0, 0)) {
                    continue;
                }
                out.push(Out::Recon(ReconRow {
                    machine_id: machine.clone(),
                    period_start: p.at,
                    period_end: read.at,
                    slot,
                    telemetry_units: t.0,
                    telemetry_value: t.1,
                    audit_units: audit.map(|a| a.0),
                    audit_value: audit.map(|a| a.1),
                    status: status(t, audit),
                }));
            }
        }
        previous = Some(read);
    }
}

/// `audits`: each `dex` event's machine and audit; `accepted`: the deduplicated sale lines.
pub fn render<'s>(
    audits: VecCollection<'s, Time, (MachineId, Read)>,
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    config: &Config,
) -> Dex<'s> {
    let config = config.clone();
    let input = audits
        .map(|(m, r)| (m, In::Audit(Box::new(r))))
        .concat(accepted.map(|l| {
            (
                l.machine_id.clone(),
                In::Sale(
                    l.timestamp.0,
                    l.slot_number,
                    i64::from(l.quantity),
                    l.amount.0,
                ),
            )
        }));
    let rows = input.fold_by_key(
        "DEX: reconcile",
        Published::Kept,
        hash_of::<MachineId>,
        move |_m, state: &mut Machine, record, diff, ctx| {
            if diff <= 0 {
                return;
            }
            let now = ctx.now().ms();
            match record {
                In::Audit(read) => {
                    state.reads.insert(read.at, *read);
                }
                In::Sale(ts, slot, units, cents) => {
                    // Lines a kept period can no longer need are not kept.
                    let oldest = state.reads.first_key_value().map(|(t, _)| *t);
                    if oldest.is_some_and(|o| ts < o) && ts < now - config.dex_grace_ms {
                        return;
                    }
                    for _ in 0..diff {
                        state.add_line((ts, slot, units, cents));
                    }
                }
            }
            state.trim(now, &config);
        },
        |_, _, _| {},
        |m, state, out| {
            if !state.reads.is_empty() {
                outputs(m, state, out);
            }
        },
    );
    let (audits, reconciliation, _) = fork(rows, "DEX: split", |o| match o {
        Out::Audit(a) => Fork::<_, _, std::convert::Infallible>::A(a),
        Out::Recon(r) => Fork::B(r),
    });
    Dex {
        audits,
        reconciliation,
    }
}

pub fn audit_row(a: AuditRow) -> Row {
    Row::build(|r| {
        r.text(a.machine_id.as_str());
        r.opt(a.period_start.map(Timestamp), RowWriter::time);
        r.time(Timestamp(a.period_end));
        r.text(&a.column);
        r.opt(a.slot.map(i64::from), RowWriter::int);
        r.opt(a.price.map(Cents), RowWriter::money);
        r.opt(a.vends, RowWriter::int);
        r.opt(a.value.map(Cents), RowWriter::money);
        r.text(&a.note);
    })
}

pub fn recon_row(x: ReconRow) -> Row {
    Row::build(|r| {
        r.text(x.machine_id.as_str());
        r.time(Timestamp(x.period_start));
        r.time(Timestamp(x.period_end));
        r.int(i64::from(x.slot));
        r.int(x.telemetry_units);
        r.money(Cents(x.telemetry_value));
        r.opt(x.audit_units, RowWriter::int);
        r.opt(x.audit_value.map(Cents), RowWriter::money);
        r.opt(
            x.audit_value.map(|a| Cents(x.telemetry_value - a)),
            RowWriter::money,
        );
        r.text(x.status.as_str());
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vendflow_protocol::{Event, EventKind};

    use super::*;
    use crate::row::Value;
    use crate::testing::{self, Scenario};

    const HOUR: i64 = 3_600_000;

    /// A DEX audit read at `at` with (column, price, vends, value, since-reset) counters.
    /// (column, price, vends, value, since-reset counters)
    type Column<'a> = (&'a str, i64, i64, i64, Option<(i64, i64)>);

    fn audit(m: &str, at: i64, columns: &[Column<'_>]) -> Event {
        let mut text = String::from("DXS*RST1*VA*V0/6*1\r\nST*001*0001\r\nID1*SN-1*VX\r\n");
        let mut segments = 2;
        for (code, price, vends, value, reset) in columns {
            text.push_str(&format!("PA1*{code}*{price}\r\n"));
            match reset {
                Some((v, val)) => text.push_str(&format!("PA2*{vends}*{value}*{v}*{val}\r\n")),
                None => text.push_str(&format!("PA2*{vends}*{value}\r\n")),
            }
            segments += 2;
        }
        text.push_str(&format!("SE*{}*0001\r\nDXE*1*1\r\n", segments + 1));
        let parsed = vendflow_protocol::dex::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        Event {
            machine_id: testing::machine(m),
            timestamp: Timestamp(at),
            seq: None,
            kind: EventKind::Dex(Box::new(parsed)),
        }
    }

    fn sale(m: &str, ts: i64, slot: u32, cents: i64, quantity: u32, txn: &str) -> Event {
        let mut e = testing::sale(m, ts, slot, cents, txn);
        if let EventKind::Sale(s) = &mut e.kind {
            s.quantity = quantity;
        }
        e
    }

    fn statuses(views: &crate::Snapshot) -> Vec<(i64, String)> {
        testing::rows(views, "reconciliation")
            .iter()
            .map(|r| {
                let n = RECONCILIATION.named(r);
                (
                    n.int("slot_number").unwrap_or(-1),
                    n.text("status").unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The two views computed the obvious way: every audit of a machine against the one before
    /// it, and every accepted line (the sales oracle's) in the period between them.
    #[test]
    fn dex_views_match_the_oracle_on_random_streams() {
        use std::collections::BTreeSet;
        let mut periods = 0;
        let mut statuses_seen = BTreeSet::new();
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let (accepted, _, _) = crate::sales::oracle(&scenario.deliveries, &scenario.config);
            let mut audits: BTreeMap<MachineId, BTreeMap<i64, &vendflow_protocol::dex::DexAudit>> =
                BTreeMap::new();
            for (_, e) in &scenario.deliveries {
                if let EventKind::Dex(a) = &e.kind {
                    audits
                        .entry(e.machine_id.clone())
                        .or_default()
                        .insert(e.timestamp.0, a);
                }
            }
            let (mut audit_rows, mut recon_rows) = (Vec::new(), Vec::new());
            for (m, reads) in &audits {
                let mut prev: Option<(i64, &vendflow_protocol::dex::DexAudit)> = None;
                for (at, cur) in reads {
                    let mut codes: Vec<&str> =
                        cur.columns.iter().map(|c| c.code.as_str()).collect();
                    if let Some((_, p)) = prev {
                        for c in &p.columns {
                            if !codes.contains(&c.code.as_str()) {
                                codes.push(&c.code);
                            }
                        }
                    }
                    let mut audited: BTreeMap<u32, Option<(i64, i64)>> = BTreeMap::new();
                    for code in codes {
                        let c = cur.column(code);
                        let p = prev.and_then(|(_, p)| p.column(code));
                        let (counts, note) = match (prev, p, c) {
                            (None, _, _) => {
                                (None, "baseline: the machine's first audit".to_owned())
                            }
                            (Some(_), Some(p), Some(c)) => {
                                let (pv, pval, cv, cval) = (
                                    p.vends.unwrap_or(0),
                                    p.value.map_or(0, |v| v.0),
                                    c.vends.unwrap_or(0),
                                    c.value.map_or(0, |v| v.0),
                                );
                                if cv >= pv && cval >= pval {
                                    (Some((cv - pv, cval - pval)), String::new())
                                } else if let (Some(v), Some(val)) =
                                    (c.vends_since_reset, c.value_since_reset)
                                {
                                    (
                                        Some((v, val.0)),
                                        "counter reset: counted since the reset (PA203, PA204)"
                                            .to_owned(),
                                    )
                                } else {
                                    (
                                        Some((cv, cval)),
                                        "counter reset: counted from zero".to_owned(),
                                    )
                                }
                            }
                            (Some(_), None, Some(_)) => {
                                (None, "column not in the previous audit".to_owned())
                            }
                            (Some(_), Some(_), None) => {
                                (None, "column missing from this audit".to_owned())
                            }
                            (Some(_), None, None) => (None, String::new()),
                        };
                        let slot = code.parse::<u32>().ok();
                        if prev.is_some()
                            && let Some(s) = slot
                        {
                            audited.insert(s, counts);
                        }
                        audit_rows.push(audit_row(AuditRow {
                            machine_id: m.clone(),
                            period_start: prev.map(|(t, _)| t),
                            period_end: *at,
                            column: code.to_owned(),
                            slot,
                            price: c.and_then(|c| c.price).map(|p| p.0),
                            vends: counts.map(|c| c.0),
                            value: counts.map(|c| c.1),
                            note,
                        }));
                    }
                    if let Some((start, _)) = prev {
                        periods += 1;
                        let mut telemetry: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
                        for (_, l) in &accepted {
                            if l.machine_id == *m && l.timestamp.0 >= start && l.timestamp.0 < *at {
                                let t = telemetry.entry(l.slot_number).or_default();
                                t.0 += i64::from(l.quantity);
                                t.1 += l.amount.0;
                            }
                        }
                        let slots: BTreeSet<u32> =
                            telemetry.keys().chain(audited.keys()).copied().collect();
                        for slot in slots {
                            let t = telemetry.get(&slot).copied().unwrap_or_default();
                            let a = audited.get(&slot).copied().unwrap_or(Some((0, 0)));
                            if t == (0, 0) && a == Some((0, 0)) {
                                continue;
                            }
                            let status = match a {
                                None => Status::AuditUnreadable,
                                Some((u, _)) if t.0 < u => Status::MissingInTelemetry,
                                Some((u, _)) if t.0 > u => Status::MissingInAudit,
                                Some((_, v)) if t.1 != v => Status::AmountDiffers,
                                Some(_) => Status::Matched,
                            };
                            statuses_seen.insert(status);
                            recon_rows.push(recon_row(ReconRow {
                                machine_id: m.clone(),
                                period_start: start,
                                period_end: *at,
                                slot,
                                telemetry_units: t.0,
                                telemetry_value: t.1,
                                audit_units: a.map(|x| x.0),
                                audit_value: a.map(|x| x.1),
                                status,
                            }));
                        }
                    }
                    prev = Some((*at, cur));
                }
            }
            testing::assert_view(views, "dex_audits", audit_rows, seed);
            testing::assert_view(views, "reconciliation", recon_rows, seed);
        }
        assert!(periods > 20, "the random streams audit machines");
        assert!(
            statuses_seen.contains(&Status::Matched)
                && statuses_seen.contains(&Status::MissingInTelemetry),
            "{statuses_seen:?}"
        );
    }

    #[test]
    fn two_audits_reconcile_with_the_telemetry_between_them() {
        let mut s = Scenario::empty();
        let t0 = testing::BASE + 8 * HOUR;
        let t1 = t0 + 24 * HOUR;
        s.deliver(
            t0,
            audit(
                "m1",
                t0,
                &[
                    ("148", 250, 40, 10_000, None),
                    ("101", 175, 10, 1_750, None),
                ],
            ),
        );
        // Between the audits: a cart of two lines (148 ×2, 101 ×1), a re-delivery, and 148 once more.
        s.deliver(t0 + HOUR, sale("m1", t0 + HOUR, 148, 500, 2, "a"));
        s.deliver(t0 + HOUR, sale("m1", t0 + HOUR, 101, 175, 1, "a"));
        s.deliver(t0 + 2 * HOUR, sale("m1", t0 + HOUR, 148, 500, 2, "a"));
        s.deliver(t0 + 5 * HOUR, sale("m1", t0 + 5 * HOUR, 148, 250, 1, "b"));
        // After the second audit: not in its period.
        s.deliver(t1 + HOUR, sale("m1", t1 + HOUR, 148, 250, 1, "c"));
        s.deliver(
            t1,
            audit(
                "m1",
                t1,
                &[
                    ("148", 250, 43, 10_750, None),
                    ("101", 175, 11, 1_925, None),
                ],
            ),
        );
        let views = testing::run(&s);
        assert_eq!(
            statuses(&views),
            [(101, "matched".to_owned()), (148, "matched".to_owned())]
        );
        let rows = testing::rows(&views, "reconciliation");
        let n = RECONCILIATION.named(&rows[1]);
        assert_eq!(n.int("telemetry_units"), Some(3));
        assert_eq!(n.cents("telemetry_value"), Some(750));
        assert_eq!(n.cents("difference"), Some(0));
        // dex_audits: the baseline's two columns, then the period's.
        let audits = testing::rows(&views, "dex_audits");
        assert_eq!(audits.len(), 4, "{audits:?}");
        let period: Vec<(String, Option<i64>, Option<i64>)> = audits
            .iter()
            .map(|r| AUDITS.named(r))
            .filter(|n| n.get("period_start") != Value::Null)
            .map(|n| {
                (
                    n.text("column").unwrap_or_default(),
                    n.int("vends"),
                    n.cents("value"),
                )
            })
            .collect();
        assert_eq!(
            period,
            [
                ("101".to_owned(), Some(1), Some(175)),
                ("148".to_owned(), Some(3), Some(750))
            ]
        );
    }

    #[test]
    fn disagreements_are_flagged_each_way() {
        let mut s = Scenario::empty();
        let t0 = testing::BASE + 8 * HOUR;
        let t1 = t0 + 24 * HOUR;
        s.deliver(
            t0,
            audit(
                "m1",
                t0,
                &[
                    ("148", 250, 40, 10_000, None),
                    ("101", 175, 10, 1_750, None),
                    ("102", 100, 5, 500, None),
                ],
            ),
        );
        // 148: telemetry lost a sale (the audit counts 2, telemetry 1).
        s.deliver(t0 + HOUR, sale("m1", t0 + HOUR, 148, 250, 1, "a"));
        // 101: telemetry has a sale the audit does not count.
        s.deliver(t0 + HOUR, sale("m1", t0 + HOUR, 101, 175, 1, "b"));
        // 102: same vends, different money (a price the machine did not charge).
        s.deliver(t0 + HOUR, sale("m1", t0 + HOUR, 102, 150, 1, "c"));
        s.deliver(
            t1,
            audit(
                "m1",
                t1,
                &[
                    ("148", 250, 42, 10_500, None),
                    ("101", 175, 10, 1_750, None),
                    ("102", 100, 6, 600, None),
                ],
            ),
        );
        let views = testing::run(&s);
        assert_eq!(
            statuses(&views),
            [
                (101, "missing_in_audit".to_owned()),
                (102, "amount_differs".to_owned()),
                (148, "missing_in_telemetry".to_owned()),
            ]
        );
        let rows = testing::rows(&views, "reconciliation");
        assert_eq!(
            RECONCILIATION.named(&rows[2]).cents("difference"),
            Some(-250)
        );
    }

    #[test]
    fn a_counter_reset_and_a_missing_column_are_reported() {
        let mut s = Scenario::empty();
        let t0 = testing::BASE + 8 * HOUR;
        let t1 = t0 + 24 * HOUR;
        s.deliver(
            t0,
            audit(
                "m1",
                t0,
                &[
                    ("148", 250, 40, 10_000, None),
                    ("101", 175, 10, 1_750, None),
                ],
            ),
        );
        s.deliver(t0 + HOUR, sale("m1", t0 + HOUR, 148, 250, 1, "a"));
        // The board was replaced: 148's counters restart; 101 is gone from the audit.
        s.deliver(t1, audit("m1", t1, &[("148", 250, 1, 250, Some((1, 250)))]));
        let views = testing::run(&s);
        let audits = testing::rows(&views, "dex_audits");
        let notes: Vec<(String, String)> = audits
            .iter()
            .map(|r| AUDITS.named(r))
            .filter(|n| n.get("period_start") != Value::Null)
            .map(|n| {
                (
                    n.text("column").unwrap_or_default(),
                    n.text("note").unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].0 == "101" && notes[0].1.contains("missing from this audit"),
            "{notes:?}"
        );
        assert!(
            notes[1].0 == "148" && notes[1].1.contains("counter reset"),
            "{notes:?}"
        );
        assert_eq!(
            statuses(&views),
            [
                (101, "audit_unreadable".to_owned()),
                (148, "matched".to_owned())
            ]
        );
    }
}

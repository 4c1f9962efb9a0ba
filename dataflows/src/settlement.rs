//! `settlement_daily` and `settlement_exceptions`: card sales as telemetry reported them against a
//! payment processor's settlement file, transaction by transaction.
//!
//! A processor's file says, per card transaction, what became of it: settled (paid), declined
//! (the issuer refused it: the risk of a sale a machine authorised alone while offline) or
//! reversed (a refund or a chargeback). Its lines reach the engine as `settlement` events
//! (`vendflow import settlement`, or published like any event), with the transaction's time and
//! the machine of the terminal.
//! ```sql
//! -- per machine and transaction (card sale lines summed over the cart; the latest verdict wins:
//! -- reversed over declined over settled)
//! txn = FULL JOIN (SELECT machine, transaction, min(ts) AS sold_at, sum(amount) AS telemetry,
//!                         bool_or(offline) FROM accepted card sale lines GROUP BY 1, 2)
//!               (the settlement lines) USING (machine, transaction)
//! status = CASE WHEN telemetry IS NULL AND verdict = 'declined' THEN 'declined_unsold'
//!               WHEN telemetry IS NULL THEN 'missing_in_telemetry'
//!               WHEN verdict IS NULL   THEN 'unsettled'
//!               WHEN verdict = 'declined' THEN CASE WHEN offline THEN 'declined_offline' ELSE 'declined' END
//!               WHEN verdict = 'reversed' THEN 'reversed'
//!               WHEN settled <> telemetry THEN 'amount_differs' ELSE 'matched' END
//! -- settlement_daily: per machine and UTC day of the transaction (the sale's day, or the
//! -- settlement's when telemetry has none), counts and sums by status, for days the processor's
//! -- file covers (at least one settlement line)
//! -- settlement_exceptions: the transactions whose status is not matched, unsettled or
//! -- declined_unsold; review = (status = 'declined_offline')
//! ```
//! State: each card transaction is held for `settlement_days` after its last record arrives
//! (processors settle a day or two after the sale); a record that comes later starts the
//! transaction afresh. It is held in memory for `settlement_memory_ms` (an hour) after its last
//! record, then [`crate::parked`] on disk for the rest of its hold: a week of a fleet's card sales
//! does not stay in memory, and a settlement line that comes days later takes its transaction
//! back from disk. A worker keeps at most `settlement_memory_transactions` in memory: past that a
//! transaction is parked as soon as its record is applied, so a bulk load (hours of card sales at
//! one ingestion time) or ten times the rate holds no more than a live fleet's hour. When a
//! transaction's state is dropped its row stays published: the daily
//! rows and the exceptions are kept for `revenue_retention_days`, like daily revenue. An unsettled
//! transaction is counted in its day (`missing_in_settlement`), not listed one by one: without a
//! settlement file every card sale would be.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use vendflow_protocol::units::MS_PER_DAY;
use vendflow_protocol::{Cents, MachineId, SettlementStatus, Text, Timestamp};

use crate::config::Config;
use crate::fold::{KeyedFold, Published, Setup};
use crate::operators::{Time, hash_of};
use crate::parked::Parked;
use crate::row::{ColumnType::*, Row, RowWriter, ViewDef, col, null};
use crate::sales::SaleLine;

pub const DAILY: ViewDef = ViewDef {
    name: "settlement_daily",
    description: "per machine and UTC day: card sales reported by telemetry against the payment processor's settlement file (days the file covers)",
    columns: &[
        col("machine_id", Text),
        col("day", Date),
        col("card_transactions", Int),
        col("card_value", Money),
        col("settled_transactions", Int),
        col("settled_value", Money),
        col("matched", Int),
        col("missing_in_settlement", Int),
        col("missing_in_telemetry", Int),
        col("amount_differs", Int),
        col("declined", Int),
        col("declined_offline", Int),
        col("reversed", Int),
        col("difference", Money),
        col("status", Text),
    ],
};

pub const EXCEPTIONS: ViewDef = ViewDef {
    name: "settlement_exceptions",
    description: "card transactions on which telemetry and the processor disagree; review marks offline sales the processor later declined",
    columns: &[
        col("machine_id", Text),
        col("transaction_id", Text),
        col("day", Date),
        null("sold_at", Time),
        null("telemetry_value", Money),
        null("settled_at", Time),
        null("settled_value", Money),
        null("settlement_status", Text),
        col("offline", Bool),
        col("status", Text),
        col("review", Bool),
    ],
};

/// What reaches a transaction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum In {
    /// A card sale line: (event time, cents, offline).
    Line(i64, i64, bool),
    /// A settlement line: (its time, cents, verdict).
    Settlement(i64, i64, SettlementStatus),
}

/// A transaction's status (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Matched,
    Unsettled,
    MissingInTelemetry,
    AmountDiffers,
    Declined,
    DeclinedOffline,
    DeclinedUnsold,
    Reversed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Matched => "matched",
            Status::Unsettled => "unsettled",
            Status::MissingInTelemetry => "missing_in_telemetry",
            Status::AmountDiffers => "amount_differs",
            Status::Declined => "declined",
            Status::DeclinedOffline => "declined_offline",
            Status::DeclinedUnsold => "declined_unsold",
            Status::Reversed => "reversed",
        }
    }

    /// Listed one by one in `settlement_exceptions`.
    fn is_exception(self) -> bool {
        !matches!(
            self,
            Status::Matched | Status::Unsettled | Status::DeclinedUnsold
        )
    }
}

/// One transaction as the views see it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnRow {
    pub machine_id: MachineId,
    pub transaction_id: Text,
    pub day: i64,
    pub sold_at: Option<i64>,
    pub telemetry: Option<i64>,
    pub settled_at: Option<i64>,
    pub settled: Option<(i64, SettlementStatus)>,
    pub offline: bool,
    pub status: Status,
}

/// A transaction's records so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Txn {
    /// Earliest line time, card total, lines, any line offline.
    telemetry: Option<(i64, i64, bool)>,
    /// The prevailing verdict: (time, cents, verdict).
    settlement: Option<(i64, i64, SettlementStatus)>,
    /// Ingestion time after which the state is dropped.
    expires: Time,
    /// Ingestion time after which the state leaves memory for the parked store.
    parks: Time,
}

/// Moves a transaction out of memory to the parked store until its hold ends, counting it out
/// of `held`; on an error it stays in memory as it was.
fn park(
    store: &RefCell<Parked>,
    held: &std::cell::Cell<usize>,
    key: &(MachineId, Text),
    txn: &mut Txn,
) -> Result<(), crate::parked::ParkedError> {
    store
        .borrow_mut()
        .park(parked_key(key), txn.encode(), txn.expires)?;
    *txn = Txn::default();
    held.set(held.get().saturating_sub(1));
    Ok(())
}

/// A transaction's key in the parked store: the machine's length, the machine, the transaction.
fn parked_key((machine, txn): &(MachineId, Text)) -> Vec<u8> {
    let m = machine.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + m.len() + txn.len());
    key.push(u8::try_from(m.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(m);
    key.extend_from_slice(txn.as_bytes());
    key
}

impl Txn {
    /// The parked form: a flags byte, the verdict, then the times and amounts.
    fn encode(&self) -> Vec<u8> {
        let (sold, cents, offline) = self.telemetry.unwrap_or_default();
        let (at, settled, verdict) = self.settlement.unwrap_or((0, 0, SettlementStatus::Settled));
        let flags = u8::from(self.telemetry.is_some())
            | u8::from(offline) << 1
            | u8::from(self.settlement.is_some()) << 2;
        let mut bytes = Vec::with_capacity(2 + 6 * 8);
        bytes.push(flags);
        bytes.push(rank(verdict));
        for n in [sold, cents, at, settled] {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        for t in [self.expires, self.parks] {
            bytes.extend_from_slice(&t.ms().to_le_bytes());
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Txn> {
        let (&flags, rest) = bytes.split_first()?;
        let (&verdict, rest) = rest.split_first()?;
        let mut words = rest
            .chunks_exact(8)
            .map(|w| w.try_into().ok().map(u64::from_le_bytes));
        let mut next = || words.next().flatten();
        let [sold, cents, at, settled] = [next()?, next()?, next()?, next()?].map(|n| n as i64);
        let (expires, parks) = (Timestamp(next()? as i64), Timestamp(next()? as i64));
        let verdict = match verdict {
            0 => SettlementStatus::Settled,
            1 => SettlementStatus::Declined,
            2 => SettlementStatus::Reversed,
            _ => return None,
        };
        Some(Txn {
            telemetry: (flags & 1 != 0).then_some((sold, cents, flags & 2 != 0)),
            settlement: (flags & 4 != 0).then_some((at, settled, verdict)),
            expires,
            parks,
        })
    }
}

fn rank(s: SettlementStatus) -> u8 {
    match s {
        SettlementStatus::Settled => 0,
        SettlementStatus::Declined => 1,
        SettlementStatus::Reversed => 2,
    }
}

/// The status of a transaction with these records.
pub fn status(
    telemetry: Option<(i64, bool)>,
    settlement: Option<(i64, SettlementStatus)>,
) -> Status {
    match (telemetry, settlement) {
        (None, Some((_, SettlementStatus::Declined))) => Status::DeclinedUnsold,
        (None, _) => Status::MissingInTelemetry,
        (Some(_), None) => Status::Unsettled,
        (Some((_, true)), Some((_, SettlementStatus::Declined))) => Status::DeclinedOffline,
        (Some(_), Some((_, SettlementStatus::Declined))) => Status::Declined,
        (Some(_), Some((_, SettlementStatus::Reversed))) => Status::Reversed,
        (Some((sold, _)), Some((settled, SettlementStatus::Settled))) => {
            if sold == settled {
                Status::Matched
            } else {
                Status::AmountDiffers
            }
        }
    }
}

impl Txn {
    fn row(&self, (machine, txn): &(MachineId, Text)) -> Option<TxnRow> {
        let at = self
            .telemetry
            .map(|t| t.0)
            .or(self.settlement.map(|s| s.0))?;
        Some(TxnRow {
            machine_id: machine.clone(),
            transaction_id: txn.clone(),
            day: Timestamp(at).day(),
            sold_at: self.telemetry.map(|t| t.0),
            telemetry: self.telemetry.map(|t| t.1),
            settled_at: self.settlement.map(|s| s.0),
            settled: self.settlement.map(|s| (s.1, s.2)),
            offline: self.telemetry.is_some_and(|t| t.2),
            status: status(
                self.telemetry.map(|t| (t.1, t.2)),
                self.settlement.map(|s| (s.1, s.2)),
            ),
        })
    }
}

/// A machine's transactions of one day, as published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Day {
    /// Every transaction row of the day, summed by status (a row is retracted when it changes),
    /// in status order. One inline: a day without a settlement file has only `unsettled`, and
    /// 35 days of a fleet's machine-days are held (80 bytes a day in the table, against 128 with
    /// two inline and an empty map in place).
    counts: SmallVec<[(Status, Sums); 1]>,
    /// The exception rows, as a signed multiset: within one time a retraction may arrive
    /// before its insertion. None when there are none, as on most days. Boxed: one word in the
    /// table where an empty map takes three.
    #[allow(clippy::box_collection)]
    exceptions: Option<Box<BTreeMap<TxnRow, i64>>>,
    /// Whether the timer for the day leaving the view is set.
    armed: bool,
}

/// Transactions, telemetry cents and settled cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Sums {
    n: i64,
    telemetry: i64,
    settled: i64,
}

/// A row of one of the two views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    Daily(DailyRow),
    Exception(TxnRow),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DailyRow {
    pub machine_id: MachineId,
    pub day: i64,
    /// (status, transactions, telemetry cents, settled cents), by status.
    pub counts: Vec<(Status, i64, i64, i64)>,
}

impl DailyRow {
    fn count(&self, s: Status) -> i64 {
        self.counts.iter().filter(|c| c.0 == s).map(|c| c.1).sum()
    }
}

/// `lines`: the accepted sale lines; `settlements`: each settlement line with its machine and
/// time; `parked`: this worker's stores (empty) for transactions that left memory and for
/// machine-days that did ([`Config::day_memory_ms`]).
pub fn render<'s>(
    lines: &mut crate::operators::FanOut<'s, SaleLine>,
    settlements: VecCollection<'s, Time, (MachineId, Timestamp, vendflow_protocol::Settlement)>,
    (parked, parked_days): (Parked, Parked),
    config: &Config,
) -> VecCollection<'s, Time, Out> {
    let hold = config.settlement_days.saturating_mul(MS_PER_DAY);
    let in_memory = config.settlement_memory_ms.min(hold);

    let parked = parked.enrolled("Settlement: parked", "settlement transactions");
    let on_timer_parked = parked.clone();
    // Transactions in this worker's memory, against `settlement_memory_transactions` (those a
    // checkpoint brings back are not counted: after a restart at most the limit more stay).
    let budget = config.settlement_memory_transactions;
    let held = Rc::new(std::cell::Cell::new(0usize));
    let on_timer_held = held.clone();
    let on = config.settlement_days > 0;
    let input = lines
        .flat_map(move |l| {
            let card = l.card && on;
            card.then(|| {
                (
                    (l.machine_id.clone(), l.transaction_id.clone()),
                    In::Line(l.timestamp.0, l.amount.0, l.offline),
                )
            })
        })
        .concat(settlements.flat_map(move |(m, at, s)| {
            on.then_some((
                (m, s.transaction_id),
                In::Settlement(at.0, s.amount.0, s.status),
            ))
        }));
    // Each transaction: its row's changes are given, never retracted when its state is dropped.
    let changes = input.fold_by_key(
        "Settlement: match",
        Published::Recomputed,
        |k: &(MachineId, Text)| hash_of(&k.0),
        move |key, txn: &mut Txn, record, diff, ctx| {
            if diff <= 0 {
                return;
            }
            let now = ctx.now();
            let in_memory_before = *txn != Txn::default();
            if !in_memory_before {
                // Not in memory: parked on disk, if it has been seen within its hold.
                let mut store = parked.borrow_mut();
                if let Err(e) = store.sweep(now) {
                    tracing::error!(error = %e, "cannot sweep parked settlement transactions");
                }
                match store.take(&parked_key(key), now) {
                    Ok(Some(bytes)) => match Txn::decode(&bytes) {
                        Some(back) => *txn = back,
                        None => tracing::error!(
                            machine_id = %key.0,
                            transaction_id = %key.1,
                            "a parked settlement transaction does not decode; started afresh"
                        ),
                    },
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        machine_id = %key.0,
                        transaction_id = %key.1,
                        error = %e,
                        "cannot read parked settlement transactions; started afresh"
                    ),
                }
            }
            if txn.expires > Time::EPOCH && now >= txn.expires {
                // Its timer is due at this very time: the record starts the transaction afresh.
                *txn = Txn::default();
            }
            let before = txn.row(key);
            match record {
                In::Line(at, cents, offline) => {
                    let cents = cents * i64::try_from(diff).unwrap_or(1);
                    txn.telemetry = Some(match txn.telemetry {
                        None => (at, cents, offline),
                        Some((a, c, o)) => (a.min(at), c + cents, o || offline),
                    });
                }
                In::Settlement(at, cents, verdict) => {
                    // The prevailing line: the highest verdict, then the latest, then the
                    // largest (so the order of one time's lines does not matter).
                    let order = |(a, c, v): (i64, i64, SettlementStatus)| (rank(v), a, c);
                    let replace = txn
                        .settlement
                        .is_none_or(|old| order((at, cents, verdict)) > order(old));
                    if replace {
                        txn.settlement = Some((at, cents, verdict));
                    }
                }
            }
            let after = txn.row(key);
            if before != after {
                if let Some(b) = before {
                    ctx.give(b, -1);
                }
                if let Some(a) = after {
                    ctx.give(a, 1);
                }
            }
            // A transaction taken back from disk has no timer, whatever its parking time says
            // (one parked when memory was full had its time still ahead).
            let armed = in_memory_before && txn.parks > now;
            txn.expires = now.saturating_add(hold);
            txn.parks = now.saturating_add(in_memory);
            if !in_memory_before {
                held.set(held.get() + 1);
            }
            if held.get() > budget {
                // Memory is full: to disk at once (a pending timer finds nothing to do).
                match park(&parked, &held, key, txn) {
                    Ok(()) => return,
                    Err(e) => tracing::error!(error = %e, "cannot park a settlement transaction"),
                }
            }
            // One timer per transaction, at the time it leaves memory: a pending one moves
            // itself on when it fires.
            if !armed {
                ctx.wake_at(txn.parks);
            }
        },
        move |key, txn, ctx| {
            let now = ctx.now();
            if now >= txn.expires {
                *txn = Txn::default();
                on_timer_held.set(on_timer_held.get().saturating_sub(1));
            } else if now >= txn.parks {
                match park(&on_timer_parked, &on_timer_held, key, txn) {
                    Ok(()) => {}
                    Err(e) => {
                        // Kept in memory for the rest of its hold instead.
                        tracing::error!(error = %e, "cannot park a settlement transaction");
                        txn.parks = txn.expires;
                        ctx.wake_at(txn.expires);
                    }
                }
            } else {
                ctx.wake_at(txn.parks);
            }
        },
        |_, _, _| {},
    );
    let keep_days = config.revenue_retention_days;
    // When a day leaves the views.
    let leaves = move |day: i64| Timestamp((day + keep_days + 1).saturating_mul(MS_PER_DAY));
    // When a day is quiet (settlement lines still come for it a day or two later, each taking
    // it back from disk for a moment), if before it leaves.
    let memory = config.day_memory_ms;
    let quiet = move |day: i64| {
        Some(Timestamp::of_day(day + 1).saturating_add(memory)).filter(|q| *q < leaves(day))
    };
    changes
        .map(|row| ((row.machine_id.clone(), row.day), row))
        .fold_with(
            Setup::new("Settlement: days", Published::Kept).parking(Some(parked_days)),
            |k: &(MachineId, i64)| hash_of(&k.0),
            move |(_, day), state: &mut Day, row, diff, ctx| {
                let today = ctx.now().day();
                if *day < today - keep_days {
                    // Gone from the view (or never in it): neither counted nor uncounted.
                    return;
                }
                let at = match state.counts.binary_search_by_key(&row.status, |c| c.0) {
                    Ok(at) => at,
                    Err(at) => {
                        state.counts.insert(at, (row.status, Sums::default()));
                        at
                    }
                };
                let sums = &mut state.counts[at].1;
                let d = i64::try_from(diff).unwrap_or(0);
                sums.n += d;
                sums.telemetry += d * row.telemetry.unwrap_or(0);
                sums.settled += d * row.settled.map_or(0, |s| s.0);
                if *sums == Sums::default() {
                    state.counts.remove(at);
                }
                if row.status.is_exception() {
                    let rows = state.exceptions.get_or_insert_default();
                    let n = rows.entry(row).or_default();
                    *n += d;
                    if *n == 0 {
                        rows.retain(|_, n| *n != 0);
                        if rows.is_empty() {
                            state.exceptions = None;
                        }
                    }
                }
                // Its first timer: when it is quiet (it parks then), or when it leaves.
                let now = ctx.now();
                if !state.armed {
                    state.armed = true;
                    ctx.wake_at(quiet(*day).filter(|q| *q > now).unwrap_or(leaves(*day)));
                }
                if quiet(*day).is_some_and(|q| q <= now) {
                    ctx.park_until(leaves(*day).saturating_add(1));
                }
            },
            move |(_, day), state, ctx| {
                let now = ctx.now();
                if *day < now.day() - keep_days {
                    *state = Day::default();
                } else {
                    ctx.wake_at(leaves(*day));
                    if quiet(*day).is_some_and(|q| q <= now) {
                        ctx.park_until(leaves(*day).saturating_add(1));
                    }
                }
            },
            |(machine, day), state, out| {
                let settled_any = state
                    .counts
                    .iter()
                    .any(|(s, c)| *s != Status::Unsettled && c.n > 0);
                if settled_any && state.counts.iter().all(|(_, c)| c.n >= 0) {
                    out.push(Out::Daily(DailyRow {
                        machine_id: machine.clone(),
                        day: *day,
                        counts: state
                            .counts
                            .iter()
                            .map(|(s, c)| (*s, c.n, c.telemetry, c.settled))
                            .collect(),
                    }));
                }
                for (row, n) in state.exceptions.iter().flat_map(|rows| rows.iter()) {
                    for _ in 0..*n {
                        out.push(Out::Exception(row.clone()));
                    }
                }
            },
        )
}

pub fn daily_row(d: DailyRow) -> Row {
    let sum = |f: fn(&(Status, i64, i64, i64)) -> i64, pick: fn(Status) -> bool| -> i64 {
        d.counts.iter().filter(|c| pick(c.0)).map(f).sum()
    };
    let has_telemetry =
        |s: Status| !matches!(s, Status::MissingInTelemetry | Status::DeclinedUnsold);
    let card_n = sum(|c| c.1, has_telemetry);
    let card_value = sum(|c| c.2, has_telemetry);
    let paid = |s: Status| {
        matches!(
            s,
            Status::Matched | Status::AmountDiffers | Status::MissingInTelemetry
        )
    };
    let settled_n = sum(|c| c.1, paid);
    let settled_value = sum(|c| c.3, paid);
    let all_matched = d
        .counts
        .iter()
        .all(|c| c.0 == Status::Matched || c.0 == Status::DeclinedUnsold);
    Row::build(|r| {
        r.text(d.machine_id.as_str());
        r.date(d.day);
        r.int(card_n);
        r.money(Cents(card_value));
        r.int(settled_n);
        r.money(Cents(settled_value));
        r.int(d.count(Status::Matched));
        r.int(d.count(Status::Unsettled));
        r.int(d.count(Status::MissingInTelemetry));
        r.int(d.count(Status::AmountDiffers));
        r.int(d.count(Status::Declined));
        r.int(d.count(Status::DeclinedOffline));
        r.int(d.count(Status::Reversed));
        r.money(Cents(card_value - settled_value));
        r.text(if all_matched {
            "matched"
        } else {
            "differences"
        });
    })
}

pub fn exception_row(x: TxnRow) -> Row {
    Row::build(|r| {
        r.text(x.machine_id.as_str());
        r.text(&x.transaction_id);
        r.date(x.day);
        r.opt(x.sold_at.map(Timestamp), RowWriter::time);
        r.opt(x.telemetry.map(Cents), RowWriter::money);
        r.opt(x.settled_at.map(Timestamp), RowWriter::time);
        r.opt(x.settled.map(|s| Cents(s.0)), RowWriter::money);
        r.opt(x.settled.map(|s| s.1.as_str()), |w, s| w.text(s));
        r.bool(x.offline);
        r.text(x.status.as_str());
        r.bool(x.status == Status::DeclinedOffline);
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use vendflow_protocol::{Event, EventKind, Settlement};

    use super::*;
    use crate::testing::{self, Scenario};

    /// A transaction's records in arrival order: a line (time, cents, offline) or a verdict
    /// (time, cents, status).
    #[derive(Clone, Copy)]
    enum Rec {
        Line(i64, i64, bool),
        Verdict(i64, i64, SettlementStatus),
    }

    /// The views computed the obvious way: each transaction's records in arrival order, cut
    /// where one arrives `settlement_days` or more after the one before it; each piece is a row.
    fn oracle(scenario: &Scenario) -> (Vec<Row>, Vec<Row>) {
        let config = &scenario.config;
        let hold = config.settlement_days * MS_PER_DAY;
        let mut records: BTreeMap<(MachineId, String), Vec<(Time, Rec)>> = BTreeMap::new();
        let (accepted, _, _) = crate::sales::oracle(&scenario.deliveries, config);
        for (t, l) in accepted.into_iter().filter(|(_, l)| l.card) {
            records
                .entry((l.machine_id, l.transaction_id.to_string()))
                .or_default()
                .push((t, Rec::Line(l.timestamp.0, l.amount.0, l.offline)));
        }
        for (t, e) in &scenario.deliveries {
            if let EventKind::Settlement(s) = &e.kind {
                records
                    .entry((e.machine_id.clone(), s.transaction_id.to_string()))
                    .or_default()
                    .push((*t, Rec::Verdict(e.timestamp.0, s.amount.0, s.status)));
            }
        }
        let mut txns: Vec<TxnRow> = Vec::new();
        for ((m, txn), mut recs) in records {
            recs.sort_by_key(|(t, _)| *t);
            let mut pieces: Vec<Vec<Rec>> = Vec::new();
            let mut last: Option<Time> = None;
            for (t, r) in recs {
                let fresh = last.is_none_or(|l| t - l >= hold);
                if fresh {
                    pieces.push(Vec::new());
                }
                if let Some(p) = pieces.last_mut() {
                    p.push(r);
                }
                last = Some(t);
            }
            for piece in pieces {
                let lines: Vec<(i64, i64, bool)> = piece
                    .iter()
                    .filter_map(|r| match r {
                        Rec::Line(a, c, o) => Some((*a, *c, *o)),
                        Rec::Verdict(..) => None,
                    })
                    .collect();
                let telemetry = (!lines.is_empty()).then(|| {
                    (
                        lines.iter().map(|l| l.0).min().unwrap_or(0),
                        lines.iter().map(|l| l.1).sum::<i64>(),
                        lines.iter().any(|l| l.2),
                    )
                });
                // reversed > declined > settled, then the latest, then the largest
                let verdict = piece
                    .iter()
                    .filter_map(|r| match r {
                        Rec::Verdict(a, c, s) => {
                            let weight = match s {
                                SettlementStatus::Settled => 0,
                                SettlementStatus::Declined => 1,
                                SettlementStatus::Reversed => 2,
                            };
                            Some((weight, *a, *c, *s))
                        }
                        Rec::Line(..) => None,
                    })
                    .max();
                let st = match (telemetry, verdict) {
                    (None, Some((_, _, _, SettlementStatus::Declined))) => Status::DeclinedUnsold,
                    (None, _) => Status::MissingInTelemetry,
                    (Some(_), None) => Status::Unsettled,
                    (Some((_, _, off)), Some((_, _, _, SettlementStatus::Declined))) => {
                        if off {
                            Status::DeclinedOffline
                        } else {
                            Status::Declined
                        }
                    }
                    (Some(_), Some((_, _, _, SettlementStatus::Reversed))) => Status::Reversed,
                    (Some((_, sold, _)), Some((_, _, paid, _))) if sold == paid => Status::Matched,
                    (Some(_), Some(_)) => Status::AmountDiffers,
                };
                let at = telemetry.map(|t| t.0).or(verdict.map(|v| v.1)).unwrap_or(0);
                txns.push(TxnRow {
                    machine_id: m.clone(),
                    transaction_id: txn.as_str().into(),
                    day: at.div_euclid(MS_PER_DAY),
                    sold_at: telemetry.map(|t| t.0),
                    telemetry: telemetry.map(|t| t.1),
                    settled_at: verdict.map(|v| v.1),
                    settled: verdict.map(|v| (v.2, v.3)),
                    offline: telemetry.is_some_and(|t| t.2),
                    status: st,
                });
            }
        }
        // Days leave both views `revenue_retention_days` after they end.
        let now = scenario.now().ms();

        let kept = |day: i64| (day + config.revenue_retention_days + 1) * MS_PER_DAY > now;
        let mut days: BTreeMap<(MachineId, i64), Vec<&TxnRow>> = BTreeMap::new();
        for t in txns.iter().filter(|t| kept(t.day)) {
            days.entry((t.machine_id.clone(), t.day))
                .or_default()
                .push(t);
        }
        let mut daily = Vec::new();
        for ((m, day), rows) in days {
            if rows.iter().all(|r| r.status == Status::Unsettled) {
                continue;
            }
            let count = |s: Status| rows.iter().filter(|r| r.status == s).count() as i64;
            let card: Vec<&&TxnRow> = rows.iter().filter(|r| r.telemetry.is_some()).collect();
            let paid: Vec<&&TxnRow> = rows
                .iter()
                .filter(|r| {
                    matches!(
                        r.status,
                        Status::Matched | Status::AmountDiffers | Status::MissingInTelemetry
                    )
                })
                .collect();
            let card_value: i64 = card.iter().filter_map(|r| r.telemetry).sum();
            let settled_value: i64 = paid.iter().filter_map(|r| r.settled.map(|s| s.0)).sum();
            let all_matched = rows
                .iter()
                .all(|r| matches!(r.status, Status::Matched | Status::DeclinedUnsold));
            daily.push(Row::build(|w| {
                w.text(m.as_str());
                w.date(day);
                w.int(card.len() as i64);
                w.money(Cents(card_value));
                w.int(paid.len() as i64);
                w.money(Cents(settled_value));
                w.int(count(Status::Matched));
                w.int(count(Status::Unsettled));
                w.int(count(Status::MissingInTelemetry));
                w.int(count(Status::AmountDiffers));
                w.int(count(Status::Declined));
                w.int(count(Status::DeclinedOffline));
                w.int(count(Status::Reversed));
                w.money(Cents(card_value - settled_value));
                w.text(if all_matched {
                    "matched"
                } else {
                    "differences"
                });
            }));
        }
        let exceptions = txns
            .into_iter()
            .filter(|t| kept(t.day))
            .filter(|t| {
                !matches!(
                    t.status,
                    Status::Matched | Status::Unsettled | Status::DeclinedUnsold
                )
            })
            .map(exception_row)
            .collect();
        (daily, exceptions)
    }

    #[test]
    fn settlement_views_match_the_oracle_on_random_streams() {
        let mut statuses = BTreeSet::new();
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let (daily, exceptions) = oracle(scenario);
            for r in &exceptions {
                statuses.insert(EXCEPTIONS.named(r).text("status").unwrap_or_default());
            }
            testing::assert_view(views, "settlement_daily", daily, seed);
            testing::assert_view(views, "settlement_exceptions", exceptions, seed);
        }
        for s in [
            "missing_in_telemetry",
            "amount_differs",
            "declined",
            "declined_offline",
            "reversed",
        ] {
            assert!(statuses.contains(s), "no {s} in {statuses:?}");
        }
    }

    /// One transaction in memory per worker: every other is parked on disk as soon as its record
    /// is applied and taken back by its next (a cart's other line, its verdict, a late line);
    /// the views are the oracle's all the same.
    #[test]
    fn settlement_views_match_the_oracle_with_one_transaction_in_memory() {
        for seed in 0..3 {
            let mut scenario = Scenario::random(seed);
            scenario.config.settlement_memory_transactions = 1;
            let views = testing::run(&scenario);
            let (daily, exceptions) = oracle(&scenario);
            testing::assert_view(&views, "settlement_daily", daily, seed);
            testing::assert_view(&views, "settlement_exceptions", exceptions, seed);
        }
    }

    /// A bulk time of sixty card transactions (carts of two lines among them, a verdict for one
    /// in the same time) against a memory of two per worker: the rest go to disk at once and
    /// the next day's settlement file finds every one of them.
    #[test]
    fn a_bulk_time_over_the_memory_budget_settles_every_transaction() {
        let mut s = Scenario::empty();
        s.config.settlement_memory_transactions = 2;
        let t0 = testing::BASE + 9 * 3_600_000;
        let next_day = t0 + MS_PER_DAY;
        let settled = SettlementStatus::Settled;
        let mut total = 0;
        for i in 0..60 {
            let m = format!("m{}", i % 3);
            let txn = format!("t{i}");
            let at = t0 + i;
            s.deliver(t0, card(&m, at, 1, 100 + i, &txn, false));
            let mut cents = 100 + i;
            if i % 4 == 0 {
                s.deliver(t0, card(&m, at, 148, 50, &txn, false));
                cents += 50;
            }
            total += cents;
            let when = if i == 7 { t0 } else { next_day };
            s.deliver(when, verdict(&m, at, &txn, cents, settled));
        }
        let views = testing::run(&s);
        let daily = testing::rows(&views, "settlement_daily");
        let (mut n, mut matched, mut value) = (0, 0, 0);
        for r in &daily {
            let d = DAILY.named(r);
            n += d.int("card_transactions").unwrap_or(-1);
            matched += d.int("matched").unwrap_or(-1);
            value += d.cents("settled_value").unwrap_or(-1);
        }
        assert_eq!((n, matched, value), (60, 60, total), "{daily:?}");
        let exceptions = testing::rows(&views, "settlement_exceptions");
        assert!(exceptions.is_empty(), "{exceptions:?}");
    }

    /// A machine-day's slot in the days' table (35 days of the fleet's are held) stays small.
    #[test]
    fn a_settlement_day_takes_eighty_bytes_in_its_table() {
        use std::mem::size_of;
        let slot = size_of::<((MachineId, i64), (Day, bool))>();
        assert!(slot <= 80, "{slot} bytes");
    }

    /// `settlement_days = 0`: no transaction is held and the views stay empty.
    #[test]
    fn matching_switched_off_holds_nothing() {
        let mut s = Scenario::empty();
        s.config.settlement_days = 0;
        let t0 = testing::BASE + 3_600_000;
        s.deliver(t0, card("m1", t0, 1, 250, "t", true));
        s.deliver(
            t0 + 60_000,
            verdict("m1", t0, "t", 250, SettlementStatus::Declined),
        );
        let views = testing::run(&s);
        assert!(testing::rows(&views, "settlement_daily").is_empty());
        assert!(testing::rows(&views, "settlement_exceptions").is_empty());
        assert_eq!(testing::rows(&views, "revenue_machine_daily").len(), 1);
    }

    fn card(m: &str, ts: i64, slot: u32, cents: i64, txn: &str, offline: bool) -> Event {
        let mut e = testing::sale(m, ts, slot, cents, txn);
        if let EventKind::Sale(s) = &mut e.kind {
            s.payment_method = "card".into();
            s.offline = offline;
        }
        e
    }

    fn verdict(m: &str, ts: i64, txn: &str, cents: i64, status: SettlementStatus) -> Event {
        Event {
            machine_id: testing::machine(m),
            timestamp: Timestamp(ts),
            seq: None,
            kind: EventKind::Settlement(Settlement {
                transaction_id: txn.into(),
                amount: Cents(cents),
                status,
            }),
        }
    }

    /// A transaction leaves memory a day after its last record and waits on disk for the rest
    /// of its hold: a settlement three days later still finds its sale; one after the hold
    /// does not.
    #[test]
    fn a_settlement_days_later_finds_its_parked_sale() {
        let mut s = Scenario::empty();
        let t0 = testing::BASE + 9 * 3_600_000;
        s.deliver(t0, card("m1", t0, 1, 250, "later", false));
        s.deliver(
            t0 + 1_000,
            card("m1", t0 + 1_000, 2, 300, "too_late", false),
        );
        let settled = SettlementStatus::Settled;
        // Other sales move the clock on, day after day.
        for day in 1..10 {
            let t = t0 + day * MS_PER_DAY;
            s.deliver(t, card("m2", t, 1, 100, &format!("d{day}"), false));
        }
        let three_days = t0 + 3 * MS_PER_DAY + 5_000;
        s.deliver(three_days, verdict("m1", t0, "later", 250, settled));
        let nine_days = t0 + 9 * MS_PER_DAY + 5_000;
        s.deliver(
            nine_days,
            verdict("m1", t0 + 1_000, "too_late", 300, settled),
        );
        assert!(s.config.settlement_memory_ms < 3 * MS_PER_DAY);
        assert!(s.config.settlement_days * MS_PER_DAY < 9 * MS_PER_DAY);
        let views = testing::run(&s);
        let daily = testing::rows(&views, "settlement_daily");
        let m1 = daily
            .iter()
            .map(|r| DAILY.named(r))
            .find(|d| d.text("machine_id").as_deref() == Some("m1"))
            .unwrap_or_else(|| panic!("no m1 day in {daily:?}"));
        let int = |c: &str| m1.int(c).unwrap_or(-1);
        assert_eq!(
            (
                int("card_transactions"),
                int("matched"),
                int("missing_in_settlement"),
                int("missing_in_telemetry"),
            ),
            (2, 1, 1, 1),
            "{daily:?}"
        );
    }

    /// A cart of two card lines settled at its total; an offline sale declined the next day
    /// (flagged for review); an online sale paid short; one never settled; a settlement for a
    /// sale telemetry never saw.
    #[test]
    fn a_settlement_file_reconciles_a_machine_day() {
        let mut s = Scenario::empty();
        let t0 = testing::BASE + 9 * 3_600_000;
        let next_day = testing::BASE + MS_PER_DAY + 8 * 3_600_000;
        s.deliver(t0, card("m1", t0, 1, 250, "cart", false));
        s.deliver(t0, card("m1", t0 + 1, 148, 300, "cart", false));
        s.deliver(t0 + 60_000, card("m1", t0 + 60_000, 2, 1_800, "off", true));
        s.deliver(
            t0 + 120_000,
            card("m1", t0 + 120_000, 3, 400, "short", false),
        );
        s.deliver(
            t0 + 180_000,
            card("m1", t0 + 180_000, 3, 400, "never", false),
        );
        let mut cash = testing::sale("m1", t0 + 240_000, 4, 100, "cash");
        if let EventKind::Sale(sale) = &mut cash.kind {
            sale.payment_method = "cash".into();
        }
        s.deliver(t0 + 240_000, cash);
        let settled = SettlementStatus::Settled;
        s.deliver(next_day, verdict("m1", t0 + 5, "cart", 550, settled));
        s.deliver(
            next_day,
            verdict(
                "m1",
                t0 + 4_000_000,
                "off",
                1_800,
                SettlementStatus::Declined,
            ),
        );
        s.deliver(next_day, verdict("m1", t0 + 120_000, "short", 350, settled));
        s.deliver(next_day, verdict("m1", t0 + 300_000, "ghost", 200, settled));
        // The same file imported again changes nothing.
        s.deliver(
            next_day + 1_000,
            verdict("m1", t0 + 5, "cart", 550, settled),
        );
        let views = testing::run(&s);
        let daily = testing::rows(&views, "settlement_daily");
        assert_eq!(daily.len(), 1, "{daily:?}");
        let d = DAILY.named(&daily[0]);
        let int = |c: &str| d.int(c).unwrap_or(-1);
        assert_eq!(
            (
                int("card_transactions"),
                int("settled_transactions"),
                int("matched"),
                int("missing_in_settlement"),
                int("missing_in_telemetry"),
                int("amount_differs"),
                int("declined_offline"),
            ),
            (4, 3, 1, 1, 1, 1, 1)
        );
        assert_eq!(d.cents("card_value"), Some(550 + 1_800 + 400 + 400));
        assert_eq!(d.cents("settled_value"), Some(550 + 350 + 200));
        assert_eq!(d.text("status").as_deref(), Some("differences"));
        let mut exceptions: Vec<(String, String, bool)> =
            testing::rows(&views, "settlement_exceptions")
                .iter()
                .map(|r| {
                    let n = EXCEPTIONS.named(r);
                    (
                        n.text("transaction_id").unwrap_or_default(),
                        n.text("status").unwrap_or_default(),
                        n.flag("review"),
                    )
                })
                .collect();
        exceptions.sort();
        assert_eq!(
            exceptions,
            vec![
                ("ghost".into(), "missing_in_telemetry".into(), false),
                ("off".into(), "declined_offline".into(), true),
                ("short".into(), "amount_differs".into(), false),
            ]
        );
    }
}

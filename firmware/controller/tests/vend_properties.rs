//! Property tests of the vend cycle: any sequence of customer actions, payment-network
//! answers, drop-sensor results, network changes, restocks and power cuts keeps its promises.
//!
//! The world around the controller is modelled naively here (what a customer, a payment
//! network and a drop sensor can do next), and the promises are checked from the actions the
//! controller took, not from its state:
//! - nothing is dispensed unpaid: every vend belongs to a transaction that was charged, and no
//!   more units drop for it than were paid for;
//! - nothing is paid without a dispense or a refund: for every transaction, what the customer
//!   paid equals its sale lines plus its refunds, once it is over;
//! - the units sold are the units the drop sensor saw fall;
//! - at most 50 offline sales between syncs, and none over the $25 floor limit;
//! - sequences never panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vendflow_controller::vend::{
    Action, Cents, FLOOR_LIMIT, MAX_OFFLINE_SALES, Method, Millis, Record, Slot, Txn, Vend,
};

/// What the world does next.
#[derive(Clone, Debug)]
enum Move {
    Select(u32),
    Remove(u32),
    Checkout,
    Cancel,
    Present(u8),
    /// The payment network answers the oldest request it has not answered.
    Answer(bool),
    /// The drop sensor answers the last vend.
    Drop(bool),
    Wait(Millis),
    Network(bool),
    Restock(u32, u32),
    PowerCut,
}

fn moves() -> impl Strategy<Value = Move> {
    // Codes 101..=104 exist (one is pricey, one starts empty); 999 does not.
    let code = prop_oneof![101u32..=104, Just(999u32)];
    prop_oneof![
        6 => code.clone().prop_map(Move::Select),
        1 => code.clone().prop_map(Move::Remove),
        3 => Just(Move::Checkout),
        1 => Just(Move::Cancel),
        3 => (0u8..3).prop_map(Move::Present),
        3 => any::<bool>().prop_map(Move::Answer),
        6 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(Move::Drop),
        2 => prop_oneof![Just(1_000i64), Just(6_000), Just(20_000), Just(70_000), Just(400_000)]
            .prop_map(Move::Wait),
        2 => any::<bool>().prop_map(Move::Network),
        1 => (code, 0u32..5).prop_map(|(c, q)| Move::Restock(c, q)),
        1 => Just(Move::PowerCut),
    ]
}

fn slots() -> Vec<Slot> {
    let slot = |code, product: &str, price, stock| Slot {
        code,
        product: product.to_owned(),
        price,
        stock,
        jammed: false,
    };
    vec![
        slot(101, "cola", 250, 6),
        slot(102, "chips", 175, 3),
        slot(103, "sandwich", 1_450, 4),
        slot(104, "water", 150, 0),
    ]
}

/// What the world saw, per transaction, and the rules checked as it goes.
#[derive(Default)]
struct World {
    now: Millis,
    /// Authorisations asked and not yet answered (oldest first).
    asked: Vec<(Txn, Cents)>,
    /// What each transaction took from the customer: approvals by the network, offline charges.
    paid: BTreeMap<Txn, Cents>,
    /// Sale lines and refunds recorded per transaction.
    sold: BTreeMap<Txn, Cents>,
    refunded: BTreeMap<Txn, Cents>,
    units_sold: BTreeMap<Txn, u32>,
    units_dropped: BTreeMap<Txn, u32>,
    units_paid: BTreeMap<Txn, u32>,
    /// The transaction being dispensed (charged, no receipt yet), and whether a vend awaits
    /// the drop sensor.
    dispensing: Option<Txn>,
    vending: bool,
    /// Offline charges since the last sync.
    offline_since_sync: u32,
    syncing: bool,
    online: bool,
}

impl World {
    fn take(&mut self, vend: &Vend, actions: Vec<Action>) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Authorise { txn, amount, .. } => {
                    self.asked.push((txn, amount));
                    // A network answers within moments or never: the oldest requests are
                    // never answered.
                    if self.asked.len() > 8 {
                        self.asked.remove(0);
                    }
                }
                Action::Charge {
                    txn,
                    amount,
                    offline,
                } => {
                    prop_assert!(self.dispensing.is_none(), "charged while dispensing");
                    if offline {
                        prop_assert!(amount <= FLOOR_LIMIT, "offline sale of {amount}");
                        self.offline_since_sync += 1;
                        prop_assert!(
                            self.offline_since_sync <= MAX_OFFLINE_SALES,
                            "more than {MAX_OFFLINE_SALES} offline sales before a sync"
                        );
                        self.paid.insert(txn, amount);
                    } else {
                        prop_assert_eq!(
                            self.paid.get(&txn),
                            Some(&amount),
                            "charged {} unapproved",
                            txn
                        );
                    }
                    let units = match &vend.phase {
                        vendflow_controller::vend::Phase::Dispensing(d) => {
                            d.lines.iter().map(|l| l.quantity).sum()
                        }
                        _ => 0,
                    };
                    self.units_paid.insert(txn, units);
                    self.dispensing = Some(txn);
                }
                Action::Vend { .. } => {
                    prop_assert!(self.dispensing.is_some(), "vended with nothing paid");
                    self.vending = true;
                }
                Action::Void { txn, amount } => {
                    prop_assert_eq!(
                        self.paid.get(&txn),
                        Some(&amount),
                        "voided what was not paid"
                    );
                }
                Action::Receipt { txn, total } => {
                    prop_assert_eq!(self.dispensing, Some(txn));
                    prop_assert_eq!(self.paid.get(&txn), Some(&total));
                    self.dispensing = None;
                    self.vending = false;
                }
                Action::Record(Record::Sale {
                    txn,
                    amount,
                    quantity,
                    offline,
                    ..
                }) => {
                    prop_assert!(self.paid.contains_key(&txn), "a sale of {} unpaid", txn);
                    prop_assert!(!offline || amount <= FLOOR_LIMIT);
                    *self.sold.entry(txn).or_default() += amount;
                    *self.units_sold.entry(txn).or_default() += quantity;
                }
                Action::Record(Record::Refund { txn, amount, .. }) => {
                    prop_assert!(self.paid.contains_key(&txn), "a refund of {} unpaid", txn);
                    *self.refunded.entry(txn).or_default() += amount;
                }
                Action::Sync => self.syncing = true,
                Action::Show(_) | Action::Record(_) => {}
            }
        }
        Ok(())
    }

    /// Every transaction that is over: paid = sold + refunded, units sold = units dropped.
    fn check_settled(&self, open: Option<Txn>) -> Result<(), TestCaseError> {
        for (txn, paid) in &self.paid {
            if Some(*txn) == open {
                continue;
            }
            let sold = self.sold.get(txn).copied().unwrap_or(0);
            let refunded = self.refunded.get(txn).copied().unwrap_or(0);
            prop_assert_eq!(
                *paid,
                sold + refunded,
                "{} paid {} but sold {} and refunded {}",
                txn,
                paid,
                sold,
                refunded
            );
            let units = self.units_sold.get(txn).copied().unwrap_or(0);
            prop_assert_eq!(units, self.units_dropped.get(txn).copied().unwrap_or(0));
            prop_assert!(units <= self.units_paid.get(txn).copied().unwrap_or(0));
        }
        Ok(())
    }
}

fn run(moves: Vec<Move>) -> Result<(), TestCaseError> {
    let mut vend = Vend::new(slots());
    let mut w = World {
        now: 1_700_000_000_000,
        ..World::default()
    };
    let methods = [Method::Card, Method::Contactless, Method::Mobile];
    for m in moves {
        let input = match m {
            Move::Select(c) => vendflow_controller::vend::Input::Select(c),
            Move::Remove(c) => vendflow_controller::vend::Input::Remove(c),
            Move::Checkout => vendflow_controller::vend::Input::Checkout,
            Move::Cancel => vendflow_controller::vend::Input::Cancel,
            Move::Present(i) => vendflow_controller::vend::Input::Present(methods[i as usize]),
            Move::Answer(approved) => {
                if w.asked.is_empty() {
                    continue;
                }
                let (txn, amount) = w.asked.remove(0);
                if approved {
                    w.paid.insert(txn, amount);
                }
                vendflow_controller::vend::Input::Authorised { txn, approved }
            }
            Move::Drop(fell) => {
                if !w.vending {
                    continue;
                }
                w.vending = false;
                if fell && let Some(txn) = w.dispensing {
                    *w.units_dropped.entry(txn).or_default() += 1;
                }
                vendflow_controller::vend::Input::Dropped(fell)
            }
            Move::Wait(ms) => {
                w.now += ms;
                // A vend the sensor never answered times out as "did not drop".
                if w.vending && ms >= vendflow_controller::vend::DROP_TIMEOUT_MS {
                    w.vending = false;
                }
                vendflow_controller::vend::Input::Tick
            }
            Move::Network(up) => {
                w.online = up;
                vendflow_controller::vend::Input::Network(up)
            }
            Move::Restock(c, q) => vendflow_controller::vend::Input::Restock {
                slot: c,
                quantity: q,
            },
            Move::PowerCut => {
                // The unit being vended at the cut counts as not delivered; the payment
                // network may still answer what was asked before it.
                let actions = vend.reboot();
                w.vending = false;
                w.dispensing = None;
                w.take(&vend, actions)?;
                w.online = false;
                w.check_settled(None)?;
                continue;
            }
        };
        let actions = vend.handle(w.now, input);
        w.take(&vend, actions)?;
        // The platform acknowledges a sync when the link is up.
        if w.syncing && w.online {
            w.syncing = false;
            w.offline_since_sync = 0;
            let actions = vend.handle(w.now, vendflow_controller::vend::Input::Synced);
            w.take(&vend, actions)?;
        }
        w.check_settled(w.dispensing)?;
    }
    // The end: the sensor answers every vend, pending answers time out, the cart finishes.
    for _ in 0..64 {
        if w.dispensing.is_none() {
            break;
        }
        w.now += vendflow_controller::vend::DROP_TIMEOUT_MS;
        let actions = vend.handle(w.now, vendflow_controller::vend::Input::Tick);
        w.take(&vend, actions)?;
    }
    prop_assert!(w.dispensing.is_none(), "a delivery never finished");
    w.check_settled(None)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_sequence_keeps_the_vend_cycle_promises(moves in prop::collection::vec(moves(), 1..200)) {
        run(moves)?;
    }
}

/// A worked example: offline, a cart over the floor limit is refused, one under it is sold,
/// and the 51st offline sale is refused until the machine syncs.
#[test]
fn offline_sales_stop_at_the_floor_limit_and_after_fifty_until_a_sync() {
    use vendflow_controller::vend::{Input, Message};
    let mut vend = Vend::new(vec![Slot {
        code: 1,
        product: "cola".into(),
        price: 300,
        stock: 1_000,
        jammed: false,
    }]);
    let now = 1_000;
    let buy = |vend: &mut Vend, units: u32| -> Vec<Action> {
        for _ in 0..units {
            vend.handle(now, Input::Select(1));
        }
        vend.handle(now, Input::Checkout);
        let mut actions = vend.handle(now, Input::Present(Method::Card));
        while actions.iter().any(|a| matches!(a, Action::Vend { .. })) {
            actions = vend.handle(now, Input::Dropped(true));
        }
        actions
    };
    // 10 units = $30: over the floor limit.
    let refused = buy(&mut vend, 10);
    assert_eq!(refused, vec![Action::Show(Message::OverFloorLimit)]);
    vend.handle(now, Input::Cancel);
    for i in 0..MAX_OFFLINE_SALES {
        let done = buy(&mut vend, 1);
        assert!(
            done.iter().any(|a| matches!(a, Action::Receipt { .. })),
            "offline sale {i} refused: {done:?}"
        );
    }
    vend.handle(now, Input::Select(1));
    vend.handle(now, Input::Checkout);
    let refused = vend.handle(now, Input::Present(Method::Card));
    assert_eq!(
        refused,
        vec![Action::Show(Message::OfflineLimitReached)],
        "the 51st offline sale"
    );
    vend.handle(now, Input::Network(true));
    vend.handle(now, Input::Synced);
    vend.handle(now, Input::Network(false));
    let sold = vend.handle(now, Input::Present(Method::Card));
    assert!(
        sold.iter()
            .any(|a| matches!(a, Action::Charge { offline: true, .. }))
    );
}

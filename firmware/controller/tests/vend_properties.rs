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
    /// The terminal fails to read what was presented.
    ReadFailed,
    /// The payment network answers the oldest request it has not answered.
    Answer(bool),
    /// The drop sensor answers the last vend.
    Drop(bool),
    Wait(Millis),
    Network(bool),
    Restock(u32, u32),
    PowerCut,
    /// A command (ids from a small pool, so some are delivered again).
    Command(u8, Cmd),
    /// The download asked for by the last fetch: the right image, a wrong one, or a failure.
    Fetched(u8),
}

#[derive(Clone, Debug)]
enum Cmd {
    Price(u32, Cents),
    Planogram,
    Reboot,
    Dispense(u32, u32),
    Firmware,
}

const IMAGE: [u8; 32] = [7; 32];

fn moves() -> impl Strategy<Value = Move> {
    // Codes 101..=104 exist (one is pricey, one starts empty); 999 does not.
    let code = prop_oneof![101u32..=104, Just(999u32)];
    prop_oneof![
        6 => code.clone().prop_map(Move::Select),
        1 => code.clone().prop_map(Move::Remove),
        3 => Just(Move::Checkout),
        1 => Just(Move::Cancel),
        3 => (0u8..3).prop_map(Move::Present),
        1 => Just(Move::ReadFailed),
        3 => any::<bool>().prop_map(Move::Answer),
        6 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(Move::Drop),
        2 => prop_oneof![Just(1_000i64), Just(6_000), Just(20_000), Just(70_000), Just(400_000)]
            .prop_map(Move::Wait),
        2 => any::<bool>().prop_map(Move::Network),
        1 => (code, 0u32..5).prop_map(|(c, q)| Move::Restock(c, q)),
        1 => Just(Move::PowerCut),
        2 => (0u8..6, prop_oneof![
            (prop_oneof![101u32..=104, Just(999u32)], 100u64..3_000).prop_map(|(c, p)| Cmd::Price(c, p)),
            Just(Cmd::Planogram),
            Just(Cmd::Reboot),
            (prop_oneof![101u32..=104, Just(999u32)], 0u32..4).prop_map(|(c, q)| Cmd::Dispense(c, q)),
            Just(Cmd::Firmware),
        ]).prop_map(|(id, c)| Move::Command(id, c)),
        1 => (0u8..3).prop_map(Move::Fetched),
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
    /// Every answer given per command id: a command is applied once, so its answers agree.
    answers: BTreeMap<String, vendflow_controller::vend::Answer>,
    /// The app order being delivered: its transaction and command id.
    app_order: Option<(Txn, String)>,
    /// The fetch awaiting its download, and the downloads that matched.
    fetching: Option<String>,
    verified: Vec<String>,
    /// The controller asked to restart (a reboot command, a firmware install).
    restart: bool,
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
                    if self.dispensing.is_none()
                        && let vendflow_controller::vend::Phase::Dispensing(d) = &vend.phase
                        && let Some((_, id)) = &d.order
                    {
                        // An app order: paid elsewhere, for the units it asked for.
                        self.paid.insert(d.txn, d.paid());
                        self.units_paid
                            .insert(d.txn, d.lines.iter().map(|l| l.quantity).sum());
                        self.dispensing = Some(d.txn);
                        self.app_order = Some((d.txn, id.clone()));
                    }
                    prop_assert!(self.dispensing.is_some(), "vended with nothing paid");
                    self.vending = true;
                }
                Action::Answer { id, answer } => {
                    if let Some(before) = self.answers.get(&id) {
                        prop_assert_eq!(before, &answer, "command {} answered differently", id);
                    }
                    if self.app_order.as_ref().is_some_and(|(_, c)| *c == id) {
                        self.app_order = None;
                        self.dispensing = None;
                        self.vending = false;
                    }
                    self.answers.insert(id, answer);
                }
                Action::Fetch { id, .. } => self.fetching = Some(id),
                Action::Install { .. } => {
                    prop_assert!(
                        vend.installing
                            .as_ref()
                            .is_some_and(|(id, _)| self.verified.contains(id)),
                        "installed an image whose hash was not checked"
                    );
                    prop_assert!(self.dispensing.is_none(), "installed mid-delivery");
                    self.restart = true;
                }
                Action::Restart => {
                    prop_assert!(self.dispensing.is_none(), "restarted mid-delivery");
                    self.restart = true;
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
            Move::ReadFailed => vendflow_controller::vend::Input::ReadFailed,
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
            Move::Command(n, cmd) => {
                use vendflow_controller::vend::{Command, PlanSlot};
                let command = match cmd {
                    Cmd::Price(slot, price) => Command::UpdatePrice { slot, price },
                    Cmd::Planogram => Command::SetPlanogram(vec![
                        PlanSlot {
                            code: 101,
                            product: "cola".into(),
                            price: 275,
                        },
                        PlanSlot {
                            code: 102,
                            product: "crisps".into(),
                            price: 200,
                        },
                        PlanSlot {
                            code: 105,
                            product: "juice".into(),
                            price: 325,
                        },
                    ]),
                    Cmd::Reboot => Command::Reboot,
                    Cmd::Dispense(slot, quantity) => Command::Dispense {
                        order: format!("order_{n}"),
                        slot,
                        quantity,
                    },
                    Cmd::Firmware => Command::UpdateFirmware {
                        version: format!("2.{n}.0"),
                        url: format!("https://example.test/fw/{n}"),
                        sha256: IMAGE,
                    },
                };
                vendflow_controller::vend::Input::Command {
                    id: format!("cmd_{n}"),
                    command,
                }
            }
            Move::Fetched(how) => {
                let Some(id) = w.fetching.take() else {
                    continue;
                };
                let sha256 = match how {
                    0 => Some(IMAGE),
                    1 => Some([8; 32]),
                    _ => None,
                };
                if how == 0 {
                    w.verified.push(id.clone());
                }
                vendflow_controller::vend::Input::Fetched { id, sha256 }
            }
            Move::PowerCut => {
                // The unit being vended at the cut counts as not delivered; the payment
                // network may still answer what was asked before it.
                reboot(&mut vend, &mut w)?;
                continue;
            }
        };
        let actions = vend.handle(w.now, input);
        w.take(&vend, actions)?;
        if std::mem::take(&mut w.restart) {
            reboot(&mut vend, &mut w)?;
        }
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

/// A power cut or a restart: what the controller finishes at boot. It boots from its snapshot's
/// bytes, as a machine does from its outbox (which must give the same state back).
fn reboot(vend: &mut Vend, w: &mut World) -> Result<(), TestCaseError> {
    let restored = Vend::restore(&vend.snapshot())
        .map_err(|e| TestCaseError::fail(format!("the snapshot does not read back: {e}")))?;
    prop_assert_eq!(
        &restored,
        &*vend,
        "the snapshot does not give the state back"
    );
    *vend = restored;
    w.vending = false;
    w.fetching = None;
    let actions = vend.reboot();
    w.take(vend, actions)?;
    w.dispensing = None;
    w.app_order = None;
    w.online = false;
    w.check_settled(None)
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

/// A card the terminal cannot read is recorded (a failing reader's error events) and the cart
/// waits for the customer to present again; a read failure outside a payment records nothing.
#[test]
fn a_card_read_failure_is_recorded_and_the_cart_waits_for_another_try() {
    use vendflow_controller::vend::{Input, Message, Record};
    let mut vend = one_slot(5);
    let now = 1_000;
    assert!(
        vend.handle(now, Input::ReadFailed).is_empty(),
        "idle: no payment asked for"
    );
    vend.handle(now, Input::Select(1));
    vend.handle(now, Input::Checkout);
    let failed = vend.handle(now, Input::ReadFailed);
    assert_eq!(
        failed,
        vec![
            Action::Record(Record::ReadFailure),
            Action::Show(Message::ReadFailed)
        ]
    );
    vend.handle(now, Input::Network(false));
    let mut actions = vend.handle(now + 1_000, Input::Present(Method::Card));
    while actions.iter().any(|a| matches!(a, Action::Vend { .. })) {
        actions = vend.handle(now + 2_000, Input::Dropped(true));
    }
    assert!(
        actions.iter().any(|a| matches!(a, Action::Receipt { .. })),
        "sold on the second try: {actions:?}"
    );
}

fn one_slot(stock: u32) -> Vend {
    Vend::new(vec![Slot {
        code: 1,
        product: "cola".into(),
        price: 250,
        stock,
        jammed: false,
    }])
}

/// A price change that arrives while a customer pays waits until the cart is delivered: the
/// customer is charged what the terminal asked for.
#[test]
fn a_price_change_waits_for_the_cart_under_way() {
    use vendflow_controller::vend::{Answer, Command, Input};
    let mut vend = one_slot(5);
    vend.handle(0, Input::Network(true));
    vend.handle(0, Input::Select(1));
    vend.handle(0, Input::Checkout);
    let asked = vend.handle(0, Input::Present(Method::Card));
    let Some(Action::Authorise { txn, amount, .. }) = asked.first().cloned() else {
        panic!("no authorisation: {asked:?}");
    };
    assert_eq!(amount, 250);
    let price = Command::UpdatePrice {
        slot: 1,
        price: 300,
    };
    let waiting = vend.handle(
        10,
        Input::Command {
            id: "cmd_p".into(),
            command: price.clone(),
        },
    );
    assert!(waiting.is_empty(), "answered mid-cart: {waiting:?}");
    let approved = vend.handle(
        20,
        Input::Authorised {
            txn,
            approved: true,
        },
    );
    assert!(approved.contains(&Action::Charge {
        txn,
        amount: 250,
        offline: false
    }));
    let done = vend.handle(30, Input::Dropped(true));
    assert!(done.contains(&Action::Receipt { txn, total: 250 }));
    assert!(done.contains(&Action::Answer {
        id: "cmd_p".into(),
        answer: Answer::Applied
    }));
    assert_eq!(vend.slots[0].price, 300);
    // Delivered again: answered again, applied once.
    let again = vend.handle(
        40,
        Input::Command {
            id: "cmd_p".into(),
            command: price,
        },
    );
    assert_eq!(
        again,
        vec![Action::Answer {
            id: "cmd_p".into(),
            answer: Answer::Applied
        }]
    );
}

/// An app order that must wait for a customer at the machine holds its units: the customer
/// cannot buy them meanwhile, and the order is delivered and answered next.
#[test]
fn an_order_reserves_its_units_while_it_waits() {
    use vendflow_controller::vend::{Answer, Command, Input, Message, Record};
    let mut vend = one_slot(3);
    vend.handle(0, Input::Select(1));
    let order = Command::Dispense {
        order: "order_9".into(),
        slot: 1,
        quantity: 2,
    };
    let waiting = vend.handle(
        1,
        Input::Command {
            id: "cmd_o".into(),
            command: order,
        },
    );
    assert!(waiting.is_empty(), "{waiting:?}");
    // One unit in the cart and two held for the order: nothing more to sell.
    assert_eq!(
        vend.handle(2, Input::Select(1)),
        vec![Action::Show(Message::SoldOut(1))]
    );
    // The customer gives up: the order goes at once.
    let started = vend.handle(3, Input::Cancel);
    assert!(started.contains(&Action::Vend { slot: 1 }), "{started:?}");
    assert!(!started.iter().any(|a| matches!(a, Action::Charge { .. })));
    vend.handle(4, Input::Dropped(true));
    let done = vend.handle(5, Input::Dropped(true));
    assert!(done.iter().any(|a| matches!(a,
        Action::Record(Record::Sale { order: Some(o), quantity: 2, amount: 500, method: Method::App, .. }) if o == "order_9")));
    assert!(done.contains(&Action::Answer {
        id: "cmd_o".into(),
        answer: Answer::Applied
    }));
    assert_eq!(vend.slots[0].stock, 1);
}

/// A firmware image whose SHA-256 does not match is refused; a matching one is installed when
/// the machine is idle and answered by the boot that runs it.
#[test]
fn firmware_is_installed_only_when_its_hash_matches_and_answered_after_the_reboot() {
    use vendflow_controller::vend::{Answer, Command, Input};
    let mut vend = one_slot(3);
    let update = |v: &str| Command::UpdateFirmware {
        version: v.into(),
        url: "https://example.test/fw".into(),
        sha256: IMAGE,
    };
    let fetch = vend.handle(
        0,
        Input::Command {
            id: "cmd_bad".into(),
            command: update("2.0.0"),
        },
    );
    assert!(matches!(&fetch[..], [Action::Fetch { .. }]), "{fetch:?}");
    let refused = vend.handle(
        1,
        Input::Fetched {
            id: "cmd_bad".into(),
            sha256: Some([0; 32]),
        },
    );
    assert!(matches!(
        &refused[..],
        [Action::Answer {
            answer: Answer::Rejected(_),
            ..
        }]
    ));
    assert_eq!(vend.firmware, "1.0.0");

    vend.handle(2, Input::Select(1));
    vend.handle(
        3,
        Input::Command {
            id: "cmd_good".into(),
            command: update("2.0.0"),
        },
    );
    let verified = vend.handle(
        4,
        Input::Fetched {
            id: "cmd_good".into(),
            sha256: Some(IMAGE),
        },
    );
    assert!(verified.is_empty(), "installed mid-cart: {verified:?}");
    let installed = vend.handle(5, Input::Cancel);
    assert!(installed.contains(&Action::Install {
        version: "2.0.0".into()
    }));
    let booted = vend.reboot();
    assert_eq!(
        booted,
        vec![Action::Answer {
            id: "cmd_good".into(),
            answer: Answer::Applied
        }]
    );
    assert_eq!(vend.firmware, "2.0.0");
}

/// A snapshot of another layout, an empty one or a damaged one is refused, never read as some
/// other state.
#[test]
fn a_snapshot_of_another_version_or_damaged_is_refused() {
    use vendflow_controller::vend::{SNAPSHOT_VERSION, SnapshotError};
    let vend = Vend::new(slots());
    let bytes = vend.snapshot();
    assert_eq!(bytes[0], SNAPSHOT_VERSION);
    assert_eq!(Vend::restore(&bytes), Ok(vend));
    assert_eq!(Vend::restore(&[]), Err(SnapshotError::Empty));
    let mut other = bytes.clone();
    other[0] = SNAPSHOT_VERSION + 1;
    assert_eq!(
        Vend::restore(&other),
        Err(SnapshotError::Version(SNAPSHOT_VERSION + 1))
    );
    let cut = &bytes[..bytes.len() / 2];
    assert!(matches!(Vend::restore(cut), Err(SnapshotError::Damaged(_))));
}

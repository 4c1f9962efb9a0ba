//! The vend cycle as an explicit state machine.
//!
//! ```text
//! idle ─select─▶ selecting ─checkout─▶ awaiting payment ─present─▶ authorising ─approved─▶ dispensing
//!  ▲               │  ▲ select/remove       │  ▲ declined, timed out  │                      │ per unit: vend,
//!  │               │  └──────────┘          │  └─────────────────────┘                      │ drop sensor, one
//!  └──cancel / idle timeout──────────────────┘                                              │ retry, or refund
//!  └────────────────────────────── receipt ◀────────────────────────────────────────────────┘
//! ```
//! - A cart holds up to [`MAX_CART_UNITS`] units of one or several slots, under one transaction.
//! - **Online**, the card terminal asks the payment network ([`Action::Authorise`]); a decline or
//!   no answer within [`AUTH_TIMEOUT_MS`] is shown and the customer may try again. An approval
//!   that arrives after its time-out is voided and recorded as a refund: nothing is paid without
//!   a dispense or a refund.
//! - **Offline** (store and forward), a card sale is approved by the machine alone up to the
//!   floor limit ([`FLOOR_LIMIT`], $25) per sale, and only [`MAX_OFFLINE_SALES`] (50) of them
//!   until the machine syncs with the platform ([`Input::Synced`]); sync is retried every
//!   [`SYNC_RETRY_MS`] (5 minutes).
//! - **Dispensing**: each unit is vended and must be confirmed by the drop sensor; a unit that
//!   did not drop is tried once more, then its slot is marked jammed and what the slot could
//!   not deliver is refunded. Each line of the cart ends as a sale record (the units that
//!   dropped) and a refund record (those that did not); the customer gets a receipt whose code
//!   is the transaction id.
//!
//! **Commands** from the platform ([`Command`]: price, planogram, reboot, an app order to
//! dispense, a firmware update) are applied once per command id and answered; a command
//! delivered again gets the same answer. What would change a cart under way waits until the
//! machine is idle; an order waiting for idle reserves its units; a firmware image is installed
//! only when its SHA-256 matches the command's, on the next idle, and answered by the boot that
//! runs it.
//!
//! The machine performs the [`Action`]s in the order given: records go to the durable outbox
//! before the next action (so a sale is on flash before its receipt is shown). A power cut
//! mid-dispense is finished at the next boot by [`Vend::reboot`], which refunds what was paid
//! for and not yet delivered.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The machine's clock: UTC epoch milliseconds.
pub type Millis = i64;
/// Money in minor units (cents).
pub type Cents = u64;

/// The card terminal's floor limit: the most one offline sale may be.
pub const FLOOR_LIMIT: Cents = 2_500;
/// Offline card sales allowed before the machine must sync.
pub const MAX_OFFLINE_SALES: u32 = 50;
/// How often an offline machine tries to sync.
pub const SYNC_RETRY_MS: Millis = 5 * 60_000;
/// How long the payment network has to answer.
pub const AUTH_TIMEOUT_MS: Millis = 15_000;
/// How long a cart waits for the customer's next press (selecting, paying).
pub const CUSTOMER_TIMEOUT_MS: Millis = 60_000;
/// How long the drop sensor has to see a vended unit fall.
pub const DROP_TIMEOUT_MS: Millis = 5_000;
/// The most units one cart holds.
pub const MAX_CART_UNITS: u32 = 10;
/// Late approvals remembered (to void them) per machine.
const ABANDONED_KEPT: usize = 16;

/// A transaction's id: the machine's boot count and a counter within that boot, so ids never
/// repeat across reboots (the boot count is kept in the snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Txn {
    pub boot: u32,
    pub n: u32,
}

impl fmt::Display for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn_{}_{}", self.boot, self.n)
    }
}

/// How the customer pays; all go through the card terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    Card,
    Contactless,
    Mobile,
    /// Paid elsewhere (an app order, [`Command::Dispense`]).
    App,
}

impl Method {
    /// The wire's `paymentMethod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Card => "card",
            Method::Contactless => "contactless",
            Method::Mobile => "mobile",
            Method::App => "app",
        }
    }
}

/// One selection of the machine: its coil code, what it holds and for how much.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The machine's own selection code (e.g. 1–30 or 101–148).
    pub code: u32,
    pub product: String,
    /// Unit price.
    pub price: Cents,
    pub stock: u32,
    /// A unit did not drop twice: the slot sells nothing until serviced (restocked).
    pub jammed: bool,
}

/// What reaches the controller: the customer, the payment network, the drop sensor, the
/// network link, the clock, and the service crew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// One unit of a slot into the cart.
    Select(u32),
    /// One unit of a slot out of the cart.
    Remove(u32),
    /// The cart is complete: pay.
    Checkout,
    /// The customer gives up (before payment is under way).
    Cancel,
    /// A card, phone or watch at the terminal.
    Present(Method),
    /// The terminal could not read what was presented (a worn or failing reader); the customer
    /// may present it again.
    ReadFailed,
    /// The payment network's answer to [`Action::Authorise`].
    Authorised { txn: Txn, approved: bool },
    /// The drop sensor after an [`Action::Vend`]: whether a unit fell.
    Dropped(bool),
    /// Time passes (time-outs, sync retries).
    Tick,
    /// The link to the platform came up or went down.
    Network(bool),
    /// The platform acknowledged everything the machine had to send (its outbox is empty).
    Synced,
    /// The crew loaded units into a slot (it also clears a jam).
    Restock { slot: u32, quantity: u32 },
    /// A command from the platform (delivered at least once).
    Command { id: String, command: Command },
    /// A firmware image asked for by [`Action::Fetch`] was downloaded: its SHA-256 (None when
    /// the download failed).
    Fetched {
        id: String,
        sha256: Option<[u8; 32]>,
    },
}

/// What the platform may ask of a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    UpdatePrice {
        slot: u32,
        price: Cents,
    },
    /// The whole planogram at once; a slot keeping its product keeps its stock.
    SetPlanogram(Vec<PlanSlot>),
    Reboot,
    /// An order paid elsewhere: reserve, dispense, answer with what dropped.
    Dispense {
        order: String,
        slot: u32,
        quantity: u32,
    },
    UpdateFirmware {
        version: String,
        url: String,
        sha256: [u8; 32],
    },
}

/// One slot of a planogram command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSlot {
    pub code: u32,
    pub product: String,
    pub price: Cents,
}

/// A command's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Applied,
    Rejected(String),
}

/// What the customer is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    UnknownSlot(u32),
    SoldOut(u32),
    CartFull,
    CartEmpty,
    /// What the cart costs; present a card.
    Total(Cents),
    Busy,
    Cancelled,
    Declined,
    /// The card could not be read: present it again.
    ReadFailed,
    TimedOut,
    /// Offline, and this sale is above the floor limit.
    OverFloorLimit,
    /// Offline, and the machine has made as many offline sales as it may.
    OfflineLimitReached,
    /// Part of the cart did not drop: this much goes back to the card.
    Refunded(Cents),
    Thanks(Txn),
}

/// Why money went back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundReason {
    /// The unit did not drop, twice.
    Jam,
    /// The approval came after the customer had been told it timed out.
    LateApproval,
    /// The power went while the cart was being dispensed.
    PowerLoss,
}

impl RefundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::Jam => "jam",
            RefundReason::LateApproval => "late_approval",
            RefundReason::PowerLoss => "power_loss",
        }
    }
}

/// What the machine keeps in its outbox for the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Units of one slot delivered under a transaction (a cart line).
    Sale {
        txn: Txn,
        /// The app order it delivers ([`Command::Dispense`]); its transaction id on the wire.
        order: Option<String>,
        slot: u32,
        product: String,
        /// Line total.
        amount: Cents,
        quantity: u32,
        method: Method,
        /// Approved by the machine alone (the processor may still decline it).
        offline: bool,
    },
    /// Money given back: units of a slot that were paid for and not delivered (`slot` is None
    /// for a voided approval, which delivered nothing).
    Refund {
        txn: Txn,
        order: Option<String>,
        slot: Option<u32>,
        amount: Cents,
        quantity: u32,
        reason: RefundReason,
    },
    /// A unit did not drop after its retry; the slot is out of service.
    DispenseFailure {
        txn: Txn,
        slot: u32,
    },
    Restock {
        slot: u32,
        quantity: u32,
    },
    /// The payment terminal could not read what a customer presented (a failing reader shows
    /// as many of these).
    ReadFailure,
}

/// What the machine must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Show(Message),
    /// Ask the payment network (answer with [`Input::Authorised`]).
    Authorise {
        txn: Txn,
        amount: Cents,
        method: Method,
    },
    /// Take the money: online, capture the approved amount; offline, keep the card
    /// transaction to forward when the machine syncs.
    Charge {
        txn: Txn,
        amount: Cents,
        offline: bool,
    },
    /// Give back an approval that came too late (the refund is recorded too).
    Void {
        txn: Txn,
        amount: Cents,
    },
    /// Turn a slot's motor for one unit (answer with [`Input::Dropped`]).
    Vend {
        slot: u32,
    },
    /// Append to the outbox, durably, before the next action.
    Record(Record),
    /// Print or show the receipt.
    Receipt {
        txn: Txn,
        total: Cents,
    },
    /// Connect and send the outbox (answer with [`Input::Synced`] once it is empty).
    Sync,
    /// Answer a command (again, when it is delivered again).
    Answer {
        id: String,
        answer: Answer,
    },
    /// Download a firmware image (answer with [`Input::Fetched`]).
    Fetch {
        id: String,
        url: String,
    },
    /// Write the verified image and restart into it (then [`Vend::reboot`]).
    Install {
        version: String,
    },
    /// Restart the controller (then [`Vend::reboot`]).
    Restart,
}

/// A cart line: a slot and how many units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub slot: u32,
    pub quantity: u32,
}

/// A paid cart being delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub txn: Txn,
    /// An app order's id and its command's id (answered when the order is delivered).
    pub order: Option<(String, String)>,
    pub method: Method,
    pub offline: bool,
    pub lines: Vec<Line>,
    /// The line being vended; lines before it are recorded.
    pub line: usize,
    /// Units of that line that dropped, and that failed.
    pub dropped: u32,
    pub failed: u32,
    /// Whether the current unit is on its retry.
    pub retried: bool,
    /// When the current unit was vended.
    pub since: Millis,
    /// Unit prices at payment (a price change mid-cart does not change what was paid).
    pub prices: Vec<Cents>,
    /// Units delivered so far, over every line.
    pub delivered: u32,
}

/// Where the cycle is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Idle,
    Selecting {
        since: Millis,
    },
    AwaitingPayment {
        since: Millis,
    },
    Authorising {
        txn: Txn,
        method: Method,
        amount: Cents,
        since: Millis,
    },
    Dispensing(Delivery),
}

/// One machine's vend controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vend {
    pub slots: Vec<Slot>,
    pub cart: Vec<Line>,
    pub phase: Phase,
    pub online: bool,
    /// Offline sales since the last sync.
    pub offline_sales: u32,
    pub boot: u32,
    pub next_txn: u32,
    /// When an offline machine next tries to sync.
    pub next_sync: Millis,
    /// Approvals the customer was told timed out: voided if they arrive.
    pub abandoned: Vec<(Txn, Cents)>,
    /// The firmware version running.
    pub firmware: String,
    /// The last commands answered (a command delivered again gets the same answer).
    pub answers: Vec<(String, Answer)>,
    /// Commands waiting for the machine to be idle (a price or planogram change never lands
    /// mid-cart; an order waits for the customer at the machine), in arrival order. Their units
    /// are reserved: a customer cannot buy what an order waits for.
    pub deferred: Vec<(String, Command)>,
    /// A firmware update being fetched or verified, waiting for idle.
    pub staged: Option<Staged>,
    /// An update installed and not yet answered (answered by the boot that runs it).
    pub installing: Option<(String, String)>,
}

/// A firmware update on its way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub id: String,
    pub version: String,
    pub sha256: [u8; 32],
    /// Downloaded and its hash checked.
    pub verified: bool,
}

/// Commands remembered with their answers.
const ANSWERS_KEPT: usize = 64;

/// The version of [`Vend::snapshot`]'s layout: a snapshot of another version is refused.
pub const SNAPSHOT_VERSION: u8 = 1;

/// A snapshot that cannot be read back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the controller's snapshot is empty")]
    Empty,
    #[error(
        "the controller's snapshot has layout version {0}, this firmware reads version {SNAPSHOT_VERSION}"
    )]
    Version(u8),
    #[error("the controller's snapshot is damaged: {0}")]
    Damaged(postcard::Error),
}

impl Vend {
    /// The whole controller state as bytes (a version byte, then the state): what the machine
    /// writes beside its outbox's records so that a power cut loses neither ([`Vend::restore`]).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = alloc::vec![SNAPSHOT_VERSION];
        // Encoding into a Vec cannot fail; if it did, the version byte alone is refused as
        // damaged on restore, never read as some other state.
        bytes.extend(postcard::to_allocvec(self).unwrap_or_default());
        bytes
    }

    /// The state a [`Vend::snapshot`] holds.
    pub fn restore(bytes: &[u8]) -> Result<Vend, SnapshotError> {
        let (&version, rest) = bytes.split_first().ok_or(SnapshotError::Empty)?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        postcard::from_bytes(rest).map_err(SnapshotError::Damaged)
    }

    /// A machine at its first boot with `slots`.
    pub fn new(slots: Vec<Slot>) -> Vend {
        Vend {
            slots,
            cart: Vec::new(),
            phase: Phase::Idle,
            online: false,
            offline_sales: 0,
            boot: 1,
            next_txn: 1,
            next_sync: 0,
            abandoned: Vec::new(),
            firmware: String::from("1.0.0"),
            answers: Vec::new(),
            deferred: Vec::new(),
            staged: None,
            installing: None,
        }
    }

    fn slot(&self, code: u32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.code == code)
    }

    fn slot_mut(&mut self, code: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.code == code)
    }

    fn in_cart(&self, code: u32) -> u32 {
        self.cart
            .iter()
            .filter(|l| l.slot == code)
            .map(|l| l.quantity)
            .sum()
    }

    fn cart_units(&self) -> u32 {
        self.cart.iter().map(|l| l.quantity).sum()
    }

    fn cart_total(&self) -> Cents {
        self.cart
            .iter()
            .map(|l| self.slot(l.slot).map_or(0, |s| s.price) * Cents::from(l.quantity))
            .sum()
    }

    fn new_txn(&mut self) -> Txn {
        let txn = Txn {
            boot: self.boot,
            n: self.next_txn,
        };
        self.next_txn = self.next_txn.saturating_add(1);
        txn
    }

    /// Handles one input at `now`; the actions are performed in order.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Select(code) => self.select(now, code, &mut out),
            Input::Remove(code) => {
                if let Phase::Selecting { since } | Phase::AwaitingPayment { since } =
                    &mut self.phase
                {
                    *since = now;
                    if let Some(i) = self.cart.iter().position(|l| l.slot == code) {
                        self.cart[i].quantity -= 1;
                        if self.cart[i].quantity == 0 {
                            self.cart.remove(i);
                        }
                    }
                    if self.cart.is_empty() {
                        self.phase = Phase::Idle;
                        out.push(Action::Show(Message::CartEmpty));
                    } else {
                        self.phase = Phase::Selecting { since: now };
                    }
                }
            }
            Input::Checkout => match self.phase {
                Phase::Selecting { .. } | Phase::AwaitingPayment { .. } => {
                    self.phase = Phase::AwaitingPayment { since: now };
                    out.push(Action::Show(Message::Total(self.cart_total())));
                }
                Phase::Idle => out.push(Action::Show(Message::CartEmpty)),
                _ => out.push(Action::Show(Message::Busy)),
            },
            Input::Cancel => match self.phase {
                Phase::Selecting { .. } | Phase::AwaitingPayment { .. } => {
                    self.cart.clear();
                    self.phase = Phase::Idle;
                    out.push(Action::Show(Message::Cancelled));
                }
                Phase::Idle => {}
                _ => out.push(Action::Show(Message::Busy)),
            },
            Input::Present(method) => self.present(now, method, &mut out),
            Input::ReadFailed => {
                // Only a reader asked for a payment reads; the cart stays as it is.
                if let Phase::AwaitingPayment { .. } = self.phase {
                    out.push(Action::Record(Record::ReadFailure));
                    out.push(Action::Show(Message::ReadFailed));
                }
            }
            Input::Authorised { txn, approved } => self.authorised(now, txn, approved, &mut out),
            Input::Dropped(fell) => {
                if let Phase::Dispensing(_) = self.phase {
                    self.unit_done(now, fell, &mut out);
                }
            }
            Input::Tick => self.tick(now, &mut out),
            Input::Network(up) => {
                let was = self.online;
                self.online = up;
                if up && !was {
                    out.push(Action::Sync);
                } else if !up && was {
                    self.next_sync = now + SYNC_RETRY_MS;
                }
            }
            Input::Synced => self.offline_sales = 0,
            Input::Restock { slot, quantity } => {
                if let Some(s) = self.slot_mut(slot) {
                    s.stock = s.stock.saturating_add(quantity);
                    s.jammed = false;
                    out.push(Action::Record(Record::Restock { slot, quantity }));
                } else {
                    out.push(Action::Show(Message::UnknownSlot(slot)));
                }
            }
            Input::Command { id, command } => self.command(id, command, &mut out),
            Input::Fetched { id, sha256 } => self.fetched(id, sha256, &mut out),
        }
        if self.phase == Phase::Idle {
            self.when_idle(now, &mut out);
        }
        out
    }

    fn answer(&mut self, id: String, answer: Answer, out: &mut Vec<Action>) {
        if self.answers.len() >= ANSWERS_KEPT {
            self.answers.remove(0);
        }
        self.answers.push((id.clone(), answer.clone()));
        out.push(Action::Answer { id, answer });
    }

    /// Units of a slot that waiting orders hold.
    fn reserved(&self, code: u32) -> u32 {
        self.deferred
            .iter()
            .map(|(_, c)| match c {
                Command::Dispense { slot, quantity, .. } if *slot == code => *quantity,
                _ => 0,
            })
            .sum()
    }

    /// A command: answered again if it was answered, ignored while it is under way, otherwise
    /// checked (a bad one is rejected at once) and applied now or when the machine is idle.
    fn command(&mut self, id: String, command: Command, out: &mut Vec<Action>) {
        if let Some((_, answer)) = self.answers.iter().find(|(i, _)| *i == id) {
            let answer = answer.clone();
            return out.push(Action::Answer { id, answer });
        }
        let delivering = matches!(&self.phase, Phase::Dispensing(d) if d.order.as_ref().is_some_and(|(_, c)| *c == id));
        if delivering
            || self.deferred.iter().any(|(i, _)| *i == id)
            || self.staged.as_ref().is_some_and(|s| s.id == id)
            || self.installing.as_ref().is_some_and(|(i, _)| *i == id)
        {
            return;
        }
        let refused = match &command {
            Command::UpdatePrice { slot, .. } if self.slot(*slot).is_none() => {
                Some(alloc::format!("no slot {slot}"))
            }
            Command::SetPlanogram(slots) => {
                let mut codes: Vec<u32> = slots.iter().map(|s| s.code).collect();
                codes.sort_unstable();
                let before = codes.len();
                codes.dedup();
                (codes.len() != before).then(|| String::from("a slot code appears twice"))
            }
            Command::Dispense { slot, quantity, .. } => match self.slot(*slot) {
                None => Some(alloc::format!("no slot {slot}")),
                Some(_) if *quantity == 0 || *quantity > MAX_CART_UNITS => Some(alloc::format!(
                    "an order is 1 to {MAX_CART_UNITS} units, not {quantity}"
                )),
                Some(s) if s.jammed => Some(alloc::format!("slot {slot} is out of service")),
                Some(s) if s.stock < self.in_cart(*slot) + self.reserved(*slot) + quantity => {
                    Some(alloc::format!("slot {slot} has too few units"))
                }
                Some(_) => None,
            },
            Command::UpdateFirmware { version, .. } if *version == self.firmware => {
                return self.answer(id, Answer::Applied, out);
            }
            Command::UpdateFirmware { .. } if self.staged.is_some() => {
                Some(String::from("another firmware update is under way"))
            }
            _ => None,
        };
        if let Some(reason) = refused {
            return self.answer(id, Answer::Rejected(reason), out);
        }
        if let Command::UpdateFirmware {
            version,
            url,
            sha256,
        } = command
        {
            self.staged = Some(Staged {
                id: id.clone(),
                version,
                sha256,
                verified: false,
            });
            return out.push(Action::Fetch { id, url });
        }
        self.deferred.push((id, command));
    }

    fn fetched(&mut self, id: String, sha256: Option<[u8; 32]>, out: &mut Vec<Action>) {
        let Some(staged) = self.staged.as_mut().filter(|s| s.id == id && !s.verified) else {
            return;
        };
        match sha256 {
            Some(h) if h == staged.sha256 => staged.verified = true,
            Some(_) => {
                self.staged = None;
                self.answer(
                    id,
                    Answer::Rejected(String::from(
                        "the image's SHA-256 does not match the command's",
                    )),
                    out,
                );
            }
            None => {
                self.staged = None;
                self.answer(
                    id,
                    Answer::Rejected(String::from("the download failed")),
                    out,
                );
            }
        }
    }

    /// What waits for the machine to be idle: deferred commands in order (an order starts a
    /// delivery, and the rest wait again), then a verified firmware image.
    fn when_idle(&mut self, now: Millis, out: &mut Vec<Action>) {
        while self.phase == Phase::Idle && !self.deferred.is_empty() {
            let (id, command) = self.deferred.remove(0);
            match command {
                Command::UpdatePrice { slot, price } => {
                    match self.slot_mut(slot) {
                        Some(s) => {
                            s.price = price;
                            self.answer(id, Answer::Applied, out);
                        }
                        // A planogram applied meanwhile removed the slot.
                        None => {
                            self.answer(id, Answer::Rejected(alloc::format!("no slot {slot}")), out)
                        }
                    }
                }
                Command::SetPlanogram(plan) => {
                    let slots = plan
                        .into_iter()
                        .map(|p| {
                            let kept = self
                                .slot(p.code)
                                .filter(|s| s.product == p.product)
                                .map_or((0, false), |s| (s.stock, s.jammed));
                            Slot {
                                code: p.code,
                                product: p.product,
                                price: p.price,
                                stock: kept.0,
                                jammed: kept.1,
                            }
                        })
                        .collect();
                    self.slots = slots;
                    self.answer(id, Answer::Applied, out);
                }
                Command::Reboot => {
                    self.answer(id, Answer::Applied, out);
                    out.push(Action::Restart);
                    return;
                }
                Command::Dispense {
                    order,
                    slot,
                    quantity,
                } => {
                    let usable = self
                        .slot(slot)
                        .is_some_and(|s| !s.jammed && s.stock >= quantity);
                    if !usable {
                        self.answer(
                            id,
                            Answer::Rejected(alloc::format!(
                                "slot {slot} can no longer deliver {quantity}"
                            )),
                            out,
                        );
                        continue;
                    }
                    let txn = self.new_txn();
                    self.cart = alloc::vec![Line { slot, quantity }];
                    self.start_delivery(now, txn, Method::App, false, Some((order, id)), out);
                }
                Command::UpdateFirmware { .. } => {}
            }
        }
        if self.phase == Phase::Idle
            && let Some(staged) = self.staged.take_if(|s| s.verified)
        {
            self.installing = Some((staged.id, staged.version.clone()));
            out.push(Action::Install {
                version: staged.version,
            });
        }
    }

    fn select(&mut self, now: Millis, code: u32, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Idle | Phase::Selecting { .. } | Phase::AwaitingPayment { .. } => {}
            _ => return out.push(Action::Show(Message::Busy)),
        }
        let Some(slot) = self.slot(code) else {
            return out.push(Action::Show(Message::UnknownSlot(code)));
        };
        if slot.jammed || slot.stock <= self.in_cart(code) + self.reserved(code) {
            return out.push(Action::Show(Message::SoldOut(code)));
        }
        if self.cart_units() >= MAX_CART_UNITS {
            return out.push(Action::Show(Message::CartFull));
        }
        match self.cart.iter_mut().find(|l| l.slot == code) {
            Some(line) => line.quantity += 1,
            None => self.cart.push(Line {
                slot: code,
                quantity: 1,
            }),
        }
        self.phase = Phase::Selecting { since: now };
    }

    fn present(&mut self, now: Millis, method: Method, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::AwaitingPayment { .. }) {
            return out.push(Action::Show(Message::Busy));
        }
        let amount = self.cart_total();
        if self.online {
            let txn = self.new_txn();
            self.phase = Phase::Authorising {
                txn,
                method,
                amount,
                since: now,
            };
            return out.push(Action::Authorise {
                txn,
                amount,
                method,
            });
        }
        // Store and forward: the machine decides alone, within the terminal's limits.
        self.phase = Phase::AwaitingPayment { since: now };
        if self.offline_sales >= MAX_OFFLINE_SALES {
            return out.push(Action::Show(Message::OfflineLimitReached));
        }
        if amount > FLOOR_LIMIT {
            return out.push(Action::Show(Message::OverFloorLimit));
        }
        self.offline_sales += 1;
        let txn = self.new_txn();
        self.start_delivery(now, txn, method, true, None, out);
    }

    fn authorised(&mut self, now: Millis, txn: Txn, approved: bool, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Authorising {
                txn: waiting,
                method,
                ..
            } if waiting == txn => {
                if approved {
                    self.start_delivery(now, txn, method, false, None, out);
                } else {
                    self.phase = Phase::AwaitingPayment { since: now };
                    out.push(Action::Show(Message::Declined));
                }
            }
            _ => {
                // An answer for a transaction the customer was told had timed out.
                if let Some(i) = self.abandoned.iter().position(|(t, _)| *t == txn) {
                    let (txn, amount) = self.abandoned.remove(i);
                    if approved {
                        out.push(Action::Void { txn, amount });
                        out.push(Action::Record(Record::Refund {
                            txn,
                            order: None,
                            slot: None,
                            amount,
                            quantity: 0,
                            reason: RefundReason::LateApproval,
                        }));
                    }
                }
            }
        }
    }

    fn start_delivery(
        &mut self,
        now: Millis,
        txn: Txn,
        method: Method,
        offline: bool,
        order: Option<(String, String)>,
        out: &mut Vec<Action>,
    ) {
        let lines = core::mem::take(&mut self.cart);
        let prices = lines
            .iter()
            .map(|l| self.slot(l.slot).map_or(0, |s| s.price))
            .collect();
        let Some(first) = lines.first().map(|l| l.slot) else {
            self.phase = Phase::Idle;
            return out.push(Action::Show(Message::CartEmpty));
        };
        let paid_elsewhere = order.is_some();
        let delivery = Delivery {
            txn,
            order,
            method,
            offline,
            lines,
            line: 0,
            dropped: 0,
            failed: 0,
            retried: false,
            since: now,
            prices,
            delivered: 0,
        };
        if !paid_elsewhere {
            out.push(Action::Charge {
                txn,
                amount: delivery.paid(),
                offline,
            });
        }
        self.phase = Phase::Dispensing(delivery);
        out.push(Action::Vend { slot: first });
    }

    /// The drop sensor's verdict on the current unit (or its time-out).
    fn unit_done(&mut self, now: Millis, fell: bool, out: &mut Vec<Action>) {
        let Phase::Dispensing(d) = &mut self.phase else {
            return;
        };
        let line = d.lines[d.line];
        if fell {
            d.dropped += 1;
            d.delivered += 1;
            d.retried = false;
            if let Some(s) = self.slots.iter_mut().find(|s| s.code == line.slot) {
                s.stock = s.stock.saturating_sub(1);
            }
        } else if !d.retried {
            d.retried = true;
            d.since = now;
            return out.push(Action::Vend { slot: line.slot });
        } else {
            // Jammed: the rest of this line cannot be delivered.
            d.failed = line.quantity - d.dropped;
            out.push(Action::Record(Record::DispenseFailure {
                txn: d.txn,
                slot: line.slot,
            }));
            if let Some(s) = self.slots.iter_mut().find(|s| s.code == line.slot) {
                s.jammed = true;
            }
        }
        if d.dropped + d.failed < line.quantity {
            d.since = now;
            return out.push(Action::Vend { slot: line.slot });
        }
        self.finish_line(out);
        let Phase::Dispensing(d) = &mut self.phase else {
            return;
        };
        if d.line < d.lines.len() {
            d.since = now;
            d.retried = false;
            out.push(Action::Vend {
                slot: d.lines[d.line].slot,
            });
            return;
        }
        let (txn, total) = (d.txn, d.paid());
        let delivered: u32 = d.delivered;
        let ordered: u32 = d.lines.iter().map(|l| l.quantity).sum();
        let order = d.order.take();
        self.phase = Phase::Idle;
        match order {
            // The app shows its own receipt; the platform hears what was delivered.
            Some((_, id)) if delivered == ordered => self.answer(id, Answer::Applied, out),
            Some((_, id)) => self.answer(
                id,
                Answer::Rejected(alloc::format!(
                    "delivered {delivered} of {ordered} units; the rest is refunded"
                )),
                out,
            ),
            None => {
                out.push(Action::Receipt { txn, total });
                out.push(Action::Show(Message::Thanks(txn)));
            }
        }
    }

    /// Records the current line (what dropped as a sale, what did not as a refund) and moves to
    /// the next.
    fn finish_line(&mut self, out: &mut Vec<Action>) {
        let Phase::Dispensing(d) = &mut self.phase else {
            return;
        };
        let price = d.prices[d.line];
        out.extend(line_records(&self.slots, d, d.failed, RefundReason::Jam));
        if d.failed > 0 {
            out.push(Action::Show(Message::Refunded(
                price * Cents::from(d.failed),
            )));
        }
        d.line += 1;
        d.dropped = 0;
        d.failed = 0;
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Selecting { since } | Phase::AwaitingPayment { since }
                if now - since >= CUSTOMER_TIMEOUT_MS =>
            {
                self.cart.clear();
                self.phase = Phase::Idle;
                out.push(Action::Show(Message::Cancelled));
            }
            Phase::Authorising {
                txn, amount, since, ..
            } if now - since >= AUTH_TIMEOUT_MS => {
                let (txn, amount) = (*txn, *amount);
                self.abandon(txn, amount);
                self.phase = Phase::AwaitingPayment { since: now };
                out.push(Action::Show(Message::TimedOut));
            }
            Phase::Dispensing(d) if now - d.since >= DROP_TIMEOUT_MS => {
                self.unit_done(now, false, out);
            }
            _ => {}
        }
        if !self.online && now >= self.next_sync {
            self.next_sync = now + SYNC_RETRY_MS;
            out.push(Action::Sync);
        }
    }

    /// Remembers a transaction the customer was told had failed, to void a late approval.
    fn abandon(&mut self, txn: Txn, amount: Cents) {
        if self.abandoned.len() >= ABANDONED_KEPT {
            self.abandoned.remove(0);
        }
        self.abandoned.push((txn, amount));
    }

    /// The controller as it boots after a power cut: a cart that was being dispensed is
    /// finished by refunding what was paid for and not yet delivered (the unit being vended
    /// at the cut counts as not delivered), an authorisation under way is abandoned (voided if
    /// the approval still comes), the boot count moves on, and the link is down until the
    /// network says otherwise.
    pub fn reboot(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.boot = self.boot.saturating_add(1);
        self.next_txn = 1;
        self.online = false;
        self.next_sync = 0;
        self.cart.clear();
        let phase = core::mem::replace(&mut self.phase, Phase::Idle);
        if let Phase::Authorising { txn, amount, .. } = phase {
            // The network may still approve it: that approval is voided when it comes.
            self.abandon(txn, amount);
        }
        if let Phase::Dispensing(mut d) = phase {
            while d.line < d.lines.len() {
                let failed = d.lines[d.line].quantity - d.dropped;
                out.extend(line_records(
                    &self.slots,
                    &d,
                    failed,
                    RefundReason::PowerLoss,
                ));
                d.line += 1;
                d.dropped = 0;
                d.failed = 0;
            }
            if let Some((_, id)) = d.order.take() {
                let ordered: u32 = d.lines.iter().map(|l| l.quantity).sum();
                let reason = alloc::format!(
                    "the power went: delivered {} of {ordered} units; the rest is refunded",
                    d.delivered
                );
                self.answer(id, Answer::Rejected(reason), &mut out);
            }
        }
        // The image installed before this boot is running: the update is applied.
        if let Some((id, version)) = self.installing.take() {
            self.firmware = version;
            self.answer(id, Answer::Applied, &mut out);
        }
        out
    }
}

impl Delivery {
    /// What the customer paid.
    pub fn paid(&self) -> Cents {
        self.lines
            .iter()
            .zip(&self.prices)
            .map(|(l, p)| p * Cents::from(l.quantity))
            .sum()
    }
}

/// The current line's records once it is over: a sale for what dropped, a refund for `failed`
/// units (at the prices paid).
fn line_records(slots: &[Slot], d: &Delivery, failed: u32, reason: RefundReason) -> Vec<Action> {
    let (line, price) = (d.lines[d.line], d.prices[d.line]);
    let product = slots
        .iter()
        .find(|s| s.code == line.slot)
        .map(|s| s.product.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    if d.dropped > 0 {
        out.push(Action::Record(Record::Sale {
            txn: d.txn,
            order: d.order.as_ref().map(|(o, _)| o.clone()),
            slot: line.slot,
            product,
            amount: price * Cents::from(d.dropped),
            quantity: d.dropped,
            method: d.method,
            offline: d.offline,
        }));
    }
    if failed > 0 {
        out.push(Action::Record(Record::Refund {
            txn: d.txn,
            order: d.order.as_ref().map(|(o, _)| o.clone()),
            slot: Some(line.slot),
            amount: price * Cents::from(failed),
            quantity: failed,
            reason,
        }));
    }
    out
}

//! One vending machine on the host: the controller's core ([`vendflow_controller::vend`]) with
//! its durable outbox in a file, speaking the wire protocol of [`vendflow_protocol`].
//!
//! # Lifecycle
//! - [`Machine::open`] reads the outbox back (a torn tail from a power cut is cut off) and
//!   boots the controller: a cart that was being dispensed when the power went is finished by
//!   refunding what was not delivered ([`vendflow_controller::vend::Vend::reboot`]).
//! - [`Machine::handle`] passes one input to the controller and performs its actions in order:
//!   a record (a sale, a refund, a command's answer) becomes a protocol event numbered by the
//!   outbox (`seq`) and is appended; then the controller's state after the input is committed
//!   beside them with one sync ([`Outbox::commit`]), before the other actions are returned for
//!   the caller (the simulated hardware, the payment network, the display) to carry out. So a
//!   receipt is never shown for a sale that is not on disk, and the stock, the offline count,
//!   the boot count and a cart being dispensed are on disk with the events they led to.
//! - [`Machine::envelope`] is what to send next (the oldest pending events); the platform's
//!   acknowledgement ([`Machine::acknowledged`]) removes them. The one other way out is age:
//!   the machine keeps [`KEEP_MS`] (24 hours) of events it could not deliver; older ones make
//!   room, and a `dropped` event numbered like the others declares their numbers to the
//!   platform, appended and synced before they are forgotten, so `sequence_gaps` shows that
//!   loss as declared. The rule is the core's ([`Outbox::expire`], `no_std`); the host looks at
//!   every heartbeat ([`Machine::expire`]: a machine beats on while it is offline) and writes
//!   the declaration as a protocol event.
//!
//! After a power cut ([`Machine::reopen`], [`PowerCut::power_cut`]) the controller is what its
//! log's newest state says, not what the caller had in memory: a step the power cut short is
//! taken back whole (its events are cut off, the state is the one before it), and the boot
//! refunds what a cart had paid for and not delivered. A log with no state yet (a machine that
//! never took an input) boots the controller it was given.

use std::path::{Path, PathBuf};

use vendflow_controller::file::FileLog;
use vendflow_controller::outbox::{ExpireError, Log, MemoryLog, Opened, Outbox, OutboxError};
use vendflow_controller::vend::{Action, Answer, Input, Millis, Record, Vend};
use vendflow_protocol::{
    AckStatus, Cents, CommandAck, Envelope, ErrorCode, ErrorEvent, Event, EventKind, MachineId,
    Refund, Restock, Sale, Text, Timestamp,
};

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("the outbox {path}: {message}")]
    Outbox { path: String, message: String },
    #[error("the outbox {path} cannot be opened: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an outbox record does not decode as an event: {0}")]
    Record(String),
    #[error("the outbox {path} holds a controller state this firmware cannot use: {source}")]
    Snapshot {
        path: String,
        source: vendflow_controller::vend::SnapshotError,
    },
}

/// How long a machine keeps an event the platform has not acknowledged: the core's
/// [`vendflow_controller::outbox::KEEP_MS`] (24 hours).
pub use vendflow_controller::outbox::KEEP_MS;

/// A machine: its id, its controller and its outbox (a file, or memory for a simulated
/// fleet of thousands).
pub struct Machine<L: Log = FileLog> {
    pub id: MachineId,
    pub vend: Vend,
    outbox: Outbox<L>,
    /// Where the outbox is, for errors.
    place: String,
}

impl Machine<FileLog> {
    /// Boots `vend` with the outbox at `path`: what the boot finishes (refunds of a cut cart, a
    /// firmware update's answer) is recorded first.
    pub fn open(
        id: MachineId,
        vend: Vend,
        path: &Path,
        now: Millis,
    ) -> Result<(Machine, Opened, Vec<Action>), MachineError> {
        let log = FileLog::open(path).map_err(|source| MachineError::Open {
            path: path.to_owned(),
            source,
        })?;
        Machine::boot(id, vend, log, path.display().to_string(), now)
    }

    /// A new controller set up from its provisioning bundle (`vendflow device provision`),
    /// with its outbox at `path`: the bundle's planogram, every slot empty until the crew's
    /// first restock. It boots at once; its first heartbeat is what says it is installed.
    pub fn provisioned(
        bundle: &vendflow_protocol::provision::Bundle,
        path: &Path,
        now: Millis,
    ) -> Result<(Machine, Opened, Vec<Action>), MachineError> {
        let id = MachineId::parse(&bundle.machine_id)
            .map_err(|e| MachineError::Record(format!("the bundle's machine id: {e}")))?;
        let slots = bundle
            .planogram
            .iter()
            .map(|s| vendflow_controller::vend::Slot {
                code: s.slot_number,
                product: s.product_id.clone(),
                price: u64::try_from(s.price_cents).unwrap_or(0),
                stock: 0,
                jammed: false,
            })
            .collect();
        Machine::open(id, Vend::new(slots), path, now)
    }

    /// The machine after a power cut: the outbox as the file holds it, and the controller as
    /// its newest state there says (the one in memory only if the log has none).
    pub fn reopen(self, now: Millis) -> Result<(Machine, Opened, Vec<Action>), MachineError> {
        let Machine {
            id, vend, place, ..
        } = self;
        Machine::open(id, vend, Path::new(&place), now)
    }
}

/// The power goes and comes back: what was not synced is gone from the log, and the controller
/// boots again from the newest state the log holds (memory is lost too).
pub trait PowerCut {
    fn power_cut(&mut self, now: Millis) -> Result<(Opened, Vec<Action>), MachineError>;

    /// The power is about to fail during a write: `bytes` more bytes reach storage, then none
    /// (cut a record short at any byte; [`PowerCut::power_cut`] then boots from what is there).
    fn power_fails_after(&mut self, bytes: usize);
}

impl PowerCut for Machine<MemoryLog> {
    fn power_fails_after(&mut self, bytes: usize) {
        self.outbox.log_mut().power_fails_after(bytes);
    }

    /// Simulated: the log keeps what was synced ([`MemoryLog::after_power_cut`]).
    fn power_cut(&mut self, now: Millis) -> Result<(Opened, Vec<Action>), MachineError> {
        let log = self.outbox.log_mut().after_power_cut();
        self.reboot_from(log, now)
    }
}

impl PowerCut for Machine<FileLog> {
    fn power_fails_after(&mut self, bytes: usize) {
        self.outbox.log_mut().power_fails_after(bytes);
    }

    /// The file read back as a new boot reads it (every step is synced before its actions are
    /// carried out, so it holds what the controller committed).
    fn power_cut(&mut self, now: Millis) -> Result<(Opened, Vec<Action>), MachineError> {
        let path = Path::new(&self.place);
        let log = FileLog::open(path).map_err(|source| MachineError::Open {
            path: path.to_owned(),
            source,
        })?;
        self.reboot_from(log, now)
    }
}

impl<L: Log> Machine<L>
where
    L::Error: std::fmt::Debug,
{
    /// Opens the outbox over `log` (a torn tail and an unfinished step are cut off) and boots
    /// the controller its newest state holds, or `vend` when it holds none.
    pub fn boot(
        id: MachineId,
        vend: Vend,
        log: L,
        place: String,
        now: Millis,
    ) -> Result<(Self, Opened, Vec<Action>), MachineError> {
        let (outbox, opened) = Outbox::open(log).map_err(|e| outbox_error(&place, e))?;
        let vend = restored(&opened, &place)?.unwrap_or(vend);
        let mut machine = Machine {
            id,
            vend,
            outbox,
            place,
        };
        let booted = machine.vend.reboot();
        let rest = machine.perform(now, booted)?;
        Ok((machine, opened, rest))
    }

    /// A restart without a power cut (a `REBOOT` command, a firmware install): everything in
    /// the log stays; the controller boots.
    pub fn restart(&mut self, now: Millis) -> Result<Vec<Action>, MachineError> {
        let booted = self.vend.reboot();
        self.perform(now, booted)
    }

    /// The outbox opened again over `log` (what a power cut left of it) and the controller
    /// booted from its newest state.
    fn reboot_from(&mut self, log: L, now: Millis) -> Result<(Opened, Vec<Action>), MachineError> {
        let (mut outbox, opened) = Outbox::open(log).map_err(|e| outbox_error(&self.place, e))?;
        outbox.set_compact_at(self.outbox.compacts_at());
        outbox.set_keep(self.outbox.keeps());
        self.outbox = outbox;
        if let Some(vend) = restored(&opened, &self.place)? {
            self.vend = vend;
        }
        Ok((opened, self.restart(now)?))
    }

    /// Keeps undelivered events `ms` instead of [`KEEP_MS`]: a simulation many times faster
    /// than real time stretches the network's delays by as much in the machines' time (a
    /// resend a minute later at 500× is 8 simulated hours).
    pub fn keep(&mut self, ms: Millis) {
        self.outbox.set_keep(ms);
    }

    /// Compacts the outbox once acknowledged records take more than `bytes`.
    pub fn compact_at(&mut self, bytes: u64) {
        self.outbox.set_compact_at(bytes);
    }

    /// One input: records are appended; the other actions are returned in order.
    pub fn handle(&mut self, now: Millis, input: Input) -> Result<Vec<Action>, MachineError> {
        // A clock tick that asks for nothing changed nothing (every change a tick makes comes
        // with an action: a message, a vend, a sync): nothing to commit. It is by far the most
        // frequent input, and encoding the state for it cost the fleet simulation ~30 %.
        let quiet_tick = matches!(input, Input::Tick);
        let actions = self.vend.handle(now, input);
        if quiet_tick && actions.is_empty() {
            debug_assert_eq!(
                self.outbox.state().map(<[u8]>::to_vec),
                Some(self.vend.snapshot()),
                "a tick without an action changed the controller"
            );
            return Ok(actions);
        }
        self.perform(now, actions)
    }

    /// A heartbeat, appended without a sync of its own (the next sale's sync, or the sync
    /// before anything is sent, carries it).
    pub fn heartbeat(
        &mut self,
        now: Millis,
        kind: vendflow_protocol::Heartbeat,
    ) -> Result<u64, MachineError> {
        self.expire(now)?;
        self.append(now, EventKind::Heartbeat(kind), false)
    }

    /// Gives up on the events older than [`KEEP_MS`] (or [`Machine::keep`]) that the platform
    /// has not acknowledged: the core's rule ([`Outbox::expire`], at most every ten minutes),
    /// with the declaration written as a `dropped` event. Returns the declaration, if one was
    /// made.
    pub fn expire(
        &mut self,
        now: Millis,
    ) -> Result<Option<vendflow_protocol::Dropped>, MachineError> {
        let keep_hours = self.outbox.keeps() / 3_600_000;
        let reason: Text = format!("kept_{keep_hours}h").into();
        let (id, place) = (&self.id, &self.place);
        let expired = self
            .outbox
            .expire(
                now,
                |entry| event_of(id, entry).map(|e| e.timestamp.0),
                |first_seq, last_seq, seq| {
                    let declared = vendflow_protocol::Dropped {
                        first_seq,
                        last_seq,
                        reason: reason.clone(),
                    };
                    event_body(id, now, seq, EventKind::Dropped(declared))
                },
            )
            .map_err(|e| match e {
                ExpireError::Outbox(e) => outbox_error(place, e),
                ExpireError::Time { error, .. } => error,
            })?;
        let Some(expired) = expired else {
            return Ok(None);
        };
        tracing::warn!(
            machine_id = %self.id,
            first_seq = expired.first_seq,
            last_seq = expired.last_seq,
            keep_hours,
            "events kept too long without the platform's acknowledgement dropped and declared"
        );
        Ok(Some(vendflow_protocol::Dropped {
            first_seq: expired.first_seq,
            last_seq: expired.last_seq,
            reason,
        }))
    }

    /// Appends the step's records, commits the controller's state with them, and returns the
    /// other actions.
    fn perform(&mut self, now: Millis, actions: Vec<Action>) -> Result<Vec<Action>, MachineError> {
        let mut rest = Vec::new();
        let mut recorded = false;
        for action in actions {
            match action {
                Action::Record(record) => {
                    self.append(now, kind_of(&record), true)?;
                    recorded = true;
                    rest.push(Action::Record(record));
                }
                Action::Answer { id, answer } => {
                    let (status, reason) = match &answer {
                        Answer::Applied => (AckStatus::Applied, None),
                        Answer::Rejected(r) => (AckStatus::Rejected, Some(r.clone())),
                    };
                    let ack = CommandAck {
                        command_id: id.clone(),
                        status,
                        reason,
                    };
                    self.append(now, EventKind::CommandAck(ack), true)?;
                    recorded = true;
                    rest.push(Action::Answer { id, answer });
                }
                other => rest.push(other),
            }
        }
        let state = self.vend.snapshot();
        if recorded || self.outbox.state() != Some(state.as_slice()) {
            self.outbox
                .commit(&state)
                .map_err(|e| outbox_error(&self.place, e))?;
        }
        Ok(rest)
    }

    /// Appends one event numbered with the outbox's next number: a step's (committed with the
    /// controller's state), or one that stands alone (a heartbeat, not synced on its own).
    fn append(&mut self, now: Millis, kind: EventKind, step: bool) -> Result<u64, MachineError> {
        let seq = self.outbox.last_seq() + 1;
        let body = event_body(&self.id, now, seq, kind);
        let given = if step {
            self.outbox.push_step(&body)
        } else {
            self.outbox.push(&body, false)
        }
        .map_err(|e| outbox_error(&self.place, e))?;
        debug_assert_eq!(given, seq);
        Ok(seq)
    }

    /// Up to `max` of the oldest events not yet acknowledged, as one envelope, with the number
    /// of the last one (to acknowledge); None when everything was acknowledged.
    ///
    /// The outbox is synced first: an event leaves the machine only once it is durable, so a
    /// power cut can never give a number the platform has seen to another event (heartbeats
    /// are appended without a sync of their own).
    pub fn envelope(&mut self, max: usize) -> Result<Option<(Envelope, u64)>, MachineError> {
        if self.outbox.is_empty() {
            return Ok(None);
        }
        self.outbox
            .sync()
            .map_err(|e| outbox_error(&self.place, e))?;
        let mut events = Vec::new();
        let mut last = 0;
        for entry in self.outbox.pending().take(max) {
            events.push(event_of(&self.id, entry)?);
            last = entry.seq;
        }
        Ok((!events.is_empty()).then(|| {
            (
                Envelope {
                    machine_id: self.id.clone(),
                    events,
                },
                last,
            )
        }))
    }

    /// The platform has every event up to `seq`.
    pub fn acknowledged(&mut self, seq: u64) -> Result<(), MachineError> {
        self.outbox
            .ack(seq)
            .map_err(|e| outbox_error(&self.place, e))
    }

    /// Events waiting for the platform.
    pub fn pending(&self) -> usize {
        self.outbox.pending().count()
    }

    /// The number of the last event recorded.
    pub fn last_seq(&self) -> u64 {
        self.outbox.last_seq()
    }
}

/// An event's body in the outbox: the event without its machine id (every record is the
/// machine's own).
fn event_body(id: &MachineId, now: Millis, seq: u64, kind: EventKind) -> Vec<u8> {
    let event = Event {
        machine_id: id.clone(),
        timestamp: Timestamp(now),
        seq: Some(seq),
        kind,
    };
    event.body_json().to_string().into_bytes()
}

/// An outbox record as the event it is.
fn event_of(
    id: &MachineId,
    entry: &vendflow_controller::outbox::Entry,
) -> Result<Event, MachineError> {
    let line = format!(
        "{{\"machineId\":\"{}\",{}",
        id.as_str(),
        std::str::from_utf8(&entry.body)
            .map_err(|e| MachineError::Record(e.to_string()))?
            .trim_start_matches('{')
    );
    vendflow_protocol::decode::decode_line(line.as_bytes())
        .into_iter()
        .next()
        .ok_or_else(|| MachineError::Record("nothing decoded".into()))?
        .map_err(|e| MachineError::Record(e.to_string()))
}

/// The controller the log's newest state holds, if it holds one.
fn restored(opened: &Opened, place: &str) -> Result<Option<Vend>, MachineError> {
    opened
        .state
        .as_deref()
        .map(Vend::restore)
        .transpose()
        .map_err(|source| MachineError::Snapshot {
            path: place.to_owned(),
            source,
        })
}

fn outbox_error<E: std::fmt::Debug>(place: &str, e: OutboxError<E>) -> MachineError {
    MachineError::Outbox {
        path: place.to_owned(),
        message: e.to_string(),
    }
}

/// A controller record as a protocol event.
fn kind_of(record: &Record) -> EventKind {
    match record {
        Record::Sale {
            txn,
            order,
            slot,
            product,
            amount,
            quantity,
            method,
            offline,
        } => EventKind::Sale(Sale {
            slot_number: *slot,
            product_id: Text::from(product.as_str()),
            amount: cents(*amount),
            quantity: *quantity,
            payment_method: Text::from(method.as_str()),
            transaction_id: Text::from(order.clone().unwrap_or_else(|| txn.to_string()).as_str()),
            offline: *offline,
        }),
        Record::Refund {
            txn,
            order,
            slot,
            amount,
            quantity,
            reason,
        } => EventKind::Refund(Refund {
            transaction_id: Text::from(order.clone().unwrap_or_else(|| txn.to_string()).as_str()),
            slot_number: *slot,
            amount: cents(*amount),
            quantity: *quantity,
            reason: Text::from(reason.as_str()),
        }),
        Record::DispenseFailure { txn, slot } => EventKind::Error(ErrorEvent {
            code: ErrorCode::DispenseFailure,
            message: format!("slot {slot} did not drop twice ({txn}); the slot is out of service"),
        }),
        Record::ReadFailure => EventKind::Error(ErrorEvent {
            code: ErrorCode::CardReadFailure,
            message: "card read failed".into(),
        }),
        Record::Restock { slot, quantity } => EventKind::Restock(Restock {
            slot_number: *slot,
            quantity: *quantity,
            product_id: None,
        }),
    }
}

fn cents(amount: u64) -> Cents {
    Cents(i64::try_from(amount).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use vendflow_controller::outbox::EXPIRY_CHECK_MS;
    use vendflow_controller::vend::{Method, Slot};

    use super::*;

    /// 2025-11-24 16:00 UTC.
    const T0: Millis = 1_764_000_000_000;

    fn vend() -> Vend {
        Vend::new(vec![
            Slot {
                code: 101,
                product: "cola".into(),
                price: 250,
                stock: 5,
                jammed: false,
            },
            Slot {
                code: 148,
                product: "chips".into(),
                price: 175,
                stock: 5,
                jammed: false,
            },
        ])
    }

    /// A cart of three units: one drops, the next jams (refunded with the rest of its line),
    /// then the power goes mid-vend of the second line; after the reboot the outbox holds every
    /// event, numbered 1, 2, 3, … with no gap, the money adds up, and the events decode as the
    /// platform reads them.
    #[test]
    fn a_cart_cut_by_a_power_loss_is_refunded_and_every_event_is_numbered_once()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("outbox.log");
        let (mut m, _, _) = Machine::open(
            MachineId::parse("mach_00042").map_err(anyhow::Error::msg)?,
            vend(),
            &path,
            T0,
        )?;
        m.heartbeat(T0, vendflow_protocol::Heartbeat::default())?;
        for (t, input) in [
            Input::Select(101),
            Input::Select(101),
            Input::Select(148),
            Input::Checkout,
            Input::Present(Method::Card), // offline: approved by the machine ($6.75)
            Input::Dropped(true),
            Input::Dropped(false),
            Input::Dropped(false), // jammed: the second cola is refunded
        ]
        .into_iter()
        .enumerate()
        {
            m.handle(T0 + 2_000 + t as i64, input)?;
        }
        // The chips are being vended when the power goes: the controller boots again from the
        // state it kept and the outbox file.
        let (mut m, opened, _) = m.reopen(T0 + 9_000)?;
        assert_eq!(opened.torn_bytes, 0);
        let (envelope, last) = m
            .envelope(100)?
            .ok_or_else(|| anyhow::anyhow!("nothing to send"))?;
        let seqs: Vec<u64> = envelope.events.iter().filter_map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "numbered without a gap"
        );
        let (mut sold, mut refunded) = (0, 0);
        for e in &envelope.events {
            match &e.kind {
                EventKind::Sale(s) => {
                    assert!(s.offline);
                    sold += s.amount.0;
                }
                EventKind::Refund(r) => refunded += r.amount.0,
                _ => {}
            }
        }
        assert_eq!(
            (sold, refunded),
            (250, 250 + 175),
            "paid 6.75: one cola sold, one cola and the chips refunded"
        );
        assert!(
            envelope.events.iter().any(
                |e| matches!(&e.kind, EventKind::Refund(r) if r.reason.as_str() == "power_loss")
            )
        );
        assert!(envelope.events.iter().any(
            |e| matches!(&e.kind, EventKind::Error(x) if x.code == ErrorCode::DispenseFailure)
        ));
        Ok(())
    }

    /// The power goes mid-cart, and with it the controller's memory (here: overwritten with
    /// garbage). The controller that boots is the one its log's newest state holds: the unit
    /// that dropped is sold, the one that did not is refunded, and the stock, the offline count
    /// and the boot count go on from what was on flash.
    #[test]
    fn after_a_power_cut_the_controller_is_what_its_log_holds_not_what_memory_had()
    -> anyhow::Result<()> {
        let (mut m, _, _) = Machine::boot(
            MachineId::parse("mach_00043").map_err(anyhow::Error::msg)?,
            vend(),
            MemoryLog::default(),
            "memory".into(),
            T0,
        )?;
        for (t, input) in [
            Input::Select(101),
            Input::Select(101),
            Input::Checkout,
            Input::Present(Method::Card), // offline: approved by the machine
            Input::Dropped(true),         // the first cola drops; the power goes on the second
        ]
        .into_iter()
        .enumerate()
        {
            m.handle(T0 + 1_000 + t as i64, input)?;
        }
        let on_flash = m.vend.clone();
        assert_eq!(on_flash.slots[0].stock, 4);
        assert_eq!(on_flash.offline_sales, 1);
        m.vend.slots[0].stock = 99;
        m.vend.offline_sales = 50;
        m.vend.boot = 7;
        let (opened, _) = m.power_cut(T0 + 9_000)?;
        assert_eq!(opened.unfinished, 0);
        assert_eq!(m.vend.slots[0].stock, 4, "the stock on flash");
        assert_eq!(m.vend.offline_sales, 1, "the offline sales on flash");
        assert_eq!(
            m.vend.boot,
            on_flash.boot + 1,
            "the boot count on flash, plus this boot"
        );
        let (envelope, _) = m
            .envelope(100)?
            .ok_or_else(|| anyhow::anyhow!("nothing to send"))?;
        let sold: Vec<u32> = envelope
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Sale(s) => Some(s.quantity),
                _ => None,
            })
            .collect();
        let refunded: Vec<(u32, &str)> = envelope
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Refund(r) => Some((r.quantity, r.reason.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(sold, vec![1]);
        assert_eq!(refunded, vec![(1, "power_loss")]);
        // The state after the boot is on flash too: a second cut changes nothing but the boot.
        let booted = m.vend.clone();
        m.power_cut(T0 + 10_000)?;
        assert_eq!(m.vend.slots, booted.slots);
        assert_eq!(m.vend.boot, booted.boot + 1);
        Ok(())
    }

    /// Acknowledged events leave the outbox for good; the rest are sent again after a restart.
    #[test]
    fn only_the_platforms_acknowledgement_removes_events() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("outbox.log");
        let id = MachineId::parse("mach_00043").map_err(anyhow::Error::msg)?;
        let (mut m, _, _) = Machine::open(id, vend(), &path, T0)?;
        for t in 0..10 {
            m.heartbeat(T0 + t * 30_000, vendflow_protocol::Heartbeat::default())?;
        }
        m.handle(
            T0 + 1,
            Input::Restock {
                slot: 101,
                quantity: 3,
            },
        )?;
        let (first, last) = m
            .envelope(4)?
            .ok_or_else(|| anyhow::anyhow!("nothing to send"))?;
        assert_eq!((first.events.len(), last), (4, 4));
        m.acknowledged(last)?;
        let (mut m, _, _) = m.reopen(T0 + 400_000)?;
        let (rest, last) = m
            .envelope(100)?
            .ok_or_else(|| anyhow::anyhow!("nothing to send"))?;
        assert_eq!(rest.events.first().and_then(|e| e.seq), Some(5));
        assert_eq!(last, 11);
        Ok(())
    }

    /// A machine that cannot reach the platform for 30 hours keeps 24 hours of events: older
    /// ones are dropped, and a `dropped` event declares exactly their numbers before they go,
    /// so every number is either delivered or declared; the log says the same after a restart.
    #[test]
    fn events_kept_24_hours_unacknowledged_are_dropped_and_declared() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("outbox.log");
        let id = MachineId::parse("mach_00044").map_err(anyhow::Error::msg)?;
        let (mut m, _, _) = Machine::open(id, vend(), &path, T0)?;
        // One heartbeat every 5 minutes for 30 hours; a delivery acknowledged at hour 1.
        let beat = 300_000;
        let mut declared = Vec::new();
        let mut made = std::collections::BTreeMap::new();
        let mut delivered = 0;
        for k in 0..(30 * 12) {
            let now = T0 + k * beat;
            if k == 12 {
                let (_, last) = m
                    .envelope(usize::MAX)?
                    .ok_or_else(|| anyhow::anyhow!("nothing"))?;
                m.acknowledged(last)?;
                delivered = last;
            }
            let before = m.last_seq();
            let seq = m.heartbeat(now, vendflow_protocol::Heartbeat::default())?;
            if seq > before + 1 {
                // The heartbeat looked at the oldest events first and declared some dropped.
                made.insert(before + 1, now);
            }
            made.insert(seq, now);
            if let Some(d) = m.expire(now)? {
                declared.push(d);
            }
        }
        let (pending, _) = m
            .envelope(usize::MAX)?
            .ok_or_else(|| anyhow::anyhow!("nothing"))?;
        let declarations: Vec<_> = pending
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Dropped(d) => Some((e.seq, d.first_seq, d.last_seq)),
                _ => None,
            })
            .collect();
        assert!(
            declared.is_empty(),
            "expire() right after a heartbeat waits its ten minutes"
        );
        assert!(
            !declarations.is_empty(),
            "30 hours offline: something must be dropped"
        );
        // The first hour's numbers were delivered; every later one is pending or declared dropped, never
        // both, and nothing pending is older than 24 h.
        let end = T0 + (30 * 12 - 1) * beat;
        let mut dropped = std::collections::BTreeSet::new();
        for (own, first, last) in &declarations {
            assert!(last < &own.unwrap_or(0));
            dropped.extend(*first..=*last);
        }
        let pending_seqs: std::collections::BTreeSet<u64> =
            pending.events.iter().filter_map(|e| e.seq).collect();
        assert!(dropped.is_disjoint(&pending_seqs));
        let all: std::collections::BTreeSet<u64> = (delivered + 1..=m.last_seq()).collect();
        assert_eq!(
            dropped
                .union(&pending_seqs)
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            all
        );
        for e in &pending.events {
            assert!(
                e.timestamp.0 >= end - KEEP_MS - EXPIRY_CHECK_MS,
                "event {:?} kept beyond 24 h",
                e.seq
            );
        }
        for seq in &dropped {
            assert!(
                made.get(seq)
                    .is_some_and(|at| *at < end - KEEP_MS + EXPIRY_CHECK_MS + beat),
                "event {seq} dropped before it was 24 h old"
            );
        }
        // After a restart the log holds the same.
        let (mut m, _, _) = m.reopen(end)?;
        let (again, _) = m
            .envelope(usize::MAX)?
            .ok_or_else(|| anyhow::anyhow!("nothing"))?;
        assert_eq!(again.events, pending.events);
        Ok(())
    }
}

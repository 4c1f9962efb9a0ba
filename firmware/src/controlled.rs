//! A fleet of controllers: every simulated machine runs the real controller core
//! ([`vendflow_controller::vend`]) with its outbox ([`crate::machine::Machine`]), and only the
//! world around it is simulated: customers who fill a cart and pay (or give up), the payment
//! network, the drop sensor (a jam now and then), the service crew, network outages and power
//! cuts.
//!
//! The machines, their planograms, locations and leases are those of a [`Fleet`] of the same
//! seed (so the registry is the same), and customers arrive at the fleet's rates by location
//! type and hour. Every machine draws from its own seeded RNG and wakes on its own schedule, so
//! a run is the same however time is sliced into [`Controllers::advance`] calls.
//!
//! What leaves a machine is what its outbox holds, oldest first ([`Controllers::ready`]); the
//! platform's acknowledgement ([`Controllers::acknowledged`]) is the only thing that removes it.
//! A machine that is offline (an outage) sends nothing, sells by card up to the controller's
//! offline rules, and sends what it kept when the network returns. A power cut loses what was
//! not yet synced to the log; nothing sent is ever renumbered (the outbox syncs before sending).

use std::collections::{BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vendflow_controller::file::FileLog;
use vendflow_controller::outbox::{Log, MemoryLog};
use vendflow_controller::vend::{
    Action, Input, Message, Method, Millis, Record, Slot as ControllerSlot, Vend,
};
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{
    ControllerStatus, DoorStatus, Envelope, Heartbeat, LocationType, MachineId, Milli, Text,
    Timestamp,
};

use crate::fleet::{Condition, Fleet, FleetConfig, MAX_RATE, exp_ms, sales_rate};
use crate::machine::{Machine, MachineError, PowerCut};

/// The firmware the simulated controllers run.
pub const FIRMWARE_VERSION: &str = "3.0.0";

/// Events per envelope at most.
pub const ENVELOPE_EVENTS: usize = 200;

/// No customer comes in the last minutes of the span (so that every cart is done by its end):
/// five minutes, or half of a span shorter than ten minutes, but at least one (a cart takes
/// seconds to half a minute).
fn closing_ms(span: Millis) -> Millis {
    (5 * 60_000).min((span / 2).max(60_000))
}

/// The most bytes of a heartbeat's record that reach storage when the power fails while it is
/// written (a heartbeat's record is shorter than this: some cuts leave it whole).
const TORN_WRITE_MAX: usize = 400;

/// Acknowledged bytes an in-memory outbox keeps before it compacts (a file keeps 64 KiB).
const COMPACT_AT: u64 = 4 * 1024;

/// How the world around the controllers behaves.
#[derive(Clone, Debug)]
pub struct ControlledConfig {
    pub machines: usize,
    pub seed: u64,
    pub slots: u32,
    /// The simulated clock's start.
    pub start: Timestamp,
    /// Outages and power cuts happen before this (the end of the span), so that by then every
    /// machine is back online and can send what it kept.
    pub end: Timestamp,
    pub heartbeat_ms: Millis,
    /// Customers an hour, relative to the fleet's rates by location type and hour (1.0: the
    /// same).
    pub demand: f64,
    /// Chance that a unit does not drop (each try; a unit that fails twice is refunded).
    pub jam: f64,
    /// Chance that the payment network declines a card.
    pub decline: f64,
    /// Share of machines that lose their network once, for up to `max_outage_ms`.
    pub outages: f64,
    pub max_outage_ms: Millis,
    /// Outages scripted instead of drawn: machine (0-based) and length, each starting an hour
    /// into the span (`publish --outage N:H`).
    pub scripted_outages: Vec<(usize, Millis)>,
    /// Share of machines whose power is cut once, at a random moment.
    pub power_cuts: f64,
    /// Each machine's first event number is after this (event numbers never repeat across
    /// runs of the same machine ids: use the time the run starts).
    pub first_number: u64,
    /// A machine online sends what its outbox holds at most once per this much simulated
    /// time (0: as soon as it has something); what waits for an acknowledgement is sent again
    /// on the caller's timer regardless.
    pub batch_ms: Millis,
    /// How long a machine keeps an event it could not deliver ([`crate::machine::KEEP_MS`]).
    pub keep_ms: Millis,
}

/// The options of controller runs that shape the machines' world, the same for `publish` and
/// `simulate` (each refuses them when it runs the event simulator).
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct WorldOptions {
    /// Controllers only: seconds between a machine's heartbeats.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u32,
    /// Controllers only: the share of machines that lose their network once, for a random
    /// time of up to --max-outage-hours (ending at least an hour before the span does).
    #[arg(long, default_value_t = 0.1)]
    pub outage_share: f64,
    /// The longest outage. A machine keeps 24 hours of events it could not deliver: past that
    /// it drops the oldest and declares their numbers (`sequence_gaps`, `declared_dropped`).
    #[arg(long, default_value_t = 24.0)]
    pub max_outage_hours: f64,
    /// Controllers only: hours a machine keeps events it could not deliver; older ones are
    /// dropped and declared (`sequence_gaps`, `declared_dropped`). The product's rule is 24. A
    /// run many times faster than real time stretches the network's delays by as much in the
    /// machines' time (a resend a minute later at 500x is 8 simulated hours): a test that
    /// checks nothing is lost keeps longer.
    #[arg(long, default_value_t = 24)]
    pub keep_hours: u32,
    /// Controllers only: the chance that a unit does not drop at a try (a unit that fails
    /// its retry too is refunded, and its slot goes out of service until restocked).
    #[arg(long, default_value_t = 0.01)]
    pub jam_share: f64,
    /// Controllers only: the share of machines whose power is cut once.
    #[arg(long, default_value_t = 0.02)]
    pub power_cut_share: f64,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            heartbeat_secs: 30,
            outage_share: 0.1,
            max_outage_hours: 24.0,
            keep_hours: 24,
            jam_share: 0.01,
            power_cut_share: 0.02,
        }
    }
}

impl WorldOptions {
    /// Refuses options given to a run of the event simulator (which would ignore them): only
    /// the defaults pass.
    pub fn only_for_controllers(&self) -> Result<(), String> {
        if *self == WorldOptions::default() {
            return Ok(());
        }
        Err("the world's options (--heartbeat-secs, --outage-share, --max-outage-hours, --keep-hours, --jam-share, --power-cut-share) shape the controllers; the event simulator (--event-simulator, --scenario) does not take them".into())
    }

    /// Sets them on `config`; a share outside 0..=1 is refused with the reason.
    pub fn apply(&self, config: &mut ControlledConfig) -> Result<(), String> {
        for (name, share) in [
            ("--outage-share", self.outage_share),
            ("--jam-share", self.jam_share),
            ("--power-cut-share", self.power_cut_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} {share} is not between 0 and 1"));
            }
        }
        config.heartbeat_ms = i64::from(self.heartbeat_secs.max(1)) * 1000;
        config.outages = self.outage_share;
        config.jam = self.jam_share;
        config.power_cuts = self.power_cut_share;
        config.max_outage_ms = (self.max_outage_hours.max(0.0) * MS_PER_HOUR as f64) as i64;
        config.keep_ms = i64::from(self.keep_hours.max(1)) * MS_PER_HOUR;
        Ok(())
    }
}

impl ControlledConfig {
    /// `machines` controllers over `start..end`, with the default world.
    pub fn new(machines: usize, seed: u64, start: Timestamp, end: Timestamp) -> ControlledConfig {
        ControlledConfig {
            machines,
            seed,
            slots: 30,
            start,
            end,
            heartbeat_ms: 30_000,
            demand: 1.0,
            jam: 0.01,
            decline: 0.04,
            outages: 0.1,
            max_outage_ms: 24 * MS_PER_HOUR,
            scripted_outages: Vec::new(),
            power_cuts: 0.02,
            first_number: 0,
            batch_ms: 0,
            keep_ms: crate::machine::KEEP_MS,
        }
    }
}

/// What the fleet's customers, payments and machines did, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub customers: u64,
    /// Carts paid (a receipt printed).
    pub receipts: u64,
    /// Units sold, and their amount in cents (sale records, online and offline).
    pub units_sold: u64,
    pub sold_cents: u64,
    pub offline_sales: u64,
    /// Refund records and their amount.
    pub refunds: u64,
    pub refunded_cents: u64,
    /// Money taken (online captures and offline charges), and approvals given back.
    pub charged_cents: u64,
    pub voided_cents: u64,
    pub declined: u64,
    pub jams: u64,
    pub restocks: u64,
    pub heartbeats: u64,
    pub outages: u64,
    pub power_cuts: u64,
    /// Power cuts that left a record cut short (found and cut off at the next boot).
    pub torn_writes: u64,
    /// Customers turned away: sold out, over the floor limit, the offline limit reached.
    pub turned_away: u64,
    /// Cards the terminal could not read (the customer presented again).
    pub read_failures: u64,
}

/// One machine and the world it sees.
struct Unit<L: Log> {
    machine: Machine<L>,
    rng: ChaCha8Rng,
    location_type: LocationType,
    /// Per slot (in planogram order): how often it is chosen, and what a full slot holds.
    popularity: Vec<f64>,
    capacity: Vec<u32>,
    booted_at: Millis,
    next_customer: Millis,
    next_heartbeat: Millis,
    next_visit: Millis,
    /// Inputs due at a time (the customer's next press, the network's answer, the sensor).
    due: VecDeque<(Millis, Input)>,
    /// The network's outage, if it has one.
    outage: Option<(Millis, Millis)>,
    power_cut: Option<Millis>,
    online: bool,
    /// The controller asked to sync: answered once the outbox is empty and the machine online.
    sync_wanted: bool,
    /// What was sent and not yet acknowledged: the last event number, and when (wall clock of
    /// the caller, in ms) it was sent.
    in_flight: Option<(u64, u64)>,
    /// When what is in flight is sent again ([`Resend::Adaptive`]): this machine's own
    /// retransmission timer over its own round trips, as a machine's firmware keeps one.
    resend: crate::mqtt::ResendTimer,
    /// Events up to this number were given out once already (for recording what was sent).
    given_through: u64,
    /// The customer declined once already (they try another card once).
    retried: bool,
    /// When (simulated) it last sent something new.
    last_sent: Millis,
    /// The controller asked to restart (a command, a firmware install): when it does.
    restart: Option<Millis>,
    /// What the fleet's faults and wear do to this machine's hardware now (its sensors' drift,
    /// its motor's jams, the crew skipping it), updated before each wake-up; none for a machine
    /// booted from its bundle.
    condition: Condition,
}

/// When [`Controllers::ready`] sends again what a machine has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// After this many ms of the caller's clock (`u64::MAX`: never).
    After(u64),
    /// When the machine's own timer says: TCP's retransmission timer (RFC 6298) over that
    /// machine's round trips ([`Controllers::round_trip`]), doubled while its resends go
    /// unanswered. One timer per machine, as each machine's firmware has, not one for the
    /// fleet: fed by every machine's receipts at once, a shared timer followed the last few
    /// round trips only, and a fleet whose receipts slowed down sent a quarter of its
    /// envelopes again.
    Adaptive,
}

/// The fleet of controllers and its simulated clock.
pub struct Controllers<L: Log = MemoryLog> {
    now: Millis,
    units: Vec<Unit<L>>,
    /// When each machine next wakes: (time, index), earliest first.
    wakes: BinaryHeap<std::cmp::Reverse<(Millis, usize)>>,
    /// The fleet whose machines these are (none for a machine booted from its bundle).
    fleet: Option<Fleet>,
    config: ControlledConfig,
    pub tally: Tally,
    /// Envelopes sent again: their events had waited longer than the caller's resend timeout.
    resent: u64,
}

impl Controllers<MemoryLog> {
    pub fn new(config: ControlledConfig) -> Result<Controllers, MachineError> {
        let fleet = Fleet::new(&FleetConfig {
            machines: config.machines,
            seed: config.seed,
            start: config.start,
            slots: config.slots,
            first_number: config.first_number,
            ..FleetConfig::default()
        });
        let start = config.start.0;
        let span = (config.end.0 - start).max(1);
        let mut units = Vec::with_capacity(config.machines);
        let mut wakes = BinaryHeap::with_capacity(config.machines);
        for (i, plan) in fleet.planograms().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(
                config.seed ^ 0xC0_47_20_11 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let slots: Vec<ControllerSlot> = plan
                .slots
                .iter()
                .map(|s| ControllerSlot {
                    code: s.number,
                    product: s.product.to_owned(),
                    price: u64::try_from(s.price.0).unwrap_or(0),
                    stock: s.stock,
                    jammed: false,
                })
                .collect();
            let mut vend = Vend::new(slots);
            vend.firmware = FIRMWARE_VERSION.to_owned();
            // Transaction ids are `txn_{boot}_{n}`: a run's boots start at its start second, so
            // a fleet simulated again later does not reuse them.
            vend.boot = u32::try_from(config.first_number / 1_000_000).unwrap_or(0);
            let log = MemoryLog::with_first_number(config.first_number);
            let (mut machine, _, actions) = Machine::boot(
                plan.id.clone(),
                vend,
                log,
                format!("in memory ({})", plan.id),
                start,
            )?;
            machine.compact_at(COMPACT_AT);
            machine.keep(config.keep_ms);
            // An outage ends at least an hour before the end of the span.
            let room = span - MS_PER_HOUR;
            let outage = (rng.random_bool(config.outages.clamp(0.0, 1.0))
                && room > MS_PER_HOUR / 4)
                .then(|| {
                    let longest = config.max_outage_ms.min(room).max(MS_PER_HOUR / 4);
                    let length = rng.random_range(MS_PER_HOUR / 4..=longest);
                    let from = start + rng.random_range(0..=room - length);
                    (from, from + length)
                });
            // A scripted outage replaces the drawn one (drawn all the same: the other machines'
            // draws do not move).
            let outage = match config.scripted_outages.iter().find(|(m, _)| *m == i) {
                Some(&(_, length)) => Some((start + MS_PER_HOUR, start + MS_PER_HOUR + length)),
                None => outage,
            };
            let power_cut = rng
                .random_bool(config.power_cuts.clamp(0.0, 1.0))
                .then(|| start + rng.random_range(0..span));
            let next_customer = start + exp_ms(&mut rng, MAX_RATE * config.demand.max(1e-6));
            let next_heartbeat = start + rng.random_range(0..config.heartbeat_ms.max(1));
            let next_visit = start + rng.random_range(0..MS_PER_DAY);
            let mut unit = Unit {
                location_type: plan.location_type,
                popularity: plan.slots.iter().map(|s| s.popularity).collect(),
                capacity: plan.slots.iter().map(|s| s.capacity).collect(),
                next_customer,
                next_heartbeat,
                next_visit,
                outage,
                power_cut,
                given_through: config.first_number,
                ..Unit::booted(machine, rng, start)
            };
            let mut tally = Tally::default();
            unit.carry_out(start, actions, &config, &mut tally);
            wakes.push(std::cmp::Reverse((start, i)));
            units.push(unit);
        }
        Ok(Controllers {
            now: start,
            units,
            wakes,
            fleet: Some(fleet),
            config,
            tally: Tally::default(),
            resent: 0,
        })
    }
}

impl Controllers<FileLog> {
    /// One machine booted from its provisioning bundle (`vendflow device provision`), its
    /// outbox in the file at `outbox` (read back if it exists: a restart resumes where the
    /// machine stood), in the simulated world of `config` from its `start` on: customers at the
    /// rates of the machine's `location`, the crew's visit at once (a new machine's slots are
    /// empty) and then daily, no outage or power cut of the simulation's own (the process is
    /// the machine: stop it, cut its network, kill it).
    pub fn provisioned(
        bundle: &vendflow_protocol::provision::Bundle,
        outbox: &std::path::Path,
        location: LocationType,
        config: ControlledConfig,
    ) -> Result<Controllers<FileLog>, MachineError> {
        let start = config.start.0;
        let (mut machine, _, actions) = Machine::provisioned(bundle, outbox, start)?;
        machine.keep(config.keep_ms);
        if machine.vend.firmware.is_empty() {
            machine.vend.firmware = FIRMWARE_VERSION.to_owned();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xB0_07);
        let popularity = (0..bundle.planogram.len())
            .map(|_| rng.random_range(0.2..1.0))
            .collect();
        let capacity = bundle.planogram.iter().map(|s| s.capacity).collect();
        let next_customer = start + exp_ms(&mut rng, MAX_RATE * config.demand.max(1e-6));
        // The crew's first visit and the first heartbeat at once: it is being installed.
        let mut unit = Unit {
            location_type: location,
            popularity,
            capacity,
            next_customer,
            ..Unit::booted(machine, rng, start)
        };
        let mut tally = Tally::default();
        unit.carry_out(start, actions, &config, &mut tally);
        Ok(Controllers {
            now: start,
            units: vec![unit],
            wakes: BinaryHeap::from([std::cmp::Reverse((start, 0))]),
            fleet: None,
            config,
            tally,
            resent: 0,
        })
    }
}

impl<L: Log> Controllers<L>
where
    Machine<L>: PowerCut,
    L::Error: std::fmt::Debug,
{
    /// The fleet whose registry and credentials these machines have (none for a machine
    /// booted from its bundle).
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(self.now)
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Runs every machine up to `to` (simulated ms).
    pub fn advance(&mut self, to: Timestamp) -> Result<(), MachineError> {
        while let Some(&std::cmp::Reverse((at, i))) = self.wakes.peek() {
            if at > to.0 {
                break;
            }
            self.wakes.pop();
            let Some(unit) = self.units.get_mut(i) else {
                continue;
            };
            if let Some(fleet) = &self.fleet {
                unit.condition = fleet.condition(i, Timestamp(at));
            }
            let next = unit.wake(at, &self.config, &mut self.tally)?;
            self.wakes.push(std::cmp::Reverse((next.max(at + 1), i)));
        }
        self.now = self.now.max(to.0);
        Ok(())
    }

    /// What machines send now: for each one online with events waiting and nothing in flight
    /// (or in flight for longer than `resend` says, on the caller's clock `wall_ms`), its
    /// oldest events as one envelope, with the machine's index and the number of its last
    /// event (to acknowledge). `first_time` gets the events never given out before (what an
    /// oracle should count). With `flush` (the span is over), machines send what they hold
    /// without waiting for their next batch.
    pub fn ready(
        &mut self,
        wall_ms: u64,
        resend: Resend,
        flush: bool,
        mut first_time: impl FnMut(&vendflow_protocol::Event),
    ) -> Result<Vec<(usize, Envelope, u64)>, MachineError> {
        let mut out = Vec::new();
        let mut resent = 0;
        let now = std::time::Instant::now();
        for (i, unit) in self.units.iter_mut().enumerate() {
            if !unit.online {
                continue;
            }
            // Sent again: what was in flight waited out the timeout.
            let again = match unit.in_flight {
                Some((_, sent)) => {
                    let waited = wall_ms.saturating_sub(sent);
                    match resend {
                        Resend::After(ms) if waited < ms => continue,
                        Resend::After(_) => {}
                        Resend::Adaptive
                            if u128::from(waited) < unit.resend.timeout().as_millis() =>
                        {
                            continue;
                        }
                        Resend::Adaptive => unit.resend.expired(now),
                    }
                    true
                }
                None if !flush
                    && self.now.saturating_sub(unit.last_sent) < self.config.batch_ms =>
                {
                    continue;
                }
                None => {
                    unit.last_sent = self.now;
                    false
                }
            };
            let Some((envelope, last)) = unit.machine.envelope(ENVELOPE_EVENTS)? else {
                continue;
            };
            for e in &envelope.events {
                if e.seq.is_some_and(|s| s > unit.given_through) {
                    first_time(e);
                }
            }
            unit.given_through = unit.given_through.max(last);
            unit.in_flight = Some((last, wall_ms));
            resent += u64::from(again);
            out.push((i, envelope, last));
        }
        self.resent += resent;
        Ok(out)
    }

    /// Envelopes [`Controllers::ready`] gave out again because the one before had no
    /// acknowledgement within the resend timeout.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// An envelope of machine `i` was acknowledged `rtt` after it was sent: a sample for its
    /// resend timer ([`Resend::Adaptive`]).
    pub fn round_trip(&mut self, i: usize, rtt: std::time::Duration) {
        if let Some(unit) = self.units.get_mut(i) {
            unit.resend.sample(rtt);
        }
    }

    /// The platform has machine `i`'s events up to `seq`.
    pub fn acknowledged(&mut self, i: usize, seq: u64) -> Result<(), MachineError> {
        let Some(unit) = self.units.get_mut(i) else {
            return Ok(());
        };
        unit.machine.acknowledged(seq)?;
        if unit.in_flight.is_some_and(|(last, _)| last <= seq) {
            unit.in_flight = None;
        }
        if unit.sync_wanted && unit.online && unit.machine.pending() == 0 {
            unit.sync_wanted = false;
            let actions = unit.machine.handle(self.now, Input::Synced)?;
            unit.carry_out(self.now, actions, &self.config, &mut self.tally);
        }
        Ok(())
    }

    /// A command from the platform for the machine `id`, handled at the fleet's clock; false
    /// when no machine of the fleet has that id.
    pub fn command(
        &mut self,
        id: &MachineId,
        command_id: String,
        command: vendflow_controller::vend::Command,
    ) -> Result<bool, MachineError> {
        let Some(unit) = self.units.iter_mut().find(|u| &u.machine.id == id) else {
            return Ok(false);
        };
        let input = Input::Command {
            id: command_id,
            command,
        };
        let actions = unit.machine.handle(self.now, input)?;
        unit.carry_out(self.now, actions, &self.config, &mut self.tally);
        Ok(true)
    }

    /// The number of machine `i`'s newest event (0 if it has none, or no such machine).
    pub fn last_seq(&self, i: usize) -> u64 {
        self.units.get(i).map_or(0, |u| u.machine.last_seq())
    }

    /// Events every machine still holds for the platform.
    pub fn pending(&self) -> usize {
        self.units.iter().map(|u| u.machine.pending()).sum()
    }

    /// Machines offline now.
    pub fn offline(&self) -> usize {
        self.units.iter().filter(|u| !u.online).count()
    }

    /// The controllers, in fleet order (for tests and inspection).
    pub fn vends(&self) -> impl Iterator<Item = &Vend> {
        self.units.iter().map(|u| &u.machine.vend)
    }
}

impl<L: Log> Unit<L> {
    /// A machine booted at `start` with nothing due: everything it does is due at once, it is
    /// offline until its network says otherwise, and it has no planogram weights, outage or
    /// power cut of its own yet.
    fn booted(machine: Machine<L>, rng: ChaCha8Rng, start: Millis) -> Unit<L> {
        Unit {
            machine,
            rng,
            location_type: LocationType::Other,
            popularity: Vec::new(),
            capacity: Vec::new(),
            booted_at: start,
            next_customer: start,
            next_heartbeat: start,
            next_visit: start,
            due: VecDeque::new(),
            outage: None,
            power_cut: None,
            online: false,
            sync_wanted: false,
            in_flight: None,
            resend: crate::mqtt::ResendTimer::default(),
            given_through: 0,
            retried: false,
            restart: None,
            last_sent: Millis::MIN,
            condition: Condition::default(),
        }
    }
}

impl<L: Log> Unit<L>
where
    Machine<L>: PowerCut,
    L::Error: std::fmt::Debug,
{
    /// Everything due by `now`; returns when the machine next needs waking.
    fn wake(
        &mut self,
        now: Millis,
        config: &ControlledConfig,
        tally: &mut Tally,
    ) -> Result<Millis, MachineError> {
        // The power goes while the controller writes a heartbeat's record: none of it, a part
        // or all of it reaches storage. The controller boots again from what is there (a torn
        // record is cut off; what was neither synced nor written is lost).
        if self.power_cut.is_some_and(|t| t <= now) {
            self.power_cut = None;
            tally.power_cuts += 1;
            let written = self.rng.random_range(0..=TORN_WRITE_MAX);
            self.machine.power_fails_after(written);
            self.heartbeat(now)?;
            let (opened, actions) = self.machine.power_cut(now)?;
            if opened.torn_bytes > 0 {
                tally.torn_writes += 1;
            }
            self.booted_at = now;
            self.online = false;
            self.in_flight = None;
            // The cart's customer has gone; the network's answers for it will not come.
            self.due.clear();
            self.carry_out(now, actions, config, tally);
        }
        if self.restart.is_some_and(|t| t <= now) {
            self.restart = None;
            let actions = self.machine.restart(now)?;
            self.booted_at = now;
            self.online = false;
            self.in_flight = None;
            self.carry_out(now, actions, config, tally);
        }
        let should_be_online = !self
            .outage
            .is_some_and(|(from, to)| from <= now && now < to);
        if should_be_online != self.online {
            if !should_be_online {
                tally.outages += 1;
            }
            self.online = should_be_online;
            if !should_be_online {
                self.in_flight = None;
            }
            self.input(now, Input::Network(should_be_online), config, tally)?;
        }
        while let Some((at, _)) = self.due.front() {
            if *at > now {
                break;
            }
            let Some((_, input)) = self.due.pop_front() else {
                break;
            };
            self.input(now, input, config, tally)?;
        }
        if self.next_customer <= now {
            let rate = sales_rate(self.location_type, Timestamp(now)) / MAX_RATE;
            // The last customers come minutes before the end, so every cart is done by then.
            let open = now < config.end.0 - closing_ms(config.end.0 - config.start.0);
            if open && self.rng.random_bool(rate.clamp(0.0, 1.0)) {
                self.customer(now, tally);
            }
            self.next_customer += exp_ms(&mut self.rng, MAX_RATE * config.demand.max(1e-6));
        }
        if self.next_heartbeat <= now {
            self.heartbeat(now)?;
            tally.heartbeats += 1;
            self.next_heartbeat += config.heartbeat_ms.max(1);
        }
        if self.next_visit <= now {
            self.visit(now, config, tally)?;
            self.next_visit += MS_PER_DAY;
        }
        self.input(now, Input::Tick, config, tally)?;
        let mut next = self
            .next_customer
            .min(self.next_heartbeat)
            .min(self.next_visit);
        if let Some((at, _)) = self.due.front() {
            next = next.min(*at);
        }
        if let Some((from, to)) = self.outage {
            for t in [from, to] {
                if t > now {
                    next = next.min(t);
                }
            }
        }
        for t in self.power_cut.iter().chain(&self.restart) {
            next = next.min((*t).max(now + 1));
        }
        // A machine mid-cart or offline checks its timers every second.
        if !matches!(
            self.machine.vend.phase,
            vendflow_controller::vend::Phase::Idle
        ) || !self.online
        {
            next = next.min(now + 1_000);
        }
        Ok(next)
    }

    fn input(
        &mut self,
        now: Millis,
        input: Input,
        config: &ControlledConfig,
        tally: &mut Tally,
    ) -> Result<(), MachineError> {
        let actions = self.machine.handle(now, input)?;
        self.carry_out(now, actions, config, tally);
        Ok(())
    }

    fn later(&mut self, at: Millis, input: Input) {
        let i = self.due.partition_point(|(t, _)| *t <= at);
        self.due.insert(i, (at, input));
    }

    /// A customer walks up: one to three units of what the machine has, then pays.
    fn customer(&mut self, now: Millis, tally: &mut Tally) {
        if !matches!(
            self.machine.vend.phase,
            vendflow_controller::vend::Phase::Idle
        ) || !self.due.is_empty()
        {
            return;
        }
        tally.customers += 1;
        self.retried = false;
        let units = match self.rng.random_range(0..100) {
            0..80 => 1,
            80..95 => 2,
            _ => 3,
        };
        let mut at = now;
        let slots = &self.machine.vend.slots;
        let weights: Vec<f64> = slots
            .iter()
            .zip(&self.popularity)
            .map(|(s, p)| if s.stock > 0 && !s.jammed { *p } else { 0.0 })
            .collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            tally.turned_away += 1;
            return;
        }
        let mut picks = Vec::with_capacity(units);
        for _ in 0..units {
            let mut r = self.rng.random_range(0.0..total);
            let mut chosen = None;
            for (s, w) in slots.iter().zip(&weights) {
                if r < *w {
                    chosen = Some(s.code);
                    break;
                }
                r -= w;
            }
            if let Some(code) = chosen.or_else(|| slots.last().map(|s| s.code)) {
                picks.push(code);
            }
        }
        for code in picks {
            at += self.rng.random_range(1_000..4_000);
            self.later(at, Input::Select(code));
        }
        at += self.rng.random_range(1_000..3_000);
        self.later(at, Input::Checkout);
        let method = match self.rng.random_range(0..100) {
            0..55 => Method::Card,
            55..85 => Method::Contactless,
            _ => Method::Mobile,
        };
        at += self.rng.random_range(2_000..6_000);
        // A failing reader (the fleet's fault, `Fleet::condition`) fails to read now and then;
        // the customer presents again.
        if self
            .rng
            .random_bool(self.condition.card_failure.clamp(0.0, 1.0))
        {
            tally.read_failures += 1;
            self.later(at, Input::ReadFailed);
            at += 3_000;
        }
        self.later(at, Input::Present(method));
    }

    fn heartbeat(&mut self, now: Millis) -> Result<(), MachineError> {
        let open = !self.online && self.rng.random_bool(0.001);
        // A failing compressor or a wearing motor shows in the readings as the fleet's event
        // simulator shows it (the same onsets and ramps: `Fleet::condition`).
        let temperature = self.rng.random_range(30..45) * 100 + self.condition.temperature;
        let motor = self.rng.random_range(40..90) * 10 + self.condition.motor;
        let heartbeat = Heartbeat {
            temperature: Some(Milli(temperature - temperature % 100)),
            door_status: Some(if open {
                DoorStatus::Open
            } else {
                DoorStatus::Closed
            }),
            payment_module_status: Some(
                match (self.online, self.condition.card_failing) {
                    (false, _) => "offline",
                    (true, true) => "degraded",
                    (true, false) => "ok",
                }
                .into(),
            ),
            network_signal: Some(Milli(-1000 * self.rng.random_range(55..80))),
            motor_current: Some(Milli(motor - motor % 10)),
            controller: Some(Box::new(ControllerStatus {
                firmware_version: Some(Text::from(self.machine.vend.firmware.as_str())),
                uptime_secs: Some(u64::try_from((now - self.booted_at) / 1000).unwrap_or(0)),
            })),
        };
        self.machine.heartbeat(now, heartbeat)?;
        Ok(())
    }

    /// The crew's daily visit: slots under a third full (or jammed) are filled.
    fn visit(
        &mut self,
        now: Millis,
        config: &ControlledConfig,
        tally: &mut Tally,
    ) -> Result<(), MachineError> {
        if self.condition.skipped_by_crew
            || !matches!(
                self.machine.vend.phase,
                vendflow_controller::vend::Phase::Idle
            )
        {
            return Ok(());
        }
        let fills: Vec<(u32, u32)> = self
            .machine
            .vend
            .slots
            .iter()
            .zip(&self.capacity)
            .filter(|(s, cap)| s.jammed || s.stock * 3 < **cap)
            .map(|(s, cap)| (s.code, cap.saturating_sub(s.stock)))
            .filter(|(_, q)| *q > 0)
            .collect();
        for (slot, quantity) in fills {
            self.input(now, Input::Restock { slot, quantity }, config, tally)?;
        }
        Ok(())
    }

    /// What the controller asked for: the simulated payment network, sensor and customer
    /// answer it later.
    fn carry_out(
        &mut self,
        now: Millis,
        actions: Vec<Action>,
        config: &ControlledConfig,
        tally: &mut Tally,
    ) {
        for action in actions {
            match action {
                Action::Authorise { txn, .. } => {
                    let approved = !self.rng.random_bool(config.decline.clamp(0.0, 1.0));
                    let after = self.rng.random_range(800..3_000);
                    self.later(now + after, Input::Authorised { txn, approved });
                }
                Action::Vend { .. } => {
                    let jam = config.jam + self.condition.jam.unwrap_or(0.0);
                    let dropped = !self.rng.random_bool(jam.clamp(0.0, 1.0));
                    if !dropped {
                        tally.jams += 1;
                    }
                    let after = self.rng.random_range(800..2_000);
                    self.later(now + after, Input::Dropped(dropped));
                }
                Action::Show(Message::Declined) => {
                    tally.declined += 1;
                    if self.retried {
                        self.later(now + 2_000, Input::Cancel);
                    } else {
                        self.retried = true;
                        self.later(now + 4_000, Input::Present(Method::Card));
                    }
                }
                Action::Show(
                    Message::OverFloorLimit | Message::OfflineLimitReached | Message::TimedOut,
                ) => {
                    tally.turned_away += 1;
                    self.later(now + 2_000, Input::Cancel);
                }
                Action::Show(_) => {}
                Action::Receipt { .. } => tally.receipts += 1,
                Action::Record(Record::Sale {
                    amount,
                    quantity,
                    offline,
                    ..
                }) => {
                    tally.units_sold += u64::from(quantity);
                    tally.sold_cents += amount;
                    if offline {
                        tally.offline_sales += 1;
                    }
                }
                Action::Record(Record::Refund { amount, .. }) => {
                    tally.refunds += 1;
                    tally.refunded_cents += amount;
                }
                Action::Record(Record::Restock { .. }) => tally.restocks += 1,
                Action::Record(_) => {}
                Action::Sync => self.sync_wanted = true,
                Action::Restart | Action::Install { .. } => {
                    self.restart = Some(now + 5_000);
                }
                Action::Charge { amount, .. } => tally.charged_cents += amount,
                Action::Void { amount, .. } => tally.voided_cents += amount,
                Action::Fetch { id, url } => {
                    // The simulated update server: the image at a URL is the URL's own bytes.
                    let sha256 = Some(simulated_image_sha256(&url));
                    self.later(now + 10_000, Input::Fetched { id, sha256 });
                }
                Action::Answer { .. } => {}
            }
        }
        if self.online && self.sync_wanted && self.machine.pending() == 0 {
            self.sync_wanted = false;
            self.later(now, Input::Synced);
        }
    }
}

/// The SHA-256 of the firmware image the simulated update server holds at `url`: the URL's
/// own bytes (so a test can say which hash is right: `printf %s URL | sha256sum`).
pub fn simulated_image_sha256(url: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(url.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use anyhow::Context;
    use vendflow_protocol::{Envelope, EventKind};

    use super::*;

    /// 2025-11-24 16:00 UTC.
    const T0: i64 = 1_764_000_000_000;

    /// What a platform that loses some acknowledgements (the machine sends again) receives.
    #[derive(Default)]
    struct Platform {
        seqs: BTreeMap<usize, BTreeSet<u64>>,
        /// Sale lines by (machine, transaction, slot): amount; a line received twice must be
        /// the same line.
        sales: BTreeMap<(usize, String, u32), i64>,
        refunds: BTreeMap<(usize, String, Option<u32>, String), i64>,
        firmware: BTreeSet<String>,
        deliveries: u64,
    }

    /// A machine booted from its bundle keeps its outbox in the file: it is stocked at once,
    /// sells, and a new process on the same file resumes with the same stock, the same events
    /// waiting and the numbering continued; a power cut reads the file back the same way.
    #[test]
    fn a_machine_from_its_bundle_resumes_from_its_outbox_file() -> anyhow::Result<()> {
        use vendflow_protocol::provision::{BUNDLE_VERSION, Bundle, BundleSlot};
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("outbox.log");
        let bundle = Bundle {
            version: BUNDLE_VERSION,
            machine_id: "mach_00042".into(),
            secret: "s".repeat(43),
            mqtt: "127.0.0.1:1883".into(),
            http: None,
            planogram: (1..=4)
                .map(|n| BundleSlot {
                    slot_number: n,
                    product_id: format!("p{n}"),
                    price_cents: 150 + i64::from(n),
                    capacity: 10,
                })
                .collect(),
        };
        let config = |from: i64| {
            let mut c = ControlledConfig::new(1, 3, Timestamp(from), Timestamp(i64::MAX / 4));
            c.outages = 0.0;
            c.power_cuts = 0.0;
            c.demand = 4.0;
            c
        };
        let mut first = Controllers::provisioned(&bundle, &path, LocationType::Office, config(T0))?;
        first.advance(Timestamp(T0 + 10 * MS_PER_HOUR))?;
        let stock = |c: &Controllers<FileLog>| -> Vec<u32> {
            c.vends()
                .flat_map(|v| v.slots.iter().map(|s| s.stock))
                .collect()
        };
        let (made, waiting, left) = (first.last_seq(0), first.pending(), stock(&first));
        assert!(
            first.tally.units_sold > 0 && first.tally.restocks > 0,
            "{:?}",
            first.tally
        );
        assert!(
            made > 0 && waiting as u64 == made,
            "nothing was acknowledged"
        );
        drop(first);
        let later = T0 + 11 * MS_PER_HOUR;
        let mut again =
            Controllers::provisioned(&bundle, &path, LocationType::Office, config(later))?;
        assert_eq!(stock(&again), left, "the stock as the log holds it");
        assert!(again.last_seq(0) >= made && again.pending() >= waiting);
        assert!(!again.units[0].machine.vend.firmware.is_empty());
        again.advance(Timestamp(later + 3 * MS_PER_HOUR))?;
        let before_cut = again.last_seq(0);
        assert!(before_cut > made, "numbering continues");
        let (opened, _) = again.units[0].machine.power_cut(later + 3 * MS_PER_HOUR)?;
        assert!(opened.state.is_some());
        assert!(
            again.last_seq(0) >= before_cut,
            "synced events survive the cut"
        );
        Ok(())
    }

    fn run(machines: usize, hours: i64, lose: f64) -> anyhow::Result<(Controllers, Platform)> {
        let end = Timestamp(T0 + hours * MS_PER_HOUR);
        let mut config = ControlledConfig::new(machines, 5, Timestamp(T0), end);
        config.outages = 0.3;
        config.power_cuts = 0.2;
        config.jam = 0.05;
        config.first_number = 1_000;
        // Batches of up to an hour: what is kept at the end is flushed.
        config.batch_ms = 1_800_000;
        let mut fleet = Controllers::new(config)?;
        let mut platform = Platform::default();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let first = drive(&mut fleet, end.0, |i, envelope| {
            for e in &envelope.events {
                if let Some(seq) = e.seq {
                    platform.seqs.entry(i).or_default().insert(seq);
                }
                match &e.kind {
                    EventKind::Sale(s) => {
                        let key = (i, s.transaction_id.to_string(), s.slot_number);
                        let before = platform.sales.insert(key, s.amount.0);
                        assert!(before.is_none_or(|a| a == s.amount.0));
                    }
                    EventKind::Refund(r) => {
                        let key = (
                            i,
                            r.transaction_id.to_string(),
                            r.slot_number,
                            r.reason.to_string(),
                        );
                        platform.refunds.insert(key, r.amount.0);
                    }
                    EventKind::Heartbeat(h) => {
                        if let Some(v) = h
                            .controller
                            .as_ref()
                            .and_then(|c| c.firmware_version.clone())
                        {
                            platform.firmware.insert(v.to_string());
                        }
                    }
                    _ => {}
                }
            }
            platform.deliveries += 1;
            // The acknowledgement is lost now and then: the machine sends it all again.
            !rng.random_bool(lose)
        })?;
        assert!(first > 0);
        Ok((fleet, platform))
    }

    /// Runs `fleet` to `end` a simulated minute (a wall-clock second) per round, until every
    /// outbox is empty at the end: each envelope goes to `receive` (the machine's index), which
    /// says whether its acknowledgement reaches the machine. Returns the events given out for
    /// the first time.
    fn drive(
        fleet: &mut Controllers,
        end: Millis,
        mut receive: impl FnMut(usize, &Envelope) -> bool,
    ) -> anyhow::Result<u64> {
        let mut wall = 0u64;
        let mut first = 0u64;
        let mut t = T0;
        loop {
            t = (t + 60_000).min(end);
            fleet.advance(Timestamp(t))?;
            wall += 1_000;
            for (i, envelope, last) in
                fleet.ready(wall, Resend::After(5_000), t == end, |_| first += 1)?
            {
                if receive(i, &envelope) {
                    fleet.acknowledged(i, last)?;
                }
            }
            if t == end && fleet.pending() == 0 {
                return Ok(first);
            }
            anyhow::ensure!(wall < 10_000_000, "the outboxes never emptied");
        }
    }

    /// Without outages or power cuts, every acknowledgement lost is one envelope sent again
    /// (the same events, once the resend timeout has passed), and none is sent again when
    /// none is lost.
    #[test]
    fn each_lost_acknowledgement_is_one_envelope_sent_again() -> anyhow::Result<()> {
        for lose in [0.0, 0.2] {
            let end = Timestamp(T0 + 6 * MS_PER_HOUR);
            let mut config = ControlledConfig::new(20, 5, Timestamp(T0), end);
            config.outages = 0.0;
            config.power_cuts = 0.0;
            let mut fleet = Controllers::new(config)?;
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let mut lost = 0u64;
            let first = drive(&mut fleet, end.0, |_, _| {
                let kept = !rng.random_bool(lose);
                lost += u64::from(!kept);
                kept
            })?;
            assert!(first > 0);
            assert_eq!(fleet.resent(), lost, "lose {lose}");
            assert_eq!(lost > 0, lose > 0.0, "lose {lose}");
        }
        Ok(())
    }

    /// With [`Resend::Adaptive`] each machine waits by its own round trips: one whose receipts
    /// take 20 s is not sent again at 10 s because another's take 1 s, and one whose envelope
    /// goes unanswered waits twice as long before the next copy.
    #[test]
    fn each_machine_waits_by_its_own_round_trips() -> anyhow::Result<()> {
        use std::time::Duration;
        let end = Timestamp(T0 + 6 * MS_PER_HOUR);
        let mut config = ControlledConfig::new(2, 5, Timestamp(T0), end);
        config.outages = 0.0;
        config.power_cuts = 0.0;
        let mut fleet = Controllers::new(config)?;
        fleet.advance(Timestamp(T0 + MS_PER_HOUR))?;
        for _ in 0..8 {
            fleet.round_trip(0, Duration::from_secs(1));
            fleet.round_trip(1, Duration::from_secs(20));
        }
        let mut sent_at = |wall: u64| -> anyhow::Result<Vec<usize>> {
            Ok(fleet
                .ready(wall, Resend::Adaptive, true, |_| {})?
                .into_iter()
                .map(|(i, _, _)| i)
                .collect())
        };
        assert_eq!(sent_at(0)?, [0, 1], "both have events waiting");
        // Machine 0 waits its floor of 5 s; machine 1 about 25 s (20 s and four variations).
        assert_eq!(sent_at(10_000)?, [0]);
        // Machine 0's copy went unanswered: its timer doubled to 10 s.
        assert_eq!(sent_at(16_000)?, Vec::<usize>::new());
        assert_eq!(sent_at(30_000)?, [0, 1]);
        assert_eq!(fleet.resent(), 3);
        Ok(())
    }

    /// Controllers with outages of up to a day, power cuts and lost acknowledgements: every
    /// sale and refund reaches the platform once (by its identity), event numbers have no
    /// gap, and the money adds up: what was charged is what was sold plus what was refunded
    /// (less the late approvals given back).
    #[test]
    fn every_sale_and_refund_reaches_the_platform_and_the_numbers_have_no_gap() -> anyhow::Result<()>
    {
        let (fleet, platform) = run(60, 30, 0.1)?;
        let t = &fleet.tally;
        assert!(t.outages > 5 && t.power_cuts > 3, "{t:?}");
        // Some cuts came in the middle of a record, which the boot after them cut off.
        assert!(t.torn_writes > 0 && t.torn_writes < t.power_cuts, "{t:?}");
        assert!(
            t.receipts > 500 && t.offline_sales > 10 && t.jams > 10,
            "{t:?}"
        );
        assert!(t.refunds > 5 && t.declined > 10, "{t:?}");
        let sold: i64 = platform.sales.values().sum();
        let refunded: i64 = platform.refunds.values().sum();
        assert_eq!(u64::try_from(sold)?, t.sold_cents, "{t:?}");
        assert_eq!(u64::try_from(refunded)?, t.refunded_cents, "{t:?}");
        assert_eq!(
            t.charged_cents,
            t.sold_cents + t.refunded_cents - t.voided_cents,
            "{t:?}"
        );
        for (machine, seqs) in &platform.seqs {
            let (first, last) = (seqs.first().copied(), seqs.last().copied());
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            assert_eq!(
                first, 1_001,
                "machine {machine} numbers from its first number"
            );
            assert_eq!(
                seqs.len() as u64,
                last - first + 1,
                "machine {machine}: a gap in {first}..={last}"
            );
        }
        assert!(platform.deliveries > 0);
        assert_eq!(
            platform.firmware,
            BTreeSet::from([FIRMWARE_VERSION.to_owned()])
        );
        for vend in fleet.vends() {
            assert_eq!(vend.phase, vendflow_controller::vend::Phase::Idle);
            assert!(vend.offline_sales <= vendflow_controller::vend::MAX_OFFLINE_SALES);
        }
        Ok(())
    }

    /// A span of a few minutes (a bench's live run) still has customers, and every cart they
    /// began is done by its end.
    #[test]
    fn a_short_span_sells_and_ends_with_every_cart_done() -> anyhow::Result<()> {
        let end = T0 + 3 * 60_000;
        let mut config = ControlledConfig::new(2_000, 5, Timestamp(T0), Timestamp(end));
        config.outages = 0.0;
        config.power_cuts = 0.0;
        let mut fleet = Controllers::new(config)?;
        drive(&mut fleet, end, |_, _| true)?;
        anyhow::ensure!(
            fleet.tally.receipts > 0,
            "no sale in 3 minutes of 2,000 machines: {:?}",
            fleet.tally
        );
        let busy = fleet
            .vends()
            .filter(|v| !matches!(v.phase, vendflow_controller::vend::Phase::Idle))
            .count();
        anyhow::ensure!(busy == 0, "{busy} machines are mid-cart at the end");
        Ok(())
    }

    /// The same seed gives the same fleet, however time is sliced.
    #[test]
    fn a_run_is_the_same_for_the_same_seed() -> anyhow::Result<()> {
        let (a, _) = run(10, 6, 0.0)?;
        let (b, _) = run(10, 6, 0.0)?;
        assert_eq!(a.tally, b.tally);
        Ok(())
    }

    /// The fleet's faults reach the controllers' hardware: a machine whose compressor fails
    /// reports the temperature climbing from the fault's onset, one whose motor wears draws
    /// more current and jams (dispense failures), as the event simulator's machine of the same
    /// seed does; machines without a fault stay in their normal range.
    #[test]
    fn the_fleets_faults_show_in_the_controllers_readings() -> anyhow::Result<()> {
        let machines = 150;
        let hours = 26;
        let end = T0 + hours * MS_PER_HOUR;
        let mut config = ControlledConfig::new(machines, 11, Timestamp(T0), Timestamp(end));
        config.outages = 0.0;
        config.power_cuts = 0.0;
        config.jam = 0.0;
        config.demand = 3.0;
        config.batch_ms = 600_000;
        let mut fleet = Controllers::new(config)?;
        let world = fleet.fleet().context("no fleet")?;
        let at_end: Vec<Condition> = (0..machines)
            .map(|i| world.condition(i, Timestamp(end)))
            .collect();
        let hot: Vec<usize> = (0..machines)
            .filter(|i| at_end[*i].temperature >= 5_000)
            .collect();
        let worn: Vec<usize> = (0..machines)
            .filter(|i| at_end[*i].jam.is_some_and(|j| j >= 0.2))
            .collect();
        anyhow::ensure!(
            !hot.is_empty() && !worn.is_empty(),
            "the seed gives no faults"
        );
        // Per machine: the hottest reading, the highest motor current, dispense failures.
        let mut hottest = vec![i64::MIN; machines];
        let mut motor = vec![i64::MIN; machines];
        let mut failures = vec![0u32; machines];
        let mut unread = vec![0u32; machines];
        drive(&mut fleet, end, |i, envelope| {
            for e in &envelope.events {
                match &e.kind {
                    EventKind::Heartbeat(h) => {
                        if let Some(v) = h.temperature {
                            hottest[i] = hottest[i].max(v.0);
                        }
                        if let Some(v) = h.motor_current {
                            motor[i] = motor[i].max(v.0);
                        }
                    }
                    EventKind::Error(x)
                        if x.code == vendflow_protocol::ErrorCode::DispenseFailure =>
                    {
                        failures[i] += 1;
                    }
                    EventKind::Error(x)
                        if x.code == vendflow_protocol::ErrorCode::CardReadFailure =>
                    {
                        unread[i] += 1;
                    }
                    _ => {}
                }
            }
            true
        })?;
        for i in &hot {
            assert!(hottest[*i] >= 8_000, "machine {i}: hottest {}", hottest[*i]);
        }
        for i in &worn {
            assert!(motor[*i] >= 1_500, "machine {i}: motor {}", motor[*i]);
        }
        let healthy: Vec<usize> = (0..machines)
            .filter(|i| {
                at_end[*i]
                    == Condition {
                        card_failure: at_end[*i].card_failure,
                        ..Condition::default()
                    }
            })
            .collect();
        assert!(healthy.len() > machines / 2);
        for i in &healthy {
            assert!(hottest[*i] < 4_500 && motor[*i] < 900, "machine {i}");
            assert_eq!(failures[*i], 0, "machine {i} jammed without a worn motor");
        }
        let worn_failures: u32 = worn.iter().map(|i| failures[*i]).sum();
        assert!(worn_failures > 0, "worn motors never jammed");
        // A failing card reader: many more unread cards than the healthy readers' 0.2 %.
        let failing: Vec<usize> = (0..machines).filter(|i| at_end[*i].card_failing).collect();
        anyhow::ensure!(!failing.is_empty(), "the seed gives no failing reader");
        let per_machine = |set: &[usize]| {
            set.iter().map(|i| f64::from(unread[*i])).sum::<f64>() / set.len().max(1) as f64
        };
        assert!(
            per_machine(&failing) > 5.0 * per_machine(&healthy).max(0.2),
            "failing readers {} a machine, healthy {}",
            per_machine(&failing),
            per_machine(&healthy)
        );
        Ok(())
    }
}

//! A simulated fleet: registry plus machines that sell, heat up, jam and lose their network.
//!
//! Determinism: every machine draws from its own RNG (seeded from the fleet seed and its index)
//! and lives on its own schedule of next heartbeat / next sale / next hourly check, so the events
//! are the same however the caller slices time into [`Fleet::advance`] calls.
//!
//! Behaviour, per machine:
//! - a heartbeat every 30 s (temperature, door, payment module, network signal, motor current);
//! - sales as a Poisson process shaped by location type, hour of day and day of week; 10 % of
//!   transactions are two-line carts; a sold-out slot does not sell;
//! - hourly, during the day, a restock visit when slots run low: door open, restock lines, door
//!   closed;
//! - faults with an onset: a cooling failure ramps the temperature up ~2.5 °C an hour, a failing
//!   card reader refuses more and more cards, a wearing motor draws more current and jams, and a
//!   network outage silences heartbeats while sales are buffered (at most 50, as the firmware
//!   does) and delivered hours late when the network returns — sometimes twice.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{
    Cents, DoorStatus, Envelope, ErrorCode, ErrorEvent, Event, EventKind, Heartbeat, Lease,
    LeaseStatus, Location, LocationType, Machine, MachineId, MachineStatus, Micro, Milli,
    RegistryRecord, Restock, Sale, Slot, Timestamp,
};

const HEARTBEAT_MS: i64 = 30_000;
/// Sales a machine buffers while offline before it stops selling (terminal floor limit policy).
const OFFLINE_SALES: usize = 50;
const PRODUCTS: &[(&str, i64)] = &[
    ("cola", 250),
    ("diet_cola", 250),
    ("water", 150),
    ("sparkling_water", 175),
    ("iced_tea", 225),
    ("energy_drink", 325),
    ("orange_juice", 275),
    ("coffee", 300),
    ("chips", 175),
    ("pretzels", 150),
    ("candy_bar", 125),
    ("granola_bar", 200),
    ("trail_mix", 225),
    ("cookies", 175),
    ("gum", 100),
    ("protein_bar", 300),
    ("crackers", 150),
    ("popcorn", 175),
    ("chocolate", 200),
    ("mints", 100),
];

/// How a machine's faults and wear move its hardware at one moment ([`Fleet::condition`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Condition {
    /// Added to the cabinet's temperature, milli-degrees Celsius.
    pub temperature: i64,
    /// Added to the vend motor's current, milliamperes.
    pub motor: i64,
    /// Chance that reading a card fails.
    pub card_failure: f64,
    /// The card reader is failing (the payment module reports it degraded).
    pub card_failing: bool,
    /// Chance that a vend jams, once the motor is wearing out (None before).
    pub jam: Option<f64>,
    /// The restock crew skips the machine ([`Fault::SkippedByCrew`]).
    pub skipped_by_crew: bool,
}

/// A fault a machine can develop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Temperature climbs from the onset.
    CoolingFailure,
    /// Card reads fail more and more often.
    CardReaderDegradation,
    /// Motor current rises and vends jam.
    MotorWear,
    /// No network for this many hours; sales are buffered and delivered late.
    NetworkOutage { hours: u32 },
    /// The restock crew skips this machine, so its slots sell out.
    SkippedByCrew,
}

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub machines: usize,
    pub seed: u64,
    /// Simulated start time.
    pub start: Timestamp,
    /// Slots per machine (numbered from 1).
    pub slots: u32,
    /// Scale for the random fault rates (0 = no random faults).
    pub fault_rate: f64,
    /// Faults placed on purpose: (machine index, fault, onset after start in ms).
    pub scripted: Vec<(usize, Fault, i64)>,
    /// Where each machine's event `seq` and transaction numbers start (the first is this + 1).
    /// Real firmware keeps its counters across restarts, so a fleet simulated again later must
    /// not reuse them: a reused transaction id with other contents is a conflicting re-delivery,
    /// and which copy counts then depends on the order it is read in. `publish` starts from its
    /// wall clock; files and scenarios start from 0, so they stay the same for the same seed.
    pub first_number: u64,
    /// Time between a machine's heartbeats (30 s; a long history for the maintenance model is
    /// simulated with fewer).
    pub heartbeat_ms: i64,
    /// Wear-out failures with days of warning, and drifts that come to nothing (off by default).
    pub wear: Option<Wear>,
}

/// Wear-out failures over a long history: what the maintenance model learns from.
///
/// A failure (a cooling failure, a worn motor or a failing card reader, one in three each) is
/// preceded by 3–10 days of slow degradation: the temperature creeps up to 3 °C, the motor
/// current up to 0.3 A, card reads fail up to 15 % more often. At the failure the fault itself
/// begins (as a [`Fault`] does), and a day later the machine is repaired. A drift is the same
/// creep over 1–4 days, 30–80 % as far, held for up to a week and then gone, with no failure:
/// what makes a warning uncertain.
#[derive(Clone, Debug, PartialEq)]
pub struct Wear {
    /// Failures per machine per year.
    pub failures_per_year: f64,
    /// Drifts per machine per year.
    pub drifts_per_year: f64,
    /// Failures and drifts are drawn over this many days from the start.
    pub days: u32,
}

/// A failure the simulator caused (the labels of the maintenance model).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub machine_id: MachineId,
    pub fault: Fault,
    /// When the degradation began (its first sign).
    pub warning_from: Timestamp,
    /// When the machine failed.
    pub at: Timestamp,
    /// When it was repaired.
    pub repaired: Timestamp,
}

/// Degradation of one machine: a failure's warning, the failure and its repair; or a drift.
#[derive(Clone, Debug)]
struct Episode {
    fault: Fault,
    from: i64,
    /// Full effect from here: the failure, or the drift's plateau.
    peak: i64,
    until: i64,
    /// How far the drift goes (1 for a failure's warning).
    scale: f64,
    fails: bool,
}

/// The largest warning per kind: temperature in milli-°C, motor current in mA, card failures.
const WARN_TEMPERATURE: f64 = 3_000.0;
const WARN_MOTOR: f64 = 300.0;
const WARN_CARD: f64 = 0.15;

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            machines: 1000,
            seed: 7,
            start: Timestamp(1_705_305_600_000), // Monday 2024-01-15 08:00 UTC
            slots: 30,
            fault_rate: 1.0,
            scripted: Vec::new(),
            first_number: 0,
            heartbeat_ms: HEARTBEAT_MS,
            wear: None,
        }
    }
}

impl FleetConfig {
    /// The named scenarios (`vendflow simulate --scenario NAME`, the golden fixtures).
    pub const SCENARIOS: &[&str] = &["golden"];

    /// A named scenario with `seed`, or None for an unknown name. `golden`: 5 machines of 12
    /// slots, no random faults; machine 0 overheats 6 h in, machine 1 is offline for 5 hours
    /// from 8 h in, and the restock crew skips machine 2.
    pub fn scenario(name: &str, seed: u64) -> Option<FleetConfig> {
        match name {
            "golden" => Some(FleetConfig {
                machines: 5,
                seed,
                slots: 12,
                fault_rate: 0.0,
                scripted: vec![
                    (0, Fault::CoolingFailure, 6 * MS_PER_HOUR),
                    (1, Fault::NetworkOutage { hours: 5 }, 8 * MS_PER_HOUR),
                    (2, Fault::SkippedByCrew, 0),
                ],
                ..FleetConfig::default()
            }),
            _ => None,
        }
    }
}

pub(crate) struct SimSlot {
    pub(crate) number: u32,
    pub(crate) product: &'static str,
    pub(crate) price: Cents,
    pub(crate) capacity: u32,
    pub(crate) stock: u32,
    /// How often customers choose it, relative to the machine's other slots.
    pub(crate) popularity: f64,
}

/// A machine of the fleet as a controller is set up from it.
pub(crate) struct Planogram<'a> {
    pub(crate) id: &'a MachineId,
    pub(crate) location_type: LocationType,
    pub(crate) slots: &'a [SimSlot],
}

struct SimMachine {
    id: MachineId,
    location_type: LocationType,
    rng: ChaCha8Rng,
    slots: Vec<SimSlot>,
    seq: u64,
    txn: u64,
    next_heartbeat: i64,
    next_sale: i64,
    next_hourly: i64,
    faults: Vec<(Fault, i64)>,
    wear: Vec<Episode>,
    heartbeat_ms: i64,
    temperature: i64,
    /// Events produced while the network is down, delivered when it returns.
    buffer: Vec<Event>,
    buffered_sales: usize,
    /// Events ready to go out on the next delivery.
    outbox: Vec<Event>,
    /// A copy of a flushed buffer to deliver again, and when (re-delivery after reconnect).
    redelivery: Option<(i64, Vec<Event>)>,
}

/// Peak transactions per hour of any location type (for thinning the Poisson process).
pub(crate) const MAX_RATE: f64 = 6.0;

pub(crate) fn sales_rate(kind: LocationType, t: Timestamp) -> f64 {
    let hour = t.hour();
    let weekend = t.weekday() >= 5;
    match kind {
        LocationType::Office if weekend => 0.2,
        LocationType::Office if (7..19).contains(&hour) => 4.0,
        LocationType::Office => 0.3,
        LocationType::Hospital if (6..22).contains(&hour) => 3.0,
        LocationType::Hospital => 1.0,
        LocationType::Airport if (5..23).contains(&hour) => 6.0,
        LocationType::Airport => 1.0,
        LocationType::Gym => {
            let busy = (6..10).contains(&hour) || (16..21).contains(&hour);
            let base = if busy { 5.0 } else { 1.0 };
            if weekend { base * 0.7 } else { base }
        }
        LocationType::Other => 2.0,
        // No machine sells at a depot.
        LocationType::Warehouse => 0.0,
    }
}

/// Why a simulated machine rejects a command (the reason its acknowledgement carries).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("machine {0} is not in this fleet")]
    UnknownMachine(String),
    #[error("no slot {0} on this machine")]
    UnknownSlot(u32),
    #[error(
        "{0} is not carried out by the event simulator (the controllers carry it out: `publish` without `--event-simulator`)"
    )]
    Unsupported(&'static str),
}

/// A simulated fleet and its clock.
pub struct Fleet {
    now: Timestamp,
    machines: Vec<SimMachine>,
    registry: Vec<RegistryRecord>,
}

/// The operations regions the simulated locations are spread over.
pub const REGIONS: [&str; 4] = ["north", "south", "east", "west"];

impl Fleet {
    pub fn new(config: &FleetConfig) -> Fleet {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let start = config.start.0;
        let mut registry = Vec::new();
        let locations = config.machines.div_ceil(3).max(1);
        let mut location_types = Vec::with_capacity(locations);
        for l in 0..locations {
            let kind = match rng.random_range(0..100) {
                0..40 => LocationType::Office,
                40..60 => LocationType::Hospital,
                60..75 => LocationType::Airport,
                _ => LocationType::Gym,
            };
            location_types.push(kind);
            registry.push(RegistryRecord::Location(Location {
                location_id: format!("loc_{l:04}"),
                client_id: format!("client_{:02}", l % 20),
                address: format!("{} Market St, Springfield", 100 + l),
                lat: Micro(40_700_000 + rng.random_range(-200_000..200_000)),
                lng: Micro(-74_000_000 + rng.random_range(-200_000..200_000)),
                location_type: kind,
                region: Some(REGIONS[l % REGIONS.len()].to_owned()),
                time_zone: None,
            }));
        }
        let mut machines = Vec::with_capacity(config.machines);
        for i in 0..config.machines {
            let id =
                MachineId::parse(&format!("mach_{i:05}")).unwrap_or_else(|e| unreachable!("{e}"));
            let mut mrng = ChaCha8Rng::seed_from_u64(
                config.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let location = i / 3;
            let slots: Vec<SimSlot> = (1..=config.slots)
                .map(|n| {
                    let (product, price) = PRODUCTS[mrng.random_range(0..PRODUCTS.len())];
                    let capacity = mrng.random_range(8..=15);
                    SimSlot {
                        number: n,
                        product,
                        price: Cents(price),
                        capacity,
                        stock: capacity,
                        popularity: mrng.random_range(0.2..1.0),
                    }
                })
                .collect();
            registry.push(RegistryRecord::Machine(Machine {
                machine_id: id.clone(),
                serial_number: format!("VX{:08}", 10_000_000 + i),
                model: "VX-30".into(),
                location_id: Some(format!("loc_{location:04}")),
                status: MachineStatus::Active,
                firmware_version: Some("2.4.1".into()),
                slots: slots
                    .iter()
                    .map(|s| Slot {
                        slot_number: s.number,
                        product_id: s.product.into(),
                        max_capacity: s.capacity,
                        price: s.price,
                        low_stock_threshold: None,
                    })
                    .collect(),
                registered_at: Some(Timestamp(start - 61 * MS_PER_DAY)),
            }));
            registry.push(RegistryRecord::Lease(Lease {
                lease_id: format!("lease_{i:05}"),
                client_id: format!("client_{:02}", location % 20),
                machine_id: id.clone(),
                start: Timestamp(start - 60 * MS_PER_DAY),
                end: Timestamp(start + 305 * MS_PER_DAY),
                monthly_rate: Cents(mrng.random_range(250..=400) * 100),
                revenue_share_basis_points: mrng.random_range(5..=15) * 100,
                status: LeaseStatus::Active,
                auto_renew: i % 2 == 0,
            }));
            let mut faults = Vec::new();
            let onset = |r: &mut ChaCha8Rng| r.random_range(0..MS_PER_DAY);
            let rate = config.fault_rate;
            if mrng.random_bool((0.03 * rate).clamp(0.0, 1.0)) {
                faults.push((Fault::CoolingFailure, start + onset(&mut mrng)));
            }
            if mrng.random_bool((0.04 * rate).clamp(0.0, 1.0)) {
                faults.push((Fault::CardReaderDegradation, start + onset(&mut mrng)));
            }
            if mrng.random_bool((0.03 * rate).clamp(0.0, 1.0)) {
                faults.push((Fault::MotorWear, start + onset(&mut mrng)));
            }
            if mrng.random_bool((0.06 * rate).clamp(0.0, 1.0)) {
                let hours = mrng.random_range(1..=8);
                faults.push((Fault::NetworkOutage { hours }, start + onset(&mut mrng)));
            }
            for (m, fault, after) in &config.scripted {
                if *m == i {
                    faults.push((*fault, start + after));
                }
            }
            let wear = config
                .wear
                .as_ref()
                .map(|w| episodes(w, config.seed, i, start))
                .unwrap_or_default();
            let first_sale = start + exp_ms(&mut mrng, MAX_RATE);
            let heartbeat_ms = config.heartbeat_ms.max(1_000);
            machines.push(SimMachine {
                id,
                location_type: location_types[location.min(locations - 1)],
                temperature: mrng.random_range(3_000..4_500),
                next_heartbeat: start + mrng.random_range(0..heartbeat_ms),
                next_sale: first_sale,
                next_hourly: start + mrng.random_range(0..MS_PER_HOUR),
                rng: mrng,
                slots,
                seq: config.first_number,
                txn: config.first_number,
                faults,
                wear,
                heartbeat_ms,
                buffer: Vec::new(),
                buffered_sales: 0,
                outbox: Vec::new(),
                redelivery: None,
            });
        }
        Fleet {
            now: config.start,
            machines,
            registry,
        }
    }

    /// The fleet's registry: locations, machines with planograms, leases.
    pub fn registry(&self) -> &[RegistryRecord] {
        &self.registry
    }

    /// The registry as JSON Lines (what `--registry` of `replay`, `registry load` read).
    pub fn registry_json_lines(&self) -> String {
        self.registry
            .iter()
            .map(|r| r.to_json_line() + "\n")
            .collect()
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// How machine `machine`'s faults and wear move its hardware at `t` (the default for a
    /// machine not in the fleet): what a fleet of controllers reads from its simulated sensors,
    /// so that its heartbeats, jams and card reads show the same failures, with the same onsets,
    /// as this fleet's events do.
    pub fn condition(&self, machine: usize, t: Timestamp) -> Condition {
        self.machines
            .get(machine)
            .map_or_else(Condition::default, |m| m.condition(t.0))
    }

    /// Each machine's id, location type and slots, in fleet order (what a fleet of
    /// controllers is built from).
    pub(crate) fn planograms(&self) -> impl Iterator<Item = Planogram<'_>> {
        self.machines.iter().map(|m| Planogram {
            id: &m.id,
            location_type: m.location_type,
            slots: &m.slots,
        })
    }

    /// The failures wear caused ([`FleetConfig::wear`]), in machine order, each machine's in
    /// time order: known from the start, whether or not the fleet has reached them.
    pub fn failures(&self) -> Vec<Failure> {
        self.machines
            .iter()
            .flat_map(|m| {
                m.wear.iter().filter(|e| e.fails).map(|e| Failure {
                    machine_id: m.id.clone(),
                    fault: e.fault,
                    warning_from: Timestamp(e.from),
                    at: Timestamp(e.peak),
                    repaired: Timestamp(e.until),
                })
            })
            .collect()
    }

    /// The simulated machines' ids, in fleet order.
    pub fn machine_ids(&self) -> impl Iterator<Item = &str> {
        self.machines.iter().map(|m| m.id.as_str())
    }

    /// Carries out a command on its machine, as the firmware would: a new price applies to the
    /// next sale of that slot. `Err` is the reason to reject it with.
    pub fn apply(&mut self, command: &vendflow_protocol::Command) -> Result<(), Rejected> {
        let machine = self
            .machines
            .iter_mut()
            .find(|m| m.id == command.machine_id)
            .ok_or_else(|| Rejected::UnknownMachine(command.machine_id.to_string()))?;
        match &command.action {
            vendflow_protocol::Action::UpdatePrice {
                slot_number,
                new_price,
            } => {
                let slot = machine
                    .slots
                    .iter_mut()
                    .find(|s| s.number == *slot_number)
                    .ok_or(Rejected::UnknownSlot(*slot_number))?;
                slot.price = *new_price;
                Ok(())
            }
            vendflow_protocol::Action::Reboot => Ok(()),
            other => Err(Rejected::Unsupported(other.type_name())),
        }
    }

    /// Runs the fleet up to `to` and returns what the machines delivered meanwhile, one
    /// envelope per machine that sent anything, in machine order.
    pub fn advance(&mut self, to: Timestamp) -> Vec<Envelope> {
        let mut out = Vec::new();
        if to <= self.now {
            return out;
        }
        for m in &mut self.machines {
            m.run_until(to.0);
            if !m.outbox.is_empty() {
                let mut events = std::mem::take(&mut m.outbox);
                events.sort_by_key(|e| e.timestamp);
                out.push(Envelope {
                    machine_id: m.id.clone(),
                    events,
                });
            }
        }
        self.now = to;
        out
    }
}

/// One machine's wear: failures and drifts one after another, each from its own draw of a
/// generator of its own (the machine's other draws stay as they are without wear).
fn episodes(wear: &Wear, seed: u64, machine: usize, start: i64) -> Vec<Episode> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ 0x5745_4152 ^ (machine as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let per_hour = (wear.failures_per_year + wear.drifts_per_year) / (365.0 * 24.0);
    let end = start + i64::from(wear.days) * MS_PER_DAY;
    let mut out = Vec::new();
    if per_hour <= 0.0 {
        return out;
    }
    let mut t = start;
    loop {
        t += exp_ms(&mut rng, per_hour);
        if t >= end {
            return out;
        }
        let fault = match rng.random_range(0..3) {
            0 => Fault::CoolingFailure,
            1 => Fault::MotorWear,
            _ => Fault::CardReaderDegradation,
        };
        let fails = rng.random_bool(wear.failures_per_year / (365.0 * 24.0) / per_hour);
        let episode = if fails {
            let warning = rng.random_range(3 * MS_PER_DAY..=10 * MS_PER_DAY);
            Episode {
                fault,
                from: t - warning,
                peak: t,
                until: t + MS_PER_DAY,
                scale: 1.0,
                fails,
            }
        } else {
            let rise = rng.random_range(MS_PER_DAY..=4 * MS_PER_DAY);
            let hold = rng.random_range(0..=7 * MS_PER_DAY);
            Episode {
                fault,
                from: t - rise,
                peak: t,
                until: t + hold,
                scale: rng.random_range(0.3..=0.8),
                fails,
            }
        };
        // The next one starts after this one is over.
        t = episode.until;
        out.push(episode);
    }
}

pub(crate) fn exp_ms(rng: &mut ChaCha8Rng, per_hour: f64) -> i64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    ((-u.ln() / per_hour) * MS_PER_HOUR as f64) as i64 + 1
}

impl SimMachine {
    fn fault_since(&self, t: i64, kind: fn(&Fault) -> bool) -> Option<i64> {
        let failed = self
            .wear
            .iter()
            .filter(|e| e.fails && kind(&e.fault) && e.peak <= t && t < e.until)
            .map(|e| (e.fault, e.peak));
        self.faults
            .iter()
            .copied()
            .chain(failed)
            .filter(|(f, onset)| kind(f) && *onset <= t)
            .map(|(_, onset)| t - onset)
            .max()
    }

    /// How far wear has moved this machine's readings at `t`: the fraction of the largest
    /// warning, per kind (temperature, motor, card reader).
    fn worn(&self, t: i64) -> [f64; 3] {
        let mut worn = [0.0; 3];
        for e in &self.wear {
            if t < e.from || t >= e.until {
                continue;
            }
            let ramp = if t >= e.peak {
                1.0
            } else {
                (t - e.from) as f64 / (e.peak - e.from).max(1) as f64
            };
            let k = match e.fault {
                Fault::CoolingFailure => 0,
                Fault::MotorWear => 1,
                _ => 2,
            };
            worn[k] = f64::max(worn[k], ramp * e.scale);
        }
        worn
    }

    fn condition(&self, t: i64) -> Condition {
        let worn = self.worn(t);
        let since = |kind: fn(&Fault) -> bool| self.fault_since(t, kind);
        let cooling = since(|f| matches!(f, Fault::CoolingFailure));
        let motor = since(|f| matches!(f, Fault::MotorWear));
        let card = since(|f| matches!(f, Fault::CardReaderDegradation));
        Condition {
            temperature: (worn[0] * WARN_TEMPERATURE) as i64
                + cooling.map_or(0, |since| (since * 2_500 / MS_PER_HOUR).min(10_000)),
            motor: (worn[1] * WARN_MOTOR) as i64
                + motor.map_or(0, |since| (since * 200 / MS_PER_HOUR).min(1_500)),
            card_failure: card.map_or(0.002 + worn[2] * WARN_CARD, |since| {
                (0.05 + since as f64 / MS_PER_HOUR as f64 * 0.05).min(0.6)
            }),
            card_failing: card.is_some(),
            jam: motor.map(|since| (since as f64 / MS_PER_HOUR as f64 * 0.03).min(0.4)),
            skipped_by_crew: since(|f| matches!(f, Fault::SkippedByCrew)).is_some(),
        }
    }

    fn offline(&self, t: i64) -> bool {
        self.faults.iter().any(|(f, onset)| match f {
            Fault::NetworkOutage { hours } => {
                *onset <= t && t < onset + i64::from(*hours) * MS_PER_HOUR
            }
            _ => false,
        })
    }

    fn run_until(&mut self, to: i64) {
        loop {
            let next = self
                .next_heartbeat
                .min(self.next_sale)
                .min(self.next_hourly);
            if let Some((at, _)) = &self.redelivery
                && *at <= to.min(next)
            {
                if let Some((_, events)) = self.redelivery.take() {
                    self.outbox.extend(events);
                }
                continue;
            }
            if next > to {
                return;
            }
            if next == self.next_heartbeat {
                self.heartbeat(next);
                self.next_heartbeat += self.heartbeat_ms + self.rng.random_range(-500..=500);
            } else if next == self.next_sale {
                if self.rng.random_bool(
                    (sales_rate(self.location_type, Timestamp(next)) / MAX_RATE).min(1.0),
                ) {
                    self.sell(next);
                }
                self.next_sale += exp_ms(&mut self.rng, MAX_RATE);
            } else {
                self.hourly(next);
                self.next_hourly += MS_PER_HOUR;
            }
        }
    }

    fn emit(&mut self, t: i64, kind: EventKind) {
        self.seq += 1;
        let event = Event {
            machine_id: self.id.clone(),
            timestamp: Timestamp(t),
            seq: Some(self.seq),
            kind,
        };
        if self.offline(t) {
            self.buffer.push(event);
        } else {
            if !self.buffer.is_empty() {
                // The network is back: flush what was buffered; sometimes the acknowledgement is
                // lost and the firmware sends the same batch again a little later.
                let flushed = std::mem::take(&mut self.buffer);
                self.buffered_sales = 0;
                if self.rng.random_bool(0.3) {
                    self.redelivery = Some((t + 30_000, flushed.clone()));
                }
                self.outbox.extend(flushed);
            }
            self.outbox.push(event);
        }
    }

    fn heartbeat(&mut self, t: i64) {
        let drift = self.rng.random_range(-150..=150);
        self.temperature = (self.temperature + drift).clamp(2_800, 4_800);
        let condition = self.condition(t);
        let temperature = self.temperature + condition.temperature;
        let motor = 600 + self.rng.random_range(0..400) + condition.motor;
        let card_failing = condition.card_failing;
        let signal = -1_000 * self.rng.random_range(55..72);
        if self.offline(t) {
            // No network, no heartbeat: liveness must notice the silence.
            return;
        }
        self.emit(
            t,
            EventKind::Heartbeat(Heartbeat {
                temperature: Some(Milli(temperature - temperature % 100)),
                door_status: Some(DoorStatus::Closed),
                payment_module_status: Some(if card_failing { "degraded" } else { "ok" }.into()),
                network_signal: Some(Milli(signal)),
                motor_current: Some(Milli(motor - motor % 10)),
                controller: None,
            }),
        );
    }

    fn pick_slot(&mut self) -> Option<usize> {
        let total: f64 = self
            .slots
            .iter()
            .filter(|s| s.stock > 0)
            .map(|s| s.popularity)
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = self.rng.random_range(0.0..total);
        for (i, s) in self.slots.iter().enumerate() {
            if s.stock == 0 {
                continue;
            }
            if x < s.popularity {
                return Some(i);
            }
            x -= s.popularity;
        }
        None
    }

    fn sell(&mut self, t: i64) {
        if self.offline(t) && self.buffered_sales >= OFFLINE_SALES {
            return;
        }
        let method = match self.rng.random_range(0..100) {
            0..60 => "card",
            60..85 => "contactless",
            _ => "cash",
        };
        let condition = self.condition(t);
        if method != "cash" && self.rng.random_bool(condition.card_failure) {
            self.emit(
                t,
                EventKind::Error(ErrorEvent {
                    code: ErrorCode::CardReadFailure,
                    message: "card read failed".into(),
                }),
            );
            return;
        }
        if let Some(jam) = condition.jam
            && self.rng.random_bool(jam)
        {
            self.emit(
                t,
                EventKind::Error(ErrorEvent {
                    code: ErrorCode::MotorJam,
                    message: "spiral jammed".into(),
                }),
            );
            return;
        }
        self.txn += 1;
        let txn = format!("txn_{}_{}", self.id, self.txn);
        let lines = if self.rng.random_bool(0.1) { 2 } else { 1 };
        let mut used = Vec::new();
        for _ in 0..lines {
            let Some(i) = self.pick_slot() else { break };
            if used.contains(&i) {
                continue;
            }
            used.push(i);
            let quantity = if self.slots[i].stock >= 2 && self.rng.random_bool(0.05) {
                2
            } else {
                1
            };
            let slot = &mut self.slots[i];
            slot.stock -= quantity;
            let sale = Sale {
                slot_number: slot.number,
                product_id: slot.product.into(),
                amount: Cents(slot.price.0 * i64::from(quantity)),
                quantity,
                payment_method: method.into(),
                transaction_id: txn.as_str().into(),
                offline: false,
            };
            if self.offline(t) {
                self.buffered_sales += 1;
            }
            self.emit(t, EventKind::Sale(sale));
        }
    }

    fn hourly(&mut self, t: i64) {
        let hour = Timestamp(t).hour();
        if !(8..17).contains(&hour) || self.condition(t).skipped_by_crew {
            return;
        }
        let low = self
            .slots
            .iter()
            .filter(|s| s.stock * 4 <= s.capacity)
            .count();
        if low * 5 < self.slots.len() || !self.rng.random_bool(0.5) {
            return;
        }
        self.emit(t, EventKind::Door(DoorStatus::Open));
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.stock < s.capacity {
                let quantity = s.capacity - s.stock;
                s.stock = s.capacity;
                let number = s.number;
                let product = s.product;
                self.emit(
                    t + 60_000,
                    EventKind::Restock(Restock {
                        slot_number: number,
                        quantity,
                        product_id: Some(product.into()),
                    }),
                );
            }
        }
        self.emit(t + 20 * 60_000, EventKind::Door(DoorStatus::Closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn run(config: &FleetConfig, hours: i64, step_ms: i64) -> Vec<Envelope> {
        let mut fleet = Fleet::new(config);
        let mut out = Vec::new();
        let mut t = config.start.0;
        while t < config.start.0 + hours * MS_PER_HOUR {
            t += step_ms;
            out.extend(fleet.advance(Timestamp(t)));
        }
        out
    }

    fn events(envelopes: &[Envelope]) -> Vec<Event> {
        let mut all: Vec<Event> = envelopes.iter().flat_map(|e| e.events.clone()).collect();
        all.sort();
        all
    }

    #[test]
    fn same_seed_same_events_however_time_is_sliced() {
        let config = FleetConfig {
            machines: 20,
            ..FleetConfig::default()
        };
        assert_eq!(
            events(&run(&config, 6, 1_000)),
            events(&run(&config, 6, 3_600_000))
        );
    }

    #[test]
    fn a_fleet_simulated_again_later_numbers_on_instead_of_reusing_ids() {
        let first = FleetConfig {
            machines: 5,
            ..FleetConfig::default()
        };
        let again = FleetConfig {
            first_number: 1_000_000,
            ..first.clone()
        };
        let identities = |config: &FleetConfig| {
            let mut seqs = HashSet::new();
            let mut txns = HashSet::new();
            for e in events(&run(config, 6, 60_000)) {
                seqs.insert((e.machine_id.clone(), e.seq));
                if let EventKind::Sale(s) = &e.kind {
                    txns.insert((e.machine_id.clone(), s.transaction_id.to_string()));
                }
            }
            (seqs, txns)
        };
        let (seqs1, txns1) = identities(&first);
        let (seqs2, txns2) = identities(&again);
        assert!(!txns1.is_empty() && !seqs1.is_empty());
        assert!(seqs1.is_disjoint(&seqs2), "a seq is reused");
        assert!(txns1.is_disjoint(&txns2), "a transaction id is reused");
        // From 0, the numbers are what they always were (the fixtures were made with them).
        assert!(seqs1.iter().any(|(_, s)| *s == Some(1)));
    }

    #[test]
    fn an_outage_delivers_buffered_sales_late_and_sometimes_twice() {
        let config = FleetConfig {
            machines: 3,
            fault_rate: 0.0,
            scripted: vec![(1, Fault::NetworkOutage { hours: 3 }, MS_PER_HOUR)],
            ..FleetConfig::default()
        };
        let mut fleet = Fleet::new(&config);
        let start = config.start.0;
        let mut late = 0;
        for minute in 1..=(6 * 60) {
            let now = start + minute * 60_000;
            for env in fleet.advance(Timestamp(now)) {
                for e in &env.events {
                    assert!(
                        e.timestamp.0 <= now,
                        "nothing is delivered before it happens"
                    );
                    if now - e.timestamp.0 > MS_PER_HOUR {
                        assert_eq!(env.machine_id.as_str(), "mach_00001");
                        late += 1;
                    }
                }
            }
        }
        assert!(late > 0, "the offline machine's sales arrive hours late");
    }

    #[test]
    fn cooling_failure_heats_the_cabinet() {
        let config = FleetConfig {
            machines: 1,
            fault_rate: 0.0,
            scripted: vec![(0, Fault::CoolingFailure, 0)],
            ..FleetConfig::default()
        };
        let all = events(&run(&config, 4, 60_000));
        let hottest = all
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Heartbeat(h) => h.temperature,
                _ => None,
            })
            .max();
        assert!(hottest.is_some_and(|t| t.0 > 8_000), "{hottest:?}");
    }
}

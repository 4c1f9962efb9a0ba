//! `anomaly_windows`: 5-minute tumbling windows per machine, on event time.
//!
//! ```sql
//! SELECT machine_id, window_start(timestamp, 5 min) AS window_start,
//!        count(heartbeat) AS heartbeats, max(temperature), avg(temperature),
//!        count(door opened) AS door_opens,               -- heartbeat doorStatus=open or a door event
//!        count(card sale) + count(card error) AS card_attempts, count(card error) AS card_errors,
//!        count(jam or dispense error) AS motor_faults, max(motor_current), min(network_signal),
//!        classify(...) AS temperature_status, ..., worst(...) AS status
//! FROM events GROUP BY 1, 2
//! ```
//! Thresholds (DESIGN.md): temperature normal 2–5 °C, warning 5–8 (or below 2), critical > 8;
//! door opens 0 / 1–3 / > 3; card-reader error rate < 1 % / 1–5 % / > 5 %; motor current up to
//! 1.2 A / 1.2–1.8 / > 1.8; network signal > −75 dBm / −75 to −90 / < −90.
//!
//! A late event corrects its own window (the old row is retracted, the new one published) for
//! `window_retention_ms` after the window closed; then the window is retracted and later events
//! for it are counted as too late. Every measure is a fold (sum, count, max, min) and events are
//! only ever added, so a window's whole state is one aggregate, however many events it saw, plus
//! the identities of its events: a re-delivered heartbeat, door or error event is counted once
//! (and in `event_duplicates`), see [`crate::dedup`].
//!
//! A window stays in the operator's memory for `window_memory_ms` (30 minutes) after it closes,
//! then waits on disk ([`crate::parked`], keyed by its start and machine, with its aggregate and
//! its events' identities) for the rest of its retention: a late event takes it back into memory
//! for a window's width, and when its retention ends it is retracted from there. Nearly every
//! event lands within seconds; 48 h of windows in memory would be 29 M for 50,000 machines.
//!
//! A card sale is counted however late it is: a sale whose window had left the view when it
//! arrived (days late, from a machine offline that long) is a card-reader attempt of that window
//! in `anomaly_window_corrections`, by the day it arrived, and the archive keeps those rows as a
//! history table (as `revenue_corrections` does for the days of revenue). Other late events
//! (heartbeats, doors, errors) have no record of their identity beyond the window, so a
//! re-delivery could not be told from a first delivery: they stay counted as too late only.
//! ```sql
//! -- anomaly_window_corrections: kept until 2 days after the day they arrived
//! SELECT machine_id, window_start, day(arrival) AS arrived, count(*) AS card_attempts
//! FROM accepted_card_sale_lines WHERE the window left anomaly_windows before arrival GROUP BY 1, 2, 3
//! ```

use crate::checkpoint::Durable;
use crate::parked::Parked;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::Map;
#[cfg(test)]
use vendflow_protocol::units::MS_PER_DAY;
use vendflow_protocol::{DoorStatus, ErrorCode, Event, EventKind, MachineId, Milli, Timestamp};

use crate::config::Config;
use crate::dedup::{self, Seen};
use crate::fold::{sum_by_key, totals};
use crate::operators::{
    Emit, FastMap, Fork, Keyed, PUBLISH_CHUNK, Time, fork, hash_of, room_for_one, state_sizes, trim,
};
#[cfg(test)]
use crate::revenue::CORRECTIONS_KEPT_DAYS;
use crate::revenue::{arrival_day, correction_window};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, RowWriter, Value, col, null, put_varint, take_varint};
use crate::sales::SaleLine;

pub const WINDOWS: ViewDef = ViewDef {
    name: "anomaly_windows",
    description: "5-minute sensor windows per machine, each measure classified normal / warning / critical",
    columns: &[
        col("machine_id", Text),
        col("window_start", Time),
        col("heartbeats", Int),
        null("max_temperature", Reading),
        null("avg_temperature", Float),
        col("door_opens", Int),
        col("card_attempts", Int),
        col("card_errors", Int),
        col("motor_faults", Int),
        null("max_motor_current", Reading),
        null("min_network_signal", Reading),
        col("temperature_status", Text),
        col("door_status", Text),
        col("card_status", Text),
        col("motor_status", Text),
        col("network_status", Text),
        col("status", Text),
    ],
};

pub const CORRECTIONS: ViewDef = ViewDef {
    name: "anomaly_window_corrections",
    description: "card sales for windows that had already left anomaly_windows when they arrived, per machine, window and arrival day (kept as a history table)",
    columns: &[
        col("machine_id", Text),
        col("window_start", Time),
        col("arrived", Date),
        col("card_attempts", Int),
    ],
};

/// A window correction's key: (machine, window start, arrival day).
pub type CorrectionKey = (MachineId, Timestamp, i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    Normal,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

pub fn classify_temperature(max: Option<Milli>) -> Level {
    match max.map(|m| m.0) {
        Some(t) if t > 8_000 => Level::Critical,
        Some(t) if !(2_000..=5_000).contains(&t) => Level::Warning,
        _ => Level::Normal,
    }
}

pub fn classify_door(opens: i64) -> Level {
    match opens {
        0 => Level::Normal,
        1..=3 => Level::Warning,
        _ => Level::Critical,
    }
}

pub fn classify_card(attempts: i64, errors: i64) -> Level {
    // Compare errors/attempts with 1 % and 5 % in integers.
    if attempts <= 0 || errors * 100 < attempts {
        Level::Normal
    } else if errors * 100 <= attempts * 5 {
        Level::Warning
    } else {
        Level::Critical
    }
}

pub fn classify_motor(max: Option<Milli>, faults: i64) -> Level {
    match max.map(|m| m.0) {
        Some(c) if c > 1_800 => Level::Critical,
        _ if faults > 0 => Level::Warning,
        Some(c) if c > 1_200 => Level::Warning,
        _ => Level::Normal,
    }
}

pub fn classify_network(min: Option<Milli>) -> Level {
    match min.map(|m| m.0) {
        Some(s) if s < -90_000 => Level::Critical,
        Some(s) if s <= -75_000 => Level::Warning,
        _ => Level::Normal,
    }
}

/// The measures of one event, or of a whole window: every one of them folds with [`Agg::add`]
/// (sums, counts, extremes), so a window is one `Agg` however many events it has seen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Agg {
    pub heartbeats: i64,
    pub temperature_sum: i64,
    pub temperature_readings: i64,
    pub door_opens: i64,
    pub card_attempts: i64,
    pub card_errors: i64,
    pub motor_faults: i64,
    pub max_temperature: Option<Milli>,
    pub max_motor_current: Option<Milli>,
    pub min_network_signal: Option<Milli>,
}

impl Agg {
    pub fn add(&mut self, o: &Agg) {
        self.heartbeats += o.heartbeats;
        self.temperature_sum += o.temperature_sum;
        self.temperature_readings += o.temperature_readings;
        self.door_opens += o.door_opens;
        self.card_attempts += o.card_attempts;
        self.card_errors += o.card_errors;
        self.motor_faults += o.motor_faults;
        self.max_temperature = self.max_temperature.max(o.max_temperature);
        self.max_motor_current = self.max_motor_current.max(o.max_motor_current);
        self.min_network_signal = match (self.min_network_signal, o.min_network_signal) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// An [`Agg`] as the operator keeps it (48 bytes instead of 104, per live window and per record
/// in flight): counts in 32 bits, readings in 32-bit thousandths (the decoder refuses any beyond
/// ±1,000,000.000) with `i32::MIN` for none.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Packed {
    temperature_sum: i64,
    counts: [u32; 6],
    max_temperature: i32,
    max_motor_current: i32,
    min_network_signal: i32,
}

const NO_READING: i32 = i32::MIN;

fn pack_reading(r: Option<Milli>) -> i32 {
    r.map_or(NO_READING, |m| {
        i32::try_from(m.0.clamp(i64::from(NO_READING) + 1, i64::from(i32::MAX))).unwrap_or(i32::MAX)
    })
}

fn unpack_reading(r: i32) -> Option<Milli> {
    (r != NO_READING).then_some(Milli(i64::from(r)))
}

impl Packed {
    const EMPTY: Packed = Packed {
        temperature_sum: 0,
        counts: [0; 6],
        max_temperature: NO_READING,
        max_motor_current: NO_READING,
        min_network_signal: NO_READING,
    };

    pub fn of(a: &Agg) -> Packed {
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        Packed {
            temperature_sum: a.temperature_sum,
            counts: [
                count(a.heartbeats),
                count(a.temperature_readings),
                count(a.door_opens),
                count(a.card_attempts),
                count(a.card_errors),
                count(a.motor_faults),
            ],
            max_temperature: pack_reading(a.max_temperature),
            max_motor_current: pack_reading(a.max_motor_current),
            min_network_signal: pack_reading(a.min_network_signal),
        }
    }

    pub fn unpack(&self) -> Agg {
        let [
            heartbeats,
            temperature_readings,
            door_opens,
            card_attempts,
            card_errors,
            motor_faults,
        ] = self.counts.map(i64::from);
        Agg {
            heartbeats,
            temperature_sum: self.temperature_sum,
            temperature_readings,
            door_opens,
            card_attempts,
            card_errors,
            motor_faults,
            max_temperature: unpack_reading(self.max_temperature),
            max_motor_current: unpack_reading(self.max_motor_current),
            min_network_signal: unpack_reading(self.min_network_signal),
        }
    }

    /// [`Agg::add`] on the packed form.
    pub fn add(&mut self, o: &Packed) {
        self.temperature_sum += o.temperature_sum;
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a = a.saturating_add(b);
        }
        self.max_temperature = self.max_temperature.max(o.max_temperature);
        self.max_motor_current = self.max_motor_current.max(o.max_motor_current);
        self.min_network_signal = match (self.min_network_signal, o.min_network_signal) {
            (NO_READING, b) => b,
            (a, NO_READING) => a,
            (a, b) => a.min(b),
        };
    }
}

/// A window: its key and everything folded into it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    pub machine_id: MachineId,
    pub start: Timestamp,
    pub totals: Agg,
}

impl Window {
    pub fn levels(&self) -> [Level; 5] {
        let t = &self.totals;
        [
            classify_temperature(t.max_temperature),
            classify_door(t.door_opens),
            classify_card(t.card_attempts, t.card_errors),
            classify_motor(t.max_motor_current, t.motor_faults),
            classify_network(t.min_network_signal),
        ]
    }

    pub fn status(&self) -> Level {
        self.levels().into_iter().max().unwrap_or(Level::Normal)
    }

    pub fn avg_temperature(&self) -> Option<f64> {
        let t = &self.totals;
        (t.temperature_readings > 0)
            .then(|| t.temperature_sum as f64 / t.temperature_readings as f64 / 1000.0)
    }
}

pub type WindowKey = (MachineId, Timestamp);

/// A touched window that did not exist before the time being folded (no aggregate to retract).
const NEW: usize = usize::MAX;

/// The kind of event a window's contribution came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Heartbeat,
    Door,
    Error,
    CardSale,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            Kind::Door => "door",
            Kind::Error => "error",
            Kind::CardSale => "sale",
        }
    }
}

/// What one event adds to its window, with the event's identity ([`dedup::identity`]; 0 for
/// a card sale, already deduplicated as a sale line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Piece {
    pub agg: Packed,
    pub id: u64,
    pub kind: Kind,
}

/// What one event contributes to its window, if anything.
pub fn contribution(event: &Event, width: i64) -> Option<(WindowKey, Piece)> {
    let (agg, kind) = match &event.kind {
        EventKind::Heartbeat(h) => (
            Agg {
                heartbeats: 1,
                door_opens: i64::from(h.door_status == Some(DoorStatus::Open)),
                temperature_sum: h.temperature.map_or(0, |t| t.0),
                temperature_readings: i64::from(h.temperature.is_some()),
                max_temperature: h.temperature,
                max_motor_current: h.motor_current,
                min_network_signal: h.network_signal,
                ..Agg::default()
            },
            Kind::Heartbeat,
        ),
        EventKind::Door(DoorStatus::Open) => (
            Agg {
                door_opens: 1,
                ..Agg::default()
            },
            Kind::Door,
        ),
        EventKind::Error(e) => (
            match e.code {
                ErrorCode::CardReadFailure => Agg {
                    card_attempts: 1,
                    card_errors: 1,
                    ..Agg::default()
                },
                ErrorCode::MotorJam | ErrorCode::DispenseFailure => Agg {
                    motor_faults: 1,
                    ..Agg::default()
                },
                _ => Agg::default(),
            },
            Kind::Error,
        ),
        _ => return None,
    };
    let key = (
        event.machine_id.clone(),
        event.timestamp.window_start(width),
    );
    let id = dedup::identity(event);
    let agg = Packed::of(&agg);
    Some((key, Piece { agg, id, kind }))
}

/// A card sale (deduplicated) is one card-reader attempt in its window.
fn card_contribution(line: &SaleLine, width: i64) -> Option<(WindowKey, Piece)> {
    line.card.then(|| {
        let key = (line.machine_id.clone(), line.timestamp.window_start(width));
        let agg = Packed::of(&Agg {
            card_attempts: 1,
            ..Agg::default()
        });
        let piece = Piece {
            agg,
            id: 0,
            kind: Kind::CardSale,
        };
        (key, piece)
    })
}

pub struct Windows<'s> {
    /// The `anomaly_windows` rows ([`row`]): built by the operator itself, so what it sends
    /// downstream is a 16-byte row per window rather than the whole [`Window`] (a bulk load's
    /// hour publishes every window at once).
    pub windows: VecCollection<'s, Time, Row>,
    /// Per machine, the levels of its latest window (by event time) still within retention:
    /// changes only when the levels do (a new window with the same levels publishes nothing).
    pub latest: VecCollection<'s, Time, (MachineId, [Level; 5])>,
    /// Each window's readings per signal ([`crate::signals::readings`]) when they change: the
    /// old retracted, the new added; not retracted when the window leaves retention.
    pub readings: VecCollection<'s, Time, (MachineId, crate::signals::Reading)>,
    /// Machines whose events came after their window's retention ended, one per event.
    pub too_late: VecCollection<'s, Time, MachineId>,
    /// Re-delivered events dropped, one per delivery, with their kind.
    pub duplicates: VecCollection<'s, Time, (MachineId, String)>,
    /// The `anomaly_window_corrections` rows: card sales whose window had left the view.
    pub corrections: VecCollection<'s, Time, Row>,
}

/// What the windows operator emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Out {
    Window(Row),
    Side(Side),
    Dropped(Dropped),
}

/// The windows operator's typed outputs beside the rows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Side {
    Latest(MachineId, [Level; 5]),
    /// A window's readings, when they changed (never retracted when the window expires).
    Reading(MachineId, crate::signals::Reading),
}

/// An event that changed no window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Dropped {
    TooLate(MachineId),
    /// A card sale whose window had left the view: too late for the window, and a correction.
    LateCard(MachineId, Timestamp),
    Duplicate(MachineId, Kind),
}

/// One live window of a machine: 104 bytes.
#[derive(Serialize, Deserialize)]
struct Slot {
    start: Timestamp,
    totals: Packed,
    /// The last ingestion time that touched it.
    at: Time,
    /// The identities of its events.
    seen: Seen,
}

/// A machine's live windows in start order, and its latest window's levels as last emitted.
///
/// Windows are kept per machine rather than in one table keyed by (machine, start): the table
/// to probe has one entry per machine (50,000, not the 290,000 windows of the benchmark's half
/// hour or the 29 M of 48 h of retention). The newest window, where nearly every event lands,
/// is inline in the machine's entry, so the common case reads the entry alone.
#[derive(Default, Serialize, Deserialize)]
struct MachineWindows {
    /// `None` only when the machine has no live window.
    newest: Option<Slot>,
    /// The older live windows, in start order.
    older: VecDeque<Slot>,
    latest: Option<(Timestamp, [Level; 5])>,
}

/// A machine's first room for older windows: the default half hour a closed window stays in
/// memory, in 5-minute windows.
const FIRST_OLDER: usize = 6;

/// Where a machine's window is.
enum At {
    Newest,
    Older(usize),
}

impl MachineWindows {
    /// Where the window starting at `start` is (windows are `width` long, each starting at a
    /// multiple of it).
    fn locate(&self, start: Timestamp, width: i64) -> Option<At> {
        let newest = self.newest.as_ref()?.start;
        if newest == start {
            Some(At::Newest)
        } else if newest < start {
            None
        } else {
            // Where it is when the machine has every window between it and the newest (one
            // every few minutes is the norm): one slot read, where a search read several, each
            // a cache miss in a machine's deque (a card sale, judged after its hour's dedup,
            // lands in an older window).
            let back = newest.0.saturating_sub(start.0) / width.max(1);
            let guess = usize::try_from(back)
                .ok()
                .and_then(|back| self.older.len().checked_sub(back));
            if let Some(i) = guess.filter(|&i| self.older.get(i).is_some_and(|w| w.start == start))
            {
                return Some(At::Older(i));
            }
            let i = self.older.binary_search_by_key(&start, |w| w.start).ok()?;
            Some(At::Older(i))
        }
    }

    fn get(&self, start: Timestamp, width: i64) -> Option<&Slot> {
        match self.locate(start, width)? {
            At::Newest => self.newest.as_ref(),
            At::Older(i) => self.older.get(i),
        }
    }

    fn get_mut(&mut self, start: Timestamp, width: i64) -> Option<&mut Slot> {
        match self.locate(start, width)? {
            At::Newest => self.newest.as_mut(),
            At::Older(i) => self.older.get_mut(i),
        }
    }

    /// Adds a window the machine does not have.
    fn insert(&mut self, slot: Slot) -> &mut Slot {
        // The older windows grow by a quarter, not by doubling: a machine keeps its windows of
        // the whole retention (576 over 48 h), and a doubled deque is up to half empty slots of
        // 104 bytes, for every machine. The first growth is the six windows of the half hour a
        // closed window stays in memory by default (growing by two, a machine's deque was
        // reallocated three times in its first half hour).
        if self.newest.is_some() && self.older.len() == self.older.capacity() {
            self.older
                .reserve_exact((self.older.len() / 4).max(FIRST_OLDER));
        }
        match &self.newest {
            Some(newest) if newest.start > slot.start => {
                let i = self
                    .older
                    .binary_search_by_key(&slot.start, |w| w.start)
                    .unwrap_or_else(|i| i);
                self.older.insert(i, slot);
                &mut self.older[i]
            }
            _ => {
                if let Some(previous) = self.newest.take() {
                    self.older.push_back(previous);
                }
                self.newest.insert(slot)
            }
        }
    }

    /// Removes a window; the next older one, if any, becomes the newest.
    fn remove(&mut self, start: Timestamp, width: i64) -> Option<Slot> {
        match self.locate(start, width)? {
            At::Newest => {
                let next = self.older.pop_back();
                std::mem::replace(&mut self.newest, next)
            }
            At::Older(i) => self.older.remove(i),
        }
    }
}

/// Per worker: each machine's windows in memory and latest levels as last emitted, and when
/// each window in memory is due to leave it (for disk, or at the end of its retention).
#[derive(Default)]
struct State {
    machines: FastMap<MachineId, MachineWindows>,
    due: BTreeMap<Time, Vec<WindowKey>>,
    /// The windows touched at the time being folded, each with where its aggregate before that
    /// time is in `before` ([`NEW`] for a window new at this time), to retract it once when the
    /// time ends. A bulk load's hour touches every window and most are new: 24 bytes each
    /// instead of 72 with the old aggregate inline.
    touched: Vec<(WindowKey, usize)>,
    /// The aggregates before this time of the touched windows that existed already.
    before: Vec<Packed>,
    /// How many of `touched` are published (a large time is published in parts).
    published_upto: usize,
    /// Workers over every process (the machines table's sizing: [`room_for_one`]).
    peers: usize,
}

/// What a checkpoint keeps of the windows: every machine's windows in memory and when each is
/// due (those on disk are the parked store's part of the checkpoint).
type StateSaved = (
    FastMap<MachineId, MachineWindows>,
    BTreeMap<Time, Vec<WindowKey>>,
);

impl Durable for State {
    type Saved = StateSaved;

    fn save(&self, out: &mut crate::checkpoint::SectionOut) -> Result<(), bincode::Error> {
        if !self.touched.is_empty() {
            return Err(crate::checkpoint::not_between_times("the windows", None));
        }
        bincode::serialize_into(out, &(&self.machines, &self.due))
    }

    fn restore(&mut self, (machines, due): StateSaved) {
        self.machines = machines;
        self.due = due;
    }
}

/// Windows that left memory for disk, came back to it for a late event, and ended their
/// retention on disk: over every worker of an engine ([`crate::engine::Engine::parked_windows`]).
#[derive(Debug, Default)]
pub struct ParkedCounts {
    pub parked: AtomicU64,
    pub taken_back: AtomicU64,
    pub ended_on_disk: AtomicU64,
}

impl ParkedCounts {
    /// (parked, taken back, ended on disk) so far.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.parked.load(Relaxed),
            self.taken_back.load(Relaxed),
            self.ended_on_disk.load(Relaxed),
        )
    }
}

/// How windows leave memory: to `store` once `memory` has passed since they closed (unless
/// their retention ends first), for the rest of their retention.
struct Parking {
    counts: Arc<ParkedCounts>,
    store: Rc<RefCell<Parked>>,
    width: i64,
    memory: i64,
    retention: i64,
}

impl Parking {
    fn expires(&self, start: Timestamp) -> Time {
        start + self.width + self.retention
    }

    /// When a window, in memory at `now`, is next due: when it should leave memory (a window
    /// taken back from disk stays a window's width), or when its retention ends.
    fn due(&self, start: Timestamp, now: Time) -> Time {
        let leaves = (start + self.width + self.memory).max(now.saturating_add(self.width));
        leaves.min(self.expires(start))
    }

    /// Whether the window may be on disk at `now` (it has been due to leave memory).
    fn may_be_parked(&self, start: Timestamp, now: Time) -> bool {
        self.memory < self.retention && start + self.width + self.memory <= now
    }
}

/// A parked window's key: its start (big-endian, so a day's windows are together), then the
/// machine's id.
fn parked_key(machine_id: &MachineId, start: Timestamp) -> Vec<u8> {
    let id = machine_id.as_str().as_bytes();
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&start.0.to_be_bytes());
    key.extend_from_slice(id);
    key
}

fn parked_key_of(key: &[u8]) -> Option<WindowKey> {
    let (start, id) = key.split_first_chunk::<8>()?;
    let machine_id = MachineId::parse(std::str::from_utf8(id).ok()?).ok()?;
    Some((machine_id, Timestamp(i64::from_be_bytes(*start))))
}

/// A parked window's aggregate and identities: 44 bytes of fixed fields, then the identities
/// as a count and ascending deltas, each a LEB128 varint (a machine's `seq` numbers are close:
/// a byte or two each).
fn parked_value(totals: &Packed, seen: &Seen) -> Vec<u8> {
    let ids = seen.ids();
    let mut out = Vec::with_capacity(44 + 1 + 2 * ids.len() + 8);
    out.extend_from_slice(&totals.temperature_sum.to_le_bytes());
    for c in totals.counts {
        out.extend_from_slice(&c.to_le_bytes());
    }
    for r in [
        totals.max_temperature,
        totals.max_motor_current,
        totals.min_network_signal,
    ] {
        out.extend_from_slice(&r.to_le_bytes());
    }
    put_varint(&mut out, ids.len() as u64);
    let mut previous = 0u64;
    for &id in ids {
        put_varint(&mut out, id.wrapping_sub(previous));
        previous = id;
    }
    out
}

fn parked_value_of(bytes: &[u8]) -> Option<(Packed, Seen)> {
    let (sum, mut rest) = bytes.split_first_chunk::<8>()?;
    let mut u32s = [0u32; 6];
    for c in &mut u32s {
        let (b, r) = rest.split_first_chunk::<4>()?;
        *c = u32::from_le_bytes(*b);
        rest = r;
    }
    let mut i32s = [0i32; 3];
    for c in &mut i32s {
        let (b, r) = rest.split_first_chunk::<4>()?;
        *c = i32::from_le_bytes(*b);
        rest = r;
    }
    let n = take_varint(&mut rest)?;
    let mut seen = Seen::default();
    let mut id = 0u64;
    for _ in 0..n {
        id = id.wrapping_add(take_varint(&mut rest)?);
        seen.insert(id);
    }
    let [max_temperature, max_motor_current, min_network_signal] = i32s;
    let totals = Packed {
        temperature_sum: i64::from_le_bytes(*sum),
        counts: u32s,
        max_temperature,
        max_motor_current,
        min_network_signal,
    };
    Some((totals, seen))
}

impl State {
    /// At `now`: parks every window in memory that is due to leave it, and retracts every
    /// window whose retention ends by then (in memory or on disk), with the "latest" row of a
    /// machine whose last window that was.
    fn expire(&mut self, now: Time, parking: &Parking, out: &mut Emit<'_, Out>) {
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > now {
                break;
            }
            for (machine_id, start) in entry.remove() {
                let Some(machine) = self.machines.get_mut(&machine_id) else {
                    continue;
                };
                let Some(slot) = machine.remove(start, parking.width) else {
                    continue;
                };
                let expires = parking.expires(start);
                if expires > now {
                    let value = parked_value(&slot.totals, &slot.seen);
                    let parked = parking.store.borrow_mut().park(
                        parked_key(&machine_id, start),
                        value,
                        expires,
                    );
                    match parked {
                        Ok(()) => {
                            parking.counts.parked.fetch_add(1, Relaxed);
                            out.wake_at(expires);
                        }
                        Err(e) => {
                            // Kept in memory for the rest of its retention instead.
                            tracing::error!(error = %e, "cannot park an anomaly window");
                            machine.insert(slot);
                            self.due
                                .entry(expires)
                                .or_default()
                                .push((machine_id.clone(), start));
                            out.wake_at(expires);
                        }
                    }
                    if machine.newest.is_none() && machine.latest.is_none() {
                        self.machines.remove(&machine_id);
                    }
                    continue;
                }
                self.retract(machine_id, start, slot.totals, out);
            }
        }
        let ended = parking.store.borrow_mut().take_ended(now);
        match ended {
            Ok(ended) => {
                for (key, value) in ended {
                    match (parked_key_of(&key), parked_value_of(&value)) {
                        (Some((machine_id, start)), Some((totals, _))) => {
                            parking.counts.ended_on_disk.fetch_add(1, Relaxed);
                            self.retract(machine_id, start, totals, out);
                        }
                        _ => tracing::error!("a parked anomaly window does not decode; dropped"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the parked anomaly windows"),
        }
    }

    /// Retracts a window that left retention, and its machine's "latest" row if it was the one.
    fn retract(
        &mut self,
        machine_id: MachineId,
        start: Timestamp,
        totals: Packed,
        out: &mut Emit<'_, Out>,
    ) {
        out.give(Out::Window(row(window(&machine_id, start, totals))), -1);
        let Some(machine) = self.machines.get_mut(&machine_id) else {
            return;
        };
        if let Some((latest, levels)) = machine.latest
            && latest == start
        {
            machine.latest = None;
            out.give(Out::Side(Side::Latest(machine_id.clone(), levels)), -1);
        }
        if machine.newest.is_none() && machine.latest.is_none() {
            self.machines.remove(&machine_id);
        }
    }
}

/// Windows are folded in one keyed operator rather than a differential `reduce`: every measure
/// is an insert-only fold (events are never retracted, only whole windows expire), so one
/// aggregate per window is the whole state, where a `reduce` would keep every distinct reading.
/// Each time a window changes its old row is retracted and the new one inserted. When retention
/// ends the operator wakes at exactly that time and retracts the window (and its machine's
/// "latest" row) from its own state: no copy of the output waits for its expiry elsewhere.
///
/// `telemetry`: what each heartbeat, door and error event contributes to its window
/// ([`contribution`]); card sales are added here.
pub fn render<'s>(
    telemetry: VecCollection<'s, Time, (WindowKey, Piece)>,
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    (parked, counts): (Parked, Arc<ParkedCounts>),
    config: &Config,
) -> Windows<'s> {
    let width = config.window_ms;
    let store = parked.enrolled("Windows: parked", "anomaly windows");
    let parking = Rc::new(Parking {
        counts,
        store,
        width,
        memory: config.window_memory_ms,
        retention: config.window_retention_ms,
    });
    let on_begin = parking.clone();
    let gauge = state_sizes::gauge("Windows: fold");
    let peers = telemetry.inner.scope().peers();
    let contributions = telemetry.concat(accepted.flat_map(move |l| card_contribution(l, width)));
    let out = contributions.keyed_steps(
        "Windows: fold",
        |((m, _), _): &(WindowKey, Piece)| hash_of(m),
        State {
            peers,
            ..State::default()
        },
        move |state, out| state.expire(out.time(), &on_begin, out),
        move |state, (key, piece), diff, out| {
            let now = out.time();
            if diff <= 0 {
                tracing::error!(machine_id = %key.0, diff, "window input retracted; ignored");
                return;
            }
            let expires = parking.expires(key.1);
            if expires <= now {
                let dropped = match piece.kind {
                    Kind::CardSale => Dropped::LateCard(key.0, key.1),
                    _ => Dropped::TooLate(key.0),
                };
                out.give(Out::Dropped(dropped), diff);
                return;
            }
            // Identical deliveries of one time may arrive as one record with a count: an event
            // with an identity counts once, the rest are duplicates.
            let (count, duplicates) = if piece.id == 0 {
                (diff, 0)
            } else {
                (1, diff - 1)
            };
            if duplicates > 0 {
                out.give(
                    Out::Dropped(Dropped::Duplicate(key.0.clone(), piece.kind)),
                    duplicates,
                );
            }
            room_for_one(&mut state.machines, state.peers);
            let machine = state.machines.entry(key.0.clone()).or_default();
            // The arithmetic first: in a bulk load's hours nothing is parked, and the lookup
            // below finds the window anyway.
            if parking.may_be_parked(key.1, now) && machine.locate(key.1, width).is_none() {
                // Closed long ago: on disk, if it had events. Back in memory for a while.
                let taken = parking
                    .store
                    .borrow_mut()
                    .take(&parked_key(&key.0, key.1), now);
                let back = match taken {
                    Ok(found) => found.and_then(|bytes| {
                        let back = parked_value_of(&bytes);
                        if back.is_none() {
                            tracing::error!(machine_id = %key.0, "a parked anomaly window does not decode; started afresh");
                        }
                        back
                    }),
                    Err(e) => {
                        tracing::error!(machine_id = %key.0, error = %e, "cannot read the parked anomaly windows; started afresh");
                        None
                    }
                };
                if let Some((totals, seen)) = back {
                    parking.counts.taken_back.fetch_add(1, Relaxed);
                    let due = parking.due(key.1, now);
                    state.due.entry(due).or_default().push(key.clone());
                    out.wake_at(due);
                    machine.insert(Slot {
                        start: key.1,
                        totals,
                        // Not touched at this time yet: noted as touched below.
                        at: Time::EPOCH,
                        seen,
                    });
                }
            }
            let slot = match machine.get_mut(key.1, width) {
                Some(slot) => {
                    // Seen before: the window stays as it is (not even noted as touched).
                    if slot.seen.contains(piece.id) {
                        out.give(Out::Dropped(Dropped::Duplicate(key.0, piece.kind)), count);
                        return;
                    }
                    if slot.at != now {
                        slot.at = now;
                        state.touched.push((key, state.before.len()));
                        state.before.push(slot.totals);
                    }
                    slot
                }
                None => {
                    let due = parking.due(key.1, now);
                    state.due.entry(due).or_default().push(key.clone());
                    out.wake_at(due);
                    let slot = machine.insert(Slot {
                        start: key.1,
                        totals: Packed::EMPTY,
                        at: now,
                        seen: Seen::default(),
                    });
                    state.touched.push((key, NEW));
                    slot
                }
            };
            slot.seen.insert(piece.id);
            for _ in 0..count {
                slot.totals.add(&piece.agg);
            }
        },
        // The window a record lands in, looked up ahead of its record: the table is larger than
        // the cache, and lookups made together overlap their misses. A card sale, judged after
        // its hour's dedup, lands in an older window of its machine, memory of its own.
        move |state, ((m, start), _)| {
            std::hint::black_box(
                state
                    .machines
                    .get(m)
                    .and_then(|w| w.get(*start, width))
                    .map(|s| s.totals.counts[0]),
            );
        },
        move |state, out| {
            let State {
                machines,
                touched,
                before,
                published_upto,
                ..
            } = state;
            let from = *published_upto;
            if from == 0 {
                // A machine's touched windows together and in start order (grouped by the
                // interned id: no need to compare the ids' text).
                touched.sort_unstable_by_key(|((m, start), _)| (m.grouping_key(), *start));
            }
            // A part ends with a machine's last touched window: its "latest" row is decided
            // over all of them.
            let mut to = touched.len().min(from + PUBLISH_CHUNK);
            while to < touched.len() && touched[to].0.0 == touched[to - 1].0.0 {
                to += 1;
            }
            *published_upto = to;
            let mut i = from;
            while i < to {
                let machine_id = &touched[i].0.0;
                let end = touched[i..to]
                    .iter()
                    .position(|((m, _), _)| m != machine_id)
                    .map_or(to, |n| i + n);
                let group = &touched[i..end];
                i = end;
                let Some(machine) = machines.get_mut(machine_id) else {
                    continue;
                };
                // The machine's newest touched window, for its "latest" row.
                let mut newest = None;
                for ((_, start), old) in group {
                    let Some(slot) = machine.get(*start, width) else {
                        continue;
                    };
                    let readings = crate::signals::readings(&slot.totals.unpack());
                    let old_readings = before
                        .get(*old)
                        .map(|o| crate::signals::readings(&o.unpack()));
                    if old_readings.as_ref() != Some(&readings) {
                        if let Some(old) = old_readings.filter(|r| r.iter().any(Option::is_some)) {
                            out.give(
                                Out::Side(Side::Reading(machine_id.clone(), (*start, old))),
                                -1,
                            );
                        }
                        if readings.iter().any(Option::is_some) {
                            out.give(
                                Out::Side(Side::Reading(machine_id.clone(), (*start, readings))),
                                1,
                            );
                        }
                    }
                    if let Some(old) = before.get(*old) {
                        out.give(Out::Window(row(window(machine_id, *start, *old))), -1);
                    }
                    let new = window(machine_id, *start, slot.totals);
                    newest = Some((new.start, new.levels()));
                    out.give(Out::Window(row(new)), 1);
                }
                let Some(now) = newest else {
                    continue;
                };
                let previous = machine.latest;
                if previous.is_none_or(|p| p.0 <= now.0 && p != now) {
                    // Health reads the levels only: a new window start alone is no news.
                    match previous {
                        Some((_, l)) if l == now.1 => {}
                        Some((_, l)) => {
                            out.give(Out::Side(Side::Latest(machine_id.clone(), l)), -1);
                            out.give(Out::Side(Side::Latest(machine_id.clone(), now.1)), 1);
                        }
                        None => out.give(Out::Side(Side::Latest(machine_id.clone(), now.1)), 1),
                    }
                    machine.latest = Some(now);
                }
            }
            if to < touched.len() {
                return false;
            }
            *published_upto = 0;
            touched.clear();
            before.clear();
            gauge.set_with(|| {
                let entry = std::mem::size_of::<(MachineId, MachineWindows)>();
                let slots: usize = machines.values().map(|m| m.older.capacity()).sum();
                let live = machines
                    .values()
                    .map(|m| usize::from(m.newest.is_some()) + m.older.len())
                    .sum();
                (
                    live,
                    machines.capacity() * entry + slots * std::mem::size_of::<Slot>(),
                )
            });
            // A bulk step touches many windows; a live one a few.
            trim(touched);
            trim(before);
            true
        },
    );
    let (windows, side, dropped) = fork(out, "Windows: split", |o| match o {
        Out::Window(w) => Fork::A(w),
        Out::Side(s) => Fork::B(s),
        Out::Dropped(d) => Fork::C(d),
    });
    // Split again rather than read twice: each reader of a collection gets a copy of it.
    let (latest, readings, _) = fork(side, "Windows: side split", |s| match s {
        Side::Latest(m, l) => Fork::<_, _, std::convert::Infallible>::A((m, l)),
        Side::Reading(m, r) => Fork::B((m, r)),
    });
    let too_late = dropped.clone().flat_map(|d| match d {
        Dropped::TooLate(m) | Dropped::LateCard(m, _) => Some(m),
        Dropped::Duplicate(..) => None,
    });
    let duplicates = dropped.clone().flat_map(|d| match d {
        Dropped::Duplicate(m, kind) => Some((m, kind.as_str().to_owned())),
        Dropped::TooLate(_) | Dropped::LateCard(..) => None,
    });
    // By the ingestion day the sale arrived on, as revenue's corrections are.
    let late_cards = dropped
        .inner
        .flat_map::<Vec<_>, _, _>(|(d, t, r)| match d {
            Dropped::LateCard(m, start) => Some((((m, start, arrival_day(t)), 1isize), t, r)),
            Dropped::TooLate(_) | Dropped::Duplicate(..) => None,
        })
        .as_collection();
    let corrections = totals(sum_by_key(
        late_cards,
        "Windows: corrections",
        |k: &CorrectionKey| hash_of(&k.0),
        |(_, _, arrived): &CorrectionKey| correction_window(*arrived),
    ))
    .map(correction_row);
    Windows {
        windows,
        latest,
        readings,
        too_late,
        duplicates,
        corrections,
    }
}

/// An `anomaly_window_corrections` row.
pub fn correction_row(((m, start, arrived), attempts): (CorrectionKey, isize)) -> Row {
    vec![
        Value::text(m.as_str()),
        Value::Time(start),
        Value::Date(arrived),
        Value::Int(i64::try_from(attempts).unwrap_or(i64::MAX)),
    ]
    .into()
}

fn window(machine_id: &MachineId, start: Timestamp, totals: Packed) -> Window {
    Window {
        machine_id: machine_id.clone(),
        start,
        totals: totals.unpack(),
    }
}

pub fn row(w: Window) -> Row {
    let t = &w.totals;
    Row::build(|r| {
        r.text(w.machine_id.as_str());
        r.time(w.start);
        r.int(t.heartbeats);
        r.opt(t.max_temperature, RowWriter::reading);
        r.opt(w.avg_temperature(), RowWriter::float);
        r.int(t.door_opens);
        r.int(t.card_attempts);
        r.int(t.card_errors);
        r.int(t.motor_faults);
        r.opt(t.max_motor_current, RowWriter::reading);
        r.opt(t.min_network_signal, RowWriter::reading);
        let levels = w.levels();
        for level in levels {
            r.text(level.as_str());
        }
        r.text(levels.into_iter().max().unwrap_or(Level::Normal).as_str());
    })
}

/// Batch definition of the windows, for oracle tests and the golden scenario.
#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Window> {
    let config = &scenario.config;
    let now = scenario.now();
    every_window_oracle(scenario)
        .into_iter()
        .filter(|w| w.start + config.window_ms + config.window_retention_ms > now)
        .collect()
}

/// Every window the scenario had, expired or not, with its events delivered before it expired.
#[cfg(test)]
pub(crate) fn every_window_oracle(scenario: &crate::testing::Scenario) -> Vec<Window> {
    use std::collections::BTreeMap;
    let config = &scenario.config;
    let width = config.window_ms;
    let alive = |t: Time, start: Timestamp| start + width + config.window_retention_ms > t;
    let mut per_window: BTreeMap<WindowKey, Agg> = BTreeMap::new();
    // Every event once (`testing::naive_identity`).
    let mut counted = std::collections::BTreeSet::new();
    for (t, e) in &scenario.deliveries {
        if let Some((k, piece)) = contribution(e, width)
            && alive(*t, k.1)
        {
            let identity = crate::testing::naive_identity(e);
            if counted.insert(identity) {
                per_window.entry(k).or_default().add(&piece.agg.unpack());
            }
        }
    }
    for (t, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        if let Some((k, piece)) = card_contribution(&l, width)
            && alive(t, k.1)
        {
            per_window.entry(k).or_default().add(&piece.agg.unpack());
        }
    }
    per_window
        .into_iter()
        .map(|((machine_id, start), totals)| Window {
            machine_id,
            start,
            totals,
        })
        .collect()
}

/// Batch definition of the window corrections: each accepted card sale line whose window's
/// retention had ended when it was delivered, by (machine, window, arrival day), while still
/// kept.
#[cfg(test)]
pub(crate) fn corrections_oracle(scenario: &crate::testing::Scenario) -> Vec<Row> {
    let config = &scenario.config;
    let now = scenario.now();
    let width = config.window_ms;
    let mut counts: BTreeMap<CorrectionKey, isize> = BTreeMap::new();
    for (t, l) in crate::sales::oracle(&scenario.deliveries, config).0 {
        let start = l.timestamp.window_start(width);
        let until = start + width + config.window_retention_ms;
        let arrived = t.day();
        let kept = Timestamp((arrived + 1 + CORRECTIONS_KEPT_DAYS) * MS_PER_DAY);
        if l.card && until <= t && kept > now {
            *counts
                .entry((l.machine_id.clone(), start, arrived))
                .or_default() += 1;
        }
    }
    counts.into_iter().map(correction_row).collect()
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::row::Value;
    use crate::testing::{self, Scenario};
    use vendflow_protocol::units::MS_PER_HOUR;

    #[test]
    fn window_corrections_match_batch_oracle_on_random_streams() {
        let mut corrected = 0;
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let expected = corrections_oracle(scenario);
            corrected += expected.len();
            testing::assert_view(views, "anomaly_window_corrections", expected, seed);
        }
        assert!(
            corrected > 0,
            "the random streams deliver card sales past their window"
        );
    }

    #[test]
    fn a_card_sale_days_late_is_a_correction_of_its_window_and_too_late() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        scenario.deliver(t, testing::heartbeat("m1", t, 4_000));
        // Sold at t + 1 s, delivered three days later (a machine offline that long).
        let late = t + 3 * MS_PER_DAY;
        scenario.deliver(late, testing::sale("m1", t + 1_000, 2, 250, "tx-1"));
        scenario.deliver(late + 1, testing::heartbeat("m1", late + 1, 4_000));
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "anomaly_window_corrections");
        assert_eq!(
            rows,
            vec![correction_row((
                (
                    testing::machine("m1"),
                    Timestamp(t),
                    late.div_euclid(MS_PER_DAY)
                ),
                1
            ))]
        );
        // The window itself left the view long ago; the sale still counts in its day's revenue.
        let windows = testing::rows(&views, "anomaly_windows");
        assert!(
            windows
                .iter()
                .all(|w| w.cell(1) != Value::Time(Timestamp(t)))
        );
        let revenue = testing::rows(&views, "revenue_machine_daily");
        assert_eq!(revenue.len(), 1, "{revenue:?}");
        assert_eq!(
            revenue[0].cell(2),
            Value::Money(vendflow_protocol::Cents(250))
        );
        let late_rows = testing::rows(&views, "too_late");
        assert!(
            late_rows
                .iter()
                .any(|r| r.cell(0) == Value::text("anomaly_windows")),
            "a late arrival is still counted as one: {late_rows:?}"
        );
    }

    /// A window closed longer ago than `window_memory_ms` waits on disk; a late event takes it
    /// back with its aggregate and its events' identities (a re-delivery is still a duplicate);
    /// at the end of its retention it is retracted from disk.
    #[test]
    fn a_window_closed_long_ago_waits_on_disk_and_a_late_event_takes_it_back() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        let first = testing::heartbeat("m1", t, 4_000);
        scenario.deliver(t, first.clone());
        scenario.deliver(
            t + MS_PER_HOUR,
            testing::heartbeat("m1", t + MS_PER_HOUR, 4_000),
        );
        // Three hours on (the window has been on disk since t + 35 min): a heartbeat of that
        // window from a buffer, and the first one again.
        let late = t + 3 * MS_PER_HOUR;
        scenario.deliver(late, testing::heartbeat("m1", t + 30_000, 9_000));
        scenario.deliver(late, first);
        scenario.deliver(
            late + MS_PER_HOUR,
            testing::heartbeat("m1", late + MS_PER_HOUR, 4_000),
        );
        let testing::Run {
            views,
            parked: (parked, taken_back, ended),
            ..
        } = testing::run_parking(&scenario, None);
        let windows = testing::rows(&views, "anomaly_windows");
        let first_window: Vec<_> = windows
            .iter()
            .filter(|w| w.cell(1) == Value::Time(Timestamp(t)))
            .collect();
        assert_eq!(first_window.len(), 1, "{windows:?}");
        assert_eq!(
            first_window[0].cell(2),
            Value::Int(2),
            "both heartbeats, once each"
        );
        assert_eq!(first_window[0].cell(11), Value::text("critical"), "9 °C");
        assert_eq!(
            testing::rows(&views, "event_duplicates"),
            vec![dedup::row((
                (testing::machine("m1"), "heartbeat".into()),
                1
            ))],
            "the identities came back from disk"
        );
        assert_eq!(windows.len(), 3, "{windows:?}");
        assert!(taken_back >= 1, "taken back {taken_back}");
        assert!(
            parked >= 3,
            "the first window twice and the second once at least: {parked}"
        );
        assert_eq!(ended, 0);
        // Two days on, every window has ended, those on disk from there.
        let end = t + 3 * MS_PER_DAY;
        scenario.deliver(end, testing::heartbeat("m1", end, 4_000));
        let testing::Run {
            views,
            parked: (_, _, ended),
            ..
        } = testing::run_parking(&scenario, None);
        let windows = testing::rows(&views, "anomaly_windows");
        assert_eq!(windows.len(), 1, "only the newest: {windows:?}");
        assert_eq!(ended, 3, "three windows ended on disk");
    }

    /// Parked windows survive a checkpoint: the random streams (late, duplicate and
    /// out-of-order events of every kind, windows on disk after 20 minutes) give the oracle's
    /// windows through a restart, with windows parked and taken back on both sides of it.
    #[test]
    fn parked_windows_match_the_oracle_through_a_restart() {
        let mut taken = 0;
        for seed in [2, 5] {
            let scenario = Scenario::random(seed);
            let steps = testing::steps(&scenario).len();
            let testing::Run {
                views,
                checkpoint: at,
                parked: (parked, taken_back, ended),
                ..
            } = testing::run_parking(&scenario, Some(steps / 2));
            assert!(at.is_some());
            assert!(
                parked > 0 && ended > 0,
                "seed {seed}: {parked} parked, {ended} ended"
            );
            taken += taken_back;
            testing::assert_view(
                &views,
                "anomaly_windows",
                oracle(&scenario).into_iter().map(row).collect(),
                seed,
            );
        }
        assert!(taken > 0, "late events took windows back from disk");
    }

    #[test]
    fn a_parked_window_decodes_to_what_was_parked() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..500 {
            let totals = Packed {
                temperature_sum: rng.random(),
                counts: std::array::from_fn(|_| rng.random()),
                max_temperature: rng.random(),
                max_motor_current: NO_READING,
                min_network_signal: rng.random(),
            };
            let mut seen = Seen::default();
            let base: u64 = rng.random();
            for _ in 0..rng.random_range(0..20) {
                // Close numbers (a machine's seq) or anything (a content hash).
                seen.insert(if rng.random() {
                    base.wrapping_add(rng.random_range(0..50))
                } else {
                    rng.random()
                });
            }
            let bytes = parked_value(&totals, &seen);
            assert_eq!(parked_value_of(&bytes), Some((totals, seen.clone())));
            assert_eq!(
                parked_value_of(&bytes[..bytes.len() - 1]),
                None,
                "cut short"
            );
        }
        let m = testing::machine("m-7");
        let key = parked_key(&m, Timestamp(-300_000));
        assert_eq!(parked_key_of(&key), Some((m, Timestamp(-300_000))));
    }

    /// A machine's windows are found where they are, with every window between them and the
    /// newest or with gaps, inserted in any order; a window it does not have is not found.
    #[test]
    fn a_machine_finds_its_windows_with_gaps_or_without() {
        let width = 300_000;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for _ in 0..200 {
            let mut starts: Vec<i64> = (0..40).filter(|_| rng.random_bool(0.7)).collect();
            starts.shuffle(&mut rng);
            let mut machine = MachineWindows::default();
            for &k in &starts {
                let start = Timestamp(k * width);
                if machine.get(start, width).is_none() {
                    machine.insert(Slot {
                        start,
                        totals: Packed::EMPTY,
                        at: Time::EPOCH,
                        seen: Seen::default(),
                    });
                }
            }
            for k in -2..42 {
                let start = Timestamp(k * width);
                let found = machine.get(start, width).map(|w| w.start);
                let expected = starts.contains(&k).then_some(start);
                assert_eq!(found, expected, "window {k} of {starts:?}");
            }
            // A start the machine cannot have, as far back as time goes: not found, no overflow.
            assert!(machine.get(Timestamp(i64::MIN), width).is_none());
        }
    }

    /// The packed form folds exactly as [`Agg::add`] does, readings absent or at the decoder's
    /// limits included.
    #[test]
    fn packed_aggregates_fold_like_aggregates() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let reading = |rng: &mut rand_chacha::ChaCha8Rng| match rng.random_range(0..5) {
            0 => None,
            1 => Some(Milli(1_000_000_000)),
            2 => Some(Milli(-1_000_000_000)),
            _ => Some(Milli(rng.random_range(-120_000..120_000))),
        };
        let (mut plain, mut packed) = (Agg::default(), Packed::EMPTY);
        assert_eq!(packed.unpack(), plain);
        for _ in 0..2_000 {
            let t = reading(&mut rng);
            let one = Agg {
                heartbeats: rng.random_range(0..2),
                temperature_sum: t.map_or(0, |t| t.0),
                temperature_readings: i64::from(t.is_some()),
                door_opens: rng.random_range(0..2),
                card_attempts: rng.random_range(0..2),
                card_errors: rng.random_range(0..2),
                motor_faults: rng.random_range(0..2),
                max_temperature: t,
                max_motor_current: reading(&mut rng),
                min_network_signal: reading(&mut rng),
            };
            assert_eq!(Packed::of(&one).unpack(), one);
            plain.add(&one);
            packed.add(&Packed::of(&one));
            assert_eq!(packed.unpack(), plain);
        }
    }

    #[test]
    fn windows_match_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let expected = oracle(scenario).into_iter().map(row).collect();
            testing::assert_view(views, "anomaly_windows", expected, seed);
        }
    }

    #[test]
    fn thresholds_follow_the_design() {
        assert_eq!(classify_temperature(Some(Milli(5_000))), Level::Normal);
        assert_eq!(classify_temperature(Some(Milli(5_100))), Level::Warning);
        assert_eq!(classify_temperature(Some(Milli(8_100))), Level::Critical);
        assert_eq!(classify_temperature(Some(Milli(1_000))), Level::Warning);
        assert_eq!(classify_door(3), Level::Warning);
        assert_eq!(classify_door(4), Level::Critical);
        assert_eq!(classify_card(200, 1), Level::Normal);
        assert_eq!(classify_card(100, 5), Level::Warning);
        assert_eq!(classify_card(100, 6), Level::Critical);
        assert_eq!(classify_motor(Some(Milli(1_900)), 0), Level::Critical);
        assert_eq!(classify_network(Some(Milli(-91_000))), Level::Critical);
        assert_eq!(classify_network(Some(Milli(-80_000))), Level::Warning);
    }

    #[test]
    fn late_heartbeat_corrects_its_own_window() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        scenario.deliver(t, testing::heartbeat("m1", t, 4_000));
        scenario.deliver(t + 600_000, testing::heartbeat("m1", t + 600_000, 4_000));
        // Arrives 10 minutes late for the first window, hotter than anything seen there.
        scenario.deliver(t + 601_000, testing::heartbeat("m1", t + 1_000, 9_000));
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "anomaly_windows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cell(3), Value::Reading(Milli(9_000)));
        assert_eq!(rows[0].cell(16), Value::text("critical"));
        assert_eq!(rows[1].cell(16), Value::text("normal"));
    }
}

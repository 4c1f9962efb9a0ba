//! Ids, money, time and exact decimals.
//!
//! Money is an integer count of minor units (cents) and never passes through `f64`; sensor readings
//! are fixed-point integers (thousandths) so that they can be compared, ordered and summed exactly
//! inside the dataflows. Time is UTC epoch milliseconds in one newtype.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Short text kept inline (up to 24 bytes) instead of on the heap: ids and codes are cloned into
/// many dataflow records, and a clone must not cost an allocation.
pub type Text = compact_str::CompactString;

/// A machine's id as the machine and the registry spell it (`mach_xyz789`, `m00042`).
///
/// Ids are 1 to 64 characters of ASCII letters, digits and `_ - . :`, so they are safe in MQTT
/// topics, Kafka keys, file names and SQL literals.
///
/// An id is interned: every distinct id is stored once for the life of the process, and a
/// `MachineId` is its number in the process's table of ids with a 32-bit hash of its text (8
/// bytes). Machine ids are keys of nearly every piece of dataflow state and of every exchange
/// between workers, so equality compares the numbers and [`Hash`](std::hash::Hash) hashes the
/// hash held in the id: hashing an id reads no memory (reading an interned entry elsewhere in
/// memory for its hash was a cache miss per record and operator, ~6 % of a replay's CPU). The
/// hash is a function of the text alone, the same in every process and every run: keys route to
/// the same worker across the processes of a cluster and across a restart from a checkpoint
/// ([`MachineId::stable_hash`]). Ordering is by the text, as before interning.
/// The number of distinct ids a process holds is capped at [`MAX_MACHINE_IDS`], so a flood of
/// made-up ids (a corrupt file, a sender that is not a machine) cannot grow memory without bound.
#[derive(Clone)]
pub struct MachineId {
    /// Where the text is in [`TEXTS`].
    index: u32,
    /// The text's hash ([`MachineId::stable_hash`]).
    hash: u32,
}

/// Distinct machine ids one process can hold (80 × the 50,000-machine fleet).
pub const MAX_MACHINE_IDS: usize = 1 << 22;

/// Ids per block of [`TEXTS`].
const TEXTS_BLOCK: usize = 1 << 12;

/// Every interned id's text by its number, in blocks made as the ids come: the whole table made
/// at once would be [`MAX_MACHINE_IDS`] slots, where a fleet fills a few blocks. A block's slot is
/// set once, under its shard's lock, before the id is handed out.
static TEXTS: std::sync::LazyLock<Box<[std::sync::OnceLock<Block>]>> =
    std::sync::LazyLock::new(|| {
        (0..MAX_MACHINE_IDS.div_ceil(TEXTS_BLOCK))
            .map(|_| std::sync::OnceLock::new())
            .collect()
    });

type Block = Box<[std::sync::OnceLock<&'static str>]>;

/// Keyed by the id's text held in the table's own slot (inline up to 24 bytes, as every fleet's
/// ids are): a lookup reads the slot it lands on, not a string elsewhere in memory as well.
type InternMap = std::collections::HashMap<Text, MachineId, foldhash::fast::RandomState>;

/// The interned ids in shards, each behind its own lock on its own cache line: a file's replay
/// readers intern every line's id at once, and with one lock each read lock taken moved that
/// lock's cache line between their cores (a quarter of the time spent interning).
static INTERNER: std::sync::LazyLock<[Shard; SHARDS]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|_| Shard::default()));

/// Ids interned, over every shard (against [`MAX_MACHINE_IDS`]).
static INTERNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

const SHARDS: usize = 64;

thread_local! {
    /// The ids this thread interned or found, up to [`NEAR_IDS`] of them (at most about 4 MB
    /// a thread that parses ids: the replay readers, a source's threads).
    static NEAR: std::cell::RefCell<std::collections::HashMap<Text, MachineId, foldhash::fast::RandomState>> =
        std::cell::RefCell::default();
}

/// The most ids one thread keeps at hand ([`NEAR`]): more than twice a 50,000-machine fleet,
/// and the most a table of 2^17 slots holds (7/8 of them) before it doubles.
const NEAR_IDS: usize = (1 << 17) / 8 * 7;

#[derive(Default)]
#[repr(align(128))]
struct Shard(std::sync::RwLock<InternMap>);

/// The shard of an id's text (the top bits of a hash seeded apart from the maps' own).
fn shard_of(s: &str) -> &'static Shard {
    use std::hash::BuildHasher;
    let hash = foldhash::fast::FixedState::with_seed(0x7368_6172_6473).hash_one(s);
    &INTERNER[(hash >> 58) as usize % SHARDS]
}

impl MachineId {
    /// Checks and wraps an id.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        // Found in this thread's own table first: no lock, one hash. An id in it passed the
        // check when it was first interned.
        if let Some(id) = NEAR.with_borrow(|near| near.get(s).cloned()) {
            return Ok(id);
        }
        Self::check(s)?;
        let id = Self::intern(s)?;
        NEAR.with_borrow_mut(|near| {
            if near.len() < NEAR_IDS {
                near.insert(Text::from(s), id.clone());
            }
        });
        Ok(id)
    }

    /// Looks up ids about to be parsed in this thread's table, all together: each lookup of a
    /// large table is a cache miss, and misses made one after the other overlap, while one
    /// made in the midst of decoding a line waits alone. Parsing them after finds them cached.
    pub fn warm<'a>(ids: impl Iterator<Item = &'a str>) {
        NEAR.with_borrow(|near| {
            for s in ids {
                std::hint::black_box(near.get(s));
            }
        });
    }

    /// Checks an id's spelling without interning it (for text that may not come from a machine
    /// at all, e.g. before a signature is verified).
    pub fn check(s: &str) -> Result<(), ParseError> {
        if s.is_empty() || s.len() > 64 {
            return Err(ParseError::new(format!(
                "machine id must be 1 to 64 characters, got {}",
                s.len()
            )));
        }
        // By bytes: every allowed character is ASCII, and the first byte refused starts the
        // character to name.
        if let Some(i) = s
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')))
        {
            let c = s[i..].chars().next().unwrap_or('?');
            return Err(ParseError::new(format!(
                "machine id contains {c:?}; allowed are letters, digits and _ - . :"
            )));
        }
        Ok(())
    }

    fn intern(s: &str) -> Result<Self, ParseError> {
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is only ever extended by a complete insert.
        let shard = &shard_of(s).0;
        let read = shard.read().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = read.get(s) {
            return Ok(id.clone());
        }
        drop(read);
        let mut write = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = write.get(s) {
            return Ok(id.clone());
        }
        // A place taken before the id is made: the count never passes the limit.
        use std::sync::atomic::Ordering::Relaxed;
        let index = INTERNED.fetch_add(1, Relaxed);
        let (Some(block), Ok(number)) = (TEXTS.get(index / TEXTS_BLOCK), u32::try_from(index))
        else {
            INTERNED.fetch_sub(1, Relaxed);
            return Err(ParseError::new(format!(
                "this process already holds {MAX_MACHINE_IDS} distinct machine ids; {s:?} is one too many"
            )));
        };
        let text: &'static str = Box::leak(Box::<str>::from(s));
        let block = block.get_or_init(|| {
            (0..TEXTS_BLOCK)
                .map(|_| std::sync::OnceLock::new())
                .collect()
        });
        if let Some(slot) = block.get(index % TEXTS_BLOCK) {
            // Each number is taken once (the counter above), so the slot is empty.
            let _ = slot.set(text);
        }
        use std::hash::BuildHasher;
        // The low half of the text's 64-bit hash (what `stable_hash` was before ids held it).
        let hash = foldhash::quality::FixedState::with_seed(0x6d61_6368).hash_one(s) as u32;
        let id = MachineId {
            index: number,
            hash,
        };
        write.insert(Text::from(s), id.clone());
        Ok(id)
    }

    pub fn as_str(&self) -> &'static str {
        let index = self.index as usize;
        // Always set: an id is only made once its text is in the table.
        TEXTS
            .get(index / TEXTS_BLOCK)
            .and_then(|block| block.get()?.get(index % TEXTS_BLOCK)?.get().copied())
            .unwrap_or("")
    }

    /// How many distinct machine ids this process holds (every id ever parsed here; never
    /// fewer over time): how large a fleet the process has seen, for sizing per-machine state.
    pub fn interned() -> usize {
        INTERNED.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A hash of the id's text (a fixed seed, computed once when the id is interned): the same
    /// in every process and every run; what the [`Hash`](std::hash::Hash) impl hashes.
    pub fn stable_hash(&self) -> u64 {
        u64::from(self.hash)
    }

    /// A number equal for equal ids and different for different ones within this process (the
    /// id's number in the table): to group records by machine without reading the ids' text, as
    /// ordering by id does. Not an order to show or to keep across runs. The numbers are dense,
    /// 0 to [`MachineId::interned`] − 1: a set of machines can be a bit per number.
    pub fn grouping_key(&self) -> usize {
        self.index as usize
    }
}

impl PartialEq for MachineId {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}
impl Eq for MachineId {}

impl PartialOrd for MachineId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MachineId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.index == other.index {
            std::cmp::Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl std::hash::Hash for MachineId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The hash of the id's text, computed once and held in the id: keys route to the same
        // worker in every process and every run, so an operator's state saved in a checkpoint
        // is found by the worker that gets the key's records after a restart (the address did
        // not: a restarted engine sent a machine to a new worker, which counted it again from
        // zero), and hashing reads no memory.
        state.write_u32(self.hash);
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MachineId").field(&self.as_str()).finish()
    }
}

impl Serialize for MachineId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MachineId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        MachineId::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that does not parse (an id, a time, a decimal): bad input, with a message that
/// tells whoever sent it what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> ParseError {
        ParseError(message.into())
    }
}

/// The message, for errors that carry one (a decoder's [`crate::DecodeError`]).
impl From<ParseError> for String {
    fn from(e: ParseError) -> String {
        e.0
    }
}

/// A point in time: UTC milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

pub const MS_PER_MINUTE: i64 = 60_000;
pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable instant ("never", for a deadline that is not set).
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// Milliseconds since the epoch.
    pub const fn ms(self) -> i64 {
        self.0
    }

    /// `self + ms`, at most [`Timestamp::MAX`] (a deadline far in the future stays in the future).
    pub const fn saturating_add(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - ms`, at least `i64::MIN` ms.
    pub const fn saturating_sub(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(ms))
    }

    /// The midnight (UTC) that starts `day` (days since the epoch).
    pub const fn of_day(day: i64) -> Timestamp {
        Timestamp(day.saturating_mul(MS_PER_DAY))
    }

    /// The wall clock (0 if the system clock is before 1970).
    pub fn now() -> Self {
        Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        )
    }

    /// Parses RFC 3339 (`2024-01-15T10:28:15Z`, `…+01:00`, fractional seconds allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Self, ParseError> {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(|e| ParseError::new(format!("timestamp {s:?} is not RFC 3339: {e}")))
    }

    /// Parses a calendar date (`2024-01-15`) as its midnight UTC.
    pub fn parse_date(s: &str) -> Result<Self, ParseError> {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|e| ParseError::new(format!("date {s:?} is not YYYY-MM-DD: {e}")))
            .and_then(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map(|t| Timestamp(t.and_utc().timestamp_millis()))
                    .ok_or_else(|| ParseError::new(format!("date {s:?} has no midnight")))
            })
    }

    /// Parses either RFC 3339 or a calendar date.
    pub fn parse_text(s: &str) -> Result<Self, ParseError> {
        if s.len() == 10 {
            Self::parse_date(s)
        } else {
            Self::parse_rfc3339(s)
        }
    }

    /// The UTC day this instant falls in, as days since the epoch.
    pub fn day(self) -> i64 {
        self.0.div_euclid(MS_PER_DAY)
    }

    /// Start of the tumbling window of `width_ms` this instant falls in.
    pub fn window_start(self, width_ms: i64) -> Timestamp {
        Timestamp(self.0 - self.0.rem_euclid(width_ms))
    }

    /// The first multiple of `width_ms` at or after this instant (the end of its window, or
    /// the instant itself when it starts one).
    pub fn round_up(self, width_ms: i64) -> Timestamp {
        let start = self.window_start(width_ms);
        if start == self {
            start
        } else {
            start.saturating_add(width_ms)
        }
    }

    /// Day of week, 0 = Monday … 6 = Sunday (1970-01-01 was a Thursday).
    pub fn weekday(self) -> u8 {
        ((self.day() + 3).rem_euclid(7)) as u8
    }

    /// Hour of the UTC day, 0–23.
    pub fn hour(self) -> u8 {
        (self.0.rem_euclid(MS_PER_DAY) / MS_PER_HOUR) as u8
    }

    /// RFC 3339 text with millisecond precision, e.g. `2024-01-15T10:28:15.000Z`.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}ms", self.0),
        }
    }
}

/// Formats a day number (days since the epoch) as `YYYY-MM-DD`.
pub fn format_day(day: i64) -> String {
    let date = chrono::DateTime::from_timestamp_millis(day * MS_PER_DAY).map(|t| t.date_naive());
    match date {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => format!("day {day}"),
    }
}

/// `t + ms`.
impl std::ops::Add<i64> for Timestamp {
    type Output = Timestamp;
    fn add(self, ms: i64) -> Timestamp {
        Timestamp(self.0 + ms)
    }
}

/// `t - ms`.
impl std::ops::Sub<i64> for Timestamp {
    type Output = Timestamp;
    fn sub(self, ms: i64) -> Timestamp {
        Timestamp(self.0 - ms)
    }
}

/// The milliseconds from `earlier` to `self`.
impl std::ops::Sub<Timestamp> for Timestamp {
    type Output = i64;
    fn sub(self, earlier: Timestamp) -> i64 {
        self.0 - earlier.0
    }
}

/// `Timestamp` is the engine's time as well (timely's and differential's traits, as for `i64`):
/// ingestion times, deadlines and event times are one type, compared and added without conversion.
#[cfg(feature = "engine-time")]
mod engine_time {
    use super::Timestamp;
    use timely::order::{PartialOrder, TotalOrder};
    use timely::progress::timestamp::{PathSummary, Refines};

    impl PartialOrder for Timestamp {
        #[inline]
        fn less_equal(&self, other: &Self) -> bool {
            self.0 <= other.0
        }
    }

    impl TotalOrder for Timestamp {}

    /// A path summary is a number of milliseconds added (timely's summaries of integer times).
    /// The engine's times start at the epoch (an ingestion time is a clock's, never earlier; a
    /// source that derives one from an event's time takes it no earlier than the epoch), so
    /// inputs and frontiers start where they did when the engine's time was a `u64`.
    impl timely::progress::Timestamp for Timestamp {
        type Summary = Timestamp;
        fn minimum() -> Self {
            Timestamp::EPOCH
        }
    }

    impl PathSummary<Timestamp> for Timestamp {
        #[inline]
        fn results_in(&self, src: &Timestamp) -> Option<Timestamp> {
            self.0.checked_add(src.0).map(Timestamp)
        }
        #[inline]
        fn followed_by(&self, other: &Timestamp) -> Option<Timestamp> {
            self.0.checked_add(other.0).map(Timestamp)
        }
    }

    impl Refines<()> for Timestamp {
        fn to_inner(_: ()) -> Timestamp {
            Timestamp::default()
        }
        fn to_outer(self) {}
        fn summarize(_: Timestamp) {}
    }

    impl differential_dataflow::lattice::Lattice for Timestamp {
        #[inline]
        fn join(&self, other: &Self) -> Self {
            Timestamp(self.0.max(other.0))
        }
        #[inline]
        fn meet(&self, other: &Self) -> Self {
            Timestamp(self.0.min(other.0))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use differential_dataflow::lattice::Lattice;

        #[test]
        fn a_timestamp_orders_and_joins_as_its_milliseconds() {
            let (a, b) = (Timestamp(-5), Timestamp(7));
            assert!(a.less_equal(&b) && !b.less_equal(&a));
            assert_eq!(a.join(&b), b);
            assert_eq!(a.meet(&b), a);
            assert_eq!(Timestamp(3).results_in(&Timestamp(4)), Some(Timestamp(7)));
            assert_eq!(Timestamp(1).results_in(&Timestamp::MAX), None);
            assert_eq!(
                <Timestamp as timely::progress::Timestamp>::minimum(),
                Timestamp(0)
            );
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Money in minor units (cents). Amounts are parsed from their decimal text exactly.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    /// Parses `2.50`, `2.5`, `3` or `0.05` exactly; a third decimal place is refused, not rounded.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_decimal(text, 2, Rounding::Exact).map(Cents)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// A sensor reading in thousandths (m°C, mA): `4.1` is `Milli(4100)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Milli(pub i64);

impl Milli {
    /// Parses a decimal, rounding half away from zero past the third decimal place.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_decimal(text, 3, Rounding::HalfAwayFromZero).map(Milli)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", trim_decimal(self.0, 3))
    }
}

/// A coordinate in millionths of a degree.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micro(pub i64);

impl Micro {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_decimal(text, 6, Rounding::HalfAwayFromZero).map(Micro)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// Formats a fixed-point integer with `scale` decimals, dropping trailing zeros (`4100, 3` → `4.1`).
pub fn trim_decimal(value: i64, scale: u32) -> String {
    let unit = 10i64.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let (int, frac) = (abs / unit as u64, abs % unit as u64);
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let digits = format!("{frac:0width$}", width = scale as usize);
    format!("{sign}{int}.{}", digits.trim_end_matches('0'))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// More decimal places than the scale is an error.
    Exact,
    /// Extra places are rounded half away from zero.
    HalfAwayFromZero,
}

/// Parses decimal text (`-12.345`, `3`, `1e2` is refused) into an integer scaled by `10^scale`.
///
/// This never goes through a float, so `0.1 + 0.2` stays `0.3`.
pub fn parse_decimal(text: &str, scale: u32, rounding: Rounding) -> Result<i64, ParseError> {
    // Nearly every number a machine sends (a timestamp, a temperature, an amount) is plain:
    // read in one pass; anything else takes the general path, which also says what is wrong.
    match plain_decimal(text.as_bytes(), scale) {
        Some(value) => Ok(value),
        None => parse_decimal_in_general(text, scale, rounding),
    }
}

/// `-?[0-9]+(\.[0-9]{1,scale})?` scaled by `10^scale`, in one pass; `None` for any other text
/// (spaces, more decimals than the scale, an overflow), which [`parse_decimal_in_general`]
/// decides. Where both answer, they agree (a test checks).
fn plain_decimal(bytes: &[u8], scale: u32) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let mut value: i64 = 0;
    let mut places: Option<u32> = None;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
                if let Some(p) = places.as_mut() {
                    *p += 1;
                }
            }
            b'.' if places.is_none() => places = Some(0),
            _ => return None,
        }
    }
    let places = match places {
        // "1." and ".5" are the general path's to refuse.
        Some(0) => return None,
        Some(p) if digits.first() == Some(&b'.') || p > scale => return None,
        Some(p) => p,
        None if digits.is_empty() => return None,
        None => 0,
    };
    for _ in places..scale {
        value = value.checked_mul(10)?;
    }
    Some(if negative { -value } else { value })
}

fn parse_decimal_in_general(text: &str, scale: u32, rounding: Rounding) -> Result<i64, ParseError> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !all_digits(int_part) || !all_digits(frac_part) {
        return Err(ParseError::new(format!(
            "{t:?} is not a plain decimal number"
        )));
    }
    if digits.contains('.') && frac_part.is_empty() {
        return Err(ParseError::new(format!(
            "{t:?} is not a plain decimal number"
        )));
    }
    let scale = scale as usize;
    let (kept, extra) = if frac_part.len() > scale {
        frac_part.split_at(scale)
    } else {
        (frac_part, "")
    };
    if rounding == Rounding::Exact && extra.bytes().any(|b| b != b'0') {
        return Err(ParseError::new(format!(
            "{t:?} has more than {scale} decimal places"
        )));
    }
    let overflow = || ParseError::new(format!("{t:?} is too large"));
    let mut value: i64 = 0;
    for b in int_part.bytes().chain(kept.bytes()) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    for _ in kept.len()..scale {
        value = value.checked_mul(10).ok_or_else(overflow)?;
    }
    if rounding == Rounding::HalfAwayFromZero
        && extra.as_bytes().first().is_some_and(|&b| b >= b'5')
    {
        value = value.checked_add(1).ok_or_else(overflow)?;
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass reading of plain numbers answers what the general path answers, on every
    /// short text over the characters that matter.
    #[test]
    fn plain_decimals_read_as_the_general_path_reads_them() {
        let alphabet = b"0129.- e+";
        let mut checked = 0;
        for len in 0..=5u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut k = n;
                let text: String = (0..len)
                    .map(|_| {
                        let c = alphabet[k % alphabet.len()];
                        k /= alphabet.len();
                        char::from(c)
                    })
                    .collect();
                for scale in [0, 2, 3] {
                    let general = parse_decimal_in_general(&text, scale, Rounding::Exact).ok();
                    if let Some(fast) = plain_decimal(text.as_bytes(), scale) {
                        assert_eq!(Some(fast), general, "{text:?} at scale {scale}");
                        checked += 1;
                    }
                    for rounding in [Rounding::Exact, Rounding::HalfAwayFromZero] {
                        assert_eq!(
                            parse_decimal(&text, scale, rounding).ok(),
                            parse_decimal_in_general(&text, scale, rounding).ok(),
                            "{text:?} at scale {scale}"
                        );
                    }
                }
            }
        }
        assert!(checked > 1_000, "{checked}");
        for (text, scale) in [
            ("1700000100021", 0),
            ("-9223372036854775808", 0),
            ("9223372036854775807", 0),
            ("9223372036854775808", 0),
            ("92233720368547758.07", 2),
            ("92233720368547758.08", 2),
            ("6.9", 3),
            ("-0.0", 3),
        ] {
            assert_eq!(
                parse_decimal(text, scale, Rounding::Exact).ok(),
                parse_decimal_in_general(text, scale, Rounding::Exact).ok(),
                "{text:?}"
            );
        }
    }

    /// The low half of the text's 64-bit hash, 1_016_069_282_482_128_108 (what ids hashed as
    /// before they held their hash).
    const PINNED_MACH_00042: u64 = 1_016_069_282_482_128_108 & 0xffff_ffff;

    /// Records the words a value hashes as.
    #[derive(Default)]
    struct Recorder(Vec<u64>);

    impl std::hash::Hasher for Recorder {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend(bytes.iter().map(|b| u64::from(*b)));
        }
        fn write_u64(&mut self, n: u64) {
            self.0.push(n);
        }
        fn write_u32(&mut self, n: u32) {
            self.0.push(u64::from(n));
        }
    }

    #[test]
    fn a_machine_id_hashes_as_its_text_in_every_process_and_run() {
        use std::hash::Hash;
        let mut h = Recorder::default();
        MachineId::parse("mach_00042")
            .expect("a valid id")
            .hash(&mut h);
        // Pinned: workers are chosen by this hash, and a checkpoint's state is split by it; a
        // change here must change the checkpoints' state layout too.
        assert_eq!(h.0, vec![PINNED_MACH_00042]);
    }

    #[test]
    fn money_is_parsed_exactly_from_decimal_text() {
        assert_eq!(Cents::parse("2.50"), Ok(Cents(250)));
        assert_eq!(Cents::parse("2.5"), Ok(Cents(250)));
        assert_eq!(Cents::parse("3"), Ok(Cents(300)));
        assert_eq!(Cents::parse("0.05"), Ok(Cents(5)));
        assert_eq!(Cents::parse("1.10"), Ok(Cents(110)));
        assert_eq!(Cents::parse("2.500"), Ok(Cents(250)));
        assert!(Cents::parse("2.505").is_err());
        assert!(Cents::parse("1e2").is_err());
        assert!(Cents::parse("").is_err());
        assert!(Cents::parse(".5").is_err());
        assert!(Cents::parse("5.").is_err());
        assert!(Cents::parse("99999999999999999999").is_err());
        assert_eq!(Cents(-1234).to_string(), "-12.34");
    }

    #[test]
    fn sensor_readings_round_past_three_places() {
        assert_eq!(Milli::parse("4.1"), Ok(Milli(4100)));
        assert_eq!(Milli::parse("-80"), Ok(Milli(-80000)));
        assert_eq!(Milli::parse("1.2345"), Ok(Milli(1235)));
        assert_eq!(Milli::parse("-1.2345"), Ok(Milli(-1235)));
        assert_eq!(Milli(4100).to_string(), "4.1");
        assert_eq!(Milli(-80000).to_string(), "-80");
    }

    #[test]
    fn timestamps_parse_rfc3339_and_dates() {
        let t = Timestamp::parse_rfc3339("2024-01-15T10:28:15Z").unwrap_or_default();
        assert_eq!(t, Timestamp(1_705_314_495_000));
        assert_eq!(t.to_rfc3339(), "2024-01-15T10:28:15.000Z");
        assert_eq!(t.weekday(), 0, "2024-01-15 was a Monday");
        assert_eq!(t.hour(), 10);
        assert_eq!(format_day(t.day()), "2024-01-15");
        assert_eq!(
            Timestamp::parse_text("2024-01-15"),
            Ok(Timestamp(1_705_276_800_000))
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    /// A thread keeps at most `NEAR_IDS` ids at hand; the ones past it are parsed through the
    /// shared table, as the same ids.
    #[test]
    fn a_threads_own_ids_are_bounded_and_ids_past_them_still_parse() {
        std::thread::spawn(|| {
            let text = |n: usize| format!("m_near_{n}");
            for n in 0..NEAR_IDS + 10 {
                MachineId::parse(&text(n)).expect("a valid id");
            }
            assert_eq!(NEAR.with_borrow(|near| near.len()), NEAR_IDS);
            assert!(
                NEAR.with_borrow(|near| near.capacity()) <= NEAR_IDS,
                "full, the table has not doubled its slots"
            );
            for n in [0, NEAR_IDS - 1, NEAR_IDS, NEAR_IDS + 9] {
                MachineId::warm(std::iter::once(text(n).as_str()));
                let id = MachineId::parse(&text(n)).expect("a valid id");
                assert_eq!(id.as_str(), text(n));
                assert_eq!(id, MachineId::parse(&text(n)).expect("a valid id"));
            }
            // A refused id is never kept at hand.
            assert!(MachineId::parse("a/b").is_err());
            assert!(MachineId::parse("a/b").is_err());
        })
        .join()
        .expect("the thread ran");
    }

    #[test]
    fn machine_ids_are_checked() {
        assert!(MachineId::parse("mach_xyz789").is_ok());
        assert!(MachineId::parse("").is_err());
        assert!(MachineId::parse("a/b").is_err());
        assert!(MachineId::parse("+").is_err());
        assert!(MachineId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn an_interned_id_behaves_as_its_text() -> Result<(), ParseError> {
        use std::hash::BuildHasher;
        let a = MachineId::parse("m_interned_b")?;
        let b = MachineId::parse(&String::from("m_interned_b"))?;
        let c = MachineId::parse("m_interned_a")?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str(), "m_interned_b");
        assert_eq!(
            format!("{a} {a:?}"),
            "m_interned_b MachineId(\"m_interned_b\")"
        );
        // Ordered by the text, not by when an id was first seen.
        assert!(c < a);
        let state = foldhash::fast::FixedState::with_seed(7);
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
        assert_ne!(state.hash_one(&a), state.hash_one(&c));
        // The stable hash is the text's, in every process and run (this value must not change).
        assert_eq!(a.stable_hash(), b.stable_hash());
        assert_ne!(a.stable_hash(), c.stable_hash());
        assert_eq!(a.stable_hash(), 13_105_135_119_126_493_499 & 0xffff_ffff);
        assert_eq!(state.hash_one(&a), state.hash_one(a.stable_hash() as u32));
        // Serialized as the text, and checked when read back.
        let json = serde_json::to_string(&a).map_err(|e| ParseError::new(e.to_string()))?;
        assert_eq!(json, "\"m_interned_b\"");
        let back: MachineId =
            serde_json::from_str(&json).map_err(|e| ParseError::new(e.to_string()))?;
        assert_eq!(back, a);
        assert!(serde_json::from_str::<MachineId>("\"a/b\"").is_err());
        Ok(())
    }

    #[test]
    fn ids_interned_by_many_threads_at_once_are_one_id_each() {
        let ids: Vec<Vec<MachineId>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..2_000)
                            .filter_map(|i| MachineId::parse(&format!("m_threads_{i}")).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        assert_eq!(ids.len(), 4);
        for other in &ids[1..] {
            assert_eq!(other.len(), 2_000);
            assert!(
                ids[0]
                    .iter()
                    .zip(other)
                    .all(|(a, b)| a == b && a.grouping_key() == b.grouping_key())
            );
        }
    }
}

//! Operators shared by the dataflows, as extension traits with readable operator names.
//!
//! - [`Temporal::retain_between`]: the temporal-filter pattern. A record is emitted at
//!   `max(now, from)` and its retraction is scheduled at `until`, both in ingestion time; this is
//!   how windows, dedup keys and day totals get a horizon without any timer or polling. A record
//!   whose `until` has already passed when it arrives is *too late*: it is returned separately so
//!   that it can be counted, never silently dropped.
//! - [`Keyed::keyed_in_time_order`]: a stateful operator that sees each key's updates in ingestion
//!   time order, for the two places where a differential `reduce` would retract what it must not
//!   (first-seen dedup, latest value per key).

use std::cell::RefCell;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::difference::{Abelian, Semigroup};
use differential_dataflow::{AsCollection, Data, ExchangeData, VecCollection};
use timely::communication::Push;
use timely::container::{CapacityContainerBuilder, ContainerBuilder, PushInto};
use timely::dataflow::channels::Message;
use timely::dataflow::channels::pact::{DistributorPact, ParallelizationContract, Pipeline};
use timely::dataflow::channels::pushers::OutputSession;
use timely::dataflow::channels::pushers::exchange::Distributor;
use timely::dataflow::operators::core::Map;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::Stamp;
use timely::progress::frontier::AntichainRef;
use timely::progress::operate::FrontierInterest;
use vendflow_protocol::MachineId;

use crate::checkpoint::{self, Durable};

/// Ingestion time: the source's clock, as the protocol's [`Timestamp`] (one time type from the
/// wire to the views; deadlines computed from event times are compared with it directly).
///
/// [`Timestamp`]: vendflow_protocol::Timestamp
pub type Time = vendflow_protocol::Timestamp;

/// A hash for routing keys to the workers (the same for equal keys on every worker, in every
/// process and every run: a machine id hashes as [`MachineId::stable_hash`], the hash of its
/// text). A checkpoint's operator state is split by it, so a restarted engine must route each
/// key to the worker that saved it.
///
/// [`MachineId::stable_hash`]: vendflow_protocol::MachineId::stable_hash
pub fn hash_of<K: Hash + ?Sized>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x76656e64).hash_one(key)
}

/// An exchange by `route` that passes a message on whole when all of its records go to the same
/// worker, instead of copying each record into that worker's buffer: what timely's
/// [`Exchange`](timely::dataflow::channels::pact::Exchange) does, for the same destinations,
/// without the copy where the data is already where it belongs. The events are exchanged by
/// machine once, early (the demux), so nearly every message reaching an operator keyed by
/// machine after it is already on its machine's worker. Records of mixed destinations are
/// distributed one by one, as `Exchange` does. A whole message may overtake records of its
/// time buffered for the same worker: no operator depends on the order of one time's records.
pub(crate) fn by_route<D, F>(route: F) -> impl ParallelizationContract<Time, Vec<(D, Time, isize)>>
where
    D: ExchangeData,
    F: FnMut(&(D, Time, isize)) -> u64 + 'static,
{
    DistributorPact(move |peers| LocalFirst {
        builders: std::iter::repeat_with(Default::default)
            .take(peers)
            .collect(),
        route,
    })
}

/// The distributor of [`by_route`].
struct LocalFirst<D, F> {
    builders: Vec<CapacityContainerBuilder<Vec<D>>>,
    route: F,
}

impl<D, F: FnMut(&D) -> u64> LocalFirst<D, F> {
    fn target(&mut self, d: &D) -> usize {
        // Every destination of `Exchange`: the hash modulo the peers (a mask for a power of two
        // is the same number).
        ((self.route)(d) % self.builders.len() as u64) as usize
    }
}

impl<D, F: FnMut(&D) -> u64> Distributor<Vec<D>> for LocalFirst<D, F> {
    fn partition<T: Clone, P: Push<Message<T, Vec<D>>>>(
        &mut self,
        container: &mut Vec<D>,
        stamp: &Stamp<T>,
        pushers: &mut [P],
    ) {
        let Some(first) = container.first() else {
            return;
        };
        let to = self.target(first);
        let mut whole = true;
        for d in &container[1..] {
            if self.target(d) != to {
                whole = false;
                break;
            }
        }
        if whole {
            Message::push_at(container, stamp.clone(), &mut pushers[to]);
            // What the pusher hands back is the sender's to reuse, and must be empty as
            // `Exchange` leaves it: a pusher to another process serializes the records and
            // hands the same ones back (reused, they were sent again at a later time).
            container.clear();
            return;
        }
        for d in container.drain(..) {
            let to = self.target(&d);
            self.builders[to].push_into(d);
            while let Some(produced) = self.builders[to].extract() {
                Message::push_at(produced, stamp.clone(), &mut pushers[to]);
            }
        }
    }

    fn flush<T: Clone, P: Push<Message<T, Vec<D>>>>(
        &mut self,
        stamp: &Stamp<T>,
        pushers: &mut [P],
    ) {
        for (builder, pusher) in self.builders.iter_mut().zip(pushers.iter_mut()) {
            while let Some(container) = builder.finish() {
                Message::push_at(container, stamp.clone(), pusher);
            }
        }
    }

    fn relax(&mut self) {
        for builder in &mut self.builders {
            builder.relax();
        }
    }
}

/// A fast hash map for operator state (foldhash, not SipHash: keys are not attacker-chosen).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Makes room in `map` for one more key, ahead of an insert. A table that already holds an
/// eighth of the machines one worker has (the machine ids this process has seen, over the
/// `peers` workers that share them) is sized for all of them at once, rather than doubling its
/// way there: each doubling moved every entry and faulted in a fresh table (a fold's table
/// growth was ~5 % of a 1 M replay's samples). State keyed by machine (or by machine and day,
/// slot, transaction) reaches that size anyway; a table that stays smaller never gets here.
pub(crate) fn room_for_one<K: Eq + std::hash::Hash, V>(map: &mut FastMap<K, V>, peers: usize) {
    if map.len() < map.capacity() {
        return;
    }
    let per_worker = vendflow_protocol::MachineId::interned() / peers.max(1);
    if let Some(more) = room_wanted(map.len(), per_worker) {
        map.reserve(more);
    }
}

/// The keys to make room for in a full table of `len` keys ([`room_for_one`]), or None to let
/// it grow as it does.
fn room_wanted(len: usize, per_worker: usize) -> Option<usize> {
    (len >= per_worker / 8 && len < per_worker).then(|| per_worker - len)
}

/// A set of machines as one bit per interned id ([`MachineId::grouping_key`]): membership is a
/// bit test in a few kilobytes (6 KB for a 50,000-machine fleet, 512 KB at the cap of
/// [`vendflow_protocol::units::MAX_MACHINE_IDS`]), no hash and no probe of a table larger than
/// the cache. For a set asked about at every event (the demux's machines seen today: as a hash
/// set, 4 % of the workers' samples in a 1 M replay, nearly all of it the probe's cache miss).
/// A process's ids only (the numbers are not stable across processes or runs): never saved.
#[derive(Default)]
pub(crate) struct MachineSet {
    words: Vec<u64>,
}

impl MachineSet {
    /// Adds `machine`; whether it was absent.
    pub(crate) fn insert(&mut self, machine: &MachineId) -> bool {
        let i = machine.grouping_key();
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        room_for_machines(&mut self.words, word, 64, 0);
        let absent = self.words[word] & bit == 0;
        self.words[word] |= bit;
        absent
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, machine: &MachineId) -> bool {
        let i = machine.grouping_key();
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Empties the set, keeping its room.
    pub(crate) fn clear(&mut self) {
        self.words.fill(0);
    }
}

/// Makes `table`, one entry per `ids_per_entry` interned machine ids (by
/// [`MachineId::grouping_key`]), long enough for entry `entry`, filling new entries with `fill`:
/// room for every id interned so far at once, so a table indexed by machine grows with the
/// fleet, not one id at a time.
pub(crate) fn room_for_machines<T: Clone>(
    table: &mut Vec<T>,
    entry: usize,
    ids_per_entry: usize,
    fill: T,
) {
    if entry >= table.len() {
        let wanted = MachineId::interned()
            .div_ceil(ids_per_entry.max(1))
            .max(entry + 1);
        table.resize(wanted, fill);
    }
}

/// Keys an operator publishes per activation when a time has touched many ([`Keyed::keyed_steps`],
/// the folds): a bulk step touches every key, and publishing them all at once would hold every
/// view's changes of the step in memory at the same moment; between parts the operators
/// downstream (and the view store) take what went out.
#[cfg(not(test))]
pub(crate) const PUBLISH_CHUNK: usize = 16_384;
/// Small under test, so that every oracle test publishes its times in several parts.
#[cfg(test)]
pub(crate) const PUBLISH_CHUNK: usize = 3;

/// The state each keyed operator holds (the folds' keys and the bytes of their tables' slots),
/// per worker, now: kept by the engine ([`crate::engine::Engine::operator_state`]) and read by
/// its `/metrics`; and with `VENDFLOW_PROFILE=1`, the largest each held, summed over workers,
/// so a profile shows where memory goes as well as time. Sizes are shallow (the tables' slots,
/// not what a state points to on the heap).
pub mod state_sizes {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    use std::sync::{Arc, LazyLock, Mutex, Weak};
    use std::thread::ThreadId;

    /// Per operator name: per worker thread, the peak (keys, bytes).
    type Peaks = BTreeMap<String, HashMap<ThreadId, (usize, usize)>>;

    static ENABLED: LazyLock<bool> =
        LazyLock::new(|| std::env::var_os("VENDFLOW_PROFILE").is_some());
    static PEAKS: LazyLock<Mutex<Peaks>> = LazyLock::new(Default::default);

    /// One operator's state on one worker, as it last told it.
    #[derive(Debug, Default)]
    pub struct Gauge {
        name: String,
        keys: AtomicUsize,
        bytes: AtomicUsize,
        /// When [`Gauge::set_with`] next measures (ms since [`STARTED`]).
        next_ms: AtomicU64,
    }

    /// What [`Gauge::set_with`] counts its milliseconds from (its first call in the process).
    static STARTED: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

    impl Gauge {
        /// Sets what `size` measures, at most once a second (at every call when profiling):
        /// for a size that takes a walk over the state to tell, which a live engine's every
        /// publication need not pay.
        pub(crate) fn set_with(&self, size: impl FnOnce() -> (usize, usize)) {
            let now = STARTED.elapsed().as_millis() as u64;
            if !*ENABLED && now < self.next_ms.load(Relaxed) {
                return;
            }
            self.next_ms.store(now + 1_000, Relaxed);
            self.set(size());
        }

        /// The operator now holds (keys, bytes) `size`.
        pub(crate) fn set(&self, (keys, bytes): (usize, usize)) {
            self.keys.store(keys, Relaxed);
            self.bytes.store(bytes, Relaxed);
            if *ENABLED {
                let mut peaks = PEAKS.lock().unwrap_or_else(|e| e.into_inner());
                let peak = peaks
                    .entry(self.name.clone())
                    .or_default()
                    .entry(std::thread::current().id())
                    .or_default();
                peak.0 = peak.0.max(keys);
                peak.1 = peak.1.max(bytes);
            }
        }
    }

    /// An engine's gauges, over its workers; an operator's goes when its dataflow does.
    #[derive(Clone, Debug, Default)]
    pub struct OperatorState(Arc<Mutex<Vec<Weak<Gauge>>>>);

    impl OperatorState {
        /// Per operator name, (keys, bytes) summed over the workers whose dataflow is up, by
        /// name.
        pub fn current(&self) -> Vec<(String, usize, usize)> {
            let mut gauges = self.0.lock().unwrap_or_else(|e| e.into_inner());
            gauges.retain(|g| g.strong_count() > 0);
            let mut sums: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for gauge in gauges.iter().filter_map(Weak::upgrade) {
                let sum = sums.entry(gauge.name.clone()).or_default();
                sum.0 += gauge.keys.load(Relaxed);
                sum.1 += gauge.bytes.load(Relaxed);
            }
            sums.into_iter().map(|(n, (k, b))| (n, k, b)).collect()
        }

        /// Installs these gauges on this thread while the returned guard lives: the operators
        /// built meanwhile take theirs from them ([`gauge`]).
        pub(crate) fn building(&self) -> Building {
            Building(BUILDING.with(|b| b.borrow_mut().replace(self.clone())))
        }
    }

    thread_local! {
        static BUILDING: RefCell<Option<OperatorState>> = const { RefCell::new(None) };
    }

    /// Uninstalls the gauges when the build is over (or unwinds).
    pub(crate) struct Building(Option<OperatorState>);

    impl Drop for Building {
        fn drop(&mut self) {
            BUILDING.with(|b| *b.borrow_mut() = self.0.take());
        }
    }

    /// The gauge of operator `name` on this worker, in the engine's gauges when it is being
    /// built under [`OperatorState::building`] (else read by nobody but the profile).
    pub(crate) fn gauge(name: &str) -> Arc<Gauge> {
        let gauge = Arc::new(Gauge {
            name: name.to_owned(),
            ..Gauge::default()
        });
        BUILDING.with(|b| {
            if let Some(state) = b.borrow().as_ref() {
                state
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Arc::downgrade(&gauge));
            }
        });
        gauge
    }

    /// The peaks summed over workers, largest first: (name, keys, bytes).
    pub(crate) fn report() -> Vec<(String, usize, usize)> {
        let peaks = PEAKS.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = peaks
            .iter()
            .map(|(name, per)| {
                let (keys, bytes) = per
                    .values()
                    .fold((0, 0), |(k, b), (pk, pb)| (k + pk, b + pb));
                (name.clone(), keys, bytes)
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        rows
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_engines_gauges_sum_its_workers_and_forget_a_dropped_operator() {
            let engine = OperatorState::default();
            let other = OperatorState::default();
            let (a, b, c) = {
                let _building = engine.building();
                (gauge("Fold"), gauge("Fold"), gauge("Other"))
            };
            // Built outside the engine's build, or under another engine's: not this one's.
            let outside = gauge("Fold");
            let theirs = {
                let _building = other.building();
                gauge("Fold")
            };
            for (g, size) in [(&a, (3, 300)), (&b, (4, 400)), (&c, (1, 10))] {
                g.set(size);
            }
            outside.set((100, 100));
            theirs.set((50, 50));
            assert_eq!(
                engine.current(),
                [("Fold".to_owned(), 7, 700), ("Other".to_owned(), 1, 10)]
            );
            a.set((5, 500));
            drop(c);
            assert_eq!(engine.current(), [("Fold".to_owned(), 9, 900)]);
            assert_eq!(other.current(), [("Fold".to_owned(), 50, 50)]);
        }
    }
}

pub trait Temporal<'s, D: ExchangeData, R: Abelian + ExchangeData> {
    /// Keeps each record only while ingestion time is in `[from, until)` as given by `window`.
    /// Returns the kept collection and the records that arrived after their `until`.
    fn retain_between(
        self,
        window: impl Fn(&D) -> (Time, Time) + Clone + 'static,
    ) -> (VecCollection<'s, Time, D, R>, VecCollection<'s, Time, D, R>);
}

impl<'s, D: ExchangeData, R: Abelian + ExchangeData> Temporal<'s, D, R>
    for VecCollection<'s, Time, D, R>
{
    fn retain_between(
        self,
        window: impl Fn(&D) -> (Time, Time) + Clone + 'static,
    ) -> (VecCollection<'s, Time, D, R>, VecCollection<'s, Time, D, R>) {
        let late = window.clone();
        let too_late = self
            .clone()
            .inner
            .flat_map::<Vec<(D, Time, R)>, _, _>(move |(d, t, r)| {
                let (_, until) = late(&d);
                (until <= t).then_some((d, t, r))
            })
            .as_collection();
        let kept = self
            .inner
            .flat_map::<Vec<(D, Time, R)>, _, _>(move |(d, t, r)| {
                let (from, until) = window(&d);
                let start = t.max(from);
                let mut retraction = r.clone();
                retraction.negate();
                (start < until)
                    .then(|| [(d.clone(), start, r), (d, until, retraction)])
                    .into_iter()
                    .flatten()
            })
            .as_collection()
            .hold_future();
        (kept, too_late)
    }
}

/// Keys, each with a value, that each stay until their own expiry time: the state of a keyed
/// operator with a horizon (dedup fingerprints, first sightings, the bridge's nonces).
pub struct ExpiringMap<K, V> {
    live: FastMap<K, V>,
    /// Each live key with its expiry, earliest first: one 24-byte slot per key (a fingerprint, a
    /// nonce), where a map of expiry → keys cost a tree entry and an allocation for nearly every
    /// key (expiries are to the millisecond, so few keys share one).
    expiries: BinaryHeap<Expiry<K>>,
}

/// Keys past which an [`ExpiringMap`]'s expiry heap grows by an eighth at a time, not by doubling.
/// The sales dedup keeps 48 hours of a fleet's sale lines: 4.7 M fingerprints a day and a
/// few hours into a 50,000-machine fleet, whose heap had room for 8.4 M after its last doubling
/// (201 MiB of slots for 114 MiB of keys). Growing by an eighth copies the heap about eight
/// times over its life rather than twice, a few hundred milliseconds over hours.
const HEAP_GROWS_BY_EIGHTHS: usize = 1 << 16;

/// A key and its expiry, ordered earliest first in the max-heap (the key is not compared: keys
/// that expire together may leave in any order).
struct Expiry<K>(Time, K);

impl<K> PartialEq for Expiry<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K> Eq for Expiry<K> {}
impl<K> PartialOrd for Expiry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Expiry<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        ExpiringMap {
            live: FastMap::default(),
            expiries: BinaryHeap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// Adds `key` with `value` until `expires`; false (and nothing changed) if it is already there.
    pub fn insert(&mut self, key: K, value: V, expires: Time) -> bool {
        match self.live.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(e) => {
                let len = self.expiries.len();
                if len == self.expiries.capacity() && len >= HEAP_GROWS_BY_EIGHTHS {
                    self.expiries.reserve_exact(len / 8);
                }
                self.expiries.push(Expiry(expires, e.key().clone()));
                e.insert(value);
                true
            }
        }
    }

    /// The value of `key`, while it is live.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.live.get(key)
    }

    /// Whether nothing is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.expiries.is_empty()
    }

    /// Drops every key whose expiry is at or before `now`, telling `gone` each, with its expiry
    /// (earliest expiry first).
    pub fn expire_with(&mut self, now: Time, mut gone: impl FnMut(Time, &K)) {
        while self.expiries.peek().is_some_and(|e| e.0 <= now) {
            if let Some(Expiry(expiry, key)) = self.expiries.pop() {
                gone(expiry, &key);
                self.live.remove(&key);
            }
        }
        // A burst of keys (a bulk load's hour) leaves its slots behind once it has expired.
        if self.expiries.capacity() > 4 * self.expiries.len().max(1024) {
            self.expiries.shrink_to_fit();
        }
    }
}

impl<K: Clone, V> ExpiringMap<K, V> {
    /// Every live key with its expiry (for a checkpoint; in no particular order).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&K, Time)> {
        self.expiries.iter().map(|e| (&e.1, e.0))
    }

    /// (live keys, bytes of the table's and the expiry heap's slots), for a gauge
    /// ([`state_sizes`]): what a key points to on the heap is not counted.
    pub fn size(&self) -> (usize, usize) {
        let bytes = self.live.capacity() * std::mem::size_of::<(K, V)>()
            + self.expiries.capacity() * std::mem::size_of::<Expiry<K>>();
        (self.live.len(), bytes)
    }
}

/// Keys that each stay until their own expiry time.
pub struct ExpiringSet<K>(ExpiringMap<K, ()>);

impl<K> Default for ExpiringSet<K> {
    fn default() -> Self {
        ExpiringSet(ExpiringMap::default())
    }
}

impl<K: Hash + Eq + Clone> ExpiringSet<K> {
    /// Adds `key` until `expires`; false if it is already there.
    pub fn insert(&mut self, key: K, expires: Time) -> bool {
        self.0.insert(key, (), expires)
    }

    /// Whether `key` is live.
    pub fn contains(&self, key: &K) -> bool {
        self.0.get(key).is_some()
    }

    /// Every live key with its expiry (for a checkpoint; in no particular order).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&K, Time)> {
        self.0.entries()
    }

    /// Drops every key whose expiry is at or before `now`.
    pub fn expire(&mut self, now: Time) {
        self.0.expire_with(now, |_, _| {});
    }

    /// (live keys, bytes of their slots), as [`ExpiringMap::size`].
    pub fn size(&self) -> (usize, usize) {
        self.0.size()
    }

    /// Like [`ExpiringSet::expire`], telling `gone` each key it drops, with its expiry.
    pub fn expire_with(&mut self, now: Time, gone: impl FnMut(Time, &K)) {
        self.0.expire_with(now, gone);
    }
}

/// Updates held for one future time, and their count after the last consolidation.
type Held<D, R> = (Vec<(D, Time, R)>, usize);

pub trait HoldFuture<'s, D: ExchangeData, R: Semigroup + ExchangeData> {
    /// Passes updates at their message's time straight through and holds updates scheduled for
    /// later (a temporal filter's retractions) until the input frontier has passed their time.
    ///
    /// Without this, every future retraction would sit in the next arrangement's batcher, which
    /// re-examines all pending updates each time it seals a batch: with a 48 h horizon that is
    /// every event of the last two days, at every tick. Here they wait in a map keyed by time, and
    /// one capability at the earliest held time keeps downstream from passing it.
    fn hold_future(self) -> VecCollection<'s, Time, D, R>;
}

impl<'s, D: ExchangeData, R: Semigroup + ExchangeData> HoldFuture<'s, D, R>
    for VecCollection<'s, Time, D, R>
{
    fn hold_future(self) -> VecCollection<'s, Time, D, R> {
        self.inner
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(D, Time, R)>>, _, _, _>(
                timely::dataflow::channels::pact::Pipeline,
                "Temporal: hold future",
                |cap, _info| {
                    // Per time: the updates, and their count after the last consolidation. Updates
                    // for the same record and time are merged as they pile up, so what is held
                    // grows with distinct records (machine-days, windows), not with events.
                    let held: Rc<RefCell<BTreeMap<Time, Held<D, R>>>> = Rc::default();
                    // A capability at (or before) the earliest held time, while anything is held.
                    let mut hold: Option<Capability<Time>> = None;
                    let restored: Option<BTreeMap<Time, Held<D, R>>> =
                        checkpoint::enrol("Temporal: hold future", &held, checkpoint::whole);
                    if let Some(saved) = restored {
                        if let Some(first) = saved.keys().next() {
                            let mut cap = cap;
                            cap.downgrade(first);
                            hold = Some(cap);
                        }
                        *held.borrow_mut() = saved;
                    }
                    move |(input, frontier), output| {
                        let mut held = held.borrow_mut();
                        input.for_each_stamp(|cap, data| {
                            let Some(now) = cap.least().copied() else { return };
                            let mut current = Vec::new();
                            for container in data {
                                for (d, t, r) in container.drain(..) {
                                    if t <= now {
                                        current.push((d, t, r));
                                        continue;
                                    }
                                    if hold.as_ref().is_none_or(|h| *h.time() > t) {
                                        hold = Some(cap.delayed(&t, output.output_index()));
                                    }
                                    let (updates, consolidated) = held.entry(t).or_default();
                                    updates.push((d, t, r));
                                    if updates.len() >= 2 * (*consolidated).max(512) {
                                        consolidate_updates(updates);
                                        *consolidated = updates.len();
                                    }
                                }
                            }
                            if !current.is_empty()
                                && let Some(c) = cap.retain_least(output.output_index()) {
                                    output.session(&c).give_iterator(current.into_iter());
                                }
                        });
                        // A held time goes out once the frontier has passed it, not when it
                        // reaches it: while the frontier is at `t`, nothing at `t` is in flight
                        // from here, so the engine's state taken at frontier `t` (a checkpoint)
                        // holds it here rather than losing it in a channel. The capability
                        // kept at `t` holds downstream back meanwhile; the sources move their
                        // input past a time right after sending it.
                        let reached = frontier.frontier().first().copied().unwrap_or(Time::MAX);
                        let Some(h) = hold.as_mut() else { return };
                        while let Some(entry) = held.first_entry() {
                            if *entry.key() >= reached {
                                break;
                            }
                            let (time, (updates, _)) = entry.remove_entry();
                            let at = h.delayed(&time);
                            output.session(&at).give_iterator(updates.into_iter());
                        }
                        match held.keys().next() {
                            Some(next) => h.downgrade(next),
                            None => hold = None,
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// Updates waiting for the frontier to pass their time, with one capability held at (or before)
/// the earliest of them: the input side of the operators that act in ingestion-time order. One
/// capability instead of one per time keeps progress traffic flat when times are many (timers),
/// and everything an activation produces can go out in one message at it (records carry their
/// own times).
pub(crate) struct Waiting<R> {
    by_time: BTreeMap<Time, Vec<R>>,
    hold: Option<Capability<Time>>,
}

impl<R> Waiting<R> {
    pub fn new() -> Self {
        Waiting {
            by_time: BTreeMap::new(),
            hold: None,
        }
    }

    /// Takes `record` at time `t`, from a message whose capability is `cap`.
    pub fn push(&mut self, cap: &InputCapability<Time>, output: usize, t: Time, record: R) {
        self.queue_at(cap, output, t).push(record);
    }

    /// The records waiting at `t` (none yet, if it is new), to add to or change in place,
    /// from a message whose capability is `cap`.
    pub fn queue_at(&mut self, cap: &InputCapability<Time>, output: usize, t: Time) -> &mut Vec<R> {
        self.hold_at(cap, output, t);
        self.by_time.entry(t).or_default()
    }

    /// Takes every update of one stamp's containers, as `for_each_stamp` hands them over.
    pub fn take_all<'a, D: 'a>(
        &mut self,
        cap: &InputCapability<Time>,
        output: usize,
        containers: impl Iterator<Item = &'a mut Vec<(D, Time, isize)>>,
    ) where
        R: From<(D, isize)>,
    {
        for container in containers {
            let mut records = container.drain(..);
            while let Some((d, t, r)) = records.next() {
                // A run of records of one time (a container holds one time, mostly) goes into
                // its time's queue with one lookup, and with room made for the whole run.
                self.hold_at(cap, output, t);
                let queue = self.by_time.entry(t).or_default();
                queue.reserve(records.len() + 1);
                queue.push(R::from((d, r)));
                while records.as_slice().first().is_some_and(|(_, u, _)| *u == t) {
                    if let Some((d, _, r)) = records.next() {
                        queue.push(R::from((d, r)));
                    }
                }
            }
        }
    }

    /// Holds a capability at or before `t` (a time acted on without queueing its records).
    pub fn hold_at(&mut self, cap: &InputCapability<Time>, output: usize, t: Time) {
        if self.hold.as_ref().is_none_or(|h| *h.time() > t) {
            self.hold = Some(cap.delayed(&t, output));
        }
    }

    /// The records waiting at `t`, if `t` is the earliest time waiting.
    pub fn pop_at(&mut self, t: Time) -> Option<Vec<R>> {
        let entry = self.by_time.first_entry()?;
        (*entry.key() == t).then(|| entry.remove())
    }

    /// Makes `t` a time to act at even without records (a wake-up); `t` must not be before the
    /// time being acted on.
    pub fn wake_at(&mut self, t: Time) {
        self.by_time.entry(t).or_default();
    }

    pub fn first_time(&self) -> Option<Time> {
        self.by_time.keys().next().copied()
    }

    /// The records of the earliest time, if the frontier has passed it.
    pub fn pop_ready(&mut self, frontier: &AntichainRef<'_, Time>) -> Option<(Time, Vec<R>)> {
        let entry = self.by_time.first_entry()?;
        if frontier.less_equal(entry.key()) {
            return None;
        }
        Some(entry.remove_entry())
    }

    /// The records waiting, by time (for a checkpoint).
    pub fn records(&self) -> &BTreeMap<Time, Vec<R>> {
        &self.by_time
    }

    /// Starts from a checkpoint's waiting records, holding `cap` (to be settled).
    pub fn restore(&mut self, by_time: BTreeMap<Time, Vec<R>>, cap: Capability<Time>) {
        self.by_time = by_time;
        self.hold = Some(cap);
    }

    /// The capability to send at: at or before every time still to act on.
    pub fn hold(&self) -> Option<&Capability<Time>> {
        self.hold.as_ref()
    }

    /// Moves the held capability to `next` (the earliest time still to act on), or drops it.
    pub fn settle(&mut self, next: Option<Time>) {
        match (next, self.hold.as_mut()) {
            (Some(t), Some(h)) => h.downgrade(&t),
            _ => self.hold = None,
        }
    }
}

/// What `keyed_in_time_order` hands the logic for each input record.
pub struct Emit<'a, O> {
    time: Time,
    out: &'a mut Vec<(O, Time, isize)>,
    wake: &'a mut Vec<Time>,
}

impl<O> Emit<'_, O> {
    /// Emits `record` with `diff` at the current ingestion time.
    pub fn give(&mut self, record: O, diff: isize) {
        self.out.push((record, self.time, diff));
    }

    /// Asks for the logic to run at `time` (later than now) even if no record comes then, so
    /// that it can retract what expires at that time, at that time.
    pub fn wake_at(&mut self, time: Time) {
        if time > self.time {
            self.wake.push(time);
        }
    }

    pub fn time(&self) -> Time {
        self.time
    }
}

pub trait Keyed<'s, D: ExchangeData> {
    /// Routes records by `key` and presents them to `logic` in ingestion-time order (records of
    /// the same time in `order`, a total order, so the result does not depend on arrival order
    /// within a time), with per-worker `state`. After each completed time, `expire` is called
    /// with the new frontier so that state past its horizon can be dropped.
    // Its name, route, order and state, and two steps: each is its own closure.
    #[allow(clippy::too_many_arguments)]
    fn keyed_in_time_order<S, O, K>(
        self,
        name: &str,
        key: K,
        order: impl Fn(&D, &D) -> std::cmp::Ordering + 'static,
        state: S,
        logic: impl FnMut(&mut S, D, isize, &mut Emit<'_, O>) + 'static,
        expire: impl FnMut(&mut S, Time) + 'static,
    ) -> VecCollection<'s, Time, O, isize>
    where
        Self: Sized,
        S: Durable,
        O: Data,
        D: Ord,
        K: Fn(&D) -> u64 + 'static;

    /// Routes records by `key` and folds them into per-worker `state` in ingestion-time steps,
    /// without queueing a step's records: when a time opens (every earlier time is done, and no
    /// record can come before it any more) `begin` runs, then `apply` takes each of its records
    /// as it arrives (so `apply` must not depend on the order of one time's records), and `end`
    /// runs once the frontier has passed the time, to publish one change per key touched. A time
    /// asked for with [`Emit::wake_at`] runs `begin` and `end` even without records. Records
    /// ahead of the open time wait for theirs. So a bulk step of many records costs the
    /// operator its state, not a copy of the step. `end` publishes a part of the time's changes
    /// and returns whether it is done; until it is, it runs again in later activations (after
    /// the operators downstream have taken the part) and input waits. `warm` reads the state a
    /// record will touch, for the next [`WARM`] records before they are applied: a state larger
    /// than the cache then misses for several records at once instead of one after the other
    /// (a no-op where the state is small).
    // Its name, route and state, and the four steps of a time: each is its own closure.
    #[allow(clippy::too_many_arguments)]
    fn keyed_steps<S, O, K>(
        self,
        name: &str,
        key: K,
        state: S,
        begin: impl FnMut(&mut S, &mut Emit<'_, O>) + 'static,
        apply: impl FnMut(&mut S, D, isize, &mut Emit<'_, O>) + 'static,
        warm: impl FnMut(&S, &D) + 'static,
        end: impl FnMut(&mut S, &mut Emit<'_, O>) -> bool + 'static,
    ) -> VecCollection<'s, Time, O, isize>
    where
        S: Durable,
        O: Data,
        K: Fn(&D) -> u64 + 'static;
}

impl<'s, D: ExchangeData> Keyed<'s, D> for VecCollection<'s, Time, D, isize> {
    fn keyed_in_time_order<S, O, K>(
        self,
        name: &str,
        key: K,
        order: impl Fn(&D, &D) -> std::cmp::Ordering + 'static,
        state: S,
        mut logic: impl FnMut(&mut S, D, isize, &mut Emit<'_, O>) + 'static,
        mut expire: impl FnMut(&mut S, Time) + 'static,
    ) -> VecCollection<'s, Time, O, isize>
    where
        S: Durable,
        O: Data,
        D: Ord,
        K: Fn(&D) -> u64 + 'static,
    {
        let pact = by_route(move |(d, _t, _r): &(D, Time, isize)| key(d));
        let scope = self.inner.scope();
        self.inner
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(O, Time, isize)>>, _, _, _>(
                pact,
                name,
                move |cap, info| {
                    let activator = scope.activator_for(info.address);
                    let shared = Rc::new(RefCell::new(InOrder {
                        state,
                        waiting: Waiting::new(),
                        current: None,
                    }));
                    let restored: Option<KeyedSaved<S, D>> =
                        checkpoint::enrol(name, &shared, InOrder::save);
                    if let Some(saved) = restored {
                        let op = &mut *shared.borrow_mut();
                        restore_keyed(&mut op.state, &mut op.waiting, saved, cap);
                        activator.activate();
                    }
                    let mut out: Vec<(O, Time, isize)> = Vec::new();
                    let mut wake: Vec<Time> = Vec::new();
                    let mut last_frontier: Option<Time> = None;
                    move |(input, frontier), output| {
                        let mut op = shared.borrow_mut();
                        // Updates wait, by their own time, until the frontier passes that time;
                        // wake-ups are times without records. A ready time's records are sorted
                        // and judged `PUBLISH_CHUNK` at a time, one part per activation, the
                        // next after the operators downstream have taken this part's output:
                        // a bulk time is every record of it (the sale lines of an hour), and
                        // its output judged whole, then queued, was two more copies of it in
                        // memory at once (each reader of a fork downstream gets its own).
                        let InOrder {
                            state,
                            waiting,
                            current,
                        } = &mut *op;
                        input.for_each_stamp(|cap, data| {
                            waiting.take_all(&cap, output.output_index(), data);
                        });
                        let frontier = frontier.frontier();
                        // Whether every time the frontier has passed is done (none is being
                        // judged): only then may state expire up to it.
                        let mut caught_up = false;
                        let mut judged = 0;
                        while judged < PUBLISH_CHUNK {
                            if current.is_none() {
                                let Some((time, mut records)) = waiting.pop_ready(&frontier)
                                else {
                                    caught_up = true;
                                    break;
                                };
                                // Equal records are the same record: an unstable sort gives the
                                // same order, without a stable sort's buffer of half of them.
                                records.sort_unstable_by(|(a, ra), (b, rb)| {
                                    order(a, b).then(ra.cmp(rb))
                                });
                                *current = Some((time, records.into_iter()));
                            }
                            let Some((time, records)) = current.as_mut() else {
                                break;
                            };
                            let mut emit = Emit {
                                time: *time,
                                out: &mut out,
                                wake: &mut wake,
                            };
                            for (d, r) in records.by_ref().take(PUBLISH_CHUNK - judged) {
                                logic(state, d, r, &mut emit);
                                judged += 1;
                            }
                            for t in wake.drain(..) {
                                waiting.wake_at(t);
                            }
                            if records.as_slice().is_empty() {
                                *current = None;
                                // A wake-up is a time too, even without records.
                                judged += 1;
                            }
                        }
                        if let Some(h) = waiting.hold()
                            && !out.is_empty()
                        {
                            output.session(h).give_iterator(out.drain(..));
                        }
                        // A time judged in parts keeps its buffer's room for the next part.
                        if caught_up {
                            trim(&mut out);
                        }
                        // Again after downstream has taken this part: for the rest of the time
                        // being judged, or the times that became ready meanwhile.
                        if !caught_up {
                            activator.activate();
                        }
                        // Held at the earliest time still to judge or act on.
                        let next = current.as_ref().map(|(t, _)| *t);
                        waiting.settle(next.into_iter().chain(waiting.first_time()).min());
                        let now = frontier.first().copied().unwrap_or(Time::MAX);
                        if caught_up && last_frontier != Some(now) {
                            last_frontier = Some(now);
                            expire(state, now);
                        }
                    }
                },
            )
            .as_collection()
    }
    // Its name, route and state, and the four steps of a time: each is its own closure.
    #[allow(clippy::too_many_arguments)]
    fn keyed_steps<S, O, K>(
        self,
        name: &str,
        key: K,
        state: S,
        mut begin: impl FnMut(&mut S, &mut Emit<'_, O>) + 'static,
        mut apply: impl FnMut(&mut S, D, isize, &mut Emit<'_, O>) + 'static,
        mut warm: impl FnMut(&S, &D) + 'static,
        mut end: impl FnMut(&mut S, &mut Emit<'_, O>) -> bool + 'static,
    ) -> VecCollection<'s, Time, O, isize>
    where
        S: Durable,
        O: Data,
        K: Fn(&D) -> u64 + 'static,
    {
        let pact = by_route(move |(d, _t, _r): &(D, Time, isize)| key(d));
        let scope = self.inner.scope();
        self.inner
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(O, Time, isize)>>, _, _, _>(
                pact,
                name,
                move |cap, info| {
                    let activator = scope.activator_for(info.address);
                    let shared = Rc::new(RefCell::new(Steps {
                        state,
                        waiting: Waiting::new(),
                        open: None,
                        ending: None,
                    }));
                    let restored: Option<KeyedSaved<S, D>> =
                        checkpoint::enrol(name, &shared, Steps::save);
                    if let Some(saved) = restored {
                        let op = &mut *shared.borrow_mut();
                        restore_keyed(&mut op.state, &mut op.waiting, saved, cap);
                        activator.activate();
                    }
                    let mut out: Vec<(O, Time, isize)> = Vec::new();
                    let mut wake: Vec<Time> = Vec::new();
                    move |(input, frontier), output| {
                        let mut op = shared.borrow_mut();
                        // Records ahead of the open time wait by time (wake-ups are times
                        // without records); `open` is the time begun, taking its records as they
                        // arrive; `ending` the time being ended, while `end` has more to publish.
                        let Steps {
                            state,
                            waiting,
                            open,
                            ending,
                        } = &mut *op;
                        let frontier = frontier.frontier();
                        let reached = frontier.first().copied();
                        // Every time the frontier has passed: begun (if not open), its waiting
                        // records applied, ended.
                        loop {
                            if let Some(now) = *ending {
                                let mut done = false;
                                Step::new(now, &mut out, &mut wake, waiting)
                                    .run(|e| done = end(state, e));
                                if !done {
                                    break;
                                }
                                *ending = None;
                                if *open == Some(now) {
                                    *open = None;
                                }
                                continue;
                            }
                            let Some(now) = open.iter().copied().chain(waiting.first_time()).min()
                            else {
                                break;
                            };
                            if frontier.less_equal(&now) {
                                break;
                            }
                            let mut step = Step::new(now, &mut out, &mut wake, waiting);
                            if *open != Some(now) {
                                step.run(|e| begin(state, e));
                            }
                            for (d, r) in step.waiting.pop_at(now).into_iter().flatten() {
                                step.run(|e| apply(state, d, r, e));
                            }
                            *ending = Some(now);
                        }
                        let index = output.output_index();
                        if ending.is_some() {
                            activator.activate();
                        } else {
                            input.for_each_stamp(|cap, data| {
                                for container in data {
                                    let mut records = std::mem::take(container).into_iter();
                                    while !records.as_slice().is_empty() {
                                        for (d, _, _) in records.as_slice().iter().take(WARM) {
                                            warm(state, d);
                                        }
                                        for (d, t, r) in records.by_ref().take(WARM) {
                                            if *open != Some(t) {
                                                let opens = open.is_none()
                                                    && reached == Some(t)
                                                    && waiting.first_time().is_none_or(|w| w >= t);
                                                if !opens {
                                                    waiting.push(&cap, index, t, (d, r));
                                                    continue;
                                                }
                                                *open = Some(t);
                                                waiting.hold_at(&cap, index, t);
                                                let mut step = Step::new(t, &mut out, &mut wake, waiting);
                                                step.run(|e| begin(state, e));
                                                for (early, r) in step.waiting.pop_at(t).into_iter().flatten() {
                                                    step.run(|e| apply(state, early, r, e));
                                                }
                                            }
                                            Step::new(t, &mut out, &mut wake, waiting)
                                                .run(|e| apply(state, d, r, e));
                                        }
                                    }
                                }
                            });
                        }
                        if !out.is_empty()
                            && let Some(h) = waiting.hold()
                        {
                            output.session(h).give_iterator(out.drain(..));
                        }
                        // A publication in parts keeps its buffer's room for the next part.
                        if ending.is_none() {
                            trim(&mut out);
                        }
                        waiting.settle(
                            ending.iter().copied().chain(*open).chain(waiting.first_time()).min(),
                        );
                    }
                },
            )
            .as_collection()
    }
}

/// What a checkpoint keeps of a [`Waiting`]: its records by time.
type WaitingSaved<R> = BTreeMap<Time, Vec<R>>;

/// What a checkpoint keeps of a keyed operator: its state and the records waiting.
type KeyedSaved<S, D> = (<S as Durable>::Saved, WaitingSaved<(D, isize)>);

/// Starts a keyed operator from a checkpoint's state and waiting records; `cap` (its initial
/// capability) is held at the earliest of them.
fn restore_keyed<S: Durable, D>(
    state: &mut S,
    waiting: &mut Waiting<(D, isize)>,
    (saved, records): KeyedSaved<S, D>,
    cap: Capability<Time>,
) {
    state.restore(saved);
    waiting.restore(records, cap);
    let next = waiting.first_time();
    waiting.settle(next);
}

/// [`Keyed::keyed_in_time_order`]'s state between activations, shared with the checkpoint.
struct InOrder<S, D> {
    state: S,
    waiting: Waiting<(D, isize)>,
    /// The time being judged, and its records not judged yet (in order).
    current: Option<(Time, std::vec::IntoIter<(D, isize)>)>,
}

impl<S: Durable, D: ExchangeData> InOrder<S, D> {
    /// Writes the state and the records waiting (the layout `(S::Saved, WaitingSaved)`).
    fn save(&self, out: &mut crate::checkpoint::SectionOut) -> Result<(), bincode::Error> {
        if let Some((t, _)) = &self.current {
            return Err(checkpoint::not_between_times("a keyed operator", Some(*t)));
        }
        self.state.save(out)?;
        bincode::serialize_into(out, self.waiting.records())
    }
}

/// [`Keyed::keyed_steps`]'s state between activations, shared with the checkpoint.
struct Steps<S, D> {
    state: S,
    waiting: Waiting<(D, isize)>,
    open: Option<Time>,
    ending: Option<Time>,
}

impl<S: Durable, D: ExchangeData> Steps<S, D> {
    /// Writes the state and the records waiting (the layout `(S::Saved, WaitingSaved)`).
    fn save(&self, out: &mut crate::checkpoint::SectionOut) -> Result<(), bincode::Error> {
        if self.open.is_some() || self.ending.is_some() {
            return Err(checkpoint::not_between_times(
                "a keyed operator",
                self.open.or(self.ending),
            ));
        }
        self.state.save(out)?;
        bincode::serialize_into(out, self.waiting.records())
    }
}

/// One time of [`Keyed::keyed_steps`]: runs its logic there and turns the wake-ups asked for
/// into times to act at.
struct Step<'a, O, R> {
    time: Time,
    out: &'a mut Vec<(O, Time, isize)>,
    wake: &'a mut Vec<Time>,
    waiting: &'a mut Waiting<R>,
}

impl<'a, O, R> Step<'a, O, R> {
    fn new(
        time: Time,
        out: &'a mut Vec<(O, Time, isize)>,
        wake: &'a mut Vec<Time>,
        waiting: &'a mut Waiting<R>,
    ) -> Self {
        Step {
            time,
            out,
            wake,
            waiting,
        }
    }

    fn run(&mut self, f: impl FnOnce(&mut Emit<'_, O>)) {
        let mut emit = Emit {
            time: self.time,
            out: self.out,
            wake: self.wake,
        };
        f(&mut emit);
        for t in self.wake.drain(..) {
            self.waiting.wake_at(t);
        }
    }
}

/// `vec.insert(at, item)` for a vector that lives in a key's state: the first few entries are
/// allocated one at a time instead of four at once (a `Vec`'s first growth), since most keys
/// hold one or two (a machine's day of hourly sales, its hour of readings); past four it grows
/// as a `Vec` does. At 50,000 machines the spare room of a first growth was tens of MB.
pub(crate) fn insert_tight<T>(vec: &mut Vec<T>, at: usize, item: T) {
    if vec.len() == vec.capacity() && vec.len() < 4 {
        vec.reserve_exact(1);
    }
    vec.insert(at, item);
}

/// Records whose state is looked up ([`Keyed::keyed_steps`]'s `warm`) before they are applied.
const WARM: usize = 16;

/// Entries of an operator's reused buffer kept allocated between activations: enough for a
/// live step's few records. (4,096 kept ~10 MiB more at the 1 M replay's peak, over the
/// hundreds of such buffers of two workers' operators, for no gain in speed.)
pub(crate) const RETAINED: usize = 256;

/// Frees what a bulk step grew `buffer` to: a bulk time's outputs are many, a live step's a
/// few, and a buffer keeps its largest size for ever otherwise (75 MB of the 1 M replay's
/// peak heap was such buffers' spare room).
pub(crate) fn trim<T>(buffer: &mut Vec<T>) {
    if buffer.capacity() > RETAINED {
        buffer.shrink_to(RETAINED);
    }
}

/// Sends `buffer` at `cap`, unless it is empty, and leaves it empty for the next message
/// (`give` may leave anything in it). Operators ship what each input message made before
/// reading the next: a worker that fell behind finds many messages of one time at once, and
/// buffers of all of them together left the cache before they were sent (the demux took twice
/// as long in such runs).
pub(crate) fn ship<D: Data>(
    output: &mut OutputSession<'_, Time, Vec<(D, Time, isize)>>,
    cap: &InputCapability<Time>,
    buffer: &mut Vec<(D, Time, isize)>,
) {
    if buffer.is_empty() {
        return;
    }
    output.give(cap, buffer);
    buffer.clear();
}

/// Where [`fork`] sends a record: one of three outputs, each with its own type.
pub enum Fork<A, B, C> {
    A(A),
    B(B),
    C(C),
}

/// The outputs of [`fork`].
pub type Forked<'s, A, B, C> = (
    VecCollection<'s, Time, A>,
    VecCollection<'s, Time, B>,
    VecCollection<'s, Time, C>,
);

/// Splits a collection three ways in one pass, each record moved once into the output of its
/// own type. A collection read by several operators is copied whole for each; splitting by an
/// index and then unwrapping each part (`partition` and a `flat_map` per part) moves every
/// record three times and sends it through two operators.
pub fn fork<'s, D: Data, A: Data, B: Data, C: Data>(
    records: VecCollection<'s, Time, D>,
    name: &str,
    mut route: impl FnMut(D) -> Fork<A, B, C> + 'static,
) -> Forked<'s, A, B, C> {
    let mut builder = OperatorBuilder::new(name.to_owned(), records.inner.scope());
    let mut input = builder.new_input(records.inner, Pipeline);
    builder.set_notify_for(0, FrontierInterest::Never);
    let (mut out_a, a) = builder.new_output::<Vec<(A, Time, isize)>>();
    let (mut out_b, b) = builder.new_output::<Vec<(B, Time, isize)>>();
    let (mut out_c, c) = builder.new_output::<Vec<(C, Time, isize)>>();
    builder.build(move |_| {
        let (mut buf_a, mut buf_b, mut buf_c) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = (0, 0, 0);
        move |_frontiers| {
            let (mut to_a, mut to_b, mut to_c) =
                (out_a.activate(), out_b.activate(), out_c.activate());
            input.for_each_stamp(|cap, data| {
                for container in data {
                    // Room for the container's records in each output it feeds, at once
                    // (each buffer comes back from the last message without any).
                    let n = container.len();
                    buf_a.reserve(n.min(last.0));
                    buf_b.reserve(n.min(last.1));
                    buf_c.reserve(n.min(last.2));
                    for (d, t, r) in container.drain(..) {
                        match route(d) {
                            Fork::A(x) => buf_a.push((x, t, r)),
                            Fork::B(x) => buf_b.push((x, t, r)),
                            Fork::C(x) => buf_c.push((x, t, r)),
                        }
                    }
                    // What each output took of this container: of the next, about as much.
                    let grown = |k: usize| if k == 0 { 0 } else { n };
                    last = (grown(buf_a.len()), grown(buf_b.len()), grown(buf_c.len()));
                    ship(&mut to_a, &cap, &mut buf_a);
                    ship(&mut to_b, &cap, &mut buf_b);
                    ship(&mut to_c, &cap, &mut buf_c);
                }
            });
        }
    });
    (a.as_collection(), b.as_collection(), c.as_collection())
}

/// One reader of a collection that many operators read, each through its own projection:
/// [`FanOut::flat_map`] and [`FanOut::map`] add an output per reader, [`FanOut::finish`] builds
/// the operator. Every reader of a collection is otherwise sent a copy of every message (timely
/// clones the container for all readers but the last): the accepted sale lines had twelve
/// readers, so each line was copied eleven times, whole, for readers that each keep a few of its
/// fields. Here each record is read once, by reference, and each reader is sent only its
/// projection.
pub struct FanOut<'s, D: Data> {
    /// `None` once built.
    parts: Option<FanOutParts<'s, D>>,
}

struct FanOutParts<'s, D: Data> {
    builder: OperatorBuilder<'s, Time>,
    records: VecCollection<'s, Time, D>,
    readers: Vec<Box<dyn Project<D>>>,
}

/// One output of a [`FanOut`]: its projection and where it sends it.
trait Project<D> {
    fn read(&mut self, cap: &InputCapability<Time>, records: &[(D, Time, isize)]);
}

struct Projection<T: Data, F> {
    output: timely::dataflow::channels::pushers::Output<Time, Vec<(T, Time, isize)>>,
    project: F,
    buffer: Vec<(T, Time, isize)>,
}

impl<D, T: Data, I: IntoIterator<Item = T>, F: FnMut(&D) -> I> Project<D> for Projection<T, F> {
    fn read(&mut self, cap: &InputCapability<Time>, records: &[(D, Time, isize)]) {
        // Room for one projection per record at once: the buffer comes back from the last
        // message without any (timely takes it whole), and grew by doubling for each message.
        self.buffer.reserve(records.len());
        for (d, t, r) in records {
            for x in (self.project)(d) {
                self.buffer.push((x, *t, *r));
            }
        }
        if !self.buffer.is_empty() {
            ship(&mut self.output.activate(), cap, &mut self.buffer);
        }
        trim(&mut self.buffer);
    }
}

impl<'s, D: Data> FanOut<'s, D> {
    pub fn new(records: VecCollection<'s, Time, D>, name: &str) -> Self {
        FanOut {
            parts: Some(FanOutParts {
                builder: OperatorBuilder::new(name.to_owned(), records.inner.scope()),
                records,
                readers: Vec::new(),
            }),
        }
    }

    /// A reader's collection: each record's projection, any number of records (as
    /// `VecCollection::flat_map`, but from a reference).
    pub fn flat_map<T: Data, I: IntoIterator<Item = T> + 'static>(
        &mut self,
        project: impl FnMut(&D) -> I + 'static,
    ) -> VecCollection<'s, Time, T> {
        let Some(parts) = self.parts.as_mut() else {
            unreachable!("a fan-out is built only when it is finished or dropped");
        };
        let (output, stream) = parts.builder.new_output::<Vec<(T, Time, isize)>>();
        parts.readers.push(Box::new(Projection {
            output,
            project,
            buffer: Vec::new(),
        }));
        stream.as_collection()
    }

    /// A reader's collection: one projection per record.
    pub fn map<T: Data>(
        &mut self,
        mut project: impl FnMut(&D) -> T + 'static,
    ) -> VecCollection<'s, Time, T> {
        self.flat_map(move |d| Some(project(d)))
    }

    /// Builds the operator (so does dropping it): no reader can be added after.
    pub fn finish(mut self) {
        self.build();
    }

    fn build(&mut self) {
        let Some(FanOutParts {
            mut builder,
            records,
            mut readers,
        }) = self.parts.take()
        else {
            return;
        };
        let mut input = builder.new_input(records.inner, Pipeline);
        builder.set_notify_for(0, FrontierInterest::Never);
        builder.build(move |_| {
            move |_frontiers| {
                input.for_each_stamp(|cap, data| {
                    for container in data {
                        for reader in &mut readers {
                            reader.read(&cap, container);
                        }
                        container.clear();
                    }
                });
            }
        });
    }
}

/// Built when dropped, if not finished: an operator builder dropped unbuilt would leave its
/// readers reading an operator that does not exist.
impl<D: Data> Drop for FanOut<'_, D> {
    fn drop(&mut self) {
        self.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendflow_protocol::Timestamp;

    /// The bit set of machines answers as a hash set of the same ids does, through inserts of
    /// ids interned after it last grew and clears between "days".
    #[test]
    fn a_machine_set_answers_as_a_hash_set() {
        use std::collections::HashSet;
        let mut set = MachineSet::default();
        let mut oracle: HashSet<MachineId> = HashSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for day in 0..4 {
            for _ in 0..3_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // New ids keep coming (interned mid-way), and old ones come again.
                let id = MachineId::parse(&format!("set-{day}-{}", x % 1_500))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(set.contains(&id), oracle.contains(&id), "{id}");
                assert_eq!(set.insert(&id), oracle.insert(id.clone()), "{id}");
                assert!(set.contains(&id));
            }
            set.clear();
            oracle.clear();
            let again = MachineId::parse("set-0-1").unwrap_or_else(|e| panic!("{e}"));
            assert!(!set.contains(&again));
        }
    }

    /// A table reaching an eighth of a worker's machines is sized for all of them; a smaller
    /// or a larger one grows as it does.
    #[test]
    fn a_table_of_machines_is_sized_for_the_fleet_once_it_is_an_eighth_of_it() {
        assert_eq!(room_wanted(3_584, 25_000), Some(21_416));
        assert_eq!(room_wanted(3_124, 25_000), None);
        assert_eq!(room_wanted(28_672, 25_000), None);
        assert_eq!(room_wanted(0, 0), None);
        assert_eq!(room_wanted(7, 0), None);
        // Sized once: the table then holds the fleet without growing.
        let mut map: FastMap<u64, ()> = FastMap::default();
        for k in 0..3_584 {
            map.insert(k, ());
        }
        while map.len() < map.capacity() {
            map.insert(map.len() as u64, ());
        }
        if let Some(more) = room_wanted(map.len(), 25_000) {
            map.reserve(more);
        }
        assert!(map.capacity() >= 25_000, "{}", map.capacity());
    }

    /// A pusher that keeps what it is given.
    struct Kept(Vec<Vec<u64>>);

    impl Push<Message<u64, Vec<u64>>> for Kept {
        fn push(&mut self, message: &mut Option<Message<u64, Vec<u64>>>) {
            if let Some(m) = message.take() {
                self.0.push(m.data);
            }
        }
    }

    /// A distributor over `peers` workers that routes a number to the worker it names.
    fn local_first(peers: usize) -> LocalFirst<u64, impl FnMut(&u64) -> u64> {
        LocalFirst {
            builders: (0..peers)
                .map(|_| CapacityContainerBuilder::default())
                .collect(),
            route: |d: &u64| *d,
        }
    }

    /// A pusher to another process: it serializes the records and hands the message back as
    /// it was.
    struct Serialized(Vec<Vec<u64>>);

    impl Push<Message<u64, Vec<u64>>> for Serialized {
        fn push(&mut self, message: &mut Option<Message<u64, Vec<u64>>>) {
            if let Some(m) = message {
                self.0.push(m.data.clone());
            }
        }
    }

    /// The sender gets its vector back empty, as from `Exchange`, even from a pusher that hands
    /// the records back: reused, they were sent again at a later time (a cluster's workers
    /// panicked on records older than their message).
    #[test]
    fn a_message_moved_whole_leaves_the_sender_an_empty_vector() {
        let mut local = local_first(2);
        let mut pushers = [Serialized(Vec::new()), Serialized(Vec::new())];
        let stamp = Stamp::from_elem(0u64);
        let mut message: Vec<u64> = vec![3, 5, 7];
        local.partition(&mut message, &stamp, &mut pushers);
        assert!(message.is_empty(), "{message:?}");
        assert_eq!(pushers[1].0, vec![vec![3, 5, 7]]);
        assert!(pushers[0].0.is_empty());
    }

    /// A message whose records all go to one worker reaches it whole (the same vector, not a
    /// copy); a mixed one is split record by record; either way every record reaches the worker
    /// its route names, once.
    #[test]
    fn a_message_for_one_worker_goes_whole_and_a_mixed_one_record_by_record() {
        let mut local = local_first(3);
        let mut pushers = [Kept(Vec::new()), Kept(Vec::new()), Kept(Vec::new())];
        let stamp = Stamp::from_elem(0u64);
        let mut uniform: Vec<u64> = vec![4, 1, 7, 4];
        let address = uniform.as_ptr();
        local.partition(&mut uniform, &stamp, &mut pushers);
        assert!(uniform.is_empty());
        assert_eq!(pushers[1].0, vec![vec![4, 1, 7, 4]]);
        assert_eq!(pushers[1].0[0].as_ptr(), address, "moved, not copied");
        let mut mixed: Vec<u64> = (0..10).collect();
        local.partition(&mut mixed, &stamp, &mut pushers);
        local.partition(&mut Vec::new(), &stamp, &mut pushers);
        local.flush(&stamp, &mut pushers);
        for (worker, kept) in pushers.iter().enumerate() {
            let mut got: Vec<u64> = kept
                .0
                .iter()
                .skip(usize::from(worker == 1))
                .flatten()
                .copied()
                .collect();
            got.sort_unstable();
            let want: Vec<u64> = (0..10).filter(|d| *d as usize % 3 == worker).collect();
            assert_eq!(got, want, "worker {worker}");
        }
    }

    #[test]
    fn a_state_vector_grows_one_entry_at_a_time_up_to_four_and_keeps_its_order() {
        let mut v: Vec<(i64, [u32; 24])> = Vec::new();
        for (day, at) in [(5, 0), (3, 0), (9, 2), (4, 1)] {
            insert_tight(&mut v, at, (day, [0; 24]));
            assert_eq!(v.capacity(), v.len(), "no spare room while small");
        }
        assert_eq!(v.iter().map(|d| d.0).collect::<Vec<_>>(), [3, 4, 5, 9]);
        // Past four it grows as a vector does (amortised), not one at a time.
        insert_tight(&mut v, 4, (10, [0; 24]));
        assert!(v.capacity() >= 8);
    }

    /// A checkpoint is taken at a frontier `t`: nothing at `t` may be in a channel then, or it
    /// is in no operator's state and a restart loses it. So the temporal filter lets an update
    /// scheduled at `t` go only once the frontier has passed `t`, not when it reaches it.
    #[test]
    fn a_held_update_leaves_once_the_frontier_has_passed_its_time_not_when_it_reaches_it() {
        use std::cell::RefCell;
        use std::rc::Rc;

        use differential_dataflow::input::Input;

        timely::execute_directly(|worker| {
            let seen: Rc<RefCell<Vec<(u32, Time, isize)>>> = Rc::default();
            let probe = timely::dataflow::operators::probe::Handle::new();
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, records) = scope.new_collection::<u32, isize>();
                let seen = seen.clone();
                let (kept, _) = records.retain_between(|_| (Timestamp(0), Timestamp(10)));
                kept.inspect(move |(d, t, r)| seen.borrow_mut().push((*d, *t, *r)))
                    .probe_with(&probe);
                input
            });
            input.insert(7);
            let mut run_to =
                |input: &mut differential_dataflow::input::InputSession<Time, u32, isize>,
                 t: i64| {
                    input.advance_to(Timestamp(t));
                    input.flush();
                    while probe.less_than(&Timestamp(t)) {
                        worker.step();
                    }
                    for _ in 0..10 {
                        worker.step();
                    }
                };
            run_to(&mut input, 10);
            assert_eq!(
                *seen.borrow(),
                vec![(7, Timestamp(0), 1)],
                "at frontier 10 the retraction at 10 is still held"
            );
            run_to(&mut input, 11);
            assert_eq!(
                *seen.borrow(),
                vec![(7, Timestamp(0), 1), (7, Timestamp(10), -1)],
                "past 10 it has gone out at its own time"
            );
        });
    }

    /// Each reader of a fan-out gets its own projection of every record, at the record's own
    /// time and with its diff, and the records reach nobody else whole; a fan-out dropped
    /// without `finish` is built all the same.
    #[test]
    fn a_fan_out_gives_each_reader_its_projection_of_every_record() {
        use std::cell::RefCell;
        use std::rc::Rc;

        use differential_dataflow::input::Input;

        type Seen<T> = Rc<RefCell<Vec<(T, Time, isize)>>>;
        for finish in [true, false] {
            timely::execute_directly(move |worker| {
                let (doubled, words): (Seen<u32>, Seen<String>) = Default::default();
                let probe = timely::dataflow::operators::probe::Handle::new();
                let mut input = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, records) = scope.new_collection::<u32, isize>();
                    let mut fan = FanOut::new(records, "test fan-out");
                    let (d, w) = (doubled.clone(), words.clone());
                    fan.map(|n| n * 2)
                        .inspect(move |(x, t, r)| d.borrow_mut().push((*x, *t, *r)))
                        .probe_with(&probe);
                    // Odd records only, each twice.
                    fan.flat_map(|n| {
                        let word = format!("n{n}");
                        (n % 2 == 1)
                            .then(|| [word.clone(), word])
                            .into_iter()
                            .flatten()
                    })
                    .inspect(move |(x, t, r)| w.borrow_mut().push((x.clone(), *t, *r)))
                    .probe_with(&probe);
                    if finish {
                        fan.finish();
                    }
                    input
                });
                input.insert(1);
                input.insert(2);
                input.advance_to(Timestamp(5));
                input.remove(1);
                input.advance_to(Timestamp(6));
                input.flush();
                while probe.less_than(&Timestamp(6)) {
                    worker.step();
                }
                let mut d = doubled.borrow().clone();
                d.sort();
                assert_eq!(
                    d,
                    vec![
                        (2, Timestamp(0), 1),
                        (2, Timestamp(5), -1),
                        (4, Timestamp(0), 1)
                    ]
                );
                let mut w = words.borrow().clone();
                w.sort();
                let n1 = |t: i64, r: isize| ("n1".to_owned(), Timestamp(t), r);
                assert_eq!(w, vec![n1(0, 1), n1(0, 1), n1(5, -1), n1(5, -1)]);
            });
        }
    }

    /// Keys leave at their own expiry, earliest first, whatever the order they came in; a key is
    /// refused while it is live and taken again once it has left.
    #[test]
    fn expiring_keys_leave_at_their_own_time() {
        let mut map: ExpiringMap<u32, &str> = ExpiringMap::default();
        assert_eq!(map.size(), (0, 0));
        for (key, expires) in [(1, 30), (2, 10), (3, 20), (4, 10), (5, 40)] {
            assert!(map.insert(key, "v", Timestamp(expires)));
        }
        // Five keys, each a table slot and a heap slot at least.
        let (keys, bytes) = map.size();
        assert_eq!(keys, 5);
        assert!(
            bytes >= 5 * (std::mem::size_of::<(u32, &str)>() + std::mem::size_of::<Expiry<u32>>())
        );
        assert!(
            !map.insert(3, "again", Timestamp(99)),
            "a live key is refused"
        );
        let mut gone = Vec::new();
        map.expire_with(Timestamp(9), |at, k| gone.push((at.ms(), *k)));
        assert!(gone.is_empty());
        map.expire_with(Timestamp(20), |at, k| gone.push((at.ms(), *k)));
        gone.sort_unstable();
        assert_eq!(gone, [(10, 2), (10, 4), (20, 3)]);
        assert_eq!(map.get(&1), Some(&"v"));
        assert_eq!(map.get(&3), None);
        assert!(
            map.insert(3, "back", Timestamp(50)),
            "an expired key is new again"
        );
        gone.clear();
        map.expire_with(Timestamp(45), |at, k| gone.push((at.ms(), *k)));
        assert_eq!(gone, [(30, 1), (40, 5)]);
        map.expire_with(Timestamp(50), |_, _| {});
        assert!(map.is_empty());
        assert_eq!(map.size().0, 0);
    }

    /// A large map's expiry heap has at most an eighth of its keys to spare, where a doubling
    /// vector has up to as many again; a key still leaves at its expiry.
    #[test]
    fn a_large_expiring_maps_heap_grows_by_an_eighth() {
        let mut map: ExpiringMap<u64, ()> = ExpiringMap::default();
        let n = 5 * HEAP_GROWS_BY_EIGHTHS as u64 + 12_345;
        for k in 0..n {
            // Expiries out of order: the heap keeps them earliest first whatever its growth.
            assert!(map.insert(k, (), Timestamp(1 + ((k * 7_919) % n) as i64)));
        }
        let (len, cap) = (map.expiries.len(), map.expiries.capacity());
        assert_eq!(len as u64, n);
        assert!(cap <= len + len / 8 + 1, "{cap} slots for {len} keys");
        let mut gone = Vec::new();
        map.expire_with(Timestamp(10), |at, k| gone.push((at.ms(), *k)));
        let want: Vec<(i64, u64)> = {
            let mut w: Vec<(i64, u64)> = (0..n)
                .map(|k| (1 + ((k * 7_919) % n) as i64, k))
                .filter(|(at, _)| *at <= 10)
                .collect();
            w.sort_unstable();
            w
        };
        gone.sort_unstable();
        assert_eq!(gone, want);
        assert_eq!(map.size().0 as u64, n - want.len() as u64);
    }
}

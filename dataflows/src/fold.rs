//! [`KeyedFold::fold_by_key`]: per-key state folded in ingestion-time order, with timers.
//!
//! This is the workhorse of the views. Ingestion time is totally ordered, so a view that is
//! "some function of each key's records" does not need differential's `reduce` (which arranges
//! its whole input and its whole output, and re-reads both for every key it touches at every
//! time). Here each key has one small state `S` in a hash map; the records of one time are
//! applied in arrival order (so `apply` must not depend on the order of one time's records: sums,
//! maxima, multisets), and for each key touched the operator emits the difference between the
//! output it last published for the key and its output now: usually one retraction and one
//! insertion, nothing when the output did not change.
//!
//! Timers replace the temporal filter's scheduled retractions: `apply` can ask for the key to be
//! woken at a later time (a day leaving retention, a machine falling silent), and the timer runs
//! at exactly that ingestion time, before any later input. The operator holds one capability, at
//! the earliest time it still has to act on (a record waiting for the frontier, or a timer), so
//! timers cost neither progress traffic nor downstream work until they fire.
//!
//! The output of a key must be a pure function of its state (`output(&key, &state)`): time enters
//! the state through `apply` and timers. A key whose state returns to `S::default()` is dropped
//! (so the default's output must be empty).

use std::collections::BTreeMap;
use std::hash::Hash;

use differential_dataflow::{AsCollection, Data, ExchangeData, VecCollection};
use timely::dataflow::operators::generic::Operator;

use std::cell::RefCell;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::dataflow::operators::Capability;

use crate::checkpoint;
use crate::operators::{FastMap, PUBLISH_CHUNK, Time, Waiting, room_for_one, state_sizes, trim};
use crate::parked::Parked;

/// What `apply` and timers can do besides changing the key's state.
pub struct Ctx<'a, K, O> {
    now: Time,
    key: &'a K,
    direct: &'a mut Vec<(O, Time, isize)>,
    timers: &'a mut BTreeMap<Time, TimerKeys<K>>,
    /// What [`Ctx::park_until`] asked for the key, if anything.
    park: Option<Time>,
}

impl<K: Clone, O> Ctx<'_, K, O> {
    /// The ingestion time being applied.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Emits a record at the current time outside the key's output (a too-late count, a
    /// verdict): it is never retracted by the operator.
    pub fn give(&mut self, record: O, diff: isize) {
        self.direct.push((record, self.now, diff));
    }

    /// Runs the timer logic for this key at `time` (if later than now; else at once, after the
    /// current records).
    pub fn wake_at(&mut self, time: Time) {
        self.timers
            .entry(time.max(self.now))
            .or_default()
            .push(self.key.clone());
    }

    /// Asks for the key's state to leave memory for the fold's store on disk once this time is
    /// published, until `until` (exclusive): a record for the key or a timer of it before then
    /// takes it back first, as if it had never left; from `until` it is forgotten, so a key
    /// that still has output must have a timer before `until` that ends it. In a fold without
    /// a store (see [`Parking`]) the key stays in memory.
    pub fn park_until(&mut self, until: Time) {
        self.park = Some(until);
    }
}

/// A fold's store on disk for the keys its logic parks ([`Ctx::park_until`]): state that is
/// kept for a long horizon but rarely touched again (a machine's closed days).
pub type Parking = Option<crate::parked::Parked>;

/// Keys a chunk of [`TimerKeys`] holds at most.
const TIMER_CHUNK: usize = 4096;

/// The keys whose timers are set for one time, in chunks of at most [`TIMER_CHUNK`]: a time
/// that wakes a million keys (a bulk hour's card transactions, an hour later) is never copied
/// into a list twice its size, and its keys' memory goes chunk by chunk as they fire instead of
/// staying whole beside the list of keys the firing touches.
#[derive(Serialize, Deserialize)]
pub struct TimerKeys<K> {
    chunks: Vec<Vec<K>>,
}

impl<K> Default for TimerKeys<K> {
    fn default() -> Self {
        TimerKeys { chunks: Vec::new() }
    }
}

impl<K> TimerKeys<K> {
    fn push(&mut self, key: K) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < TIMER_CHUNK => chunk.push(key),
            _ => self.chunks.push(vec![key]),
        }
    }
}

/// Whether a fold keeps the output it last published for each key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Kept: nothing is computed twice (outputs that are expensive or smaller than the state).
    Kept,
    /// Computed again from the state before the key's first record of each time: for outputs
    /// that are cheap and as large as the state (sums), this halves memory.
    Recomputed,
}

pub trait KeyedFold<'s, K: ExchangeData + Hash, V: ExchangeData> {
    /// Folds each key's records into its state in ingestion-time order and publishes the
    /// difference of `output` per key and time. Records are routed to workers by `route(key)`.
    fn fold_by_key<S, O>(
        self,
        name: &str,
        published: Published,
        route: impl Fn(&K) -> u64 + 'static,
        apply: impl FnMut(&K, &mut S, V, isize, &mut Ctx<'_, K, O>) + 'static,
        timer: impl FnMut(&K, &mut S, &mut Ctx<'_, K, O>) + 'static,
        output: impl Fn(&K, &S, &mut Vec<O>) + 'static,
    ) -> VecCollection<'s, Time, O>
    where
        Self: Sized,
        S: Default + PartialEq + Serialize + DeserializeOwned + 'static,
        O: Data + Serialize + DeserializeOwned,
    {
        self.fold_with(Setup::new(name, published), route, apply, timer, output)
    }

    /// [`KeyedFold::fold_by_key`] set up with a store for the keys its logic parks.
    fn fold_with<S, O>(
        self,
        setup: Setup<'_>,
        route: impl Fn(&K) -> u64 + 'static,
        apply: impl FnMut(&K, &mut S, V, isize, &mut Ctx<'_, K, O>) + 'static,
        timer: impl FnMut(&K, &mut S, &mut Ctx<'_, K, O>) + 'static,
        output: impl Fn(&K, &S, &mut Vec<O>) + 'static,
    ) -> VecCollection<'s, Time, O>
    where
        S: Default + PartialEq + Serialize + DeserializeOwned + 'static,
        O: Data + Serialize + DeserializeOwned;
}

/// How a fold is set up: its name, whether it keeps the output it last published for each key,
/// and its store for the keys it parks ([`Ctx::park_until`]).
pub struct Setup<'a> {
    name: &'a str,
    keep: bool,
    parking: Parking,
}

impl<'a> Setup<'a> {
    pub fn new(name: &'a str, published: Published) -> Self {
        Setup {
            name,
            keep: published == Published::Kept,
            parking: None,
        }
    }

    /// With `store` for the keys the fold parks (None: they stay in memory).
    pub fn parking(self, store: Parking) -> Self {
        Setup {
            parking: store,
            ..self
        }
    }
}

/// Emits `-published` and `+after`, skipping what is in both; whether they differ.
fn emit_difference<O: Clone + PartialEq>(
    published: &[O],
    after: &[O],
    now: Time,
    out: &mut Vec<(O, Time, isize)>,
) -> bool {
    if published == after {
        return false;
    }
    // As multisets: each published record cancels one equal record of `after` (outputs are a
    // record or two per key; the quadratic scan allocates nothing).
    let mut matched_beyond_64: Vec<usize> = Vec::new();
    let mut matched = 0u64;
    for o in published.iter() {
        let hit = (0..after.len()).find(|&i| {
            let free = if i < 64 {
                matched & (1 << i) == 0
            } else {
                !matched_beyond_64.contains(&i)
            };
            free && after[i] == *o
        });
        match hit {
            Some(i) if i < 64 => matched |= 1 << i,
            Some(i) => matched_beyond_64.push(i),
            None => out.push((o.clone(), now, -1)),
        }
    }
    for (i, o) in after.iter().enumerate() {
        let used = if i < 64 {
            matched & (1 << i) != 0
        } else {
            matched_beyond_64.contains(&i)
        };
        if !used {
            out.push((o.clone(), now, 1));
        }
    }
    true
}

impl<'s, K: ExchangeData + Hash, V: ExchangeData> KeyedFold<'s, K, V>
    for VecCollection<'s, Time, (K, V)>
{
    fn fold_with<S, O>(
        self,
        setup: Setup<'_>,
        route: impl Fn(&K) -> u64 + 'static,
        apply: impl FnMut(&K, &mut S, V, isize, &mut Ctx<'_, K, O>) + 'static,
        timer: impl FnMut(&K, &mut S, &mut Ctx<'_, K, O>) + 'static,
        output: impl Fn(&K, &S, &mut Vec<O>) + 'static,
    ) -> VecCollection<'s, Time, O>
    where
        S: Default + PartialEq + Serialize + DeserializeOwned + 'static,
        O: Data + Serialize + DeserializeOwned,
    {
        fold(self, setup, route, apply, timer, output)
    }
}

/// A keyed record waiting for its time, with its diff.
type Record<K, V> = ((K, V), isize);

/// What a fold keeps between activations, apart from the records waiting for their time.
struct FoldState<K, S, O> {
    /// Each key's state and whether it is touched at the time being applied.
    states: FastMap<K, (S, bool)>,
    /// When kept, the output last published for each key that has one: a record or two, inline
    /// rather than in an allocation of its own per key.
    published: FastMap<K, SmallVec<[O; 2]>>,
    keep: bool,
    /// Timers by time.
    timers: BTreeMap<Time, TimerKeys<K>>,
    /// What goes out at the end of the activation (records carry their own times).
    out: Vec<(O, Time, isize)>,
    /// Keys touched at the time being applied, each with where its output before that time
    /// starts in `before` (when outputs are not kept): one buffer for every key, not an
    /// allocation per key and time.
    touched: Vec<(K, usize)>,
    /// How many of `touched` are published (a large time is published over several
    /// activations).
    published_upto: usize,
    before: Vec<O>,
    after: Vec<O>,
    /// Workers over every process (the tables' sizing: [`room_for_one`]).
    peers: usize,
    /// Where parked keys wait ([`Ctx::park_until`]), if the fold has a store.
    store: Option<Rc<RefCell<Parked>>>,
    /// The keys asked to park at the time being applied, each until when.
    parking: Vec<(K, Time)>,
}

impl<K, S, O> FoldState<K, S, O>
where
    K: Clone + Eq + Hash + Serialize + DeserializeOwned,
    S: Default + PartialEq + Serialize + DeserializeOwned,
    O: Clone + PartialEq + Serialize + DeserializeOwned,
{
    fn new(keep: bool, peers: usize) -> Self {
        FoldState {
            states: FastMap::default(),
            published: FastMap::default(),
            keep,
            timers: BTreeMap::new(),
            out: Vec::new(),
            touched: Vec::new(),
            published_upto: 0,
            before: Vec::new(),
            after: Vec::new(),
            peers,
            store: None,
            parking: Vec::new(),
        }
    }

    /// Keys held, and the bytes of the tables' slots (shallow, and cheap to tell: a fold
    /// publishes at every time its timers fire).
    fn size(&self) -> (usize, usize) {
        use std::mem::size_of;
        let bytes = self.states.capacity() * size_of::<(K, (S, bool))>()
            + self.published.capacity() * size_of::<(K, SmallVec<[O; 2]>)>()
            + self.timers.len() * size_of::<(Time, TimerKeys<K>)>();
        (self.states.len(), bytes)
    }

    fn first_timer(&self) -> Option<Time> {
        self.timers.keys().next().copied()
    }

    /// Applies one record at `now`.
    fn apply<V>(
        &mut self,
        now: Time,
        ((key, value), diff): Record<K, V>,
        apply: &mut impl FnMut(&K, &mut S, V, isize, &mut Ctx<'_, K, O>),
        output: &impl Fn(&K, &S, &mut Vec<O>),
    ) {
        self.on_key(now, &key, true, output, |state, ctx| {
            apply(&key, state, value, diff, ctx)
        });
    }

    /// Runs the timers set for `now` (after its records).
    fn fire(
        &mut self,
        now: Time,
        timer: &mut impl FnMut(&K, &mut S, &mut Ctx<'_, K, O>),
        output: &impl Fn(&K, &S, &mut Vec<O>),
    ) {
        let keys = self.timers.remove(&now).unwrap_or_default();
        for chunk in keys.chunks {
            for key in chunk {
                self.on_key(now, &key, false, output, |state, ctx| {
                    timer(&key, state, ctx)
                });
            }
        }
    }

    /// Runs `f` on `key`'s state (created if `create`, else skipped when the key has none),
    /// after marking the key touched at `now`.
    fn on_key(
        &mut self,
        now: Time,
        key: &K,
        create: bool,
        output: &impl Fn(&K, &S, &mut Vec<O>),
        f: impl FnOnce(&mut S, &mut Ctx<'_, K, O>),
    ) {
        if self.store.is_some() && !self.states.contains_key(key) {
            self.unpark(key, now);
        }
        let FoldState {
            states,
            touched,
            before,
            keep,
            out,
            timers,
            peers,
            store,
            parking,
            ..
        } = self;
        let (state, seen) = match states.get_mut(key) {
            Some(entry) => entry,
            None if create => {
                room_for_one(states, *peers);
                states.entry(key.clone()).or_default()
            }
            None => return,
        };
        let first = !*seen;
        let start = before.len();
        if first {
            *seen = true;
            touched.push((key.clone(), start));
            if !*keep {
                output(key, state, before);
            }
        }
        let mut ctx = Ctx {
            now,
            key,
            direct: out,
            timers,
            park: None,
        };
        f(state, &mut ctx);
        if let Some(until) = ctx.park
            && store.is_some()
        {
            parking.push((key.clone(), until));
        }
        // A key first touched now that had no output and is back to the default has nothing
        // to publish (the default's output is empty): it leaves the table at once rather than
        // when the time is published, so a bulk time that moves most of its keys elsewhere (a
        // settlement transaction parked on disk) never holds them all in memory.
        if first && !*keep && before.len() == start && *state == S::default() {
            states.remove(key);
            touched.pop();
        }
    }

    /// Ends time `now`: publishes the difference of each touched key's output, and drops the
    /// keys whose state is back to the default. Publishes at most `budget` keys; true when every
    /// touched key is published (call again, after the output has gone, until then).
    fn publish(&mut self, now: Time, output: &impl Fn(&K, &S, &mut Vec<O>), budget: usize) -> bool {
        let FoldState {
            states,
            published,
            keep,
            out,
            touched,
            published_upto,
            before,
            after,
            peers,
            ..
        } = self;
        let from = *published_upto;
        let to = touched.len().min(from.saturating_add(budget));
        *published_upto = to;
        for i in from..to {
            let (key, start) = &touched[i];
            let end = touched.get(i + 1).map_or(before.len(), |next| next.1);
            let Some((state, seen)) = states.get_mut(key) else {
                continue;
            };
            *seen = false;
            output(key, state, after);
            if *keep {
                let last = published.get(key).map_or(&[][..], |p| &p[..]);
                if emit_difference(last, after, now, out) {
                    if after.is_empty() {
                        published.remove(key);
                    } else if let Some(last) = published.get_mut(key) {
                        last.clear();
                        last.extend(after.drain(..));
                    } else {
                        room_for_one(published, *peers);
                        published.insert(key.clone(), after.drain(..).collect());
                    }
                }
            } else {
                emit_difference(&before[*start..end], after, now, out);
            }
            after.clear();
            if *state == S::default() {
                states.remove(key);
            }
        }
        if to < touched.len() {
            return false;
        }
        if !self.parking.is_empty() {
            self.park(now);
        }
        let FoldState {
            touched,
            published_upto,
            before,
            ..
        } = self;
        *published_upto = 0;
        touched.clear();
        before.clear();
        // A bulk step touches every key once; the next live step touches a few.
        trim(touched);
        trim(before);
        true
    }

    /// Moves the keys asked to park at `now` (just published) to the store with their
    /// published output: a key that a disk error keeps is kept in memory (logged), as it was.
    fn park(&mut self, now: Time) {
        let Some(store) = &self.store else {
            self.parking.clear();
            return;
        };
        let mut store = store.borrow_mut();
        for (key, until) in self.parking.drain(..) {
            let Some((state, _)) = self.states.get(&key) else {
                // Back to its default: gone already.
                continue;
            };
            let kept = self.published.get(&key).map_or(&[][..], |p| &p[..]);
            let parked = bincode::serialize(&key).and_then(|k| {
                let v = bincode::serialize(&(state, kept))?;
                Ok((k, v))
            });
            let result = match parked {
                Ok((k, v)) => store.park(k, v, until).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    self.states.remove(&key);
                    self.published.remove(&key);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot park a fold's key on disk; kept in memory")
                }
            }
        }
        if let Err(e) = store.sweep(now) {
            tracing::error!(error = %e, "cannot sweep a fold's parked keys");
        }
    }

    /// Takes `key` back from the store if it is parked there, with its published output.
    fn unpark(&mut self, key: &K, now: Time) {
        let Some(store) = &self.store else {
            return;
        };
        let Ok(bytes) = bincode::serialize(key) else {
            return;
        };
        let taken = store.borrow_mut().take(&bytes, now);
        let value = match taken {
            Ok(Some(value)) => value,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a fold's parked key; it starts again");
                return;
            }
        };
        match bincode::deserialize::<(S, Vec<O>)>(&value) {
            Ok((state, kept)) => {
                room_for_one(&mut self.states, self.peers);
                self.states.insert(key.clone(), (state, false));
                if !kept.is_empty() {
                    room_for_one(&mut self.published, self.peers);
                    self.published
                        .insert(key.clone(), kept.into_iter().collect());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a fold's parked key cannot be read; it starts again");
            }
        }
    }
}

/// The fold operator; `keep` says whether the last published output of each key is kept.
///
/// A time's records are applied as they arrive once the frontier has reached that time and
/// nothing earlier is left to do (the time is *open*): no record can come before it any more, and
/// the records of one time may be applied in any order. Only the publication waits for the
/// frontier to pass the time. So a bulk step of many records is not queued whole in every fold
/// (memory, and a copy of every record); records ahead of the frontier still wait by time.
fn fold<'s, K, V, S, O>(
    records: VecCollection<'s, Time, (K, V)>,
    Setup {
        name,
        keep,
        parking,
    }: Setup<'_>,
    route: impl Fn(&K) -> u64 + 'static,
    mut apply: impl FnMut(&K, &mut S, V, isize, &mut Ctx<'_, K, O>) + 'static,
    mut timer: impl FnMut(&K, &mut S, &mut Ctx<'_, K, O>) + 'static,
    output: impl Fn(&K, &S, &mut Vec<O>) + 'static,
) -> VecCollection<'s, Time, O>
where
    K: ExchangeData + Hash,
    V: ExchangeData,
    S: Default + PartialEq + Serialize + DeserializeOwned + 'static,
    O: Data + Serialize + DeserializeOwned,
{
    let pact =
        crate::operators::by_route(move |((k, _v), _t, _r): &((K, V), Time, isize)| route(k));
    let scope = records.inner.scope();
    records
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(O, Time, isize)>>, _, _, _>(
            pact,
            name,
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut fold = FoldState::new(keep, scope.peers());
                // Enrolled in the checkpoint beside the fold: what is parked is its state too.
                fold.store =
                    parking.map(|p| p.enrolled(&format!("{name}: parked"), "parked keys"));
                let shared = Rc::new(RefCell::new(FoldOp::<K, V, S, O> {
                    fold,
                    waiting: Waiting::new(),
                    open: None,
                    publishing: None,
                }));
                let restored: Option<FoldSaved<K, V, S, O>> =
                    checkpoint::enrol(name, &shared, FoldOp::save);
                if let Some(saved) = restored {
                    shared.borrow_mut().restore(saved, cap);
                    activator.activate();
                }
                let gauge = state_sizes::gauge(name);
                move |(input, frontier), output_handle| {
                    let mut op = shared.borrow_mut();
                    let FoldOp {
                        fold,
                        waiting,
                        open,
                        publishing,
                    } = &mut *op;
                    let frontier = frontier.frontier();
                    let reached = frontier.first().copied();
                    // Every time before the frontier: its waiting records, then its timers, then
                    // the publication of its touched keys.
                    loop {
                        if let Some(now) = *publishing {
                            if !fold.publish(now, &output, PUBLISH_CHUNK) {
                                break;
                            }
                            gauge.set(fold.size());
                            *publishing = None;
                            if *open == Some(now) {
                                *open = None;
                            }
                            continue;
                        }
                        let next_input = waiting.first_time();
                        let next_timer = fold.first_timer();
                        let Some(now) = open.iter().copied().chain(next_input).chain(next_timer).min()
                        else {
                            break;
                        };
                        if frontier.less_equal(&now) {
                            break;
                        }
                        // Input closed: what is left are timers past the end (retractions of
                        // everything at shutdown), which nobody reads. Records still waiting
                        // at later times are applied on the next turn: stopping here would keep
                        // their capability held and the dataflow would never complete.
                        if reached.is_none() && *open != Some(now) && next_input != Some(now) {
                            fold.timers.clear();
                            continue;
                        }
                        if next_input == Some(now)
                            && let Some((_, records)) = waiting.pop_ready(&frontier)
                        {
                            for record in records {
                                fold.apply(now, record, &mut apply, &output);
                            }
                        }
                        if next_timer == Some(now) {
                            fold.fire(now, &mut timer, &output);
                        }
                        *publishing = Some(now);
                    }
                    let index = output_handle.output_index();
                    // While a time is being published, input waits in the channel (records of
                    // later times; the state must stay as the publication reads it).
                    if publishing.is_some() {
                        activator.activate();
                    } else {
                        input.for_each_stamp(|cap, data| {
                            for container in data {
                                for (record, t, diff) in container.drain(..) {
                                    if *open != Some(t) {
                                        // Records at the frontier's time open it when nothing is
                                        // left before it (a record is never before the frontier).
                                        let opens = open.is_none()
                                            && reached == Some(t)
                                            && waiting.first_time().is_none_or(|w| w >= t)
                                            && fold.first_timer().is_none_or(|w| w >= t);
                                        if !opens {
                                            waiting.push(&cap, index, t, (record, diff));
                                            continue;
                                        }
                                        *open = Some(t);
                                        waiting.hold_at(&cap, index, t);
                                        for early in waiting.pop_at(t).into_iter().flatten() {
                                            fold.apply(t, early, &mut apply, &output);
                                        }
                                    }
                                    fold.apply(t, (record, diff), &mut apply, &output);
                                }
                            }
                        });
                    }
                    // Everything this activation produced goes out in one message at the held
                    // capability: records carry their own times, and one message per distinct
                    // time (timers fire at many) would cost every operator downstream a message
                    // each.
                    if !fold.out.is_empty()
                        && let Some(h) = waiting.hold()
                    {
                        output_handle.session(h).give_iterator(fold.out.drain(..));
                    }
                    // A publication in parts keeps its buffer's room for the next part.
                    if publishing.is_none() {
                        trim(&mut fold.out);
                    }
                    let next = open
                        .iter()
                        .copied()
                        .chain(*publishing)
                        .chain(waiting.first_time())
                        .chain(fold.first_timer())
                        .min();
                    waiting.settle(next);
                }
            },
        )
        .as_collection()
}

/// A fold operator's state between activations, shared with the checkpoint's [`checkpoint::Book`].
struct FoldOp<K, V, S, O> {
    fold: FoldState<K, S, O>,
    waiting: Waiting<Record<K, V>>,
    /// The open time, whose records are applied as they arrive.
    open: Option<Time>,
    /// The time being published, when its publication takes several activations.
    publishing: Option<Time>,
}

/// What a checkpoint keeps of a fold (the layout [`FoldOp::save`] writes): each key's state,
/// the outputs published (when kept), the timers, and the records waiting for later times.
type FoldSaved<K, V, S, O> = (
    FastMap<K, (S, bool)>,
    FastMap<K, SmallVec<[O; 2]>>,
    BTreeMap<Time, TimerKeys<K>>,
    BTreeMap<Time, Vec<Record<K, V>>>,
);

impl<K, V, S, O> FoldOp<K, V, S, O>
where
    K: ExchangeData + Hash,
    V: ExchangeData,
    S: Serialize,
    O: Serialize,
{
    /// Writes the state (a checkpoint is taken between times: nothing is open or half
    /// published).
    fn save(&self, out: &mut crate::checkpoint::SectionOut) -> Result<(), bincode::Error> {
        if self.open.is_some() || self.publishing.is_some() || !self.fold.touched.is_empty() {
            return Err(checkpoint::not_between_times(
                "a fold",
                self.open.or(self.publishing),
            ));
        }
        bincode::serialize_into(
            out,
            &(
                &self.fold.states,
                &self.fold.published,
                &self.fold.timers,
                self.waiting.records(),
            ),
        )
    }

    /// Starts from a checkpoint's state; `cap` (the operator's initial capability) becomes the
    /// hold for the timers and records it brings.
    fn restore(
        &mut self,
        (states, published, timers, waiting): FoldSaved<K, V, S, O>,
        cap: Capability<Time>,
    ) {
        self.fold.states = states;
        self.fold.published = published;
        self.fold.timers = timers;
        self.waiting.restore(waiting, cap);
        let next = self
            .waiting
            .first_time()
            .into_iter()
            .chain(self.fold.timers.keys().next().copied())
            .min();
        self.waiting.settle(next);
    }
}

/// A multiset: each value with its count (never zero).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counted<T>(pub(crate) Vec<(T, isize)>);

impl<T> Default for Counted<T> {
    fn default() -> Self {
        Counted(Vec::new())
    }
}

impl<T: PartialEq> Counted<T> {
    pub(crate) fn add(&mut self, value: T, diff: isize) {
        match self.0.iter().position(|(v, _)| *v == value) {
            Some(at) => {
                self.0[at].1 += diff;
                if self.0[at].1 == 0 {
                    self.0.remove(at);
                }
            }
            None if diff != 0 => self.0.push((value, diff)),
            None => {}
        }
    }
}

/// Values that are summed per key: money, units, counts.
pub trait Additive: Clone + Default + PartialEq + 'static {
    /// `self += other × times`.
    fn add_times(&mut self, other: &Self, times: isize);
}

impl Additive for isize {
    fn add_times(&mut self, other: &Self, times: isize) {
        *self += other * times;
    }
}

impl Additive for (isize, isize) {
    fn add_times(&mut self, o: &Self, times: isize) {
        self.0 += o.0 * times;
        self.1 += o.1 * times;
    }
}

impl Additive for (isize, isize, isize) {
    fn add_times(&mut self, o: &Self, times: isize) {
        self.0 += o.0 * times;
        self.1 += o.1 * times;
        self.2 += o.2 * times;
    }
}

/// What [`sum_by_key`] publishes: a key's total while it is live, and the records that came
/// after their key's window had closed (with the record's own diff).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Summed<K, R> {
    Total(K, R),
    Late(K, R),
}

/// One key's sum: what is live, what waits for its window to open, and its pending timer.
/// Kept small, since there is one per key of every sum (a machine-day, a slot-day): a sum
/// waiting for its window is rare (a record from the future), so it is boxed, and "no timer"
/// is `Time::MAX` (never armed: a key kept for ever has no timer) rather than an `Option`.
#[derive(PartialEq, Serialize, Deserialize)]
struct Sum<R> {
    live: R,
    future: Option<Box<R>>,
    timer: Time,
}

impl<R: Default> Default for Sum<R> {
    fn default() -> Self {
        Sum {
            live: R::default(),
            future: None,
            timer: NO_TIMER,
        }
    }
}

const NO_TIMER: Time = Time::MAX;

/// Sums `R` per key while ingestion time is within the key's `window` `[from, until)`: the total
/// appears at `max(now, from)` and is retracted at `until` (the temporal-filter pattern, with
/// one timer per key instead of one scheduled retraction per record). A record arriving at or
/// after its key's `until` is `Late`. `until = Time::MAX` keeps a key for ever. The published
/// total is the sum's current value, like differential's `count_total` on the filtered records.
pub fn sum_by_key<'s, K, R>(
    records: VecCollection<'s, Time, (K, R)>,
    name: &str,
    route: impl Fn(&K) -> u64 + 'static,
    window: impl Fn(&K) -> (Time, Time) + Clone + 'static,
) -> VecCollection<'s, Time, Summed<K, R>>
where
    K: ExchangeData + Hash,
    R: Additive + ExchangeData,
{
    sum_by_key_parking(records, name, route, window, None)
}

/// Where a [`sum_by_key_parking`] parks its quiet keys: the store, and for each key the
/// ingestion time from which it is quiet (its day over, and the time late records usually take
/// to come after it).
pub struct ParkSums<K> {
    pub store: Parked,
    pub quiet_from: Box<dyn Fn(&K) -> Time>,
}

/// [`sum_by_key`] whose keys wait on disk from their `quiet_from` time until their `until`: a
/// machine's closed days are kept for weeks and rarely change. A record for a parked key (a sale
/// days late) takes it back and it is parked again once that time is published; its timer at
/// `until` takes it back to retract its total. The same output as [`sum_by_key`].
pub fn sum_by_key_parking<'s, K, R>(
    records: VecCollection<'s, Time, (K, R)>,
    name: &str,
    route: impl Fn(&K) -> u64 + 'static,
    window: impl Fn(&K) -> (Time, Time) + Clone + 'static,
    park: Option<ParkSums<K>>,
) -> VecCollection<'s, Time, Summed<K, R>>
where
    K: ExchangeData + Hash,
    R: Additive + ExchangeData,
{
    fn arm<K: Clone, O, R>(sum: &mut Sum<R>, at: Time, ctx: &mut Ctx<'_, K, O>) {
        if sum.timer > at {
            sum.timer = at;
            ctx.wake_at(at);
        }
    }
    /// Arms a live key's next timer: its quiet time while that is ahead, else its end, and
    /// once quiet asks for it to be parked until just after its end (whose timer takes it back).
    fn arm_live<K: Clone, O, R>(
        sum: &mut Sum<R>,
        quiet: Option<Time>,
        until: Time,
        ctx: &mut Ctx<'_, K, O>,
    ) {
        match quiet.filter(|q| *q < until) {
            Some(quiet) if quiet > ctx.now() => arm(sum, quiet, ctx),
            Some(_) => {
                arm(sum, until, ctx);
                ctx.park_until(until.saturating_add(1));
            }
            None => arm(sum, until, ctx),
        }
    }
    let (store, quiet_from) = match park {
        Some(ParkSums { store, quiet_from }) => (Some(store), Some(Rc::new(quiet_from))),
        None => (None, None),
    };
    let on_timer = window.clone();
    let quiet_on_timer = quiet_from.clone();
    let setup = Setup::new(name, Published::Recomputed).parking(store);
    fold(
        records,
        setup,
        route,
        move |key, sum: &mut Sum<R>, r, diff, ctx| {
            let (from, until) = window(key);
            let now = ctx.now();
            if until <= now {
                ctx.give(Summed::Late(key.clone(), r), diff);
            } else if now < from {
                let future = sum.future.get_or_insert_with(Box::default);
                future.add_times(&r, diff);
                if **future == R::default() {
                    sum.future = None;
                }
                arm(sum, from, ctx);
            } else {
                sum.live.add_times(&r, diff);
                if until != Time::MAX {
                    let quiet = quiet_from.as_ref().map(|q| q(key));
                    arm_live(sum, quiet, until, ctx);
                }
            }
        },
        move |key, sum, ctx| {
            let (from, until) = on_timer(key);
            let now = ctx.now();
            sum.timer = NO_TIMER;
            if now >= until {
                *sum = Sum::default();
                return;
            }
            if now >= from
                && let Some(future) = sum.future.take()
            {
                sum.live.add_times(&future, 1);
            }
            if sum.future.is_some() {
                arm(sum, from, ctx);
            } else if sum.live != R::default() && until != Time::MAX {
                let quiet = quiet_on_timer.as_ref().map(|q| q(key));
                arm_live(sum, quiet, until, ctx);
            }
        },
        |key, sum, out| {
            if sum.live != R::default() {
                out.push(Summed::Total(key.clone(), sum.live.clone()));
            }
        },
    )
}

/// Each distinct record with its count, while the count is not zero: differential's
/// `count_total`, as a fold (its state is a count per record, which a checkpoint can save; an
/// arrangement's is not).
pub fn count_total<'s, D>(
    records: VecCollection<'s, Time, D>,
    name: &str,
) -> VecCollection<'s, Time, (D, isize)>
where
    D: ExchangeData + Hash,
{
    count_by_record(records, name, |d, n, out| {
        if n != 0 {
            out.push((d.clone(), n));
        }
    })
}

/// Each record whose count is positive, once: differential's `distinct_total`, as a fold.
pub fn distinct_total<'s, D>(
    records: VecCollection<'s, Time, D>,
    name: &str,
) -> VecCollection<'s, Time, D>
where
    D: ExchangeData + Hash,
{
    count_by_record(records, name, |d, n, out| {
        if n > 0 {
            out.push(d.clone());
        }
    })
}

/// A count per distinct record, published as `output` makes of it.
fn count_by_record<'s, D, O>(
    records: VecCollection<'s, Time, D>,
    name: &str,
    output: impl Fn(&D, isize, &mut Vec<O>) + 'static,
) -> VecCollection<'s, Time, O>
where
    D: ExchangeData + Hash,
    O: Data + Serialize + DeserializeOwned,
{
    records.map(|d| (d, ())).fold_by_key(
        name,
        Published::Recomputed,
        |d: &D| crate::operators::hash_of(d),
        |_, n: &mut isize, (), diff, _| *n += diff,
        |_, _, _| {},
        move |d, n, out| output(d, *n, out),
    )
}

/// The live totals of a [`sum_by_key`].
pub fn totals<'s, K: Data, R: Data>(
    summed: VecCollection<'s, Time, Summed<K, R>>,
) -> VecCollection<'s, Time, (K, R)> {
    summed.flat_map(|s| match s {
        Summed::Total(k, r) => Some((k, r)),
        Summed::Late(..) => None,
    })
}

/// Keyed values, as [`split_late`] gives them.
pub type Pairs<'s, K, R> = VecCollection<'s, Time, (K, R)>;

/// A sum's totals and its late records apart, each record moved once: a sum read by a reader of
/// its totals and by readers of its late records was copied whole for each.
pub fn split_late<'s, K: Data, R: Data>(
    summed: VecCollection<'s, Time, Summed<K, R>>,
    name: &str,
) -> (Pairs<'s, K, R>, Pairs<'s, K, R>) {
    use crate::operators::{Fork, fork};
    let (totals, late, _) = fork(summed, name, |s| match s {
        Summed::Total(k, r) => Fork::<_, _, std::convert::Infallible>::A((k, r)),
        Summed::Late(k, r) => Fork::B((k, r)),
    });
    (totals, late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendflow_protocol::Timestamp;

    /// Sets a key's state to the record's value; the output is the state unless it is 0.
    fn set(_: &u32, state: &mut i64, value: i64, _: isize, _: &mut Ctx<'_, u32, i64>) {
        *state = value;
    }

    fn output(_: &u32, state: &i64, out: &mut Vec<i64>) {
        if *state != 0 {
            out.push(*state);
        }
    }

    /// A key first touched at a time that is back to its default at once (a settlement
    /// transaction parked on disk) leaves the table then, not when the time is published; a
    /// key that had output waits for the publication, which retracts it.
    #[test]
    fn a_key_back_to_its_default_on_its_first_touch_leaves_the_table_at_once() {
        let mut fold = FoldState::<u32, i64, i64>::new(false, 1);
        let t0 = Time::EPOCH;
        fold.apply(t0, ((1, 0), 1), &mut set, &output);
        assert_eq!((fold.states.len(), fold.touched.len()), (0, 0));
        fold.apply(t0, ((2, 7), 1), &mut set, &output);
        assert_eq!((fold.states.len(), fold.touched.len()), (1, 1));
        assert!(fold.publish(t0, &output, usize::MAX));
        assert_eq!(std::mem::take(&mut fold.out), vec![(7, t0, 1)]);

        let t1 = t0.saturating_add(1);
        fold.apply(t1, ((2, 0), 1), &mut set, &output);
        assert_eq!(fold.states.len(), 1, "its output 7 is still to retract");
        assert!(fold.publish(t1, &output, usize::MAX));
        assert_eq!(std::mem::take(&mut fold.out), vec![(7, t1, -1)]);
        assert!(fold.states.is_empty());
    }

    /// A key parked when its time is published leaves memory with its published output; a
    /// record or a timer for it takes both back (the output changes from what was published
    /// before it left), and a key whose horizon passed on disk starts afresh.
    #[test]
    fn a_parked_key_comes_back_with_its_state_and_output_for_a_record_or_its_timer() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Parked::create(&dir.path().join("fold.redb")).unwrap_or_else(|e| panic!("{e}"));
        let store = Rc::new(RefCell::new(store));
        let mut fold = FoldState::<u32, i64, i64>::new(true, 1);
        fold.store = Some(store.clone());
        let t = Timestamp;
        let mut add = |k: &u32, s: &mut i64, v: i64, _: isize, ctx: &mut Ctx<'_, u32, i64>| {
            *s += v;
            if *k == 1 {
                ctx.wake_at(t(50));
            }
            ctx.park_until(t(if *k == 1 { 100 } else { 60 }));
        };
        let mut end = |_: &u32, s: &mut i64, _: &mut Ctx<'_, u32, i64>| *s = 0;
        let mut step = |fold: &mut FoldState<u32, i64, i64>, now: i64, records: &[(u32, i64)]| {
            for &(k, v) in records {
                fold.apply(t(now), ((k, v), 1), &mut add, &output);
            }
            fold.fire(t(now), &mut end, &output);
            assert!(fold.publish(t(now), &output, usize::MAX));
            let mut out = std::mem::take(&mut fold.out);
            out.sort();
            out
        };

        assert_eq!(
            step(&mut fold, 0, &[(1, 5), (2, 3)]),
            vec![(3, t(0), 1), (5, t(0), 1)]
        );
        assert!(
            fold.states.is_empty() && fold.published.is_empty(),
            "both parked"
        );
        assert_eq!(store.borrow().counts(), (2, 0));

        // A late record: back with its state 5 and its published 5.
        assert_eq!(
            step(&mut fold, 10, &[(1, 2)]),
            vec![(5, t(10), -1), (7, t(10), 1)]
        );
        assert_eq!(store.borrow().counts(), (3, 1));
        assert!(fold.states.is_empty(), "parked again");

        // Its timer takes it back to end it.
        assert_eq!(step(&mut fold, 50, &[]), vec![(7, t(50), -1)]);
        assert_eq!(store.borrow().counts(), (3, 2));
        assert!(fold.states.is_empty() && fold.published.is_empty());

        // Key 2 was parked until 60: at 70 it is gone, and its key starts from nothing.
        assert_eq!(step(&mut fold, 70, &[(2, 1)]), vec![(1, t(70), 1)]);
        assert_eq!(store.borrow().counts(), (4, 2));
    }

    /// A sum that parks its quiet keys publishes exactly what one that keeps them does, on
    /// random records for days in and out of their window, late ones included.
    #[test]
    fn a_sum_that_parks_its_quiet_days_publishes_what_one_that_keeps_them_does() {
        use differential_dataflow::input::Input;
        use rand::{Rng, SeedableRng};
        use vendflow_protocol::units::MS_PER_HOUR;

        type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Summed<(u32, i64), isize>, Time, isize)>>>;
        const DAY: i64 = 24 * MS_PER_HOUR;
        for seed in 0..4u64 {
            let (kept, parked): (Seen, Seen) = Default::default();
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let path = dir.path().join("sums.redb");
            let (k2, p2) = (kept.clone(), parked.clone());
            timely::execute_directly(move |worker| {
                let probe = timely::dataflow::operators::probe::Handle::new();
                let window = |(_, day): &(u32, i64)| (Time::EPOCH, Timestamp((day + 3) * DAY));
                let mut input = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, records) = scope.new_collection::<((u32, i64), isize), isize>();
                    let store = Parked::create(&path).unwrap_or_else(|e| panic!("{e}"));
                    let park = ParkSums {
                        store,
                        quiet_from: Box::new(|(_, day): &(u32, i64)| {
                            Timestamp((day + 1) * DAY + MS_PER_HOUR)
                        }),
                    };
                    let route = |k: &(u32, i64)| u64::from(k.0);
                    sum_by_key(records.clone(), "kept", route, window)
                        .inspect(move |x| {
                            k2.lock().unwrap_or_else(|e| e.into_inner()).push(x.clone())
                        })
                        .probe_with(&probe);
                    sum_by_key_parking(records, "parked", route, window, Some(park))
                        .inspect(move |x| {
                            p2.lock().unwrap_or_else(|e| e.into_inner()).push(x.clone())
                        })
                        .probe_with(&probe);
                    input
                });
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let mut now = 0;
                for _ in 0..400 {
                    now += rng.random_range(0..4 * MS_PER_HOUR);
                    let today = now / DAY;
                    // Mostly today's, some days late (a few past their window), some retracted.
                    let day = today - [0, 0, 0, 0, 1, 2, 4][rng.random_range(0..7)];
                    let key = (rng.random_range(0..5u32), day);
                    let diff = if rng.random_range(0..10) == 0 { -1 } else { 1 };
                    input.update((key, rng.random_range(1..100i64) as isize), diff);
                    input.advance_to(Timestamp(now + 1));
                    input.flush();
                    while probe.less_than(&Timestamp(now + 1)) {
                        worker.step();
                    }
                }
                drop(input);
                while worker.step() {}
            });
            let consolidated = |out: &Seen| {
                let mut all = std::collections::BTreeMap::new();
                for (x, t, r) in out.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    *all.entry((*t, x.clone())).or_insert(0) += r;
                }
                all.retain(|_, r| *r != 0);
                all
            };
            assert_eq!(consolidated(&parked), consolidated(&kept), "seed {seed}");
            assert!(!consolidated(&kept).is_empty());
        }
    }
}

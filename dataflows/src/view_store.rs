//! The view store: every view's current rows, published together at one timestamp.
//!
//! Each worker captures each view's updates into one channel. A single store thread owns the
//! channel: it tracks, per view, the frontier the workers report, and holds updates back until
//! *every* view's frontier has passed their time. Only then are they applied, all views at once,
//! under one write lock, and the store's `frontier` moves. So a reader never sees view A at time
//! `t` and view B at `t' ≠ t`: a [`Snapshot`] is taken under one read lock, and a subscription
//! receives each view's changes tagged with the frontier they were published at.
//!
//! Lifecycle: the thread ends when every worker has dropped its captures (engine shut down);
//! the store stays readable afterwards. Subscribers get bounded channels: one that falls
//! `SUBSCRIBER_BUFFER` changes behind is cut off with [`SubscriptionEnd::Lagged`] rather than
//! growing the store's memory.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use smallvec::SmallVec;
use timely::dataflow::operators::capture::{Event, EventPusher};
use timely::progress::frontier::MutableAntichain;

use crate::cold_rows::{self, ColdReader, ColdRows};
use crate::operators::Time;
use crate::row::{Row, Value, to_batch};
use crate::views::{CATALOG, ViewDef, find};

/// Changes buffered per subscriber before it is cut off.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// Updates of one view, as they come out of a worker.
pub(crate) type Updates = Vec<(Row, Time, isize)>;

/// An update with its row's hash, computed on the worker that produced it (hashing is most of
/// what applying an update costs, and the workers are many where the store thread is one).
type Hashed = (Row, u32, Time, isize);

/// What a worker's capture sends the store.
pub(crate) struct Captured {
    view: usize,
    message: Message,
}

enum Message {
    Progress(Vec<(Time, i64)>),
    Updates(Vec<Hashed>),
}

/// Capture adapter: tags a worker's events for one view and hashes their rows.
pub(crate) struct ViewPusher {
    pub(crate) view: usize,
    pub(crate) tx: SyncSender<Captured>,
}

impl EventPusher<Time, Updates> for ViewPusher {
    fn push(&mut self, event: Event<Time, Updates>) {
        let message = match event {
            Event::Progress(p) => Message::Progress(p),
            Event::Messages(_, updates) if updates.is_empty() => return,
            Event::Messages(_, updates) => Message::Updates(
                updates
                    .into_iter()
                    .map(|(row, t, d)| {
                        let hash = row_hash(&row);
                        (row, hash, t, d)
                    })
                    .collect(),
            ),
        };
        // The store going away first only happens at shutdown; nothing to deliver then.
        let _ = self.tx.send(Captured {
            view: self.view,
            message,
        });
    }
}

/// The store's hash of a row, or of a group's key (its rows' first cell): fixed, so the
/// workers that capture rows and the store agree.
fn store_hash(value: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x726f7773).hash_one(value)
}

/// A row's hash, in 32 bits: it only tells rows apart before their bytes are compared (in a
/// group's few rows, and as [`spread`] in a group's table), and kept in every entry.
fn row_hash(row: &Row) -> u32 {
    store_hash(row) as u32
}

/// A row's 32-bit hash spread over 64 bits, as a table's hash (hashbrown reads its top bits).
fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A row of a view, its multiplicity, and its hash: 16 bytes, for the 860 K rows of the 1 M
/// benchmark's views (24 with a 64-bit hash and count: 7 MB more, and a group's spilled rows
/// a third larger).
#[derive(Clone)]
struct Entry {
    row: Row,
    hash: u32,
    count: i32,
}

impl Entry {
    fn new(row: Row, hash: u32, count: i64) -> Entry {
        let mut e = Entry {
            row,
            hash,
            count: 0,
        };
        e.add(count);
        e
    }

    fn count(&self) -> i64 {
        i64::from(self.count)
    }

    /// Adds `d` to the multiplicity. One past 32 bits (two billion copies of one row, which
    /// no view publishes) stays at the limit, and says so.
    fn add(&mut self, d: i64) {
        let sum = i64::from(self.count).saturating_add(d);
        self.count = i32::try_from(sum).unwrap_or_else(|_| {
            tracing::error!(
                count = sum,
                "a view row's multiplicity is past 32 bits; kept at the limit"
            );
            if sum < 0 { i32::MIN } else { i32::MAX }
        });
    }
}

/// Groups of up to this many rows are a vector searched from its end (a machine's newest row
/// is the one most often replaced); larger groups become a hash table.
const FEW: usize = 32;

/// The rows of one view that share their first column (never empty: an emptied group is
/// dropped). A group of one row (a machine's liveness, health, day of revenue) holds it inline.
enum Group {
    Few(SmallVec<[Entry; 1]>),
    Many(hashbrown::HashTable<Entry>),
}

impl Group {
    /// Adds `d` to the row's multiplicity; the row leaves the group at 0.
    fn update(&mut self, row: Row, hash: u32, d: i64) {
        match self {
            Group::Few(entries) => {
                match entries.iter().rposition(|e| e.hash == hash && e.row == row) {
                    Some(i) => {
                        entries[i].add(d);
                        if entries[i].count == 0 {
                            entries.remove(i);
                        }
                    }
                    None => {
                        entries.push(Entry::new(row, hash, d));
                        if entries.len() > FEW {
                            let mut table = hashbrown::HashTable::with_capacity(entries.len() * 2);
                            for e in entries.drain(..) {
                                table.insert_unique(spread(e.hash), e, |e: &Entry| spread(e.hash));
                            }
                            *self = Group::Many(table);
                        }
                    }
                }
            }
            Group::Many(table) => update_table(table, row, hash, d),
        }
    }

    fn len(&self) -> usize {
        match self {
            Group::Few(entries) => entries.len(),
            Group::Many(table) => table.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its entries, in no order. (Not a boxed iterator: that was an allocation per group on
    /// every read of a whole view, under the store's lock: 348 K for one snapshot of the 1 M
    /// workload's views.)
    fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        let (few, many) = match self {
            Group::Few(entries) => (Some(entries.iter()), None),
            Group::Many(table) => (None, Some(table.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The first cell its rows share (empty for an empty group, which is never kept).
    fn first_cell(&self) -> &[u8] {
        let first = match self {
            Group::Few(entries) => entries.first(),
            Group::Many(table) => table.iter().next(),
        };
        first.map_or(&[], |e| e.row.first_cell())
    }
}

/// The hash of a group's key, its rows' first cell.
fn cell_hash(cell: &[u8]) -> u64 {
    store_hash(cell)
}

fn update_table(table: &mut hashbrown::HashTable<Entry>, row: Row, hash: u32, d: i64) {
    match table.find_entry(spread(hash), |e| e.hash == hash && e.row == row) {
        Ok(mut found) => {
            found.get_mut().add(d);
            if found.get().count == 0 {
                found.remove();
            }
        }
        Err(_) => {
            table.insert_unique(spread(hash), Entry::new(row, hash, d), |e| spread(e.hash));
        }
    }
}

/// One view's rows, grouped by their first column (a machine's rows together, for point
/// queries), each with its multiplicity.
#[derive(Default)]
struct ViewRows {
    /// A view that keeps its old rows on disk: those rows (the rest of this struct is what is
    /// in memory).
    cold: Option<Box<ColdRows>>,
    /// By the first cell's encoded bytes ([`Row::first_cell`]), compared with the group's own
    /// rows: found without decoding the cell, and no key kept apart from the rows.
    groups: hashbrown::HashTable<Group>,
    /// Rows counted once each (not by multiplicity), for sizing copies.
    distinct: usize,
    /// Rows counted by multiplicity: the view's size as a reader sees it.
    total: i64,
}

impl ViewRows {
    fn update(&mut self, row: Row, hash: u32, d: i64) {
        if d == 0 {
            return;
        }
        self.total += d;
        let key = cell_hash(row.first_cell());
        let found = self
            .groups
            .find_entry(key, |g| g.first_cell() == row.first_cell());
        match found {
            Ok(mut found) => {
                let group = found.get_mut();
                let before = group.len();
                group.update(row, hash, d);
                self.distinct = self.distinct + group.len() - before;
                if group.is_empty() {
                    found.remove();
                }
            }
            Err(_) => {
                self.distinct += 1;
                let entry = Entry::new(row, hash, d);
                self.groups
                    .insert_unique(key, Group::Few(smallvec::smallvec![entry]), |g| {
                        cell_hash(g.first_cell())
                    });
            }
        }
    }

    /// Applies a retraction to a row held in memory, or gives it back (for the disk).
    fn retract_held(&mut self, row: Row, hash: u32, d: i64) -> Option<(Row, u32, i64)> {
        let held = self
            .groups
            .find(cell_hash(row.first_cell()), |g| {
                g.first_cell() == row.first_cell()
            })
            .is_some_and(|g| g.entries().any(|e| e.hash == hash && e.row == row));
        if held {
            self.update(row, hash, d);
            None
        } else {
            Some((row, hash, d))
        }
    }

    /// Takes out of memory the rows `cold` says belong on disk at `frontier`, with their
    /// multiplicities.
    fn take_cold(&mut self, cold: &ColdRows, frontier: Time) -> Vec<(Row, u32, i64)> {
        let mut moved = Vec::new();
        let mut take = |e: &Entry| {
            let out = cold.is_cold(&e.row, frontier);
            if out {
                moved.push((e.row.clone(), e.hash, e.count()));
            }
            !out
        };
        self.groups.retain(|group| {
            match group {
                Group::Few(entries) => entries.retain(|e| take(e)),
                Group::Many(table) => table.retain(|e| take(e)),
            }
            !group.is_empty()
        });
        self.distinct -= moved.len();
        self.total -= moved.iter().map(|(_, _, d)| d).sum::<i64>();
        moved
    }

    /// After a publication's updates: the retractions memory did not hold applied on disk
    /// (those the disk does not hold either stay in memory, to meet their insertion), and,
    /// when a sweep is due, the rows that turned cold moved there. On a disk error (logged) the
    /// rows to move stay in memory and the retractions are kept there too, where one of a row
    /// on disk does not meet it.
    fn settle_cold(&mut self, mut missed: Vec<(Row, u32, i64)>, frontier: Time) {
        let Some(mut cold) = self.cold.take() else {
            for (row, hash, d) in missed {
                self.update(row, hash, d);
            }
            return;
        };
        let sweep = frontier >= cold.next_sweep;
        if sweep {
            cold.next_sweep = frontier.saturating_add(cold_rows::SWEEP_EVERY_MS);
        }
        if !missed.is_empty() || sweep {
            let mut moved = if sweep {
                self.take_cold(&cold, frontier)
            } else {
                Vec::new()
            };
            // Both taken out of memory in hash order: written in the disk's.
            missed.sort_unstable_by(|a, b| cold_rows::disk_order(&a.0, &b.0));
            moved.sort_unstable_by(|a, b| cold_rows::disk_order(&a.0, &b.0));
            match cold.apply(&missed, &moved) {
                Ok(held) => {
                    for ((row, hash, d), on_disk) in missed.into_iter().zip(held) {
                        if !on_disk {
                            self.update(row, hash, d);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, view = cold.spec.view, "cannot keep rows on disk; kept in memory");
                    for (row, hash, d) in missed.into_iter().chain(moved) {
                        self.update(row, hash, d);
                    }
                }
            }
        }
        self.cold = Some(cold);
    }

    /// Takes a checkpoint's `rows` of this view as of `frontier`. In a view that keeps its old
    /// rows on disk, those that are old at `frontier` go straight there, in the disk's order and
    /// [`RESTORE_BATCH`] to a commit, each batch let go once written: they never enter memory's
    /// groups. (Loaded into memory first and then swept out, a restart held every row of the
    /// checkpoint in memory's tables, and wrote them in one commit in hash order.) On a disk
    /// error (logged) the rows not yet written stay in memory.
    fn restore(&mut self, rows: Vec<Row>, frontier: Time) {
        let Some(mut cold) = self.cold.take() else {
            rows.into_iter().for_each(|row| self.insert(row));
            return;
        };
        let (mut old, warm): (Vec<Row>, Vec<Row>) = rows
            .into_iter()
            .partition(|row| cold.is_cold(row, frontier));
        warm.into_iter().for_each(|row| self.insert(row));
        // Descending, so that each batch splits off the end in the disk's order, reversed.
        old.sort_unstable_by(|a, b| cold_rows::disk_order(b, a));
        while !old.is_empty() {
            let mut batch = old.split_off(old.len().saturating_sub(RESTORE_BATCH));
            batch.reverse();
            if let Err(e) = cold.add(&batch) {
                tracing::error!(error = %e, view = cold.spec.view, "cannot keep a checkpoint's old rows on disk; kept in memory");
                batch
                    .into_iter()
                    .chain(old.drain(..))
                    .for_each(|row| self.insert(row));
            }
        }
        cold.next_sweep = frontier.saturating_add(cold_rows::SWEEP_EVERY_MS);
        self.cold = Some(cold);
    }

    /// Adds `row` once, in memory.
    fn insert(&mut self, row: Row) {
        let hash = row_hash(&row);
        self.update(row, hash, 1);
    }

    /// A read of its rows on disk as of now, if it keeps any there.
    fn cold_reader(&self) -> Option<ColdReader> {
        let cold = self.cold.as_ref()?;
        cold.reader()
            .inspect_err(|e| {
                tracing::error!(error = %e, view = cold.spec.view, "cannot read the rows on disk");
            })
            .ok()
    }

    /// Rows counted by multiplicity, in memory and on disk.
    fn total(&self) -> i64 {
        self.total + self.cold.as_ref().map_or(0, |c| c.total)
    }

    /// Every row and its multiplicity, in no order.
    fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.groups.iter().flat_map(Group::entries)
    }

    /// The rows whose first cell's encoding is `cell`.
    fn group_of<'a>(&'a self, cell: &[u8]) -> impl Iterator<Item = &'a Entry> + 'a {
        self.groups
            .find(cell_hash(cell), |g| g.first_cell() == cell)
            .into_iter()
            .flat_map(Group::entries)
    }

    /// Every row as often as its multiplicity, a group's rows together: copied under the
    /// store's lock, put in order by [`Grouped::sorted`] outside it.
    fn grouped(&self) -> Grouped<Row> {
        self.grouped_by(Row::clone)
    }

    /// [`ViewRows::grouped`] without the copies: references to the rows, for a reader that
    /// holds the store's lock while it reads them (each copy is a reference count on the row's
    /// own allocation, a cache miss).
    fn grouped_refs(&self) -> Grouped<&Row> {
        self.grouped_by(|row| row)
    }

    fn grouped_by<'a, R>(&'a self, mut each: impl FnMut(&'a Row) -> R) -> Grouped<R> {
        let mut rows = Vec::with_capacity(self.distinct);
        let mut groups = Vec::with_capacity(self.groups.len());
        for group in self.groups.iter() {
            let start = rows.len();
            rows.extend(repeat(group.entries()).map(&mut each));
            groups.push(start..rows.len());
        }
        Grouped { rows, groups }
    }
}

/// A view's rows copied out of memory, and a read of those on disk, to be put in order.
type ToSort = (Grouped<Row>, Option<ColdReader>);

/// A view's rows (or references to them) with each group's range ([`ViewRows::grouped`]).
struct Grouped<R> {
    rows: Vec<R>,
    groups: Vec<std::ops::Range<usize>>,
}

impl<R: std::borrow::Borrow<Row>> Grouped<R> {
    /// The rows in order. Rows order by their first cell first, so sorting the groups by it
    /// and each group's few rows within is the whole sort. Groups are sorted by a key of their
    /// first cell copied next to them ([`crate::row::cell_order_key`]), the rows themselves
    /// consulted only where two keys tie, and rows are moved into place, not cloned: each row
    /// is its own allocation, and touching it in a comparison or a reference count is a cache
    /// miss.
    fn sorted(self) -> Vec<R> {
        let Grouped { rows, groups } = self;
        let first = |at: usize| rows[at].borrow().first_cell();
        // Room for every group at once: a filtered iterator tells `collect` nothing of its
        // length, and a view of 50,000 machines' groups grew by doubling (copies, fresh pages).
        let mut keyed: Vec<([u64; 2], std::ops::Range<usize>)> = Vec::with_capacity(groups.len());
        keyed.extend(
            groups
                .into_iter()
                .filter(|g| !g.is_empty())
                .map(|g| (crate::row::cell_order_key(first(g.start)), g)),
        );
        keyed.sort_unstable_by(|(ka, a), (kb, b)| {
            ka.cmp(kb)
                .then_with(|| crate::row::cmp_cells(first(a.start), first(b.start)))
        });
        let mut rows: Vec<Option<R>> = rows.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(rows.len());
        for (_, g) in keyed {
            let at = out.len();
            out.extend(rows[g].iter_mut().filter_map(Option::take));
            // A group's rows share their first cell: compared from the cell after it.
            if let Some(row) = out.get(at) {
                let first = row.borrow().first_cell().len();
                out[at..].sort_unstable_by(|a, b| a.borrow().cmp_after_first(b.borrow(), first));
            }
        }
        out
    }
}

/// One published change of one view.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The store frontier this change was published at: it includes all ingestion times below.
    pub frontier: Time,
    pub inserted: Vec<Row>,
    pub deleted: Vec<Row>,
    /// The store's publication number (a planned view's replacement is one too, at the same
    /// frontier): what tells a subscriber which changes its snapshot already holds.
    seq: u64,
}

/// Why a subscription stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionEnd {
    #[error(
        "subscriber fell {SUBSCRIBER_BUFFER} changes behind and was cut off; subscribe again for a fresh snapshot"
    )]
    Lagged,
    #[error("the engine has stopped")]
    Closed,
}

/// A view's snapshot followed by its changes.
///
/// Async ([`Subscription::next`]): a server holds no thread per subscriber. The snapshot is
/// copied under the store's read lock and sorted outside any lock; changes the snapshot already
/// holds (published between registering and copying) are skipped by their frontier.
pub struct Subscription {
    /// The snapshot, handed out first.
    first: Option<Change>,
    /// Changes numbered up to this one are in the snapshot.
    since: u64,
    rx: futures::channel::mpsc::Receiver<Arc<Change>>,
    lagged: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscription {
    /// The next change: the snapshot first, then one per publication.
    pub async fn next(&mut self) -> Result<Arc<Change>, SubscriptionEnd> {
        use futures::StreamExt;
        if let Some(first) = self.first.take() {
            return Ok(Arc::new(first));
        }
        loop {
            match self.rx.next().await {
                Some(c) if c.seq <= self.since => continue,
                Some(c) => return Ok(c),
                None => return Err(self.end()),
            }
        }
    }

    /// The next change, waiting at most `timeout` (blocking the calling thread: for tests and
    /// threads of their own); `Ok(None)` on timeout.
    pub fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Arc<Change>>, SubscriptionEnd> {
        if let Some(first) = self.first.take() {
            return Ok(Some(Arc::new(first)));
        }
        let deadline = Instant::now() + timeout;
        loop {
            use futures::channel::mpsc::TryRecvError;
            match self.rx.try_recv() {
                Ok(c) if c.seq <= self.since => continue,
                Ok(c) => return Ok(Some(c)),
                Err(TryRecvError::Closed) => return Err(self.end()),
                Err(TryRecvError::Empty) if Instant::now() >= deadline => return Ok(None),
                Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn end(&self) -> SubscriptionEnd {
        if self.lagged.load(std::sync::atomic::Ordering::SeqCst) {
            SubscriptionEnd::Lagged
        } else {
            SubscriptionEnd::Closed
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no view named {0:?}; views are: {1}")]
    UnknownView(String, String),
    #[error("view {0} has no column {1:?}")]
    UnknownColumn(&'static str, String),
    #[error("view {0} is maintained by the dataflow: only planned views can be replaced")]
    NotPlanned(String),
    #[error("building the arrow batch of {view} failed: {source}")]
    Arrow {
        view: &'static str,
        source: ArrowError,
    },
}

/// Why a view's rows cannot be taken for a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointRowsError {
    #[error(transparent)]
    Store(StoreError),
    #[error("cannot read the view's rows on disk: {0}")]
    Disk(#[from] crate::state_file::StateFileError),
}

/// A view's rows as of one frontier, as a checkpoint takes them: those in memory (in no
/// particular order) and a read of those on disk ([`crate::cold_rows`]), which is read as the
/// checkpoint is written. A day of a fleet's closed windows is millions of rows on disk; they
/// were read into memory and sorted while the engine's consumers were held, then copied into
/// the file. Read back from a file, every row is in `rows`.
#[derive(Clone, Default)]
pub struct CheckpointRows {
    pub rows: Vec<Row>,
    cold: Option<Arc<TakenCold>>,
}

/// A read of a view's rows on disk, and how many it holds (by multiplicity) as of that read.
struct TakenCold {
    reader: ColdReader,
    len: usize,
    view: &'static str,
}

impl CheckpointRows {
    pub fn new(rows: Vec<Row>) -> CheckpointRows {
        CheckpointRows { rows, cold: None }
    }

    /// Every row, those on disk read into memory.
    pub fn into_rows(self) -> Result<Vec<Row>, CheckpointRowsError> {
        let CheckpointRows { mut rows, cold } = self;
        if let Some(cold) = cold {
            cold.reader.all(&mut rows)?;
        }
        Ok(rows)
    }

    /// Rows, counted by multiplicity, those on disk included.
    pub fn len(&self) -> usize {
        self.rows.len() + self.cold.as_ref().map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for CheckpointRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointRows")
            .field("rows", &self.rows)
            .field("on_disk", &self.cold.as_ref().map(|c| c.len))
            .finish()
    }
}

impl serde::Serialize for CheckpointRows {
    /// As a `Vec<Row>`: those in memory, then those on disk as they are read.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for row in &self.rows {
            seq.serialize_element(row)?;
        }
        if let Some(cold) = &self.cold {
            let (mut read, mut failed) = (0, None);
            let disk = cold.reader.for_each(|row| {
                read += 1;
                if read > cold.len {
                    return false;
                }
                match seq.serialize_element(&row) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            disk.map_err(S::Error::custom)?;
            if read != cold.len {
                let held = if read > cold.len {
                    "more".to_owned()
                } else {
                    read.to_string()
                };
                return Err(S::Error::custom(format!(
                    "view {}'s rows on disk: {held} read where {} were counted",
                    cold.view, cold.len
                )));
            }
        }
        seq.end()
    }
}

impl<'de> serde::Deserialize<'de> for CheckpointRows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CheckpointRows, D::Error> {
        <Vec<Row> as serde::Deserialize>::deserialize(d).map(CheckpointRows::new)
    }
}

fn unknown(name: &str) -> StoreError {
    StoreError::UnknownView(
        name.to_owned(),
        CATALOG
            .iter()
            .map(|v| v.name)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

struct Subscriber {
    view: usize,
    tx: futures::channel::mpsc::Sender<Arc<Change>>,
    lagged: Arc<std::sync::atomic::AtomicBool>,
}

struct State {
    /// All ingestion times below this are applied to every view.
    frontier: Time,
    /// True once the workers are gone and no more changes will come.
    closed: bool,
    rows: Vec<ViewRows>,
    subscribers: Vec<Subscriber>,
    progress: Vec<Sender<(Time, Instant)>>,
    /// Publications so far (each [`Change`]'s `seq`).
    published: u64,
}

/// Consistent snapshot of every view, as of one frontier.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub frontier: Time,
    views: Vec<(&'static ViewDef, Vec<Row>)>,
}

impl Snapshot {
    /// The same snapshot with every view but `names` left empty.
    #[cfg(test)]
    pub(crate) fn only(&self, names: &[&str]) -> Snapshot {
        Snapshot {
            frontier: self.frontier,
            views: self
                .views
                .iter()
                .map(|(def, rows)| {
                    let kept = if names.contains(&def.name) {
                        rows.clone()
                    } else {
                        Vec::new()
                    };
                    (*def, kept)
                })
                .collect(),
        }
    }

    /// A view's rows, sorted (a row appears as often as its multiplicity).
    pub fn rows(&self, name: &str) -> Result<&[Row], StoreError> {
        let (i, _) = find(name).ok_or_else(|| unknown(name))?;
        Ok(&self.views[i].1)
    }

    /// The rows of the view called `name`, each read by column name.
    pub fn named<'s>(
        &'s self,
        name: &str,
    ) -> Result<impl Iterator<Item = crate::row::Named<'s>> + use<'s>, StoreError> {
        let (i, def) = find(name).ok_or_else(|| unknown(name))?;
        Ok(self.views[i].1.iter().map(move |row| def.named(row)))
    }

    pub fn batch(&self, name: &str) -> Result<RecordBatch, StoreError> {
        let (i, def) = find(name).ok_or_else(|| unknown(name))?;
        batch_of(def, &self.views[i].1)
    }

    /// Rows `range` of a view (in the snapshot's order) as an Arrow batch: parts of a large view
    /// converted on several threads.
    pub fn batch_range(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<RecordBatch, StoreError> {
        let (i, def) = find(name).ok_or_else(|| unknown(name))?;
        let rows = &self.views[i].1;
        let end = range.end.min(rows.len());
        batch_of(def, &rows[range.start.min(end)..end])
    }

    /// A view's rows that `keep` accepts, as an Arrow batch (a query's equality filters on a
    /// key: converting a whole 1.5 M-row view to find one machine's rows is the slow part).
    pub fn batch_where(
        &self,
        name: &str,
        keep: impl Fn(&Row) -> bool,
    ) -> Result<RecordBatch, StoreError> {
        let (i, def) = find(name).ok_or_else(|| unknown(name))?;
        let rows: Vec<Row> = self.views[i]
            .1
            .iter()
            .filter(|r| keep(r))
            .cloned()
            .collect();
        batch_of(def, &rows)
    }

    /// Keeps only the rows `keep` accepts (a tenant's share of the fleet).
    pub fn retain(&mut self, keep: impl Fn(&ViewDef, &Row) -> bool) {
        for (def, rows) in &mut self.views {
            rows.retain(|r| keep(def, r));
        }
    }

    /// Every view as an Arrow batch, in catalog order.
    pub fn batches(&self) -> Result<Vec<(&'static ViewDef, RecordBatch)>, StoreError> {
        self.views
            .iter()
            .map(|(def, rows)| batch_of(def, rows).map(|b| (*def, b)))
            .collect()
    }
}

fn batch_of(def: &'static ViewDef, rows: &[Row]) -> Result<RecordBatch, StoreError> {
    to_batch(def.columns, rows).map_err(|source| StoreError::Arrow {
        view: def.name,
        source,
    })
}

/// Shared handle to the published views. Cheap to clone.
#[derive(Clone)]
pub struct ViewStore {
    state: Arc<(RwLock<State>, Mutex<()>, Condvar)>,
    /// All ingestion times below this have every view's updates with the store, applied or
    /// not yet (the workers have nothing more of them to send). Outside the lock, which the
    /// store holds while it applies them.
    received: Arc<AtomicI64>,
}

/// Each row as often as its multiplicity, in no order.
fn rows_of(rows: &ViewRows) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::with_capacity(rows.distinct);
    out.extend(repeat(rows.entries()).cloned());
    out
}

/// Each entry's row as often as its multiplicity.
fn repeat<'a>(entries: impl Iterator<Item = &'a Entry> + 'a) -> impl Iterator<Item = &'a Row> + 'a {
    entries.flat_map(|e| std::iter::repeat_n(&e.row, usize::try_from(e.count).unwrap_or(0)))
}

/// `sorted` (rows in memory, in order) with the rows on disk `cold` reads, all in order.
fn with_cold(mut sorted: Vec<Row>, cold: Option<ColdReader>) -> Vec<Row> {
    let Some(cold) = cold else {
        return sorted;
    };
    let held = sorted.len();
    if let Err(e) = cold.all(&mut sorted) {
        tracing::error!(error = %e, "cannot read the rows on disk");
    }
    if sorted.len() > held {
        sorted.sort_unstable();
    }
    sorted
}

impl ViewStore {
    fn new() -> Self {
        let state = State {
            frontier: Time::EPOCH,
            closed: false,
            rows: CATALOG.iter().map(|_| ViewRows::default()).collect(),
            subscribers: Vec::new(),
            progress: Vec::new(),
            published: 0,
        };
        ViewStore {
            state: Arc::new((RwLock::new(state), Mutex::new(()), Condvar::new())),
            received: Arc::new(AtomicI64::new(Time::EPOCH.ms())),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A store that holds `views` as of `frontier` and never changes (closed): the views of an
    /// archive's snapshot, served without an engine (`vendflow sql --archive`). Views not given
    /// are empty; an unknown view name is an error.
    pub fn fixed(frontier: Time, views: Vec<(String, Vec<Row>)>) -> Result<ViewStore, StoreError> {
        let store = ViewStore::new();
        {
            let views = by_index(views)?;
            let mut state = store.write();
            state.closed = true;
            state.restore(frontier, views);
        }
        Ok(store)
    }

    /// Rows of the view `name` held in memory (not on disk), counted once each.
    #[cfg(test)]
    fn in_memory(&self, name: &str) -> usize {
        find(name).map_or(0, |(i, _)| self.read().rows[i].distinct)
    }

    /// The published frontier: every ingestion time below it is reflected in every view.
    pub fn frontier(&self) -> Time {
        self.read().frontier
    }

    /// Each view's number of rows, as of one frontier, without copying any (for `/metrics`).
    pub fn row_counts(&self) -> (Time, Vec<(&'static str, usize)>) {
        let state = self.read();
        let counts = CATALOG
            .iter()
            .zip(&state.rows)
            .map(|(def, rows)| (def.name, usize::try_from(rows.total()).unwrap_or(0)))
            .collect();
        (state.frontier, counts)
    }

    /// The views that keep their old rows on disk ([`crate::cold_rows`]), each with how many
    /// of its rows are there (by multiplicity) at the published frontier.
    pub fn rows_on_disk(&self) -> Vec<(&'static str, usize)> {
        let state = self.read();
        CATALOG
            .iter()
            .zip(&state.rows)
            .filter_map(|(def, rows)| {
                let cold = rows.cold.as_ref()?;
                Some((def.name, usize::try_from(cold.total).unwrap_or(0)))
            })
            .collect()
    }

    /// One view's rows, sorted as in [`ViewStore::snapshot`], and the frontier they are as of:
    /// what writes a finished load's views one by one holds, instead of every view's copy
    /// (and every view's sort) at once.
    pub fn sorted_rows(&self, name: &str) -> Result<(Time, Vec<Row>), StoreError> {
        let (i, _) = find(name).ok_or_else(|| unknown(name))?;
        let (frontier, grouped, cold) = {
            let state = self.read();
            (
                state.frontier,
                state.rows[i].grouped(),
                state.rows[i].cold_reader(),
            )
        };
        Ok((frontier, with_cold(grouped.sorted(), cold)))
    }

    /// The rows of the view `name` as a checkpoint takes them ([`CheckpointRows`]): those in
    /// memory copied (pointers, in no order), those on disk as a read of the disk, taken
    /// under the store's lock. A disk that cannot be read fails the checkpoint.
    pub fn checkpoint_rows(
        &self,
        name: &str,
    ) -> Result<(Time, CheckpointRows), CheckpointRowsError> {
        let (i, _) = find(name).ok_or_else(|| CheckpointRowsError::Store(unknown(name)))?;
        let state = self.read();
        let rows = &state.rows[i];
        let cold = match &rows.cold {
            Some(c) if c.total > 0 => Some(Arc::new(TakenCold {
                reader: c.reader()?,
                len: usize::try_from(c.total).unwrap_or(0),
                view: c.spec.view,
            })),
            _ => None,
        };
        Ok((
            state.frontier,
            CheckpointRows {
                rows: rows_of(rows),
                cold,
            },
        ))
    }

    /// Calls `read` with the frontier and every row of the view `name` in order, without copying
    /// the rows in memory: `read` runs under the store's read lock (a publication waits for it
    /// to return), for a reader of a store that no longer changes (a finished load writing its
    /// CSVs). Rows on disk are read in too.
    pub fn with_sorted_rows<T>(
        &self,
        name: &str,
        read: impl FnOnce(Time, &[&Row]) -> T,
    ) -> Result<T, StoreError> {
        let (i, _) = find(name).ok_or_else(|| unknown(name))?;
        let state = self.read();
        let rows = &state.rows[i];
        let mut cold = Vec::new();
        if let Some(reader) = rows.cold_reader()
            && let Err(e) = reader.all(&mut cold)
        {
            tracing::error!(error = %e, view = name, "cannot read the rows on disk");
        }
        let mut sorted = rows.grouped_refs().sorted();
        if !cold.is_empty() {
            sorted.extend(cold.iter());
            sorted.sort_unstable();
        }
        Ok(read(state.frontier, &sorted))
    }

    /// Every view as of the same frontier, each sorted. The rows are copied under the read
    /// lock and sorted after it is released, the large views on threads of their own.
    pub fn snapshot(&self) -> Snapshot {
        let (frontier, grouped): (Time, Vec<ToSort>) = {
            let state = self.read();
            (
                state.frontier,
                state
                    .rows
                    .iter()
                    .map(|rows| (rows.grouped(), rows.cold_reader()))
                    .collect(),
            )
        };
        let views = std::thread::scope(|scope| {
            let sorting: Vec<_> = grouped
                .into_iter()
                .map(|(g, cold)| {
                    if g.rows.len() > 10_000 || cold.is_some() {
                        Err(scope.spawn(|| with_cold(g.sorted(), cold)))
                    } else {
                        Ok(g.sorted())
                    }
                })
                .collect();
            CATALOG
                .iter()
                .zip(sorting)
                .map(|(def, rows)| {
                    // A sort only panics on a bug; its thread's panic is this one's.
                    let rows = rows.unwrap_or_else(|t| {
                        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
                    });
                    (def, rows)
                })
                .collect()
        });
        Snapshot { frontier, views }
    }

    /// The views `names` (the others left empty) as of the same frontier, unsorted: what a
    /// query reads, without copying or sorting the views it does not touch.
    pub fn snapshot_of(&self, names: &[&str]) -> Snapshot {
        let reads: Vec<(&str, Option<&[String]>)> = names.iter().map(|n| (*n, None)).collect();
        self.snapshot_reads(&reads)
    }

    /// What a query reads, as of one frontier: per view named, every row (`None`) or only the
    /// rows whose first column is one of the texts `keys` (looked up, not scanned). Views not
    /// named are left empty. Rows on disk are read after the store's lock is released, from a
    /// read of the disk taken under it.
    pub fn snapshot_reads(&self, reads: &[(&str, Option<&[String]>)]) -> Snapshot {
        let asked = |def: &ViewDef| reads.iter().find(|(n, _)| *n == def.name).map(|r| r.1);
        // Each key once, as a first cell's encoding.
        let cells = |keys: &[String]| -> Vec<Row> {
            let mut keys: Vec<&String> = keys.iter().collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|k| Row::from_iter([&Value::text(k)]))
                .collect()
        };
        let (frontier, mut views, readers) = {
            let state = self.read();
            let mut views = Vec::with_capacity(CATALOG.len());
            let mut readers = Vec::with_capacity(CATALOG.len());
            for (def, rows) in CATALOG.iter().zip(&state.rows) {
                let (copied, reader) = match asked(def) {
                    None => (Vec::new(), None),
                    Some(None) => (rows_of(rows), rows.cold_reader()),
                    Some(Some(keys)) => {
                        let copied = cells(keys)
                            .iter()
                            .flat_map(|k| {
                                repeat(rows.group_of(k.first_cell()))
                                    .cloned()
                                    .collect::<Vec<_>>()
                            })
                            .collect();
                        (copied, rows.cold_reader())
                    }
                };
                views.push((def, copied));
                readers.push(reader);
            }
            (state.frontier, views, readers)
        };
        for ((def, rows), reader) in views.iter_mut().zip(readers) {
            let Some(reader) = reader else {
                continue;
            };
            let read = match asked(def) {
                Some(Some(keys)) => cells(keys)
                    .iter()
                    .try_for_each(|k| reader.group(k.first_cell(), rows)),
                _ => reader.all(rows),
            };
            if let Err(e) = read {
                tracing::error!(error = %e, view = def.name, "cannot read the rows on disk");
            }
        }
        Snapshot { frontier, views }
    }

    /// The rows of the views `names` whose first column is the text `key` (one machine's rows,
    /// for its page), as of the same frontier.
    pub fn snapshot_of_key(&self, names: &[&str], key: &str) -> Snapshot {
        let key = [key.to_owned()];
        let reads: Vec<(&str, Option<&[String]>)> =
            names.iter().map(|n| (*n, Some(&key[..]))).collect();
        self.snapshot_reads(&reads)
    }

    /// Replaces every row of the view `name` with `rows`, as of the current frontier: how a view
    /// planned outside the dataflow ([`crate::routes`]) is published. Subscribers get the
    /// difference as one change. A view the dataflow maintains is refused: its rows would be
    /// overwritten by the next publication's updates.
    pub fn replace(&self, name: &str, rows: Vec<Row>) -> Result<(), StoreError> {
        let (view, def) = find(name).ok_or_else(|| unknown(name))?;
        if !crate::routes::PLANNED.contains(&def.name) {
            return Err(StoreError::NotPlanned(def.name.to_owned()));
        }
        let mut state = self.write();
        let mut net: hashbrown::HashTable<Entry> = hashbrown::HashTable::new();
        for e in state.rows[view].entries() {
            update_table(&mut net, e.row.clone(), e.hash, -e.count());
        }
        for row in rows {
            let hash = row_hash(&row);
            update_table(&mut net, row, hash, 1);
        }
        for e in &net {
            state.rows[view].update(e.row.clone(), e.hash, e.count());
        }
        let Some(change) = change_of(net, state.frontier, state.published + 1) else {
            return Ok(());
        };
        state.published += 1;
        deliver(&mut state.subscribers, &[(view, Arc::new(change))]);
        drop(state);
        self.notify();
        Ok(())
    }

    /// Subscribes to a view: the first change holds the current rows, then one change per publication.
    pub fn subscribe(&self, name: &str) -> Result<Subscription, StoreError> {
        let (view, _) = find(name).ok_or_else(|| unknown(name))?;
        // A futures channel holds its buffer plus one message per sender, and the snapshot is
        // held aside: SUBSCRIBER_BUFFER in all.
        let (tx, rx) = futures::channel::mpsc::channel(SUBSCRIBER_BUFFER.saturating_sub(2));
        let lagged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            // The write lock only to register: publications go on while the snapshot is taken.
            let mut state = self.write();
            if !state.closed {
                state.subscribers.push(Subscriber {
                    view,
                    tx,
                    lagged: lagged.clone(),
                });
            }
        }
        let (frontier, seq, grouped, cold) = {
            let state = self.read();
            (
                state.frontier,
                state.published,
                state.rows[view].grouped(),
                state.rows[view].cold_reader(),
            )
        };
        let inserted = with_cold(grouped.sorted(), cold);
        Ok(Subscription {
            first: Some(Change {
                frontier,
                inserted,
                deleted: Vec::new(),
                seq,
            }),
            since: seq,
            rx,
            lagged,
        })
    }

    /// A channel that receives `(frontier, when)` at each publication (for freshness measurements).
    pub fn progress(&self) -> Receiver<(Time, Instant)> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.write().progress.push(tx);
        rx
    }

    /// Waits until the frontier reaches `time` (or the store closes); false on timeout.
    pub fn wait_for(&self, time: Time, timeout: Duration) -> bool {
        self.wait_until(timeout, || {
            let state = self.read();
            (state.frontier >= time || state.closed).then_some(state.frontier >= time)
        })
    }

    /// Waits until the store has every view's updates of all times before `time` (applied or
    /// not yet): the workers have sent all they will of them. False if it did not within
    /// `timeout`, or the store closed first.
    pub fn wait_for_received(&self, time: Time, timeout: Duration) -> bool {
        let received = || self.received.load(Ordering::SeqCst) >= time.ms();
        self.wait_until(timeout, || {
            // The lock only when needed: the store holds it while it applies the updates.
            if received() {
                return Some(true);
            }
            let closed = self.read().closed;
            closed.then(received)
        })
    }

    /// Waits until `done` says how it ended, or `timeout` (false).
    fn wait_until(&self, timeout: Duration, done: impl Fn() -> Option<bool>) -> bool {
        let deadline = Instant::now() + timeout;
        let (_, lock, cvar) = &*self.state;
        let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = done() {
                return result;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = cvar
                .wait_timeout(guard, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn notify(&self) {
        let (_, lock, cvar) = &*self.state;
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        cvar.notify_all();
    }
}

/// Rows of a checkpoint written to a view's file per commit as an engine starts from it (a
/// few in tests, so that a restore takes several).
const RESTORE_BATCH: usize = if cfg!(test) { 3 } else { 100_000 };

/// Captured messages in flight to the store; a worker that gets this far ahead waits for it.
const CAPTURE_DEPTH: usize = 4096;

/// A started store: the store, where the workers' captures go, and its thread.
pub(crate) type Started = (ViewStore, SyncSender<Captured>, std::thread::JoinHandle<()>);

/// Views as of a frontier, each by name with its rows (a checkpoint's).
pub(crate) type ViewsAt = (Time, Vec<(String, Vec<Row>)>);

/// `views` (by name, each with its rows) by their index in the catalog; an unknown name is an
/// error.
fn by_index(views: Vec<(String, Vec<Row>)>) -> Result<Vec<(usize, Vec<Row>)>, StoreError> {
    views
        .into_iter()
        .map(|(name, rows)| Ok((find(&name).ok_or_else(|| unknown(&name))?.0, rows)))
        .collect()
}

impl State {
    /// Holds `views` (by index, each with its rows) as of `frontier`
    /// ([`ViewRows::restore`]).
    fn restore(&mut self, frontier: Time, views: Vec<(usize, Vec<Row>)>) {
        self.frontier = frontier;
        for (index, rows) in views {
            self.rows[index].restore(rows, frontier);
        }
    }
}

/// Starts the store thread for `workers`, empty or holding `from`'s views as of its frontier;
/// returns the store, the sender the workers' captures use, and the thread.
/// `cold`: the views that keep their old rows on disk, each with its (empty) file.
pub(crate) fn start(
    workers: usize,
    from: Option<ViewsAt>,
    cold: Vec<ColdRows>,
) -> Result<Started, StoreError> {
    let store = ViewStore::new();
    {
        let mut state = store.write();
        for c in cold {
            let (index, _) = find(c.spec.view).ok_or_else(|| unknown(c.spec.view))?;
            state.rows[index].cold = Some(Box::new(c));
        }
    }
    // The checkpoint's views, by index (an unknown name fails the start, before any thread).
    let restore = match from {
        Some((frontier, views)) => {
            let indexed = by_index(views)?;
            store.received.store(frontier.ms(), Ordering::SeqCst);
            Some((frontier, indexed))
        }
        None => None,
    };
    let published = restore
        .as_ref()
        .map_or(Time::EPOCH, |(frontier, _)| *frontier);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Captured>(CAPTURE_DEPTH);
    let thread_store = store.clone();
    let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("vendflow-view-store".into())
        .spawn(move || {
            // The checkpoint's rows are put in place on this thread, under the write lock,
            // while the workers restore their operators beside it (one after the other, a
            // restart took the sum of both); no read sees the store before they are all there.
            {
                let mut state = thread_store.write();
                let _ = locked_tx.send(());
                if let Some((frontier, views)) = restore {
                    state.restore(frontier, views);
                }
            }
            run(thread_store, rx, workers, published)
        })
        .unwrap_or_else(|e| panic!("cannot start the view store thread: {e}"));
    // Once the thread holds the lock (or has died, which joining it reports).
    let _ = locked.recv();
    Ok((store, tx, handle))
}

/// The store thread: collect, wait for the frontier, publish.
fn run(store: ViewStore, rx: Receiver<Captured>, workers: usize, mut published: Time) {
    let views = CATALOG.len();
    // Each worker's capture holds an initial capability at time 0 that it drops on its first
    // progress report, so every view starts with `workers` counts at 0.
    let mut frontiers: Vec<MutableAntichain<Time>> = (0..views)
        .map(|_| {
            let mut f = MutableAntichain::new();
            f.update_iter([(Time::EPOCH, workers as i64)]);
            f
        })
        .collect();
    // Per view, the captured messages not yet published, as they came (most of a message is
    // published at once; sorting updates into times one by one cost more than applying them).
    let mut pending: Vec<Vec<Vec<Hashed>>> = (0..views).map(|_| Vec::new()).collect();
    while let Ok(first) = rx.recv() {
        let mut take = |c: Captured| match c.message {
            Message::Progress(updates) => {
                frontiers[c.view].update_iter(updates);
            }
            Message::Updates(updates) => pending[c.view].push(updates),
        };
        take(first);
        while let Ok(c) = rx.try_recv() {
            take(c);
        }
        let frontier = frontiers
            .iter()
            .map(|f| f.frontier().first().copied().unwrap_or(Time::MAX))
            .min()
            .unwrap_or(Time::MAX);
        // An empty frontier means the inputs were closed: every scheduled retraction would now
        // fire at once. That is shutdown, not news; the store keeps the last real state.
        if frontier > published && frontier != Time::MAX {
            // Told before applying them: a bulk load frees the workers' state meanwhile.
            store.received.store(frontier.ms(), Ordering::SeqCst);
            store.notify();
            publish(&store, &mut pending, frontier);
            published = frontier;
        }
    }
    let mut state = store.write();
    state.closed = true;
    state.subscribers.clear();
    drop(state);
    store.notify();
}

/// The net updates `net` as one change (its rows in order), if it changes anything.
fn change_of(net: hashbrown::HashTable<Entry>, frontier: Time, seq: u64) -> Option<Change> {
    let mut change = Change {
        frontier,
        inserted: Vec::new(),
        deleted: Vec::new(),
        seq,
    };
    for e in net {
        let target = if e.count > 0 {
            &mut change.inserted
        } else {
            &mut change.deleted
        };
        for _ in 0..e.count.unsigned_abs() {
            target.push(e.row.clone());
        }
    }
    if change.inserted.is_empty() && change.deleted.is_empty() {
        return None;
    }
    change.inserted.sort();
    change.deleted.sort();
    Some(change)
}

/// Sends each subscriber its view's changes; one too far behind is cut off (it learns why).
fn deliver(subscribers: &mut Vec<Subscriber>, changes: &[(usize, Arc<Change>)]) {
    subscribers.retain_mut(|s| {
        for (view, change) in changes {
            if *view != s.view {
                continue;
            }
            match s.tx.try_send(change.clone()) {
                Ok(()) => {}
                Err(e) if e.is_full() => {
                    s.lagged.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(
                        view = CATALOG[s.view].name,
                        "subscriber cut off: too far behind"
                    );
                    return false;
                }
                Err(_) => return false,
            }
        }
        true
    });
}

/// Updates in one publication past which its views are applied on two threads: a bulk load
/// publishes every row of its hour at once (860 K for the 1 M benchmark, a third of them
/// `anomaly_windows`), and the workers are gone by then (`Engine::finish_load`), so the other
/// core is free. A live publication is a few thousand and stays on this thread.
const PARALLEL_PUBLISH: usize = 100_000;

fn publish(store: &ViewStore, pending: &mut [Vec<Vec<Hashed>>], frontier: Time) {
    publish_from(store, pending, frontier, PARALLEL_PUBLISH);
}

/// [`publish`], on two threads from `parallel` updates.
fn publish_from(
    store: &ViewStore,
    pending: &mut [Vec<Vec<Hashed>>],
    frontier: Time,
    parallel: usize,
) {
    let mut state = store.write();
    let mut watched = vec![false; pending.len()];
    for s in &state.subscribers {
        watched[s.view] = true;
    }
    let seq = state.published + 1;
    let mut jobs: Vec<ViewJob<'_>> = state
        .rows
        .iter_mut()
        .zip(pending.iter_mut())
        .enumerate()
        .map(|(view, (rows, queue))| ViewJob {
            view,
            size: queue.iter().map(Vec::len).sum(),
            rows,
            queue,
        })
        .collect();
    let total: usize = jobs.iter().map(|j| j.size).sum();
    let mut changes = if total < parallel {
        apply_views(jobs, frontier, &watched, seq)
    } else {
        // The largest first, each to the lighter half.
        jobs.sort_unstable_by_key(|j| std::cmp::Reverse(j.size));
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        let (mut my_size, mut their_size) = (0, 0);
        for job in jobs {
            if my_size <= their_size {
                my_size += job.size;
                mine.push(job);
            } else {
                their_size += job.size;
                theirs.push(job);
            }
        }
        let watched = &watched;
        std::thread::scope(|scope| {
            // As the store's own thread: a process that cannot start a thread cannot go on.
            let other = std::thread::Builder::new()
                .name("vendflow-view-apply".into())
                .spawn_scoped(scope, || apply_views(theirs, frontier, watched, seq))
                .unwrap_or_else(|e| panic!("cannot start a thread to apply views: {e}"));
            let mut changes = apply_views(mine, frontier, watched, seq);
            match other.join() {
                Ok(more) => changes.extend(more),
                // The store thread would have panicked the same way on its own.
                Err(panic) => std::panic::resume_unwind(panic),
            }
            changes
        })
    };
    // Subscribers hear their views' changes in the catalog's order, however they were applied.
    changes.sort_unstable_by_key(|(view, _)| *view);
    state.frontier = frontier;
    state.published = seq;
    deliver(&mut state.subscribers, &changes);
    let now = Instant::now();
    state.progress.retain(|p| p.send((frontier, now)).is_ok());
    drop(state);
    store.notify();
}

/// One view's part of a publication: its rows and its queued updates.
struct ViewJob<'a> {
    view: usize,
    size: usize,
    rows: &'a mut ViewRows,
    queue: &'a mut Vec<Vec<Hashed>>,
}

/// Applies each view's updates before `frontier` to its rows (later ones stay queued), and
/// returns the net change of each watched view that changed.
fn apply_views(
    jobs: Vec<ViewJob<'_>>,
    frontier: Time,
    watched: &[bool],
    seq: u64,
) -> Vec<(usize, Arc<Change>)> {
    let mut changes = Vec::new();
    for ViewJob {
        view, rows, queue, ..
    } in jobs
    {
        // Views nobody subscribes to take their updates straight into the rows; for the others
        // the net change of this publication is collected too.
        let mut net: hashbrown::HashTable<Entry> = hashbrown::HashTable::new();
        // Updates at or past the frontier stay for a later publication.
        let mut later: Vec<Hashed> = Vec::new();
        let cold = rows.cold.is_some();
        let mut missed = Vec::new();
        for updates in queue.drain(..) {
            for (row, hash, t, d) in updates {
                if t >= frontier {
                    later.push((row, hash, t, d));
                    continue;
                }
                if watched[view] {
                    update_table(&mut net, row.clone(), hash, d as i64);
                }
                if cold && d < 0 {
                    missed.extend(rows.retract_held(row, hash, d as i64));
                    continue;
                }
                rows.update(row, hash, d as i64);
            }
        }
        if cold {
            rows.settle_cold(missed, frontier);
        }
        if !later.is_empty() {
            queue.push(later);
        }
        if !watched[view] {
            continue;
        }
        if let Some(change) = change_of(net, frontier, seq) {
            changes.push((view, Arc::new(change)));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vendflow_protocol::{Cents, Timestamp};

    use crate::engine::{Batch, Engine};
    use crate::row::Value;
    use crate::testing;

    /// A row's multiplicity is 32 bits: one past them stays at the limit (and is logged)
    /// rather than wrapping; within them it adds as an `i64` would.
    #[test]
    fn a_multiplicity_past_32_bits_stays_at_the_limit() {
        let row = crate::row::Row::from([Value::Int(1)]);
        let hash = super::row_hash(&row);
        let mut e = super::Entry::new(row.clone(), hash, 3);
        e.add(-5);
        assert_eq!(e.count(), -2);
        e.add(i64::from(i32::MAX) + 10);
        assert_eq!(e.count(), i64::from(i32::MAX));
        let low = super::Entry::new(row, hash, i64::MIN);
        assert_eq!(low.count(), i64::from(i32::MIN));
    }

    /// The grouped copy put in order equals every row, by multiplicity, sorted as `[Value]`s
    /// sort (the oracle decodes and sorts whole rows; the store sorts groups by their encoded
    /// first cell and then each group).
    #[test]
    fn a_view_in_order_is_its_rows_sorted_as_values() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let texts = [
            "",
            "a",
            "ab",
            "b",
            "mach_00010",
            "mach_0002",
            "é",
            "z\u{10ffff}",
            // Longer than the 15 bytes of text a group's sort key holds: ties decided by the rows.
            "machine-00000000",
            "machine-000000001",
            "machine-000000001b",
            "machine-000000002",
        ];
        let cell = |rng: &mut rand_chacha::ChaCha8Rng| match rng.random_range(0..5) {
            0 => Value::Null,
            1 => Value::Int(rng.random_range(-300..300)),
            2 => Value::Money(Cents(rng.random_range(-5..5) * 1000)),
            _ => Value::text(texts[rng.random_range(0..texts.len())]),
        };
        let mut rows = super::ViewRows::default();
        let mut model: std::collections::HashMap<Vec<Value>, i64> = Default::default();
        for _ in 0..5_000 {
            let values: Vec<Value> = (0..rng.random_range(1..4))
                .map(|_| cell(&mut rng))
                .collect();
            // Mostly inserts; a retraction only of a row present, as the engine publishes.
            let present = model.get(&values).copied().unwrap_or(0);
            let d = if present > 0 && rng.random_bool(0.3) {
                -1
            } else {
                1
            };
            *model.entry(values.clone()).or_default() += d;
            let row = crate::row::Row::from(values);
            let hash = super::row_hash(&row);
            rows.update(row, hash, d);
        }
        let mut expected: Vec<Vec<Value>> = model
            .into_iter()
            .flat_map(|(v, n)| std::iter::repeat_n(v, usize::try_from(n).unwrap_or(0)))
            .collect();
        expected.sort();
        let sorted: Vec<Vec<Value>> = rows.grouped().sorted().iter().map(|r| r.to_vec()).collect();
        assert_eq!(sorted.len(), expected.len());
        assert_eq!(sorted, expected);
        // Groups emptied by retractions are gone.
        assert!(rows.groups.iter().all(|g| !g.is_empty()));
        // A point lookup finds exactly the rows whose first cell is the key (groups of one row,
        // of a few, and tables), and nothing for a key no row has.
        let mut keys: Vec<Value> = expected.iter().map(|r| r[0].clone()).collect();
        keys.dedup();
        assert!(keys.len() > 10);
        for key in keys {
            let cell = crate::row::Row::from_iter([&key]);
            let mut found: Vec<Vec<Value>> = rows
                .group_of(cell.first_cell())
                .flat_map(|e| std::iter::repeat_n(e.row.to_vec(), e.count as usize))
                .collect();
            found.sort();
            let want: Vec<Vec<Value>> = expected.iter().filter(|r| r[0] == key).cloned().collect();
            assert_eq!(found, want, "rows of {key:?}");
        }
        let none = crate::row::Row::from_iter([&Value::text("no such machine")]);
        assert_eq!(rows.group_of(none.first_cell()).count(), 0);
    }

    #[test]
    fn a_planned_view_is_replaced_whole_and_its_subscribers_get_the_difference() {
        use crate::row::Row;
        let engine = Engine::start(crate::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let loads = |rows: &[(&str, i64)]| -> Vec<Row> {
            rows.iter()
                .map(|(m, units)| {
                    Row::from_iter(&[
                        Value::text(m),
                        Value::text("north-01"),
                        Value::Int(1),
                        Value::text("cola"),
                        Value::Int(*units),
                    ])
                })
                .collect()
        };
        store
            .replace("restock_loads", loads(&[("m1", 4), ("m2", 6)]))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut sub = store
            .subscribe("restock_loads")
            .unwrap_or_else(|e| panic!("{e}"));
        let first = sub
            .next_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no snapshot"));
        assert_eq!(first.inserted.len(), 2);
        store
            .replace("restock_loads", loads(&[("m2", 6), ("m3", 1)]))
            .unwrap_or_else(|e| panic!("{e}"));
        let change = sub
            .next_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no change"));
        assert_eq!(change.deleted, loads(&[("m1", 4)]), "only what left");
        assert_eq!(change.inserted, loads(&[("m3", 1)]), "only what came");
        let (_, rows) = store
            .sorted_rows("restock_loads")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows, loads(&[("m2", 6), ("m3", 1)]));
        let refused = store.replace("inventory", Vec::new());
        assert!(
            matches!(refused, Err(super::StoreError::NotPlanned(_))),
            "a view the dataflow maintains cannot be overwritten: {refused:?}"
        );
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }

    /// `anomaly_windows` keeps its windows closed for longer than `window_memory_ms` on disk:
    /// every read (a whole view sorted, a point query, a count, a subscription's first change)
    /// sees them, memory holds only the newest, and a late event corrects one on disk.
    #[test]
    fn old_windows_are_read_from_disk_by_every_kind_of_read() {
        use vendflow_protocol::units::{MS_PER_HOUR, MS_PER_MINUTE};
        let config = crate::Config {
            window_memory_ms: 20 * MS_PER_MINUTE,
            ..crate::Config::default()
        };
        let mut engine = Engine::start(config).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let t = testing::BASE;
        let mut send = |at: i64, events: Vec<vendflow_protocol::Event>| {
            feeders
                .send(
                    Timestamp(at),
                    Batch {
                        events,
                        ..Batch::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{e}"));
            feeders
                .advance_all(Timestamp(at + 1))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(store.wait_for(Timestamp(at + 1), Duration::from_secs(30)));
        };
        // Four hours of a window an hour for m1, and one for m2.
        for h in 0..4 {
            let at = t + h * MS_PER_HOUR;
            send(at, vec![testing::heartbeat("m1", at, 4_000)]);
        }
        send(
            t + 4 * MS_PER_HOUR,
            vec![testing::heartbeat("m2", t + 4 * MS_PER_HOUR, 4_000)],
        );
        let view = "anomaly_windows";
        let (_, all) = store.sorted_rows(view).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 5);
        assert!(all.is_sorted(), "rows on disk merged in order");
        let read_in_place = store
            .with_sorted_rows(view, |_, rows| {
                rows.iter().map(|r| (*r).clone()).collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_in_place, all, "read in place as copied, disk included");
        assert!(
            store.in_memory(view) <= 2,
            "only the windows of the last 20 minutes in memory: {}",
            store.in_memory(view)
        );
        let counts = store.row_counts().1;
        assert!(counts.contains(&(view, 5)), "{counts:?}");
        let m1 = store.snapshot_of_key(&[view], "m1");
        assert_eq!(
            m1.rows(view).unwrap_or_else(|e| panic!("{e}")).len(),
            4,
            "a point query reads the machine's rows on disk"
        );
        assert!(
            m1.rows(view)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .all(|r| r.cell(0) == Value::text("m1"))
        );
        assert_eq!(store.snapshot().rows(view).map(<[_]>::len).ok(), Some(5));
        let mut sub = store.subscribe(view).unwrap_or_else(|e| panic!("{e}"));
        let first = sub
            .next_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no snapshot"));
        assert_eq!(first.inserted, all);
        // A late heartbeat of the first window: its row on disk is replaced.
        send(
            t + 5 * MS_PER_HOUR,
            vec![testing::heartbeat("m1", t + 1_000, 9_000)],
        );
        let (_, all) = store.sorted_rows(view).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 5, "{all:?}");
        let read_in_place = store
            .with_sorted_rows(view, |_, rows| {
                rows.iter().map(|r| (*r).clone()).collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_in_place, all,
            "read in place as copied after a correction on disk"
        );
        let first_window = all
            .iter()
            .find(|r| r.cell(1) == Value::Time(Timestamp(t)))
            .unwrap_or_else(|| panic!("the first window is there: {all:?}"));
        assert_eq!(first_window.cell(2), Value::Int(2));
        let change = loop {
            let c = sub
                .next_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no change"));
            if !c.deleted.is_empty() {
                break c;
            }
        };
        assert_eq!(
            change.deleted[0].cell(2),
            Value::Int(1),
            "the old row retracted"
        );
        // A checkpoint's take: the rows in memory, and a read of the disk that later changes
        // do not move; written, every row of the view once.
        let (_, taken) = store
            .checkpoint_rows(view)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(taken.len(), 5);
        assert!(taken.rows.len() <= 2, "the disk's rows are not copied");
        send(
            t + 6 * MS_PER_HOUR,
            vec![testing::heartbeat("m1", t + 2_000, 7_000)],
        );
        let bytes = bincode::serialize(&taken).unwrap_or_else(|e| panic!("{e}"));
        let mut written: Vec<crate::row::Row> =
            bincode::deserialize(&bytes).unwrap_or_else(|e| panic!("{e}"));
        written.sort();
        assert_eq!(written, all, "as of the take, not of the later correction");
        let (_, now) = store.sorted_rows(view).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(now, all, "the later correction is on disk");
        drop(sub);
        drop(feeders);
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }

    /// A store started from a checkpoint puts the view's old rows straight on disk (in several
    /// commits) and the rest in memory: every read sees all of them once, as often as the
    /// checkpoint held each, and a retraction of a row on disk is applied there.
    #[test]
    fn a_checkpoints_old_rows_start_on_disk() -> Result<(), Box<dyn std::error::Error>> {
        use crate::cold_rows::{ColdRows, ColdSpec};
        use crate::row::Row;
        let dir = tempfile::tempdir()?;
        let view = "anomaly_windows";
        let cold = ColdRows::create(
            dir.path(),
            ColdSpec {
                view,
                time_column: 1,
                after_ms: 1_000,
            },
        )?;
        let row = |m: &str, at: i64, n: i64| {
            Row::from([Value::text(m), Value::Time(Timestamp(at)), Value::Int(n)])
        };
        // Old (at or before 9,000 with the frontier at 10,000): nine rows of three machines,
        // one of them twice; new: two.
        let mut rows: Vec<Row> = (0..9)
            .map(|i| row(["m1", "m2", "m3"][i % 3], 1_000 * i as i64, i as i64))
            .collect();
        rows.push(row("m2", 1_000, 1));
        rows.push(row("m1", 9_500, 7));
        rows.push(row("m3", 9_900, 8));
        rows.reverse();
        let mut expected = rows.clone();
        expected.sort();
        let (store, tx, thread) = super::start(
            1,
            Some((Timestamp(10_000), vec![(view.into(), rows)])),
            vec![cold],
        )?;
        assert_eq!(store.in_memory(view), 2, "only the new rows in memory");
        let (_, all) = store.sorted_rows(view)?;
        assert_eq!(all, expected);
        assert!(store.row_counts().1.contains(&(view, 12)));
        let m2 = store.snapshot_of_key(&[view], "m2");
        assert_eq!(
            m2.rows(view)?.len(),
            4,
            "m2's three rows, one of them twice"
        );
        // The old row held twice, retracted once, at the next frontier.
        let retracted = row("m2", 1_000, 1);
        let (index, _) = super::find(view).ok_or("no such view")?;
        tx.send(super::Captured {
            view: index,
            message: super::Message::Updates(vec![(
                retracted.clone(),
                super::row_hash(&retracted),
                Timestamp(10_000),
                -1,
            )]),
        })?;
        for v in 0..super::CATALOG.len() {
            tx.send(super::Captured {
                view: v,
                message: super::Message::Progress(vec![
                    (Timestamp::EPOCH, -1),
                    (Timestamp(10_001), 1),
                ]),
            })?;
        }
        assert!(store.wait_for(Timestamp(10_001), Duration::from_secs(10)));
        let (_, now) = store.sorted_rows(view)?;
        assert_eq!(now.len(), 11);
        assert_eq!(now.iter().filter(|r| **r == retracted).count(), 1);
        assert_eq!(store.in_memory(view), 2, "applied on disk");
        drop(tx);
        thread.join().map_err(|_| "the store's thread panicked")?;
        Ok(())
    }

    /// A publication applied on two threads leaves every view as one thread does, keeps the
    /// updates at or past its frontier queued, and tells subscribers the same changes in the
    /// catalog's order.
    #[test]
    fn a_publication_on_two_threads_equals_one_on_one() {
        use super::{CATALOG, Hashed, ViewStore, publish_from, row_hash};
        use vendflow_protocol::Timestamp;
        let frontier = Timestamp(1_000);
        let watched = ["anomaly_windows", "liveness", "health"];
        let pending = || -> Vec<Vec<Vec<Hashed>>> {
            (0..CATALOG.len())
                .map(|view| {
                    // Views of very different sizes, some updates of a later time, and some
                    // retractions of rows added in the same publication.
                    let n = (view * 7_919) % 20_000;
                    let updates = (0..n)
                        .map(|i| {
                            let row = crate::row::Row::from([
                                Value::text(format!("m{}", i % 977)),
                                Value::Int((i % 5_000) as i64),
                            ]);
                            let t = Timestamp(if i % 11 == 0 { 1_500 } else { 10 });
                            let d = if i % 13 == 0 { -1 } else { 1 };
                            (row.clone(), row_hash(&row), t, d)
                        })
                        .collect();
                    vec![updates]
                })
                .collect()
        };
        let run = |parallel: usize| {
            let store = ViewStore::new();
            let mut subs: Vec<_> = watched
                .iter()
                .map(|v| store.subscribe(v).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            let mut queued = pending();
            publish_from(&store, &mut queued, frontier, parallel);
            let changes: Vec<_> = subs
                .iter_mut()
                .map(|s| {
                    let _snapshot = s.next_timeout(Duration::from_secs(5));
                    let c = s
                        .next_timeout(Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("{e:?}"))
                        .unwrap_or_else(|| panic!("no change"));
                    (c.frontier, c.inserted.clone(), c.deleted.clone(), c.seq)
                })
                .collect();
            let left: Vec<usize> = queued
                .iter()
                .map(|q| q.iter().map(Vec::len).sum())
                .collect();
            let snapshot = store.snapshot();
            let rows: Vec<Vec<crate::row::Row>> = CATALOG
                .iter()
                .map(|v| {
                    snapshot
                        .rows(v.name)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .to_vec()
                })
                .collect();
            for (view, copied) in CATALOG.iter().zip(&rows) {
                // Groups of several rows, rows of several copies: read in place as copied.
                let in_place = store
                    .with_sorted_rows(view.name, |_, rows| {
                        rows.iter().map(|r| (*r).clone()).collect::<Vec<_>>()
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(&in_place, copied, "{}", view.name);
            }
            (rows, left, changes, snapshot.frontier)
        };
        let total: usize = pending().iter().flatten().map(Vec::len).sum();
        assert!(total > 100_000, "a bulk publication: {total}");
        let one = run(usize::MAX);
        let two = run(0);
        assert!(one.0.iter().any(|r| r.len() > 1_000));
        assert!(one.1.iter().any(|n| *n > 0), "later updates stay queued");
        assert_eq!(one, two);
    }

    #[test]
    fn subscription_gets_the_snapshot_then_timestamped_changes() {
        let mut engine = Engine::start(crate::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let t = Timestamp(testing::BASE);
        let sale = |txn: &str, cents| testing::sale("m1", t.ms(), 1, cents, txn);
        feeders
            .send(
                t,
                Batch {
                    events: vec![sale("a", 100)],
                    ..Batch::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feeders.advance_all(t + 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.wait_for(t + 1, Duration::from_secs(30)));

        let mut sub = store
            .subscribe("revenue_machine_daily")
            .unwrap_or_else(|e| panic!("{e}"));
        let first = sub
            .next_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no snapshot"));
        assert_eq!(first.frontier, t + 1);
        assert_eq!(first.inserted.len(), 1);
        assert_eq!(first.inserted[0].cell(2), Value::Money(Cents(100)));

        feeders
            .send(
                t + 5,
                Batch {
                    events: vec![sale("b", 250)],
                    ..Batch::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feeders.advance_all(t + 6).unwrap_or_else(|e| panic!("{e}"));
        let change = loop {
            let c = sub
                .next_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no change"));
            if !c.inserted.is_empty() {
                break c;
            }
        };
        assert!(
            change.frontier > t + 5,
            "published once the frontier passed the sale's time"
        );
        assert_eq!(change.deleted.len(), 1, "the old total is retracted");
        assert_eq!(change.deleted[0].cell(2), Value::Money(Cents(100)));
        assert_eq!(change.inserted[0].cell(2), Value::Money(Cents(350)));
        assert!(store.subscribe("no_such_view").is_err());
        drop(feeders);
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            sub.next_timeout(Duration::from_secs(5)),
            Err(super::SubscriptionEnd::Closed)
        ));
    }

    #[test]
    fn a_subscriber_that_never_reads_is_cut_off_not_buffered() {
        let mut engine = Engine::start(crate::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let mut sub = store
            .subscribe("liveness")
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Timestamp(testing::BASE);
        let n = super::SUBSCRIBER_BUFFER as i64 + 10;
        for i in 0..n {
            let hb = testing::heartbeat("m1", (t + i * 1000).ms(), 4_000);
            feeders
                .send(
                    t + i * 1000,
                    Batch {
                        events: vec![hb],
                        ..Batch::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{e}"));
            feeders
                .advance_all(t + i * 1000 + 1)
                .unwrap_or_else(|e| panic!("{e}"));
            // One publication per heartbeat: each is a change the subscriber does not read.
            assert!(store.wait_for(t + i * 1000 + 1, Duration::from_secs(30)));
        }
        let mut received = 0;
        let end = loop {
            match sub.next_timeout(Duration::from_secs(5)) {
                Ok(Some(_)) => received += 1,
                Ok(None) => panic!("the subscription neither delivered nor ended"),
                Err(e) => break e,
            }
        };
        assert_eq!(end, super::SubscriptionEnd::Lagged);
        assert!(received <= super::SUBSCRIBER_BUFFER, "{received}");
        drop(feeders);
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }
}

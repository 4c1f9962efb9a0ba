//! Parked state: per-key state that must be kept for a long horizon but is rarely read again,
//! moved out of memory to a [`redb`] file until it is needed or its horizon ends.
//!
//! The settlement match holds every card transaction for `settlement_days` (7) waiting for the
//! processor's line; most are settled a day or two later, all of them are kept the whole week. In
//! memory that is a week of a fleet's card sales (a few hundred bytes each: 50,000 machines ×
//! 30 card sales a day is 10 M transactions). So a transaction stays in memory for
//! `settlement_memory_ms` after its last record and is then *parked* here, keyed by its bytes,
//! with the time its horizon ends; a record for it that comes later takes it back
//! ([`Parked::take`]).
//!
//! Every new transaction asks whether it is parked, so what is parked must be known without
//! reading the disk, yet a week of keys must not stay in memory. The keys are grouped by the day
//! their horizon ends, and each day has a Bloom filter of its keys (about 1.2 bytes a key, 1 %
//! false positives; an exact index of 128-bit fingerprints was 24 bytes a key plus its table's
//! slack, gigabytes for a week of the fleet). A key no filter knows costs no disk read; a false
//! positive costs one. A day's filter starts at the size the previous day ended with and adds a
//! filter twice as large when it fills; it is dropped, with the day's keys on disk, once every
//! horizon in it has ended.
//!
//! Like the sale-line ledger this is state derived from the input: one file per worker in the
//! engine's state directory, empty at each start (the engine rebuilds its views from its input;
//! a previous run's file is removed, and the new one is created by the first park), commits not
//! synced one by one. Keys whose horizon has ended are deleted by
//! [`Parked::sweep`], at most once per [`SWEEP_EVERY`] of ingestion time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use fastbloom::BloomFilter;
use redb::TableDefinition;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};

use crate::checkpoint;
use crate::operators::{FastMap, Time, hash_of};
use crate::state_file::{self, Cadence, LazyDb, StateFileError};
use vendflow_protocol::Timestamp;

/// Parked values by (day of expiry, key), each value its expiry (8 bytes, little-endian) and
/// then the bytes parked: the sweep deletes the days that have ended, a lookup knows the day
/// from the filter that answered.
const VALUES: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("parked");

/// Parks buffered in memory before they are written in one commit.
const FLUSH_AT: usize = 4096;
/// Ingestion time between two sweeps of expired keys.
pub const SWEEP_EVERY: i64 = MS_PER_HOUR;
/// The page cache of one worker's file.
const CACHE_BYTES: usize = 16 << 20;
/// The page cache of a file of keys rarely read back ([`Parked::for_worker_cold`]).
const COLD_CACHE_BYTES: usize = 1 << 20;
/// The keys a day's first filter is sized for when no earlier day says better.
const FIRST_FILTER: usize = 1 << 14;
/// Each filter's false-positive rate while within its size.
const FALSE_POSITIVES: f64 = 0.01;

/// A parked-state file that cannot be created, read or written.
pub type ParkedError = StateFileError;

/// The keys parked with horizons ending in one bucket of time (a day).
struct Bucket {
    /// Filters in the order they were added, each with the keys it holds and its size; only
    /// the last takes new keys.
    filters: Vec<(BloomFilter, usize, usize)>,
    /// The earliest horizon parked here that [`Parked::take_ended`] has not taken, and the
    /// latest of all: so that it reads the disk only when something has ended.
    earliest: Time,
    latest: Time,
}

impl Bucket {
    fn new(size: usize) -> Self {
        Bucket {
            filters: vec![Self::filter(size)],
            earliest: Time::MAX,
            latest: Time::EPOCH,
        }
    }

    fn filter(size: usize) -> (BloomFilter, usize, usize) {
        let filter = BloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(size);
        (filter, 0, size)
    }

    fn insert(&mut self, hash: u64) {
        if let Some((_, n, size)) = self.filters.last()
            && n >= size
        {
            let next = size.saturating_mul(2);
            self.filters.push(Self::filter(next));
        }
        if let Some((filter, n, _)) = self.filters.last_mut() {
            filter.insert_hash(hash);
            *n += 1;
        }
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.filters.iter().any(|(f, _, _)| f.contains_hash(hash))
    }

    fn keys(&self) -> usize {
        self.filters.iter().map(|(_, n, _)| n).sum()
    }
}

/// What a checkpoint keeps of a [`Parked`]: every key with its expiry and value, and the time
/// of the next sweep.
pub type ParkedSaved = (Vec<(Vec<u8>, Time, Vec<u8>)>, Time);

/// Keys and their values, taken out of a store.
pub type Taken = Vec<(Vec<u8>, Vec<u8>)>;

/// One worker's parked keys.
pub struct Parked {
    /// Created by the first write: a store nothing is parked in (a run too short for any key to
    /// leave memory) costs no file.
    db: LazyDb,
    /// Parks not written yet: key → (expiry, value).
    pending: FastMap<Vec<u8>, (Time, Vec<u8>)>,
    /// Per bucket of expiry, the keys parked there.
    buckets: BTreeMap<u64, Bucket>,
    /// The width of a bucket: a day (small under test).
    bucket_ms: i64,
    next_sweep: Time,
    cadence: Cadence,
    parked: u64,
    taken: u64,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("path", &self.db.path())
            .field("parked", &self.parked)
            .field("taken", &self.taken)
            .finish()
    }
}

impl Parked {
    /// Creates an empty store at `path`, replacing any file a previous run left there.
    pub fn create(path: &Path) -> Result<Parked, ParkedError> {
        Parked::with_buckets(path, MS_PER_DAY)
    }

    /// Creates an empty store at `path` whose keys are grouped by `bucket_ms` of expiry (each
    /// group with its own filters, dropped once its horizons have all ended).
    pub fn with_buckets(path: &Path, bucket_ms: i64) -> Result<Parked, ParkedError> {
        Parked::with_cache(path, bucket_ms, CACHE_BYTES)
    }

    /// [`Parked::with_buckets`] with a page cache of `cache_bytes`.
    fn with_cache(path: &Path, bucket_ms: i64, cache_bytes: usize) -> Result<Parked, ParkedError> {
        Ok(Parked {
            db: LazyDb::open(path, cache_bytes)?,
            pending: FastMap::default(),
            buckets: BTreeMap::new(),
            bucket_ms: bucket_ms.max(1),
            next_sweep: Time::EPOCH,
            cadence: Cadence::default(),
            parked: 0,
            taken: 0,
        })
    }

    /// The store of worker `index` for `what` (a file name stem) in the state directory `dir`.
    pub fn for_worker(dir: &Path, what: &str, index: usize) -> Result<Parked, ParkedError> {
        Parked::create(&dir.join(format!("{what}-{index}.redb")))
    }

    /// The store of worker `index` for `what` whose keys are written once and rarely read back
    /// (a machine's closed days, taken back by a sale days late): a small page cache, since
    /// every page it caches is one that was just written.
    pub fn for_worker_cold(dir: &Path, what: &str, index: usize) -> Result<Parked, ParkedError> {
        let path = dir.join(format!("{what}-{index}.redb"));
        Parked::with_cache(&path, MS_PER_DAY, COLD_CACHE_BYTES)
    }

    /// The store of worker `index` for `what`, its keys grouped by `bucket_ms` of expiry.
    pub fn for_worker_by(
        dir: &Path,
        what: &str,
        index: usize,
        bucket_ms: i64,
    ) -> Result<Parked, ParkedError> {
        Parked::with_buckets(&dir.join(format!("{what}-{index}.redb")), bucket_ms)
    }

    /// Keys parked and taken back so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.parked, self.taken)
    }

    /// The bucket of an expiry (an expiry before the epoch is in the first).
    fn bucket(&self, expires: Time) -> u64 {
        (expires.ms() / self.bucket_ms).max(0).unsigned_abs()
    }

    /// Parks `value` under `key` until `expires` (replacing what the key had: a key is parked
    /// again only after it was taken back).
    pub fn park(&mut self, key: Vec<u8>, value: Vec<u8>, expires: Time) -> Result<(), ParkedError> {
        let bucket = self.bucket(expires);
        if !self.buckets.contains_key(&bucket) {
            // As large as the latest day ended up: days of one fleet are alike.
            let size = self
                .buckets
                .values()
                .next_back()
                .map_or(FIRST_FILTER, Bucket::keys)
                .max(FIRST_FILTER);
            self.buckets.insert(bucket, Bucket::new(size));
        }
        if let Some(b) = self.buckets.get_mut(&bucket) {
            b.insert(hash_of(&key[..]));
            b.earliest = b.earliest.min(expires);
            b.latest = b.latest.max(expires);
        }
        self.pending.insert(key, (expires, value));
        self.parked += 1;
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Takes `key`'s value back out of the store, if it is parked and its horizon has not ended
    /// by `now`.
    pub fn take(&mut self, key: &[u8], now: Time) -> Result<Option<Vec<u8>>, ParkedError> {
        let found = match self.pending.remove(key) {
            Some(found) => Some(found),
            None => {
                let hash = hash_of(key);
                // The newest bucket first: a key parked again went to a later one. At most
                // one bucket holds the key on disk (taking it deletes it).
                let candidates: Vec<u64> = self
                    .buckets
                    .iter()
                    .rev()
                    .filter(|(_, b)| b.may_hold(hash))
                    .map(|(&day, _)| day)
                    .collect();
                let mut found = None;
                if !candidates.is_empty() {
                    self.write(|values| {
                        for day in candidates {
                            if let Some(old) = values.remove((day, key))? {
                                found = decode(old.value());
                                break;
                            }
                        }
                        Ok(())
                    })?;
                }
                found
            }
        };
        Ok(found
            .filter(|(expires, _)| *expires > now)
            .map(|(_, value)| value)
            .inspect(|_| self.taken += 1))
    }

    /// Deletes the keys whose horizon ended by `now`; does nothing until [`SWEEP_EVERY`] has
    /// passed since the last sweep. A bucket goes once every horizon in it has ended; a key
    /// whose horizon ended in a bucket still open is refused by [`Parked::take`] meanwhile.
    pub fn sweep(&mut self, now: Time) -> Result<(), ParkedError> {
        if now < self.next_sweep {
            return Ok(());
        }
        self.next_sweep = now.saturating_add(SWEEP_EVERY);
        self.pending.retain(|_, (expires, _)| *expires > now);
        // Bucket b holds horizons ending in [b, b + 1) buckets' time: all ended when
        // (b + 1) * width <= now.
        let open = self.bucket(now);
        let ended = self.buckets.range(..open).next().is_some();
        if !ended {
            return Ok(());
        }
        self.buckets = self.buckets.split_off(&open);
        self.write(|values| {
            values.retain_in(..(open, &[][..]), |_, _| false)?;
            Ok(())
        })
    }

    /// Takes out every key whose horizon ended by `now`, with its value, in key order: for a
    /// state whose end must be told (a window's row retracted), where [`Parked::sweep`] forgets.
    /// Reads the disk only when a bucket holding ended horizons is still there.
    pub fn take_ended(&mut self, now: Time) -> Result<Taken, ParkedError> {
        let open = self.bucket(now);
        if !self.buckets.range(..=open).any(|(_, b)| b.earliest <= now) {
            return Ok(Vec::new());
        }
        let mut ended: Taken = Vec::new();
        let gone: Vec<Vec<u8>> = self
            .pending
            .iter()
            .filter(|(_, (expires, _))| *expires <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some((_, value)) = self.pending.remove(&key) {
                ended.push((key, value));
            }
        }
        let mut on_disk = Vec::new();
        self.write(|values| {
            let upper = open.saturating_add(1);
            let due = values.extract_from_if(..(upper, &[][..]), |_, stored| {
                decode_expiry(stored).is_some_and(|e| e <= now)
            })?;
            for entry in due {
                let (key, stored) = entry?;
                if let Some((_, value)) = decode(stored.value()) {
                    on_disk.push((key.value().1.to_vec(), value));
                }
            }
            Ok(())
        })?;
        ended.extend(on_disk);
        // What remains of these buckets ends after `now`; a bucket whose horizons have all
        // ended is empty now, and goes with its filters.
        self.buckets.retain(|&b, bucket| {
            if b > open {
                return true;
            }
            bucket.earliest = now.saturating_add(1);
            bucket.latest > now
        });
        ended.sort_unstable();
        Ok(ended)
    }

    /// Writes the buffered parks in one commit.
    fn flush(&mut self) -> Result<(), ParkedError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // In key order: expiries grow with time, so the batch lands at the end of the tree.
        let mut pending: Vec<_> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(key, (expires, value))| ((self.bucket(expires), key), (expires, value)))
            .collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.write(|values| {
            let mut bytes = Vec::new();
            for ((day, key), (expires, value)) in &pending {
                bytes.clear();
                bytes.extend_from_slice(&expires.ms().to_le_bytes());
                bytes.extend_from_slice(value);
                values.insert((*day, &key[..]), &bytes[..])?;
            }
            Ok(())
        })
    }

    fn write(
        &mut self,
        apply: impl FnOnce(
            &mut redb::Table<'_, (u64, &'static [u8]), &'static [u8]>,
        ) -> Result<(), redb::Error>,
    ) -> Result<(), ParkedError> {
        let durability = self.cadence.next_commit();
        self.db.write(VALUES, durability, apply)
    }

    /// Every key parked, with its expiry and value, and the time of the next sweep: what a
    /// checkpoint saves of the store, read back.
    #[cfg(test)]
    fn entries(&self) -> ParkedSaved {
        bincode::serialize(&Saving(self))
            .and_then(|bytes| bincode::deserialize(&bytes))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The store shared by an operator's logic, enrolled in the worker's checkpoint as `name`
    /// (what is parked is part of the engine's state), and started from what the loaded
    /// checkpoint parked there; `what` names its contents in the refusal when that fails.
    pub(crate) fn enrolled(self, name: &str, what: &str) -> Rc<RefCell<Parked>> {
        let store = Rc::new(RefCell::new(self));
        let restored = checkpoint::enrol_streaming::<_, ParkedSaved, _>(
            name,
            &store,
            |store: &Parked, out| bincode::serialize_into(out, &Saving(store)),
            |input| store.borrow_mut().restore(input),
        );
        if let Some(Err(e)) = restored {
            checkpoint::refuse(format!("cannot park the checkpoint's {what} again: {e}"));
        }
        store
    }

    /// Parks a checkpoint's entries ([`Saving`]'s bytes, read from `input`) again, in an empty
    /// store, each as it is decoded: a day of a fleet's closed windows is gigabytes, and
    /// decoded into a list first (or read into memory as bytes first) it was all in memory
    /// once or twice more. `Err` when the bytes do not decode, `Ok(Err)` when the store cannot
    /// take an entry.
    fn restore(
        &mut self,
        input: &mut impl std::io::Read,
    ) -> Result<Result<(), ParkedError>, bincode::Error> {
        use serde::de::DeserializeSeed;
        let mut failed = None;
        let mut decoder = bincode::Deserializer::with_reader(input, checkpoint::bincode_options());
        let read = Restoring {
            store: self,
            failed: &mut failed,
        }
        .deserialize(&mut decoder);
        if let Some(e) = failed {
            return Ok(Err(e));
        }
        self.next_sweep = read?;
        Ok(self.flush())
    }

    /// Keys on disk (for tests).
    #[cfg(test)]
    fn on_disk(&self) -> usize {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let Some(db) = self.db.written() else {
            return 0;
        };
        let read = db.begin_read().unwrap_or_else(|e| panic!("{e}"));
        let table = read.open_table(VALUES).unwrap_or_else(|e| panic!("{e}"));
        table.len().unwrap_or_else(|e| panic!("{e}")) as usize
    }
}

/// A store as its checkpoint saves it: a [`ParkedSaved`]'s bytes, written as the store is read.
/// A day of a fleet's closed windows is gigabytes; gathered into entries of their own first,
/// each with two allocations, they took about twice that again while a checkpoint was taken.
struct Saving<'a>(&'a Parked);

/// [`Saving`]'s entries: those waiting for a commit, then those on disk.
struct SavingEntries<'a>(&'a Parked);

impl serde::Serialize for Saving<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&(SavingEntries(self.0), self.0.next_sweep), s)
    }
}

impl serde::Serialize for SavingEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
        use serde::ser::{Error, SerializeSeq};
        let store = self.0;
        let fail = |e: redb::Error| S::Error::custom(state_file::store_error(store.db.path(), e));
        let table = match store.db.written() {
            None => None,
            Some(db) => {
                let read = db.begin_read().map_err(|e| fail(e.into()))?;
                Some(read.open_table(VALUES).map_err(|e| fail(e.into()))?)
            }
        };
        let on_disk = match &table {
            Some(t) => t.len().map_err(|e| fail(e.into()))?,
            None => 0,
        };
        let len = usize::try_from(on_disk)
            .ok()
            .and_then(|n| n.checked_add(store.pending.len()))
            .ok_or_else(|| S::Error::custom("more parked entries than this machine can count"))?;
        let mut seq = s.serialize_seq(Some(len))?;
        // The same shape as a `ParkedSaved` entry: a slice of bytes writes as a `Vec<u8>` does.
        for (key, (expires, value)) in &store.pending {
            seq.serialize_element(&(&key[..], expires, &value[..]))?;
        }
        if let Some(table) = &table {
            for entry in table.iter().map_err(|e| fail(e.into()))? {
                let (key, stored) = entry.map_err(|e| fail(e.into()))?;
                let stored = stored.value();
                let Some((expires, value)) = decode_borrowed(stored) else {
                    return Err(S::Error::custom(format!(
                        "a value parked in {} is {} bytes, shorter than its expiry",
                        store.db.path().display(),
                        stored.len()
                    )));
                };
                seq.serialize_element(&(key.value().1, expires, value))?;
            }
        }
        seq.end()
    }
}

/// Reads a [`ParkedSaved`]'s bytes into a store, parking each entry as it is decoded; gives the
/// time of the next sweep. A store that cannot take an entry stops the read, its error in
/// `failed`.
struct Restoring<'a> {
    store: &'a mut Parked,
    failed: &'a mut Option<ParkedError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Restoring<'_> {
    type Value = Time;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Time, D::Error> {
        d.deserialize_tuple(2, self)
    }
}

impl<'de> serde::de::Visitor<'de> for Restoring<'_> {
    type Value = Time;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a parked store's entries and the time of its next sweep")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Time, A::Error> {
        use serde::de::Error;
        let entries = RestoringEntries {
            store: self.store,
            failed: self.failed,
        };
        seq.next_element_seed(entries)?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        seq.next_element()?
            .ok_or_else(|| A::Error::invalid_length(1, &"the time of the next sweep"))
    }
}

/// [`Restoring`]'s entries.
struct RestoringEntries<'a> {
    store: &'a mut Parked,
    failed: &'a mut Option<ParkedError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for RestoringEntries<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RestoringEntries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a parked store's entries: key, expiry, value")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Byte strings, which bincode reads in one piece: the same bytes as the `Vec<u8>`s
        // they were written as, which it reads a byte at a time.
        type Entry = (serde_bytes::ByteBuf, Time, serde_bytes::ByteBuf);
        while let Some((key, expires, value)) = seq.next_element::<Entry>()? {
            if let Err(e) = self.store.park(key.into_vec(), value.into_vec(), expires) {
                *self.failed = Some(e);
                return Err(serde::de::Error::custom("the store cannot take an entry"));
            }
        }
        Ok(())
    }
}

/// A stored value's expiry.
fn decode_expiry(stored: &[u8]) -> Option<Time> {
    let (expires, _) = stored.split_first_chunk::<8>()?;
    Some(Timestamp(i64::from_le_bytes(*expires)))
}

/// A stored value: its expiry, then the bytes parked.
fn decode(stored: &[u8]) -> Option<(Time, Vec<u8>)> {
    decode_borrowed(stored).map(|(expires, value)| (expires, value.to_vec()))
}

/// [`decode`], the bytes parked borrowed.
fn decode_borrowed(stored: &[u8]) -> Option<(Time, &[u8])> {
    let (expires, value) = stored.split_first_chunk::<8>()?;
    Some((Timestamp(i64::from_le_bytes(*expires)), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Parked) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Buckets of 100 ms of expiry, not a day.
        let parked = Parked::with_buckets(&dir.path().join("test-0.redb"), 100)
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, parked)
    }

    /// A store nothing is parked in has no file (a previous run's is removed at once); the
    /// first park's commit creates it, and what a checkpoint reads of either is what was parked.
    #[test]
    fn a_store_has_a_file_once_something_is_parked_in_it() -> Result<(), ParkedError> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("stale-0.redb");
        std::fs::write(&path, b"a previous run's file").unwrap_or_else(|e| panic!("{e}"));
        let mut p = Parked::create(&path)?;
        assert!(!path.exists(), "the stale file is gone");
        assert_eq!(p.take(b"a", Timestamp(0))?, None);
        p.sweep(Timestamp(MS_PER_DAY * 10))?;
        assert!(p.take_ended(Timestamp(MS_PER_DAY * 10))?.is_empty());
        assert!(p.entries().0.is_empty());
        assert!(!path.exists(), "nothing parked, no file");
        p.park(b"a".to_vec(), b"one".to_vec(), Timestamp(MS_PER_DAY * 20))?;
        p.flush()?;
        assert!(path.exists());
        assert_eq!(p.on_disk(), 1);
        assert_eq!(p.entries().0.len(), 1);
        Ok(())
    }

    /// A checkpoint saves what waits for a commit and what is on disk, each with its expiry,
    /// and a store restored from it gives back the same values until their horizons.
    #[test]
    fn a_store_restored_from_its_checkpoint_holds_what_it_held() -> Result<(), ParkedError> {
        let (_dir, mut p) = store();
        let mut parked: Vec<(Vec<u8>, Time, Vec<u8>)> = (0..500u32)
            .map(|i| {
                let key = format!("key {i}").into_bytes();
                let value = vec![i as u8; (i % 37) as usize];
                (key, Timestamp(1_000 + i64::from(i % 7) * 100), value)
            })
            .collect();
        for (i, (key, expires, value)) in parked.iter().enumerate() {
            p.park(key.clone(), value.clone(), *expires)?;
            // Most on disk, the last ones still waiting for a commit.
            if i == 400 {
                p.flush()?;
            }
        }
        assert!(p.on_disk() > 0 && p.on_disk() < parked.len());
        let (mut saved, next_sweep) = p.entries();
        saved.sort();
        parked.sort();
        assert_eq!(saved, parked);
        let (_other, mut q) = store();
        let bytes = bincode::serialize(&Saving(&p)).unwrap_or_else(|e| panic!("{e}"));
        q.restore(&mut &bytes[..])
            .unwrap_or_else(|e| panic!("{e}"))?;
        let (_cut, mut cut) = store();
        assert!(
            cut.restore(&mut &bytes[..bytes.len() - 3]).is_err(),
            "cut short"
        );
        assert_eq!(q.on_disk(), parked.len());
        assert_eq!(q.entries().1, next_sweep);
        for (key, expires, value) in &parked {
            assert_eq!(q.take(key, Timestamp(expires.0 - 1))?.as_ref(), Some(value));
        }
        Ok(())
    }

    #[test]
    fn a_parked_value_comes_back_once_before_its_horizon_only() -> Result<(), ParkedError> {
        let (_dir, mut p) = store();
        assert_eq!(p.take(b"a", Timestamp(0))?, None, "nothing parked yet");
        p.park(b"a".to_vec(), b"one".to_vec(), Timestamp(100))?;
        p.park(b"b".to_vec(), b"two".to_vec(), Timestamp(100))?;
        // From the buffer, then (after a flush) from disk.
        assert_eq!(p.take(b"a", Timestamp(10))?.as_deref(), Some(&b"one"[..]));
        assert_eq!(p.take(b"a", Timestamp(10))?, None, "taken once");
        p.flush()?;
        assert_eq!(p.on_disk(), 1);
        assert_eq!(
            p.take(b"b", Timestamp(100))?,
            None,
            "its horizon ended at 100"
        );
        p.park(b"c".to_vec(), b"three".to_vec(), Timestamp(200))?;
        p.flush()?;
        assert_eq!(
            p.take(b"c", Timestamp(150))?.as_deref(),
            Some(&b"three"[..])
        );
        assert_eq!(p.counts(), (3, 2));
        Ok(())
    }

    #[test]
    fn the_sweep_deletes_expired_keys_but_not_a_key_parked_again_later() -> Result<(), ParkedError>
    {
        let (_dir, mut p) = store();
        p.park(b"old".to_vec(), b"1".to_vec(), Timestamp(100))?;
        p.park(b"again".to_vec(), b"2".to_vec(), Timestamp(100))?;
        p.flush()?;
        // "again" comes back and is parked once more, with a later horizon.
        assert_eq!(p.take(b"again", Timestamp(50))?.as_deref(), Some(&b"2"[..]));
        p.park(b"again".to_vec(), b"3".to_vec(), Timestamp(500))?;
        // Expiry 100 is in the bucket [100, 200): it goes once 200 is reached, not before.
        p.sweep(Timestamp(150))?;
        assert_eq!(
            p.on_disk(),
            1,
            "a bucket goes once every horizon in it has ended"
        );
        assert_eq!(
            p.take(b"old", Timestamp(150))?,
            None,
            "its horizon ended at 100"
        );
        p.park(b"old2".to_vec(), b"1".to_vec(), Timestamp(100))?;
        p.flush()?;
        p.next_sweep = Time::EPOCH;
        p.sweep(Timestamp(200))?;
        assert_eq!(p.on_disk(), 1, "only the re-parked key, in a later bucket");
        assert!(!p.buckets.contains_key(&1));
        assert_eq!(
            p.take(b"again", Timestamp(400))?.as_deref(),
            Some(&b"3"[..])
        );
        // Sweeps are at most one per SWEEP_EVERY of ingestion time.
        p.park(b"late".to_vec(), b"4".to_vec(), Timestamp(150))?;
        p.sweep(Timestamp(200))?;
        assert_eq!(p.take(b"late", Timestamp(140))?.as_deref(), Some(&b"4"[..]));
        Ok(())
    }

    #[test]
    fn ended_keys_come_out_with_their_values_once_from_memory_and_disk() -> Result<(), ParkedError>
    {
        let (_dir, mut p) = store();
        p.park(b"a".to_vec(), b"1".to_vec(), Timestamp(100))?;
        p.park(b"b".to_vec(), b"2".to_vec(), Timestamp(150))?;
        p.park(b"c".to_vec(), b"3".to_vec(), Timestamp(250))?;
        p.flush()?;
        p.park(b"d".to_vec(), b"4".to_vec(), Timestamp(120))?;
        assert_eq!(p.take_ended(Timestamp(99))?, vec![], "nothing has ended");
        assert_eq!(
            p.take_ended(Timestamp(120))?,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"d".to_vec(), b"4".to_vec())
            ],
            "on disk and still buffered, each at its own expiry, not its bucket's"
        );
        assert_eq!(p.on_disk(), 2);
        assert_eq!(p.take(b"a", Timestamp(50))?, None, "taken out once");
        assert_eq!(
            p.take_ended(Timestamp(300))?,
            vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(p.on_disk(), 0);
        assert!(
            p.buckets.keys().all(|&b| b >= 3),
            "the buckets that ended are dropped"
        );
        assert_eq!(p.take_ended(Timestamp(1_000))?, vec![]);
        Ok(())
    }

    #[test]
    fn many_parks_are_written_in_commits_of_a_few_thousand() -> Result<(), ParkedError> {
        let (_dir, mut p) = store();
        for i in 0..(2 * FLUSH_AT + 10) {
            p.park(i.to_le_bytes().to_vec(), vec![1; 40], Timestamp(1_000))?;
        }
        assert_eq!(p.on_disk(), 2 * FLUSH_AT);
        assert_eq!(p.pending.len(), 10);
        assert_eq!(
            p.take(&7usize.to_le_bytes(), Timestamp(5))?,
            Some(vec![1; 40])
        );
        p.sweep(Timestamp(1_000))?;
        assert_eq!(
            p.on_disk(),
            2 * FLUSH_AT - 1,
            "the bucket [1000, 1100) is still open"
        );
        p.next_sweep = Time::EPOCH;
        p.sweep(Timestamp(1_100))?;
        assert_eq!(p.on_disk(), 0);
        assert!(p.buckets.is_empty() && p.pending.is_empty());
        Ok(())
    }

    #[test]
    fn a_full_filter_adds_a_larger_one_and_nothing_parked_is_missed() -> Result<(), ParkedError> {
        let (_dir, mut p) = store();
        let n = 3 * FIRST_FILTER;
        for i in 0..n {
            p.park(format!("k{i}").into_bytes(), vec![7], Timestamp(1_050))?;
        }
        p.flush()?;
        let bucket = &p.buckets[&10];
        assert_eq!(
            bucket.filters.len(),
            2,
            "{FIRST_FILTER} and then twice that"
        );
        assert_eq!(bucket.keys(), n);
        // No false negative: every key parked is known, in the first filter or the second.
        assert!((0..n).all(|i| bucket.may_hold(hash_of(format!("k{i}").as_bytes()))));
        // False positives (a disk read each) stay near the filters' rate.
        let strangers = (0..20_000)
            .filter(|i| bucket.may_hold(hash_of(format!("x{i}").as_bytes())))
            .count();
        assert!(strangers < 20_000 * 3 / 100, "{strangers} false positives");
        for i in (0..n).step_by(997) {
            let key = format!("k{i}").into_bytes();
            assert_eq!(p.take(&key, Timestamp(1_000))?, Some(vec![7]));
            assert_eq!(p.take(&key, Timestamp(1_000))?, None, "taken once");
        }
        // The next bucket starts as large as this one ended.
        p.park(b"next".to_vec(), vec![1], Timestamp(1_150))?;
        assert_eq!(p.buckets[&11].filters[0].2, n);
        Ok(())
    }
}

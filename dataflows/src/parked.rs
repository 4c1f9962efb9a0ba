//! Parked state: per-key state that must be kept for a long horizon but is rarely read again,
//! moved out of memory to a [`redb`] file until it is needed or its horizon ends.
//!
//! The settlement match holds every card transaction for `settlement_days` (7) waiting for the
//! processor's line; most are settled a day or two later, all of them are kept the whole week. In
//! memory that is a week of a fleet's card sales (a few hundred bytes each: 50,000 machines ×
//! 30 card sales a day is 10 M transactions). So a transaction stays in memory for
//! `settlement_memory_ms` after its last record and is then *parked* here, keyed by its bytes,
//! with the time its horizon ends; a record for it that comes later takes it back
//! ([`Parked::take`]). What stays in memory per parked key is 24 bytes (a 128-bit fingerprint of
//! the key and its expiry, which is where the key is on disk), so a key never parked costs no
//! disk lookup.
//!
//! Like the sale-line ledger this is state derived from the input: one file per worker in the
//! engine's state directory, created empty at each start (the engine rebuilds its views from its
//! input), commits not synced one by one. Keys whose horizon has ended are deleted by
//! [`Parked::sweep`], at most once per [`SWEEP_EVERY`] of ingestion time.

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use crate::operators::{FastMap, Time, hash_of};
use crate::state_file::{self, Cadence, StateFileError, create_fresh};

/// Parked values by (expiry, key): the sweep deletes a range, a lookup knows the expiry from
/// the index.
const VALUES: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("parked");

/// Parks buffered in memory before they are written in one commit.
const FLUSH_AT: usize = 4096;
/// Ingestion time between two sweeps of expired keys.
pub const SWEEP_EVERY: Time = 3_600_000;
/// The page cache of one worker's file.
const CACHE_BYTES: usize = 16 << 20;

/// A parked-state file that cannot be created, read or written.
pub type ParkedError = StateFileError;

/// A key's 128-bit fingerprint: two keys share one with a probability of about 2^-128, so the
/// index can stand for the keys themselves.
fn fingerprint(key: &[u8]) -> u128 {
    (u128::from(hash_of(key)) << 64) | u128::from(hash_of(&(key, 0x7061_726b_u32)))
}

/// One worker's parked keys.
pub struct Parked {
    db: Database,
    path: PathBuf,
    /// Parks not written yet: (expiry, key) → value.
    pending: FastMap<(Time, Vec<u8>), Vec<u8>>,
    /// Every key parked (by fingerprint) → the expiry it was last parked with: where it is.
    index: FastMap<u128, Time>,
    next_sweep: Time,
    cadence: Cadence,
    parked: u64,
    taken: u64,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("path", &self.path)
            .field("parked", &self.parked)
            .field("taken", &self.taken)
            .finish()
    }
}

impl Parked {
    /// Creates an empty store at `path`, replacing any file a previous run left there.
    pub fn create(path: &Path) -> Result<Parked, ParkedError> {
        let db = create_fresh(path, CACHE_BYTES)?;
        let mut parked = Parked {
            db,
            path: path.to_owned(),
            pending: FastMap::default(),
            index: FastMap::default(),
            next_sweep: 0,
            cadence: Cadence::default(),
            parked: 0,
            taken: 0,
        };
        // The table exists from the start, so that a lookup never meets a missing table.
        parked.write(|_| Ok(()))?;
        Ok(parked)
    }

    /// The store of worker `index` for `what` (a file name stem) in the state directory `dir`.
    pub fn for_worker(dir: &Path, what: &str, index: usize) -> Result<Parked, ParkedError> {
        Parked::create(&dir.join(format!("{what}-{index}.redb")))
    }

    /// Keys parked and taken back so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.parked, self.taken)
    }

    /// Parks `value` under `key` until `expires` (replacing what the key had: a key is parked
    /// again only after it was taken back).
    pub fn park(&mut self, key: Vec<u8>, value: Vec<u8>, expires: Time) -> Result<(), ParkedError> {
        self.index.insert(fingerprint(&key), expires);
        self.pending.insert((expires, key), value);
        self.parked += 1;
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Takes `key`'s value back out of the store, if it is parked and its horizon has not ended
    /// by `now`.
    pub fn take(&mut self, key: &[u8], now: Time) -> Result<Option<Vec<u8>>, ParkedError> {
        let Some(expires) = self.index.remove(&fingerprint(key)) else {
            return Ok(None);
        };
        let entry = (expires, key.to_vec());
        let found = match self.pending.remove(&entry) {
            Some(found) => Some(found),
            None => {
                let mut found = None;
                self.write(|values| {
                    if let Some(old) = values.remove((entry.0, &entry.1[..]))? {
                        found = Some(old.value().to_vec());
                    }
                    Ok(())
                })?;
                found
            }
        };
        if found.is_none() {
            tracing::error!(path = %self.path.display(), "a parked key is in the index but not in the store");
        }
        Ok(found.filter(|_| expires > now).inspect(|_| self.taken += 1))
    }

    /// Deletes the keys whose horizon ended by `now`; does nothing until [`SWEEP_EVERY`] has
    /// passed since the last sweep.
    pub fn sweep(&mut self, now: Time) -> Result<(), ParkedError> {
        if now < self.next_sweep {
            return Ok(());
        }
        self.next_sweep = now.saturating_add(SWEEP_EVERY);
        if self.index.is_empty() {
            return Ok(());
        }
        self.index.retain(|_, expires| *expires > now);
        self.pending.retain(|(expires, _), _| *expires > now);
        let end = now.saturating_add(1);
        self.write(|values| {
            values.retain_in(..(end, &[][..]), |_, _| false)?;
            Ok(())
        })
    }

    /// Writes the buffered parks in one commit.
    fn flush(&mut self) -> Result<(), ParkedError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // In key order: expiries grow with time, so the batch lands at the end of the tree.
        let mut pending: Vec<_> = std::mem::take(&mut self.pending).into_iter().collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.write(|values| {
            for ((expires, key), value) in &pending {
                values.insert((*expires, &key[..]), &value[..])?;
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
        state_file::write(&self.db, &self.path, VALUES, durability, apply)
    }

    /// Keys on disk (for tests).
    #[cfg(test)]
    fn on_disk(&self) -> usize {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let read = self.db.begin_read().unwrap_or_else(|e| panic!("{e}"));
        let table = read.open_table(VALUES).unwrap_or_else(|e| panic!("{e}"));
        table.len().unwrap_or_else(|e| panic!("{e}")) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Parked) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let parked = Parked::for_worker(dir.path(), "test", 0).unwrap_or_else(|e| panic!("{e}"));
        (dir, parked)
    }

    #[test]
    fn a_parked_value_comes_back_once_before_its_horizon_only() -> Result<(), ParkedError> {
        let (_dir, mut p) = store();
        assert_eq!(p.take(b"a", 0)?, None, "nothing parked yet");
        p.park(b"a".to_vec(), b"one".to_vec(), 100)?;
        p.park(b"b".to_vec(), b"two".to_vec(), 100)?;
        // From the buffer, then (after a flush) from disk.
        assert_eq!(p.take(b"a", 10)?.as_deref(), Some(&b"one"[..]));
        assert_eq!(p.take(b"a", 10)?, None, "taken once");
        p.flush()?;
        assert_eq!(p.on_disk(), 1);
        assert_eq!(p.take(b"b", 100)?, None, "its horizon ended at 100");
        p.park(b"c".to_vec(), b"three".to_vec(), 200)?;
        p.flush()?;
        assert_eq!(p.take(b"c", 150)?.as_deref(), Some(&b"three"[..]));
        assert_eq!(p.counts(), (3, 2));
        Ok(())
    }

    #[test]
    fn the_sweep_deletes_expired_keys_but_not_a_key_parked_again_later() -> Result<(), ParkedError>
    {
        let (_dir, mut p) = store();
        p.park(b"old".to_vec(), b"1".to_vec(), 100)?;
        p.park(b"again".to_vec(), b"2".to_vec(), 100)?;
        p.flush()?;
        // "again" comes back and is parked once more, with a later horizon.
        assert_eq!(p.take(b"again", 50)?.as_deref(), Some(&b"2"[..]));
        p.park(b"again".to_vec(), b"3".to_vec(), 500)?;
        p.sweep(100)?;
        assert_eq!(p.on_disk(), 0, "the re-parked key is still in the buffer");
        assert!(!p.index.contains_key(&fingerprint(b"old")));
        assert_eq!(p.take(b"again", 400)?.as_deref(), Some(&b"3"[..]));
        // Sweeps are at most one per SWEEP_EVERY of ingestion time.
        p.park(b"late".to_vec(), b"4".to_vec(), 150)?;
        p.sweep(200)?;
        assert_eq!(p.take(b"late", 140)?.as_deref(), Some(&b"4"[..]));
        Ok(())
    }

    #[test]
    fn many_parks_are_written_in_commits_of_a_few_thousand() -> Result<(), ParkedError> {
        let (_dir, mut p) = store();
        for i in 0..(2 * FLUSH_AT + 10) {
            p.park(i.to_le_bytes().to_vec(), vec![1; 40], 1_000)?;
        }
        assert_eq!(p.on_disk(), 2 * FLUSH_AT);
        assert_eq!(p.pending.len(), 10);
        assert_eq!(p.take(&7usize.to_le_bytes(), 5)?, Some(vec![1; 40]));
        p.sweep(1_000)?;
        assert_eq!(p.on_disk(), 0);
        assert!(p.index.is_empty());
        Ok(())
    }
}

//! The sale-line ledger: the durable record of the sale lines already counted, on disk.
//!
//! Dedup ([`crate::sales`]) keeps each line's fingerprint in memory for its horizon (48 h of
//! event time by default). When a fingerprint leaves memory it is written here, keyed by the
//! line's event-time day; a line that arrives after its horizon (a machine offline for a week, a
//! re-sent buffer a month later, an export loaded out of order) is looked up here instead of being
//! kept out of revenue: if it is absent it is counted, in its own day, and recorded; if present it
//! is a duplicate. Memory stays bounded: the ledger is a [`redb`] B-tree file with a small page
//! cache, and days older than [`Ledger::forget_before`] are deleted from it.
//!
//! One ledger per worker (dedup routes each line's key to one worker), in the engine's state
//! directory. The ledger is state derived from the input, like every operator's: the engine
//! rebuilds its views from the start of its input, so it starts every run with an empty ledger
//! and nothing in it can count a line of this run as a duplicate of a line from an earlier one.
//! Commits are not synced to disk one by one (the file is rebuilt on restart anyway); every
//! [`crate::state_file::SYNC_EVERY`] commits one is, so that redb can reuse the pages the others freed.

use std::path::Path;

use redb::{Durability, ReadableDatabase, TableDefinition};

use crate::state_file::{Cadence, LazyDb, StateFileError, store_error};

/// A line's identity in the ledger: its event-time day, then its 128-bit fingerprint.
pub type LedgerKey = (i64, u64, u64);

const LINES: TableDefinition<LedgerKey, ()> = TableDefinition::new("sale_lines");

/// The page cache of one worker's ledger.
const CACHE_BYTES: usize = 16 << 20;

/// A ledger file that cannot be created, read or written.
pub type LedgerError = StateFileError;

/// One worker's ledger file.
pub struct Ledger {
    /// Created by the first write: a run whose lines never leave dedup's horizon (a replay of
    /// less than two days) costs no file.
    db: LazyDb,
    cadence: Cadence,
    /// Lines recorded, for the engine's counters.
    recorded: u64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.db.path())
            .field("recorded", &self.recorded)
            .finish()
    }
}

impl Ledger {
    /// Creates an empty ledger at `path`, replacing any file a previous run left there.
    pub fn create(path: &Path) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            db: LazyDb::open(path, CACHE_BYTES)?,
            cadence: Cadence::default(),
            recorded: 0,
        })
    }

    /// The ledger of worker `index` in the engine's state directory `dir`.
    pub fn for_worker(dir: &Path, index: usize) -> Result<Ledger, LedgerError> {
        Ledger::create(&dir.join(format!("sale-lines-{index}.redb")))
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Lines recorded so far.
    pub fn recorded(&self) -> u64 {
        self.recorded
    }

    /// Records lines counted earlier (fingerprints leaving dedup's memory), in one commit.
    pub fn record(&mut self, keys: &[LedgerKey]) -> Result<(), LedgerError> {
        if keys.is_empty() {
            return Ok(());
        }
        let durability = self.cadence.next_commit();
        self.write(
            |table| {
                for key in keys {
                    table.insert(key, ())?;
                }
                Ok(())
            },
            durability,
        )?;
        self.recorded += keys.len() as u64;
        Ok(())
    }

    /// For lines that arrived after their horizon, in arrival order: true for each line not in
    /// the ledger yet (now recorded: it counts), false for one already there (a duplicate,
    /// including a repeat within `keys`). One commit for all of them.
    pub fn check_and_record(&mut self, keys: &[LedgerKey]) -> Result<Vec<bool>, LedgerError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let durability = self.cadence.next_commit();
        let mut fresh = Vec::with_capacity(keys.len());
        self.write(
            |table| {
                for key in keys {
                    let old = table.insert(key, ())?;
                    fresh.push(old.is_none());
                }
                Ok(())
            },
            durability,
        )?;
        self.recorded += fresh.iter().filter(|f| **f).count() as u64;
        Ok(fresh)
    }

    /// Whether a line is in the ledger (for tests and diagnostics).
    pub fn contains(&self, key: LedgerKey) -> Result<bool, LedgerError> {
        let found = (|| -> Result<bool, redb::Error> {
            let Some(db) = self.db.written() else {
                return Ok(false);
            };
            let read = db.begin_read()?;
            let table = read.open_table(LINES)?;
            Ok(table.get(key)?.is_some())
        })();
        found.map_err(|e| store_error(self.db.path(), e))
    }

    /// Deletes the lines of days before `day` (a retention on the ledger itself).
    pub fn forget_before(&mut self, day: i64) -> Result<u64, LedgerError> {
        if self.db.written().is_none() {
            return Ok(0);
        }
        let durability = self.cadence.next_commit();
        let mut removed = 0;
        self.write(
            |table| {
                table.retain_in(..(day, 0, 0), |_, _| {
                    removed += 1;
                    false
                })?;
                Ok(())
            },
            durability,
        )?;
        Ok(removed)
    }

    /// Every line recorded (for a checkpoint), in key order.
    pub fn keys(&self) -> Result<Vec<LedgerKey>, LedgerError> {
        use redb::ReadableTable;
        let keys = (|| -> Result<Vec<LedgerKey>, redb::Error> {
            let Some(db) = self.db.written() else {
                return Ok(Vec::new());
            };
            let read = db.begin_read()?;
            let table = read.open_table(LINES)?;
            let mut keys = Vec::new();
            for entry in table.iter()? {
                keys.push(entry?.0.value());
            }
            Ok(keys)
        })();
        keys.map_err(|e| store_error(self.db.path(), e))
    }

    fn write(
        &mut self,
        apply: impl FnOnce(&mut redb::Table<'_, LedgerKey, ()>) -> Result<(), redb::Error>,
        durability: Durability,
    ) -> Result<(), LedgerError> {
        self.db.write(LINES, durability, apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_new_once_then_a_duplicate_and_old_days_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut ledger = Ledger::for_worker(dir.path(), 0).unwrap_or_else(|e| panic!("{e}"));
        ledger
            .record(&[(10, 1, 1), (11, 2, 2)])
            .unwrap_or_else(|e| panic!("{e}"));
        let fresh = ledger
            .check_and_record(&[(10, 1, 1), (10, 1, 2), (10, 1, 2), (12, 3, 3)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fresh, [false, true, false, true]);
        assert_eq!(ledger.recorded(), 4);
        // Many commits, some durable, some not: every one is visible to the next.
        for i in 0..(2 * crate::state_file::SYNC_EVERY as u64) {
            ledger
                .record(&[(20, i, i)])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            ledger
                .contains((20, 5, 5))
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(
            ledger.forget_before(12).unwrap_or_else(|e| panic!("{e}")),
            3
        );
        assert!(
            !ledger
                .contains((10, 1, 1))
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            ledger
                .contains((12, 3, 3))
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[test]
    fn a_new_run_starts_empty() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut first = Ledger::for_worker(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
        first.record(&[(1, 1, 1)]).unwrap_or_else(|e| panic!("{e}"));
        drop(first);
        let mut again = Ledger::for_worker(dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.contains((1, 1, 1)).unwrap_or_else(|e| panic!("{e}")));
        // Nothing recorded yet: no file, nothing to forget or to save.
        assert!(!again.path().exists());
        assert_eq!(again.forget_before(10).unwrap_or_else(|e| panic!("{e}")), 0);
        assert!(again.keys().unwrap_or_else(|e| panic!("{e}")).is_empty());
        assert!(!again.path().exists());
        again.record(&[(2, 2, 2)]).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.path().exists());
        assert_eq!(
            again.keys().unwrap_or_else(|e| panic!("{e}")),
            vec![(2, 2, 2)]
        );
    }
}

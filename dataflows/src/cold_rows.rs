//! The rows of a view that are old enough to be read rarely, on disk: the view store's cold
//! part.
//!
//! `anomaly_windows` keeps a window's row for 48 h after the window closes, so a live
//! 50,000-machine fleet's view is 29 M rows, where nearly every query and every change is about
//! its last half hour; the machine revenue views keep 35 days of machine-days, where nearly
//! every change is today's. Rows whose time column (a day counts as the instant it ends) is
//! older than a view's `after_ms` (behind the store's frontier) move here, into a [`redb`] file
//! in the engine's state directory keyed by (first cell, row): a machine's rows are one range,
//! read for a point query. A retraction of a row that is not in memory (a late correction, the
//! end of the row's retention) is applied here. Writes happen under the store's write lock, in the commit that publishes a frontier;
//! a reader takes a read transaction under the read lock, so what it reads after the lock is
//! released is the disk as of the frontier it copied the memory at.
//!
//! Like the other state files it is derived: created empty at each start, rebuilt with the views
//! (a checkpoint holds the views' rows, cold ones included).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use vendflow_protocol::units::MS_PER_DAY;

use crate::operators::Time;
use crate::row::{Row, Value};
use crate::state_file::{self, Cadence, StateFileError, create_fresh};

/// Rows by (first cell, whole row), each with its multiplicity.
const ROWS: TableDefinition<(&[u8], &[u8]), i64> = TableDefinition::new("rows");

/// Ingestion time between two sweeps of a view's rows in memory for rows that turned cold.
pub const SWEEP_EVERY_MS: i64 = 60_000;

/// The page cache of a view's file.
const CACHE_BYTES: usize = 16 << 20;

/// The order of rows on disk (by first cell, then the whole row, each as bytes), for sorting
/// what is written there.
pub(crate) fn disk_order(a: &Row, b: &Row) -> std::cmp::Ordering {
    (a.first_cell(), a.encoded()).cmp(&(b.first_cell(), b.encoded()))
}

/// Which rows of a view go to disk: those whose cell `time_column` is `after_ms` or more behind
/// the store's frontier. The cell is a time (a window's start) or a day, which counts as the
/// instant it ends (a machine's day of revenue).
#[derive(Clone, Debug)]
pub struct ColdSpec {
    pub view: &'static str,
    pub time_column: usize,
    pub after_ms: i64,
}

/// One view's rows on disk.
pub(crate) struct ColdRows {
    /// Shared with the reads taken of it ([`ColdReader`]): a checkpoint's read of the rows
    /// outlives the engine when the state is written after it stopped.
    db: Arc<Database>,
    path: PathBuf,
    pub(crate) spec: ColdSpec,
    /// Rows on disk counted by multiplicity, and once each.
    pub(crate) total: i64,
    pub(crate) distinct: usize,
    /// The frontier at which the rows in memory are next swept for cold ones.
    pub(crate) next_sweep: Time,
    cadence: Cadence,
}

impl ColdRows {
    /// An empty file for `spec`'s view in `dir`, replacing what a previous run left there.
    pub fn create(dir: &Path, spec: ColdSpec) -> Result<ColdRows, StateFileError> {
        let path = dir.join(format!("view-{}.redb", spec.view));
        let db = Arc::new(create_fresh(&path, CACHE_BYTES)?);
        let mut cold = ColdRows {
            db,
            path,
            spec,
            total: 0,
            distinct: 0,
            next_sweep: Time::EPOCH,
            cadence: Cadence::default(),
        };
        // The table exists from the start: a reader never meets a missing one.
        cold.write(|_| Ok(()))?;
        Ok(cold)
    }

    /// Whether `row` belongs on disk at `frontier`.
    pub fn is_cold(&self, row: &Row, frontier: Time) -> bool {
        let at = match row.get(self.spec.time_column) {
            Some(Value::Time(t)) => t.ms(),
            Some(Value::Date(day)) => day.saturating_add(1).saturating_mul(MS_PER_DAY),
            _ => return false,
        };
        at.saturating_add(self.spec.after_ms) <= frontier.ms()
    }

    /// Applies `retractions` to the rows on disk that hold them and adds `moved` (rows leaving
    /// memory, with their hashes and multiplicities), in one commit. Says for each retraction
    /// whether the disk held its row (those it did not belong to memory). On an error nothing
    /// was applied. Either list is best in [`disk_order`]: a B-tree written in key order
    /// reads and splits each page once, not once per row.
    pub fn apply(
        &mut self,
        retractions: &[(Row, u32, i64)],
        moved: &[(Row, u32, i64)],
    ) -> Result<Vec<bool>, StateFileError> {
        self.write_rows(
            retractions.iter().map(|(row, _, d)| (row, *d)),
            moved.iter().map(|(row, _, d)| (row, *d)),
        )
    }

    /// Adds `rows` (each once; a row given twice counts twice), in one commit: a checkpoint's
    /// rows that are cold when the engine starts from it, best in [`disk_order`].
    pub fn add(&mut self, rows: &[Row]) -> Result<(), StateFileError> {
        self.write_rows(std::iter::empty(), rows.iter().map(|row| (row, 1)))
            .map(drop)
    }

    fn write_rows<'r>(
        &mut self,
        retractions: impl ExactSizeIterator<Item = (&'r Row, i64)>,
        moved: impl Iterator<Item = (&'r Row, i64)>,
    ) -> Result<Vec<bool>, StateFileError> {
        let mut held = Vec::with_capacity(retractions.len());
        let (mut total, mut distinct) = (self.total, self.distinct as i64);
        self.write(|table| {
            let mut add = |row: &Row, d: i64, only_held: bool| -> Result<bool, redb::Error> {
                let key = (row.first_cell(), row.encoded());
                let count = table.get(key)?.map(|c| c.value());
                if count.is_none() && only_held {
                    return Ok(false);
                }
                let before = count.unwrap_or(0);
                let now = before + d;
                if now == 0 {
                    table.remove(key)?;
                } else {
                    table.insert(key, now)?;
                }
                distinct += i64::from(now != 0) - i64::from(before != 0);
                total += d;
                Ok(true)
            };
            for (row, d) in retractions {
                held.push(add(row, d, true)?);
            }
            for (row, d) in moved {
                add(row, d, false)?;
            }
            Ok(())
        })?;
        self.total = total;
        self.distinct = usize::try_from(distinct).unwrap_or(0);
        Ok(held)
    }

    fn write(
        &mut self,
        apply: impl FnOnce(
            &mut redb::Table<'_, (&'static [u8], &'static [u8]), i64>,
        ) -> Result<(), redb::Error>,
    ) -> Result<(), StateFileError> {
        let durability = self.cadence.next_commit();
        state_file::write(&self.db, &self.path, ROWS, durability, apply)
    }

    /// A read of the rows on disk as they are now (to be read after the store's lock is
    /// released).
    pub fn reader(&self) -> Result<ColdReader, StateFileError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| state_file::store_error(&self.path, e))?;
        Ok(ColdReader {
            txn,
            _db: self.db.clone(),
            path: self.path.clone(),
            distinct: self.distinct,
        })
    }
}

/// The rows on disk of one view as of one frontier.
pub(crate) struct ColdReader {
    txn: ReadTransaction,
    /// The file stays open while it is read (a read of a closed database fails).
    _db: Arc<Database>,
    path: PathBuf,
    distinct: usize,
}

impl ColdReader {
    /// Every row, as often as its multiplicity, in the disk's order.
    pub fn all(&self, out: &mut Vec<Row>) -> Result<(), StateFileError> {
        out.reserve(self.distinct);
        self.read(out, None)
    }

    /// The rows whose first cell is `first_cell` (encoded), as often as their multiplicity.
    pub fn group(&self, first_cell: &[u8], out: &mut Vec<Row>) -> Result<(), StateFileError> {
        self.read(out, Some(first_cell))
    }

    fn read(&self, out: &mut Vec<Row>, group: Option<&[u8]>) -> Result<(), StateFileError> {
        self.visit(group, |row| {
            out.push(row);
            true
        })
    }

    /// Calls `each` with every row (of `group`, if given) as often as its multiplicity, in the
    /// disk's order, until it returns false; no row is kept.
    pub fn for_each(&self, each: impl FnMut(Row) -> bool) -> Result<(), StateFileError> {
        self.visit(None, each)
    }

    fn visit(
        &self,
        group: Option<&[u8]>,
        mut each: impl FnMut(Row) -> bool,
    ) -> Result<(), StateFileError> {
        let result = (|| -> Result<(), redb::Error> {
            let table = self.txn.open_table(ROWS)?;
            let entries = match group {
                None => table.iter()?,
                Some(cell) => table.range((cell, &[][..])..)?,
            };
            for entry in entries {
                let (key, count) = entry?;
                let (cell, row) = key.value();
                if group.is_some_and(|g| g != cell) {
                    break;
                }
                let row = Row::from_encoded(row);
                for _ in 0..count.value().max(0) {
                    if !each(row.clone()) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })();
        result.map_err(|e| state_file::store_error(&self.path, e))
    }
}

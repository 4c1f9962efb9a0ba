//! What the engine's on-disk state files share: the sale-line [`crate::ledger`] and the
//! [`crate::parked`] stores are each a [`redb`] file per worker, and a view's old rows one file of
//! the view store's ([`crate::cold_rows`]); each is empty at every start (a checkpoint's entries
//! are written back into it; a store's file is created by its first write, [`LazyDb`]),
//! written on a `Scratch` file, whose syncs do nothing: one commit in [`SYNC_EVERY`] is durable
//! for redb's page reuse, and none waits for the disk.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{BackendError, Database, Durability, StorageBackend, TableDefinition};

/// Non-durable commits between two durable ones (redb reuses the pages of a durable commit that
/// the others freed only after another durable one).
pub const SYNC_EVERY: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("engine state {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("cannot prepare the state directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Creates an empty database at `path` with a page cache of `cache_bytes`, replacing any file a
/// previous run left there.
pub fn create_fresh(path: &Path, cache_bytes: usize) -> Result<Database, StateFileError> {
    remove_stale(path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| StateFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
    let backend = FileBackend::new(file).map_err(|e| store_error(path, e))?;
    Database::builder()
        .set_cache_size(cache_bytes)
        .create_with_backend(Scratch(backend))
        .map_err(|e| store_error(path, e))
}

/// A state file's storage: redb's own file backend, except that a sync returns at once.
///
/// Nothing reads these files after the process that wrote them: each is removed and created
/// afresh at every start, and a checkpoint copies their entries out. A sync would make a commit
/// survive a power cut that the file is never opened after, and it stalled the worker that
/// committed: a durable commit (one in [`SYNC_EVERY`], which redb needs to reuse freed pages)
/// waited for the disk to take every page written since the last one (`fdatasync`, 1,165 calls
/// in a bulk load of ten million events). The kernel still writes the pages back in its own time.
#[derive(Debug)]
struct Scratch(FileBackend);

impl StorageBackend for Scratch {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}

/// Removes what a previous run left at `path` (its directory is created if missing), for a
/// store created later ([`create_fresh`]) or never.
fn remove_stale(path: &Path) -> Result<(), StateFileError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StateFileError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StateFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    }
    Ok(())
}

/// A store's database, created by its first write: a store nothing is ever written to (a run
/// too short for any state to leave memory) costs no file. What a previous run left at its path
/// is removed when the store is opened.
pub struct LazyDb {
    db: Option<Database>,
    path: PathBuf,
    cache_bytes: usize,
}

impl LazyDb {
    /// The store at `path`, with a page cache of `cache_bytes` once it exists.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<LazyDb, StateFileError> {
        remove_stale(path)?;
        Ok(LazyDb {
            db: None,
            path: path.to_owned(),
            cache_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, once something was written to it.
    pub fn written(&self) -> Option<&Database> {
        self.db.as_ref()
    }

    /// [`write`] to the database, creating it first if this is the first write.
    pub fn write<K: redb::Key + 'static, V: redb::Value + 'static>(
        &mut self,
        table: TableDefinition<'_, K, V>,
        durability: Durability,
        apply: impl FnOnce(&mut redb::Table<'_, K, V>) -> Result<(), redb::Error>,
    ) -> Result<(), StateFileError> {
        let db = match &mut self.db {
            Some(db) => db,
            none => none.insert(create_fresh(&self.path, self.cache_bytes)?),
        };
        write(db, &self.path, table, durability, apply)
    }
}

/// The durability of each next commit: one in [`SYNC_EVERY`] is durable.
#[derive(Debug, Default)]
pub struct Cadence {
    commits: u32,
}

impl Cadence {
    pub fn next_commit(&mut self) -> Durability {
        self.commits += 1;
        if self.commits.is_multiple_of(SYNC_EVERY) {
            Durability::Immediate
        } else {
            Durability::None
        }
    }
}

/// Applies `apply` to `table` in one write transaction of `db` (the file at `path`), committed
/// with `durability`.
pub fn write<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &Database,
    path: &Path,
    table: TableDefinition<'_, K, V>,
    durability: Durability,
    apply: impl FnOnce(&mut redb::Table<'_, K, V>) -> Result<(), redb::Error>,
) -> Result<(), StateFileError> {
    let result = (|| -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut open = txn.open_table(table)?;
            apply(&mut open)?;
        }
        txn.commit()?;
        Ok(())
    })();
    result.map_err(|e| store_error(path, e))
}

pub fn store_error(path: &Path, e: impl Into<redb::Error>) -> StateFileError {
    StateFileError::Store {
        path: path.display().to_string(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTable};

    use super::*;

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    /// A scratch file replaces what a previous run left, takes the engine's cadence of commits
    /// (durable ones included, whose sync it skips), reuses the pages it frees (each round
    /// replaces the last round's keys: the file stays near one round's size, not the 25 MB of
    /// every round written) and reads back what it committed.
    #[test]
    fn a_scratch_file_replaces_a_stale_one_and_keeps_its_commits() -> Result<(), StateFileError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StateFileError::Io { path, source }
        };
        let dir = tempfile::tempdir().map_err(io(Path::new("tempdir")))?;
        let path = dir.path().join("state").join("scratch.redb");
        std::fs::create_dir_all(dir.path().join("state")).map_err(io(dir.path()))?;
        std::fs::write(&path, b"left by a previous run").map_err(io(&path))?;
        let db = create_fresh(&path, 1 << 20)?;
        let mut cadence = Cadence::default();
        let value = [7u8; 1000];
        const KEYS: u64 = 50;
        let rounds = u64::from(SYNC_EVERY) * 8;
        for round in 0..rounds {
            write(&db, &path, TABLE, cadence.next_commit(), |t| {
                for k in 0..KEYS {
                    t.insert(round * KEYS + k, &value[..])?;
                }
                if let Some(last) = round.checked_sub(1) {
                    for k in 0..KEYS {
                        t.remove(last * KEYS + k)?;
                    }
                }
                Ok(())
            })?;
        }
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        // Every round written is 25 MB; one round's keys are 50 KB.
        assert!(len > 0 && len < 8 << 20, "the file grew to {len} bytes");
        let read = db.begin_read().map_err(|e| store_error(&path, e))?;
        let table = read.open_table(TABLE).map_err(|e| store_error(&path, e))?;
        let keys: Vec<u64> = table
            .iter()
            .map_err(|e| store_error(&path, e))?
            .map(|entry| entry.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()
            .map_err(|e| store_error(&path, e))?;
        let last = rounds - 1;
        assert_eq!(keys, (last * KEYS..rounds * KEYS).collect::<Vec<_>>());
        Ok(())
    }
}

//! What the engine's on-disk state files share: the sale-line [`crate::ledger`] and the
//! [`crate::parked`] stores are each a [`redb`] file per worker, empty at every start (the engine
//! rebuilds its views from its input; the file is created by its first write, [`LazyDb`]),
//! written with commits that are not synced one by one.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, TableDefinition};

/// Non-durable commits between two durable ones (redb reuses the pages the others freed only
/// after a durable one).
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
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| store_error(path, e))
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

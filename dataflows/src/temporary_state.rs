//! The state directory of an engine started without one (`--state`, `Config::state_dir`): a new
//! directory in the system's temporary one, removed when the engine stops, and reclaimed by the
//! next engine that starts without one if its process died before it could remove it (`kill -9`,
//! the kernel's out-of-memory killer, a power cut). Without that, every such death left its directory
//! behind: the sale-line ledger, the parked windows and the cold view rows of a long run, up to
//! gigabytes of redb files that nothing would ever read again.
//!
//! Its owner holds an exclusive lock on the directory's `owner.lock` for as long as it runs; the
//! operating system releases the lock when the process ends, however it ends (and whichever PID
//! namespace it ran in: a lock, unlike a process id, cannot be mistaken for another process's).
//! A directory is reclaimed when its lock can be taken and it is older than [`GRACE`] (one
//! being set up has its lock file before it is locked). A directory without a lock file (one
//! written before this was added, or not vendflow's) is left alone.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name every temporary state directory starts with.
const PREFIX: &str = "vendflow-state-";

/// The file whose lock says its directory's owner is running.
const LOCK: &str = "owner.lock";

/// How old an unlocked directory must be before it is reclaimed.
pub const GRACE: Duration = Duration::from_secs(60);

/// A temporary state directory, removed on drop; locked while it lives.
#[derive(Debug)]
pub struct TemporaryState {
    // Closed before the directory is removed (fields drop in order): some systems do not
    // remove an open file.
    _lock: File,
    dir: tempfile::TempDir,
}

impl TemporaryState {
    /// Reclaims the directories that dead engines left in the system's temporary directory,
    /// then makes this engine's own there.
    pub fn create() -> io::Result<TemporaryState> {
        let parent = std::env::temp_dir();
        let reclaimed = reclaim_abandoned(&parent, GRACE);
        if reclaimed.dirs > 0 {
            tracing::info!(
                directories = reclaimed.dirs,
                mib = reclaimed.bytes >> 20,
                under = %parent.display(),
                "removed the temporary state of engines that ended without removing it"
            );
        }
        Self::create_in(&parent)
    }

    fn create_in(parent: &Path) -> io::Result<TemporaryState> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(parent)?;
        let lock = File::create(dir.path().join(LOCK))?;
        // A file system without locks is no reason not to start: the directory is then never
        // reclaimed by another engine (its lock cannot be taken either), only removed at the end.
        if let Err(e) = lock.try_lock() {
            tracing::warn!(
                dir = %dir.path().display(), error = %e,
                "cannot lock the temporary state directory: if this process is killed, no later engine will remove it"
            );
        }
        Ok(TemporaryState { _lock: lock, dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// What [`reclaim_abandoned`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub dirs: usize,
    pub bytes: u64,
}

/// Removes every temporary state directory under `parent` whose owner is gone (its lock is
/// free) and that is older than `grace`. Never fails: what cannot be read or removed is logged
/// and left.
pub fn reclaim_abandoned(parent: &Path, grace: Duration) -> Reclaimed {
    let mut reclaimed = Reclaimed::default();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return reclaimed;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        if !abandoned(&dir, grace) {
            continue;
        }
        let bytes = bytes_under(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                reclaimed.dirs += 1;
                reclaimed.bytes += bytes;
            }
            // Another engine starting at the same moment took it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                dir = %dir.display(), error = %e,
                "cannot remove the temporary state of an engine that ended without removing it"
            ),
        }
    }
    reclaimed
}

/// Whether `dir`'s owner is gone: its lock file is old enough and not locked. The lock taken
/// to find out is let go before the directory is removed.
fn abandoned(dir: &Path, grace: Duration) -> bool {
    let Ok(lock) = OpenOptions::new().write(true).open(dir.join(LOCK)) else {
        return false;
    };
    let old = lock
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= grace));
    old && lock.try_lock().is_ok()
}

/// The bytes of the files under `dir` (for the log line).
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) => total += entry.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// A directory as an engine makes it, its lock file dated `age` ago; locked if `held`.
    fn state_dir(
        parent: &Path,
        age: Duration,
        held: bool,
    ) -> Result<(PathBuf, File), Box<dyn std::error::Error>> {
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(parent)?
            .keep();
        std::fs::write(dir.join("sale-lines-0.redb"), vec![7u8; 4096])?;
        let lock = File::create(dir.join(LOCK))?;
        lock.set_modified(SystemTime::now() - age)?;
        if held {
            lock.try_lock()?;
        }
        Ok((dir, lock))
    }

    #[test]
    fn only_the_directories_of_dead_engines_are_reclaimed() -> Result<(), Box<dyn std::error::Error>>
    {
        let parent = tempfile::tempdir()?;
        let old = Duration::from_secs(600);
        // Its owner died: unlocked, old.
        let (dead, unlocked) = state_dir(parent.path(), old, false)?;
        drop(unlocked);
        // Its owner runs: the lock is held (by another open file, as by another process).
        let (running, _held) = state_dir(parent.path(), old, true)?;
        // Being set up: not locked yet, but new.
        let (new, _new) = state_dir(parent.path(), Duration::ZERO, false)?;
        // No lock file: not one this version made.
        let unknown = parent.path().join(format!("{PREFIX}older"));
        std::fs::create_dir(&unknown)?;
        // Not a state directory at all.
        let other = parent.path().join("vendflow-demo-1");
        std::fs::create_dir(&other)?;
        std::fs::write(other.join(LOCK), b"")?;
        File::open(other.join(LOCK))?.set_modified(SystemTime::now() - old)?;

        let reclaimed = reclaim_abandoned(parent.path(), GRACE);
        assert_eq!(reclaimed.dirs, 1, "{reclaimed:?}");
        assert!(reclaimed.bytes >= 4096, "{reclaimed:?}");
        assert!(!dead.exists());
        for kept in [&running, &new, &unknown, &other] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        // Nothing more the second time.
        assert_eq!(
            reclaim_abandoned(parent.path(), GRACE),
            Reclaimed::default()
        );
        Ok(())
    }

    #[test]
    fn an_engines_own_directory_is_locked_while_it_lives_and_removed_after()
    -> Result<(), Box<dyn std::error::Error>> {
        let parent = tempfile::tempdir()?;
        let state = TemporaryState::create_in(parent.path())?;
        let path = state.path().to_owned();
        File::open(path.join(LOCK))?.set_modified(SystemTime::now() - GRACE * 2)?;
        assert_eq!(reclaim_abandoned(parent.path(), GRACE).dirs, 0);
        assert!(path.exists());
        drop(state);
        assert!(!path.exists());
        Ok(())
    }
}

//! The outbox's log in a file (the host build: the simulator, the tests, a Linux-based
//! controller).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::vec::Vec;

use crate::outbox::Log;

/// A log in one file; [`Log::replace`] writes a temporary file beside it, syncs it and renames
/// it over the log (then syncs the directory), so a power cut leaves one or the other whole.
pub struct FileLog {
    path: PathBuf,
    file: File,
    /// A simulated power failure on its way ([`FileLog::power_fails_after`]).
    fuse: Option<usize>,
}

impl FileLog {
    pub fn open(path: &Path) -> std::io::Result<FileLog> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        Ok(FileLog {
            path: path.to_path_buf(),
            file,
            fuse: None,
        })
    }

    /// Simulates a power failure during a write: `bytes` more bytes reach the file, then none
    /// (a record cut short at any byte); a truncation or a replacement after it does not
    /// happen. The file is read back as a new boot reads it ([`FileLog::open`] again).
    pub fn power_fails_after(&mut self, bytes: usize) {
        self.fuse = Some(bytes);
    }

    fn dead(&self) -> bool {
        self.fuse == Some(0)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Log for FileLog {
    type Error = std::io::Error;

    fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let reach = match self.fuse.as_mut() {
            Some(left) => {
                let n = (*left).min(bytes.len());
                *left -= n;
                n
            }
            None => bytes.len(),
        };
        self.file.write_all(&bytes[..reach])
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        if self.dead() {
            return Ok(());
        }
        self.file.set_len(len)?;
        self.file.sync_all()
    }

    fn replace(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.dead() {
            return Ok(());
        }
        let mut name = self.path.as_os_str().to_os_string();
        name.push(".tmp");
        let tmp = PathBuf::from(name);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.sync_dir()?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }
}

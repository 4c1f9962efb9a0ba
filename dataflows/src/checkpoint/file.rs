//! Checkpoint files in a state directory: the engine's state at a frontier with the source's
//! position that produced exactly that frontier.
//!
//! A file is `checkpoint-<frontier ms>.vfc`:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `VFCKPT\r\n` |
//! | 4 | format (little-endian u32) |
//! | 4 + n | the writer's version: length, then UTF-8 |
//! | 8 + m | the body: length, then bincode of [`Checkpoint`] |
//! | 4 | CRC-32 of every byte before it |
//!
//! It is written under a temporary name, synced, renamed, and the directory synced; only then
//! are older checkpoints removed (the newest [`KEEP`] stay). Loading takes the newest file that
//! is whole: a truncated file, a wrong checksum, an unfinished write (a temporary file) or a body
//! that does not decode is skipped, logged and counted, and the one before it is used. A whole
//! file written by another version stops the load with a message saying so: its operators'
//! states cannot be read by this engine, and starting empty would be a silent wrong answer.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::EngineState;
use crate::operators::Time;

const MAGIC: &[u8; 8] = b"VFCKPT\r\n";
const FORMAT: u32 = 1;
/// Bumped when what an operator saves changes shape without its type's name changing, or when
/// keys are routed to workers differently (2: by the machine id's text, not its address; 3: the
/// stockout forecast's days observed by weekday; 4: a settlement day's exceptions boxed when it
/// has any; 5: the windows' timers are when each leaves memory, and their parked store; 6: the
/// stockout forecast's inputs are units per day, a machine's days carry its units; 7: a machine
/// id hashes as the 32-bit hash it holds; 8: a view row is its encoded bytes, not a list of
/// values; 9: zero sales counts a machine's hour in 16 bits).
const STATE_LAYOUT: u32 = 9;
/// Checkpoints kept after a new one is complete: it and the two before. In a cluster a process
/// can be one checkpoint ahead of another that died while writing its own (the frontier had
/// passed on both); if that one's newest is then lost as well (cut short, damaged), keeping two
/// would leave the processes no frontier in common, and the cluster would read its whole log
/// again. A cluster test met exactly this on a loaded machine.
pub const KEEP: usize = 3;

/// This engine's version as written in its checkpoints.
pub fn version() -> String {
    format!(
        "vendflow-dataflows {} state {STATE_LAYOUT}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Checkpoint files skipped as damaged since the process started (for `/metrics`).
static SKIPPED: AtomicU64 = AtomicU64::new(0);

pub fn skipped_total() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// What a checkpoint holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub engine: EngineState,
    /// The source's position and own state, in its own encoding: reading on from it gives the
    /// input at and after `engine.frontier`, and nothing before.
    pub source: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointFileError {
    #[error("checkpoint directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} cannot be read ({why}); move it aside to start from the one before")]
    Damaged { path: String, why: String },
    #[error("cannot encode the checkpoint: {0}")]
    Encode(#[source] bincode::Error),
    #[error(
        "{path} was written by {found}; this is {ours}, which cannot read its operators' state. Start the version that wrote it, or move the state directory aside to rebuild from the log"
    )]
    Incompatible {
        path: String,
        found: String,
        ours: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointFileError + '_ {
    move |source| CheckpointFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `checkpoint` in bincode, as `bincode::serialize_into` writes it (bincode has no framing of a
/// struct: its fields one after the other), with each worker's section copied from where it is
/// (a file, for a state taken from a running engine) rather than read into memory first.
fn encode_body(out: &mut impl Write, checkpoint: &Checkpoint) -> bincode::Result<()> {
    let engine = &checkpoint.engine;
    bincode::serialize_into(&mut *out, &engine.frontier)?;
    // A sequence's length, then each section as a byte string: its length, then its bytes.
    bincode::serialize_into(&mut *out, &(engine.workers.len() as u64))?;
    for section in &engine.workers {
        bincode::serialize_into(&mut *out, &section.len())?;
        section.write_to(out)?;
    }
    bincode::serialize_into(&mut *out, &engine.hour)?;
    bincode::serialize_into(&mut *out, &engine.views)?;
    bincode::serialize_into(&mut *out, &checkpoint.source)
}

/// A checkpoint written.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The newest usable checkpoint, and the files skipped on the way to it with why.
#[derive(Debug, Default)]
pub struct Loaded {
    pub checkpoint: Option<(PathBuf, Checkpoint)>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// The whole checkpoints of a directory (frontier and file, newest first) and the damaged ones
/// with why.
#[derive(Debug, Default)]
pub struct Whole {
    pub checkpoints: Vec<(Time, PathBuf)>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// A state directory's checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    pub fn open(dir: &Path) -> Result<CheckpointDir, CheckpointFileError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(CheckpointDir {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `checkpoint` whole (temporary name, sync, rename, sync of the directory), then
    /// removes all but the newest [`KEEP`]. The body is encoded straight into the file: a
    /// fleet's state is gigabytes, and a copy of it in memory (two, with the file's bytes) was
    /// the peak of every checkpoint. Its length, which the header holds, is written in its
    /// place once the body is: measured first, the body was encoded twice, and a view's rows
    /// on disk read twice.
    pub fn write(&self, checkpoint: &Checkpoint) -> Result<Written, CheckpointFileError> {
        let version = version();
        let name = format!(
            "checkpoint-{:020}.vfc",
            checkpoint.engine.frontier.ms().max(0)
        );
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!("{name}.tmp-{}", std::process::id()));
        let file = File::create(&temporary).map_err(io(&temporary))?;
        let mut out = Checksummed {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let header = (|| {
            out.write_all(MAGIC)?;
            out.write_all(&FORMAT.to_le_bytes())?;
            out.write_all(&(version.len() as u32).to_le_bytes())?;
            out.write_all(version.as_bytes())?;
            // The body's length, written below; outside the checksum until then.
            out.inner.write_all(&[0; 8])
        })();
        header.map_err(io(&temporary))?;
        let (header_crc, length_at) = (
            std::mem::replace(&mut out.crc, crc32fast::Hasher::new()),
            out.bytes,
        );
        out.bytes = 0;
        encode_body(&mut out, checkpoint).map_err(|e| match *e {
            bincode::ErrorKind::Io(e) => io(&temporary)(e),
            _ => CheckpointFileError::Encode(e),
        })?;
        let Checksummed {
            mut inner,
            crc: body_crc,
            bytes: body_len,
        } = out;
        // The checksum of the whole: the header's, its length, then the body's.
        let mut crc = header_crc;
        crc.update(&body_len.to_le_bytes());
        crc.combine(&body_crc);
        let bytes = length_at + 8 + body_len;
        inner
            .write_all(&crc.finalize().to_le_bytes())
            .map_err(io(&temporary))?;
        let mut file = inner
            .into_inner()
            .map_err(|e| io(&temporary)(e.into_error()))?;
        file.seek(SeekFrom::Start(length_at))
            .and_then(|_| file.write_all(&body_len.to_le_bytes()))
            .map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.prune()?;
        Ok(Written {
            path,
            bytes: bytes + 4,
        })
    }

    /// Whether the directory holds any checkpoint file (whole or not): an engine's state
    /// directory, which a history load must not write into.
    pub fn holds_checkpoints(&self) -> Result<bool, CheckpointFileError> {
        Ok(!self.files()?.is_empty())
    }

    /// Checkpoint files, newest first.
    fn files(&self) -> Result<Vec<PathBuf>, CheckpointFileError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".vfc"))
            })
            .collect();
        // The frontier is zero-padded in the name: names sort as frontiers.
        files.sort();
        files.reverse();
        Ok(files)
    }

    /// Removes checkpoints beyond the newest [`KEEP`], and temporary files of writes that
    /// never finished.
    fn prune(&self) -> Result<(), CheckpointFileError> {
        for old in self.files()?.into_iter().skip(KEEP) {
            std::fs::remove_file(&old).map_err(io(&old))?;
        }
        let ours = format!(".tmp-{}", std::process::id());
        for entry in std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(Result::ok)
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("checkpoint-")
                && name.contains(".vfc.tmp-")
                && !name.ends_with(&ours)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The frontiers of the whole checkpoints (checksum and version checked; the body is not
    /// decoded), newest first, and the damaged ones skipped (logged, counted).
    pub fn whole(&self) -> Result<Whole, CheckpointFileError> {
        let (mut whole, mut skipped) = (Vec::new(), Vec::new());
        for path in self.files()? {
            let frontier = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
                n.strip_prefix("checkpoint-")?
                    .strip_suffix(".vfc")?
                    .parse::<i64>()
                    .ok()
            });
            let why = match (frontier, check(&path)?) {
                (Some(ms), Ok(_)) => {
                    whole.push((vendflow_protocol::Timestamp(ms), path));
                    continue;
                }
                (None, _) => "its name does not say its frontier".to_owned(),
                (_, Err(why)) => why,
            };
            tracing::warn!(path = %path.display(), reason = %why, "skipped a damaged checkpoint");
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            skipped.push((path, why));
        }
        Ok(Whole {
            checkpoints: whole,
            skipped,
        })
    }

    /// Loads the checkpoint at `path` (one [`CheckpointDir::whole`] listed).
    pub fn load(&self, path: &Path) -> Result<Checkpoint, CheckpointFileError> {
        read(path)?.map_err(|why| CheckpointFileError::Damaged {
            path: path.display().to_string(),
            why,
        })
    }

    /// Moves the checkpoints newer than `keep` (all of them with None) into `superseded/`: a
    /// cluster restarted from an older frontier must never take them for its own later.
    pub fn set_aside_newer_than(&self, keep: Option<Time>) -> Result<usize, CheckpointFileError> {
        let aside = self.dir.join("superseded");
        let mut moved = 0;
        for path in self.files()? {
            let newer = match keep {
                None => true,
                Some(keep) => {
                    path.file_name().and_then(|n| n.to_str())
                        > Some(format!("checkpoint-{:020}.vfc", keep.ms().max(0)).as_str())
                }
            };
            if newer {
                std::fs::create_dir_all(&aside).map_err(io(&aside))?;
                if let Some(name) = path.file_name() {
                    let to = aside.join(name);
                    std::fs::rename(&path, &to).map_err(io(&to))?;
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }

    /// The newest checkpoint that is whole. A damaged one is skipped (logged, counted); one
    /// written by another version is an error.
    pub fn load_newest(&self) -> Result<Loaded, CheckpointFileError> {
        let mut loaded = Loaded::default();
        for path in self.files()? {
            match read(&path)? {
                Ok(checkpoint) => {
                    loaded.checkpoint = Some((path, checkpoint));
                    break;
                }
                Err(why) => {
                    tracing::warn!(path = %path.display(), reason = %why, "skipped a damaged checkpoint; trying the one before");
                    SKIPPED.fetch_add(1, Ordering::Relaxed);
                    loaded.skipped.push((path, why));
                }
            }
        }
        Ok(loaded)
    }
}

/// A writer that counts and checksums what passes through it.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads one checkpoint file: `Ok(Err(why))` when it is damaged, `Err` when it cannot be read
/// at all or was written by another version. The file is checked in one pass and decoded in a
/// second, never held whole in memory.
fn read(path: &Path) -> Result<Result<Checkpoint, String>, CheckpointFileError> {
    let (offset, len) = match check(path)? {
        Ok(body) => body,
        Err(why) => return Ok(Err(why)),
    };
    let mut file = File::open(path).map_err(io(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io(path))?;
    let mut body = BufReader::with_capacity(1 << 20, file);
    Ok(decode_body(&mut body, path, offset, len)
        .map_err(|e| format!("its body does not decode: {e}")))
}

/// The body [`encode_body`] wrote, `len` bytes at `offset` of the file at `path` (`input` is
/// there): each worker's section left in the file, as its place there (with a handle of its
/// own), to be read by its operators as they start; the rest decoded.
fn decode_body(
    input: &mut BufReader<File>,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Checkpoint, String> {
    let end = offset + len;
    let text = |e: bincode::Error| e.to_string();
    let frontier: Time = bincode::deserialize_from(&mut *input).map_err(text)?;
    let workers: u64 = bincode::deserialize_from(&mut *input).map_err(text)?;
    let mut sections = Vec::new();
    for _ in 0..workers {
        let n: u64 = bincode::deserialize_from(&mut *input).map_err(text)?;
        let at = input.stream_position().map_err(|e| e.to_string())?;
        if n > end.saturating_sub(at) {
            return Err(format!("a worker's section of {n} bytes at {at} of {end}"));
        }
        let own = File::open(path).map_err(|e| e.to_string())?;
        sections.push(crate::checkpoint::Section::in_file(own, at, n));
        input
            .seek_relative(i64::try_from(n).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let at = input.stream_position().map_err(|e| e.to_string())?;
    let mut rest = input.take(end.saturating_sub(at));
    let hour: Option<Time> = bincode::deserialize_from(&mut rest).map_err(text)?;
    let views = bincode::deserialize_from(&mut rest).map_err(text)?;
    let source = bincode::deserialize_from(&mut rest).map_err(text)?;
    Ok(Checkpoint {
        engine: EngineState {
            frontier,
            workers: sections,
            hour,
            views,
        },
        source,
    })
}

/// The longest header a file of this format has: the magic number, the format, a version's
/// length and text (a few dozen bytes), the body's length.
const HEADER_MAX: usize = 4096;

/// Checks a checkpoint file, reading it once: its magic number, its checksum, its version and
/// its body's length. Where its body starts, and its length.
fn check(path: &Path) -> Result<Result<(u64, u64), String>, CheckpointFileError> {
    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let Some(payload_len) = len.checked_sub(4) else {
        return Ok(Err("shorter than a header".into()));
    };
    let mut crc = crc32fast::Hasher::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = payload_len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = &mut buf[..n];
        file.read_exact(chunk).map_err(io(path))?;
        crc.update(chunk);
        let keep = (HEADER_MAX - head.len()).min(n);
        head.extend_from_slice(&chunk[..keep]);
        left -= n as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored).map_err(io(path))?;
    if !head.starts_with(MAGIC) {
        return Ok(Err("not a checkpoint file (no magic number)".into()));
    }
    if crc.finalize() != u32::from_le_bytes(stored) {
        return Ok(Err(
            "the checksum does not match: truncated or damaged".into()
        ));
    }
    let mut rest = &head[MAGIC.len()..];
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let format = take(4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    let version_len = take(4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    let found = version_len
        .and_then(|n| take(n as usize))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let (Some(format), Some(found)) = (format, found) else {
        return Ok(Err("its header is cut short".into()));
    };
    let ours = version();
    if format != FORMAT || found != ours {
        return Err(CheckpointFileError::Incompatible {
            path: path.display().to_string(),
            found: format!("{found} (file format {format})"),
            ours: format!("{ours} (file format {FORMAT})"),
        });
    }
    let Some(body_len) = take(8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return Ok(Err("its header is cut short".into()));
    };
    let offset = (head.len() - rest.len()) as u64;
    if offset.saturating_add(body_len) > payload_len {
        return Ok(Err("its body is cut short".into()));
    }
    Ok(Ok((offset, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Time;
    use crate::row::{Row, Value};

    fn checkpoint(frontier: i64) -> Checkpoint {
        Checkpoint {
            engine: EngineState {
                frontier: Time::from(vendflow_protocol::Timestamp(frontier)),
                workers: vec![vec![1, 2, 3].into(), vec![4].into()],
                hour: None,
                views: vec![(
                    "liveness".into(),
                    crate::view_store::CheckpointRows::new(vec![Row::from([
                        Value::text("m1"),
                        Value::Int(frontier),
                    ])]),
                )],
            },
            source: b"offsets".to_vec(),
        }
    }

    fn frontier(loaded: &Loaded) -> Option<i64> {
        loaded
            .checkpoint
            .as_ref()
            .map(|(_, c)| c.engine.frontier.ms())
    }

    #[test]
    fn the_newest_whole_checkpoint_is_loaded_and_three_are_kept() -> Result<(), CheckpointFileError>
    {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let store = CheckpointDir::open(dir.path())?;
        assert!(
            store.load_newest()?.checkpoint.is_none(),
            "an empty directory has none"
        );
        for t in [1_000, 2_000, 3_000, 4_000] {
            store.write(&checkpoint(t))?;
        }
        let loaded = store.load_newest()?;
        assert_eq!(frontier(&loaded), Some(4_000));
        let (_, c) = loaded
            .checkpoint
            .as_ref()
            .ok_or_else(|| io(dir.path())(std::io::ErrorKind::NotFound.into()))?;
        let sections: Vec<Vec<u8>> = (c.engine.workers.iter())
            .map(|s| {
                let mut bytes = Vec::new();
                s.write_to(&mut bytes).map(|()| bytes)
            })
            .collect::<Result<_, _>>()
            .map_err(io(dir.path()))?;
        assert_eq!(sections, vec![vec![1, 2, 3], vec![4]]);
        let rows = |c: &Checkpoint| -> Vec<(String, Vec<Row>)> {
            let views = c.engine.views.iter();
            views.map(|(n, r)| (n.clone(), r.rows.clone())).collect()
        };
        assert_eq!(rows(c), rows(&checkpoint(4_000)));
        assert_eq!(c.source, b"offsets");
        assert_eq!(KEEP, 3);
        assert_eq!(
            store.files()?.len(),
            KEEP,
            "the oldest checkpoint is removed"
        );
        Ok(())
    }

    /// A worker's section taken from a running engine is in a file of its own: the checkpoint's
    /// file copies it from there, and holds the bytes it would with the section in memory.
    #[test]
    fn sections_in_files_are_copied_into_the_checkpoint_as_they_are()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::cell::RefCell;
        use std::rc::Rc;

        use crate::checkpoint::{Book, Section, enrol, whole};
        let dir = tempfile::tempdir()?;
        let book = Book::restoring(None)?;
        // Larger than the section's buffer, so that it is written out in several parts.
        let big: Vec<u64> = (0..400_000).collect();
        let states = (
            Rc::new(RefCell::new(big.clone())),
            Rc::new(RefCell::new(String::from("small"))),
        );
        {
            let _guard = Book::building(&book);
            assert_eq!(enrol::<_, Vec<u64>>("fold", &states.0, whole), None);
            assert_eq!(enrol::<_, String>("sum", &states.1, whole), None);
        }
        let spilled = book.borrow().save(dir.path())?;
        assert!(spilled.len() > 3_200_000, "{spilled:?}");
        assert!(format!("{spilled:?}").contains("in a file"));
        // Nothing is left in the directory by the section: its file has no name.
        let store = CheckpointDir::open(dir.path())?;
        let mut taken = checkpoint(5_000);
        taken.engine.workers = vec![spilled, vec![9, 9].into()];
        let path = store.write(&taken)?.path;
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names.len(), 1, "{names:?}");

        // The same checkpoint with its sections in memory: the same body, byte for byte.
        let mut in_memory = checkpoint(5_000);
        let sections = std::mem::take(&mut taken.engine.workers);
        in_memory.engine.workers = sections
            .into_iter()
            .map(|s| s.into_bytes().map(Section::from))
            .collect::<Result<_, _>>()?;
        let file = std::fs::read(&path)?;
        let body = bincode::serialize(&in_memory)?;
        assert_eq!(
            &file[file.len() - 4 - body.len()..file.len() - 4],
            &body[..]
        );

        // Read back, the section restores its operators' states.
        let loaded = store.load(&path)?;
        let first = loaded
            .engine
            .workers
            .into_iter()
            .next()
            .ok_or("no section")?;
        assert!(format!("{first:?}").contains("in a file"), "{first:?}");
        let again = Book::restoring(Some(first))?;
        let _guard = Book::building(&again);
        let (a, b) = (
            Rc::new(RefCell::new(Vec::<u64>::new())),
            Rc::new(RefCell::new(String::new())),
        );
        assert_eq!(enrol::<_, Vec<u64>>("fold", &a, whole), Some(big));
        assert_eq!(enrol::<_, String>("sum", &b, whole), Some("small".into()));
        again.borrow_mut().finish()?;
        Ok(())
    }

    #[test]
    fn a_damaged_checkpoint_is_skipped_for_the_one_before() -> Result<(), CheckpointFileError> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let store = CheckpointDir::open(dir.path())?;
        store.write(&checkpoint(1_000))?;
        let newest = store.write(&checkpoint(2_000))?.path;
        let whole = std::fs::read(&newest).map_err(io(&newest))?;
        let before = skipped_total();

        // Truncated (a write cut by a crash that still got renamed).
        std::fs::write(&newest, &whole[..whole.len() / 2]).map_err(io(&newest))?;
        let loaded = store.load_newest()?;
        assert_eq!(frontier(&loaded), Some(1_000));
        assert_eq!(loaded.skipped.len(), 1);
        assert!(
            loaded.skipped[0].1.contains("checksum"),
            "{:?}",
            loaded.skipped
        );

        // One byte changed in the body.
        let mut flipped = whole.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        std::fs::write(&newest, &flipped).map_err(io(&newest))?;
        assert_eq!(frontier(&store.load_newest()?), Some(1_000));

        // An interrupted write leaves only a temporary file: it is not a checkpoint.
        std::fs::remove_file(&newest).map_err(io(&newest))?;
        let temporary = dir.path().join("checkpoint-00000000000000003000.vfc.tmp-1");
        std::fs::write(&temporary, &whole[..10]).map_err(io(&temporary))?;
        let loaded = store.load_newest()?;
        assert_eq!(frontier(&loaded), Some(1_000));
        assert!(loaded.skipped.is_empty());
        assert!(skipped_total() >= before + 2, "skips are counted");

        // Nothing whole at all: nothing to start from (the log is read from its start).
        let only = dir.path().join("checkpoint-00000000000000001000.vfc");
        std::fs::write(&only, b"VFCKPT\r\n").map_err(io(&only))?;
        let loaded = store.load_newest()?;
        assert!(loaded.checkpoint.is_none());
        assert_eq!(loaded.skipped.len(), 1);
        Ok(())
    }

    #[test]
    fn a_checkpoint_of_another_version_stops_the_load() -> Result<(), CheckpointFileError> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let store = CheckpointDir::open(dir.path())?;
        let path = store.write(&checkpoint(1_000))?.path;
        let whole = std::fs::read(&path).map_err(io(&path))?;
        // The same file as another version would write it: its version text, a valid checksum.
        let ours = version();
        let theirs = ours.replace("state ", "state 9");
        let mut other = Vec::new();
        other.extend_from_slice(MAGIC);
        other.extend_from_slice(&FORMAT.to_le_bytes());
        other.extend_from_slice(&(theirs.len() as u32).to_le_bytes());
        other.extend_from_slice(theirs.as_bytes());
        let header = MAGIC.len() + 4 + 4 + ours.len();
        other.extend_from_slice(&whole[header..whole.len() - 4]);
        let crc = crc32fast::hash(&other);
        other.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &other).map_err(io(&path))?;
        match store.load_newest() {
            Err(CheckpointFileError::Incompatible { found, ours, .. }) => {
                assert!(found.contains(&theirs) && ours.contains(&version()));
            }
            other => panic!("expected an incompatible version, got {other:?}"),
        }
        Ok(())
    }
}

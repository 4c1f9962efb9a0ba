//! Operator state as bytes, for checkpoints (issue 17).
//!
//! A checkpoint is taken when the engine is *quiescent at a frontier `t`*: every input has
//! advanced to `t` and sent nothing at or after it, and every view has been published up to `t`.
//! Then no record is in flight and no operator holds anything for a time before `t`; what each
//! stateful operator holds (its keys' states, the outputs it published, its timers, the records
//! it keeps for later times) is all there is to the dataflow's state, and a new dataflow built
//! with the same code and given those bytes continues exactly where the old one stood.
//!
//! How an operator takes part: while a worker builds its dataflow, a [`Book`] is installed on its
//! thread ([`Book::building`]). Each stateful operator, when built, calls [`enrol`] with its name
//! and its state (shared with the operator's logic through an `Rc<RefCell<_>>`): it gets back the
//! bytes the loaded checkpoint holds for it, if any, to start from, and the book keeps a way to
//! write the state later. [`Book::save`] writes every enrolled operator's state, in the order the
//! operators were built, each under its name; names are made unique by their order of building
//! (the dataflow is built the same way every time by the same version of the code).
//!
//! The file that holds the workers' books, its checksum and its version is the engine's
//! concern; here is what one worker's section is.

pub mod file;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot encode the state of {operator}: {source}")]
    Encode {
        operator: String,
        #[source]
        source: bincode::Error,
    },
    #[error(
        "the checkpoint's state of {operator} cannot be read ({source}); it was written by a different version of the engine, or is damaged"
    )]
    Decode {
        operator: String,
        #[source]
        source: bincode::Error,
    },
    #[error(
        "the checkpoint holds state for operators this engine does not have ({names}): it was written by a different version of the engine"
    )]
    Unclaimed { names: String },
    #[error(
        "the checkpoint's state of {operator} is a {saved_as}, this engine's a {ours}: it was written by a different version of the engine"
    )]
    Layout {
        operator: String,
        saved_as: String,
        ours: String,
    },
    #[error("{0}")]
    Restore(String),
    #[error("the checkpoint's worker section is damaged: {0}")]
    Section(String),
    #[error("cannot write a worker's section of the checkpoint in {0}: {1}")]
    Spill(String, #[source] std::io::Error),
}

/// Writes an operator's state.
type Saver = Box<dyn Fn(&mut SectionOut) -> Result<(), bincode::Error>>;

/// Where a worker writes its section ([`Book::save`]): a file of its own, through a buffer.
pub type SectionOut = std::io::BufWriter<std::fs::File>;

/// One worker's section of a checkpoint: its operators' states as [`Book::save`] wrote them.
/// It stays in a file, never in memory whole: taken from a running engine, it is in an unnamed
/// file beside the engine's state (gone when the section is dropped), and copied from there
/// into the checkpoint's file; read back from a checkpoint, it is a place in that file, and each
/// operator reads its own state from there ([`Book::restoring`]). Held in memory, the sections
/// were as large as the state itself while a checkpoint was written or read (a gigabyte at a
/// warm fleet's size). In bincode it is a byte string (a length, then the bytes).
pub struct Section(SectionData);

enum SectionData {
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `at`. The handle is the section's own (its position is moved
    /// by reads).
    File {
        file: std::fs::File,
        at: u64,
        len: u64,
    },
}

impl Section {
    /// A section that is `len` bytes of `file` from `at`.
    pub fn in_file(file: std::fs::File, at: u64, len: u64) -> Section {
        Section(SectionData::File { file, at, len })
    }

    /// The section's length in bytes.
    pub fn len(&self) -> u64 {
        match &self.0 {
            SectionData::Bytes(b) => b.len() as u64,
            SectionData::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the section's bytes into `out`, from its file a buffer at a time.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match &self.0 {
            SectionData::Bytes(b) => out.write_all(b),
            SectionData::File { len, .. } => {
                let copied = std::io::copy(&mut self.reader(0..*len)?, out)?;
                if copied != *len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("a checkpoint section's file ended after {copied} of {len} bytes"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// A reader of `range` of a section in a file.
    fn reader(
        &self,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<std::io::Take<&std::fs::File>> {
        use std::io::{Read, Seek, SeekFrom};
        let SectionData::File { file, at, len } = &self.0 else {
            return Err(std::io::Error::other("a section in memory has no file"));
        };
        if range.start > range.end || range.end > *len {
            return Err(outside(&range, *len));
        }
        let mut file = file;
        file.seek(SeekFrom::Start(at + range.start))?;
        Ok(file.take(range.end - range.start))
    }

    /// A reader of `range` (one operator's state): the bytes in memory, or a buffered read of
    /// the file.
    fn state(&self, range: std::ops::Range<u64>) -> std::io::Result<StateReader<'_>> {
        match &self.0 {
            SectionData::Bytes(b) => {
                let place = usize::try_from(range.start).unwrap_or(usize::MAX)
                    ..usize::try_from(range.end).unwrap_or(usize::MAX);
                b.get(place)
                    .map(StateReader::Slice)
                    .ok_or_else(|| outside(&range, b.len() as u64))
            }
            SectionData::File { .. } => Ok(StateReader::File(std::io::BufReader::with_capacity(
                1 << 20,
                self.reader(range)?,
            ))),
        }
    }

    /// The section's bytes in memory (read from its file, if it has one).
    pub fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self.0 {
            SectionData::Bytes(b) => Ok(b),
            SectionData::File { len, .. } => {
                let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                self.write_to(&mut bytes)?;
                Ok(bytes)
            }
        }
    }

    /// Each operator's entry: its name, the type its state was saved as, and where its state's
    /// bytes are in the section. Read from the section's file a buffer at a time, skipping the
    /// states themselves.
    fn entries(&self) -> Result<Vec<(String, String, std::ops::Range<u64>)>, String> {
        use std::io::{BufReader, Read, Seek, SeekFrom};
        if let SectionData::Bytes(section) = &self.0 {
            // Each state's bytes borrowed where they are (a `Vec<u8>` and a `&[u8]` are written
            // alike), and kept as their place in the section.
            let entries: Vec<(String, String, &[u8])> =
                bincode::deserialize(section).map_err(|e| e.to_string())?;
            let base = section.as_ptr() as usize;
            return Ok(entries
                .into_iter()
                .map(|(name, layout, bytes)| {
                    let at = (bytes.as_ptr() as usize - base) as u64;
                    (name, layout, at..at + bytes.len() as u64)
                })
                .collect());
        }
        let SectionData::File {
            file,
            at: base,
            len,
        } = &self.0
        else {
            return Err("a section neither in memory nor in a file".into());
        };
        let len = *len;
        let mut file = file;
        file.seek(SeekFrom::Start(*base))
            .map_err(|e| e.to_string())?;
        let mut input = BufReader::with_capacity(64 << 10, file);
        // Where `input` is in the section.
        let mut at = 0u64;
        let word = |input: &mut BufReader<&std::fs::File>, at: &mut u64| {
            let mut bytes = [0; 8];
            if len - *at < 8 {
                return Err(format!("the section ends at {len}, in an entry at {at}"));
            }
            input.read_exact(&mut bytes).map_err(|e| e.to_string())?;
            *at += 8;
            Ok::<_, String>(u64::from_le_bytes(bytes))
        };
        let count = word(&mut input, &mut at)?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let text = |input: &mut BufReader<&std::fs::File>, at: &mut u64| {
                let n = word(input, at)?;
                if n > len - *at {
                    return Err(format!("a name of {n} bytes at {at} of {len}"));
                }
                let mut bytes = vec![0; n as usize];
                input.read_exact(&mut bytes).map_err(|e| e.to_string())?;
                *at += n;
                String::from_utf8(bytes).map_err(|e| e.to_string())
            };
            let name = text(&mut input, &mut at)?;
            let layout = text(&mut input, &mut at)?;
            let n = word(&mut input, &mut at)?;
            if n > len - at {
                return Err(format!("a state of {n} bytes at {at} of {len}"));
            }
            entries.push((name, layout, at..at + n));
            // Past the state: within the buffer, or by moving the file.
            input
                .seek_relative(i64::try_from(n).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            at += n;
        }
        Ok(entries)
    }
}

/// One operator's state as it is read from its section ([`enrol_streaming`]): from memory, or
/// from the section's file a buffer at a time.
pub(crate) enum StateReader<'a> {
    Slice(&'a [u8]),
    File(std::io::BufReader<std::io::Take<&'a std::fs::File>>),
}

impl std::io::Read for StateReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            StateReader::Slice(s) => s.read(buf),
            StateReader::File(f) => f.read(buf),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            StateReader::Slice(s) => s.read_exact(buf),
            StateReader::File(f) => f.read_exact(buf),
        }
    }
}

fn outside(range: &std::ops::Range<u64>, len: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("bytes {range:?} of a checkpoint section of {len}"),
    )
}

impl From<Vec<u8>> for Section {
    fn from(bytes: Vec<u8>) -> Section {
        Section(SectionData::Bytes(bytes))
    }
}

impl std::fmt::Debug for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.0 {
            SectionData::Bytes(_) => "in memory",
            SectionData::File { .. } => "in a file",
        };
        write!(f, "Section({} bytes {place})", self.len())
    }
}

/// As a byte string (serde's `Vec<u8>` is a sequence, which bincode reads a byte at a time:
/// 100 MB/s, most of a restart's read of its checkpoint; a byte string is one read of its
/// length, and the same bytes in bincode). A section in a file is read into memory for this:
/// the checkpoint's file copies it instead ([`file::CheckpointDir::write`]).
impl Serialize for Section {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            SectionData::Bytes(b) => s.serialize_bytes(b),
            SectionData::File { .. } => {
                let mut bytes = Vec::new();
                self.write_to(&mut bytes)
                    .map_err(serde::ser::Error::custom)?;
                s.serialize_bytes(&bytes)
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Section {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Section, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(Section::from(bytes.into_vec()))
    }
}

/// One worker's stateful operators: what the loaded checkpoint holds for each, and how to write
/// each one's state now.
#[derive(Default)]
pub struct Book {
    /// The loaded checkpoint's section for this worker; each operator reads its state from it
    /// when it enrols, and it is let go once the last has.
    section: Option<Section>,
    /// Per operator: the name of the type its state was saved as, and where its bytes are in
    /// `section`.
    restored: HashMap<String, (String, std::ops::Range<u64>)>,
    /// Names handed out so far, with how often (a second operator of the same name is `name#2`).
    seen: HashMap<String, usize>,
    savers: Vec<(String, &'static str, Saver)>,
    /// States of the checkpoint that did not decode (reported by [`Book::finish`]).
    errors: Vec<CheckpointError>,
}

thread_local! {
    static BUILDING: RefCell<Option<Rc<RefCell<Book>>>> = const { RefCell::new(None) };
}

/// Uninstalls the book when the build is over (or unwinds).
pub struct Building(Option<Rc<RefCell<Book>>>);

impl Drop for Building {
    fn drop(&mut self) {
        BUILDING.with(|b| *b.borrow_mut() = self.0.take());
    }
}

impl Book {
    /// A book that starts every operator from the state in `section` (one worker's part of a
    /// checkpoint, as [`Book::save`] wrote it), or empty.
    pub fn restoring(section: Option<Section>) -> Result<Rc<RefCell<Book>>, CheckpointError> {
        let mut book = Book::default();
        if let Some(section) = section {
            book.restored = section
                .entries()
                .map_err(CheckpointError::Section)?
                .into_iter()
                .map(|(name, layout, place)| (name, (layout, place)))
                .collect();
            book.section = Some(section);
        }
        Ok(Rc::new(RefCell::new(book)))
    }

    /// Installs `book` on this thread while the returned guard lives: the operators built
    /// meanwhile enrol in it.
    pub fn building(book: &Rc<RefCell<Book>>) -> Building {
        let previous = BUILDING.with(|b| b.borrow_mut().replace(book.clone()));
        Building(previous)
    }

    /// After the build: fails if a state of the checkpoint did not decode, or if the checkpoint
    /// held state that no operator claimed (a checkpoint of another version of the dataflow must
    /// not start this one half empty).
    pub fn finish(&mut self) -> Result<(), CheckpointError> {
        if !self.errors.is_empty() {
            return Err(self.errors.remove(0));
        }
        if self.restored.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = self.restored.keys().map(String::as_str).collect();
        names.sort_unstable();
        Err(CheckpointError::Unclaimed {
            names: names.join(", "),
        })
    }

    /// Every enrolled operator's state, in building order, as one worker's section: the bytes
    /// of a `Vec<(String, String, Vec<u8>)>` in bincode, each operator's state written straight
    /// into its place. (Saved into buffers of their own first, the states were all in memory
    /// twice while a checkpoint was taken: gigabytes, at a day of a fleet's closed windows.)
    /// The section is written into an unnamed file in `dir` (the engine's state directory),
    /// not into memory.
    pub fn save(&self, dir: &std::path::Path) -> Result<Section, CheckpointError> {
        use std::io::{Seek, SeekFrom, Write};
        fn encode(operator: &str) -> impl FnOnce(bincode::Error) -> CheckpointError + '_ {
            move |source| CheckpointError::Encode {
                operator: operator.to_owned(),
                source,
            }
        }
        let io = |e: std::io::Error| CheckpointError::Spill(dir.display().to_string(), e);
        let file = tempfile::tempfile_in(dir).map_err(io)?;
        let mut out = SectionOut::with_capacity(1 << 20, file);
        bincode::serialize_into(&mut out, &(self.savers.len() as u64))
            .map_err(encode("the worker's section"))?;
        // Where each state's length goes, and the length, written once the whole is.
        let mut lengths = Vec::with_capacity(self.savers.len());
        for (name, layout, saver) in &self.savers {
            bincode::serialize_into(&mut out, &(name, layout))
                .map_err(encode("the worker's section"))?;
            // A `Vec<u8>`'s length (a u64, little-endian: bincode's default), then its bytes.
            let at = out.stream_position().map_err(io)?;
            out.write_all(&[0; 8]).map_err(io)?;
            saver(&mut out).map_err(encode(name))?;
            let end = out.stream_position().map_err(io)?;
            lengths.push((at, end - at - 8));
        }
        let len = out.stream_position().map_err(io)?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        for (at, n) in lengths {
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.write_all(&n.to_le_bytes()))
                .map_err(io)?;
        }
        Ok(Section::in_file(file, 0, len))
    }

    /// Operators enrolled.
    pub fn operators(&self) -> usize {
        self.savers.len()
    }
}

/// Enrols an operator named `name` whose state is `state`: returns the state to start from (the
/// checkpoint's, decoded as `S`, or `None` when there is no checkpoint or no book on this thread,
/// as in tests that build a dataflow directly; a state that does not decode is kept for
/// [`Book::finish`] to report, and the operator starts empty). `save` writes the state in the
/// layout `S` reads (borrowing it: a checkpoint does not copy the state first).
pub(crate) fn enrol<T, S>(
    name: &str,
    state: &Rc<RefCell<T>>,
    save: impl Fn(&T, &mut SectionOut) -> Result<(), bincode::Error> + 'static,
) -> Option<S>
where
    T: 'static,
    S: DeserializeOwned,
{
    use std::io::Read;
    // From a slice (bincode is fastest there): the state's bytes read out of the file first.
    enrol_streaming::<T, S, S>(name, state, save, |input| match input {
        StateReader::Slice(bytes) => bincode::deserialize(bytes),
        StateReader::File(file) => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            bincode::deserialize(&bytes)
        }
    })
}

/// [`enrol`] for a state too large to be in memory as bytes while it is taken up (a day of a
/// fleet's parked windows): `read` decodes it from the checkpoint as it goes.
pub(crate) fn enrol_streaming<T, S, R>(
    name: &str,
    state: &Rc<RefCell<T>>,
    save: impl Fn(&T, &mut SectionOut) -> Result<(), bincode::Error> + 'static,
    read: impl FnOnce(&mut StateReader<'_>) -> Result<R, bincode::Error>,
) -> Option<R>
where
    T: 'static,
    S: DeserializeOwned,
{
    let book = BUILDING.with(|b| b.borrow().clone())?;
    let mut book = book.borrow_mut();
    let count = book.seen.entry(name.to_owned()).or_default();
    *count += 1;
    let unique = if *count == 1 {
        name.to_owned()
    } else {
        format!("{name}#{count}")
    };
    let layout = std::any::type_name::<S>();
    let restored = match book.restored.remove(&unique) {
        // The type it was saved as is not this one: bincode is not self-describing, and the
        // bytes might decode into nonsense.
        Some((saved_as, _)) if saved_as != layout => {
            book.errors.push(CheckpointError::Layout {
                operator: unique.clone(),
                saved_as,
                ours: layout.to_owned(),
            });
            None
        }
        Some((_, place)) => {
            // This operator's state alone, read from the section's file.
            let read = match &book.section {
                Some(section) => (section.state(place))
                    .map_err(|e| e.to_string())
                    .map(|mut input| read(&mut input)),
                None => Err("no section".into()),
            };
            match read {
                Ok(Ok(state)) => Some(state),
                Ok(Err(source)) => {
                    book.errors.push(CheckpointError::Decode {
                        operator: unique.clone(),
                        source,
                    });
                    None
                }
                Err(e) => {
                    book.errors.push(CheckpointError::Section(format!(
                        "the state of {unique}: {e}"
                    )));
                    None
                }
            }
        }
        None => None,
    };
    if book.restored.is_empty() {
        book.section = None;
    }
    let state = state.clone();
    book.savers.push((
        unique,
        layout,
        Box::new(move |out: &mut SectionOut| save(&state.borrow(), out)),
    ));
    restored
}

/// What `bincode::deserialize` reads with, for a [`bincode::Deserializer`] of one's own.
pub(crate) fn bincode_options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// The per-worker state of a keyed operator ([`crate::operators::Keyed`]), as a checkpoint keeps
/// it. Any state that serde can write and read is saved whole; a state with parts that are not
/// data (a handle on a file) says what of it is saved.
pub trait Durable: 'static {
    type Saved: DeserializeOwned;
    fn save(&self, out: &mut SectionOut) -> Result<(), bincode::Error>;
    fn restore(&mut self, saved: Self::Saved);
}

impl<T: Serialize + DeserializeOwned + 'static> Durable for T {
    type Saved = T;
    fn save(&self, out: &mut SectionOut) -> Result<(), bincode::Error> {
        bincode::serialize_into(out, self)
    }
    fn restore(&mut self, saved: T) {
        *self = saved;
    }
}

/// An error for a state that cannot be saved now (a checkpoint taken in the middle of a time).
pub(crate) fn not_between_times(
    what: &str,
    time: Option<crate::operators::Time>,
) -> bincode::Error {
    Box::new(bincode::ErrorKind::Custom(format!(
        "{what} is in the middle of time {time:?}: a checkpoint must be taken between times"
    )))
}

/// A sequence written from an iterator as it goes (read back as a `Vec`), so that saving a large
/// state does not copy it first.
pub(crate) struct Seq<I>(RefCell<Option<I>>);

impl<I> Seq<I> {
    pub(crate) fn new(items: I) -> Seq<I> {
        Seq(RefCell::new(Some(items)))
    }
}

impl<I> Serialize for Seq<I>
where
    I: ExactSizeIterator,
    I::Item: Serialize,
{
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        match self.0.borrow_mut().take() {
            Some(items) => serializer.collect_seq(items),
            None => Err(serde::ser::Error::custom("a sequence is written once")),
        }
    }
}

/// An error of the engine's own state files, as an error of saving a state.
pub(crate) fn failed(e: impl std::fmt::Display) -> bincode::Error {
    Box::new(bincode::ErrorKind::Custom(e.to_string()))
}

/// Reports, from an operator being built, that its checkpoint state cannot be taken up
/// ([`Book::finish`] fails with it).
pub(crate) fn refuse(message: String) {
    if let Some(book) = BUILDING.with(|b| b.borrow().clone()) {
        book.borrow_mut()
            .errors
            .push(CheckpointError::Restore(message));
    }
}

/// `save` for a state that is saved whole.
pub(crate) fn whole<T: Serialize>(state: &T, out: &mut SectionOut) -> Result<(), bincode::Error> {
    bincode::serialize_into(out, state)
}

/// What `save` writes, read back (for tests of an operator's state).
#[cfg(test)]
pub(crate) fn saved_bytes(
    save: impl FnOnce(&mut SectionOut) -> Result<(), bincode::Error>,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use std::io::{Read, Seek};
    let mut out = SectionOut::new(tempfile::tempfile()?);
    save(&mut out)?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The book's section, in memory.
    fn saved(book: &Rc<RefCell<Book>>) -> Result<Vec<u8>, CheckpointError> {
        let dir = tempfile::tempdir().map_err(|e| CheckpointError::Spill("tmp".into(), e))?;
        let section = book.borrow().save(dir.path())?;
        section
            .into_bytes()
            .map_err(|e| CheckpointError::Spill("tmp".into(), e))
    }

    #[test]
    fn operators_get_back_their_own_state_by_name_and_order() -> Result<(), CheckpointError> {
        let book = Book::restoring(None)?;
        let a = Rc::new(RefCell::new(vec![1u32, 2]));
        let b = Rc::new(RefCell::new(7u64));
        let c = Rc::new(RefCell::new(vec![9u32]));
        {
            let _guard = Book::building(&book);
            assert_eq!(enrol::<_, Vec<u32>>("fold", &a, whole), None);
            assert_eq!(enrol::<_, u64>("sum", &b, whole), None);
            assert_eq!(enrol::<_, Vec<u32>>("fold", &c, whole), None);
        }
        a.borrow_mut().push(3);
        let section = saved(&book)?;

        let again = Book::restoring(Some(section.into()))?;
        let _guard = Book::building(&again);
        let (a2, b2, c2) = (
            Rc::new(RefCell::new(Vec::<u32>::new())),
            Rc::new(RefCell::new(0u64)),
            Rc::new(RefCell::new(Vec::<u32>::new())),
        );
        assert_eq!(
            enrol::<_, Vec<u32>>("fold", &a2, whole),
            Some(vec![1, 2, 3])
        );
        assert_eq!(enrol::<_, u64>("sum", &b2, whole), Some(7));
        assert_eq!(enrol::<_, Vec<u32>>("fold", &c2, whole), Some(vec![9]));
        again.borrow_mut().finish()
    }

    /// A section written in place is the bincode of its entries, state by state (what
    /// [`Book::restoring`] and the `checkpoint_sizes` example read).
    #[test]
    fn a_section_is_the_bincode_of_its_operators_states() -> Result<(), CheckpointError> {
        let book = Book::restoring(None)?;
        let states = [
            Rc::new(RefCell::new(vec![String::from("a"); 3])),
            Rc::new(RefCell::new(Vec::new())),
            Rc::new(RefCell::new(vec![String::from("long"); 1_000])),
        ];
        {
            let _guard = Book::building(&book);
            for state in &states {
                assert_eq!(enrol::<_, Vec<String>>("fold", state, whole), None);
            }
        }
        let section = saved(&book)?;
        let layout = std::any::type_name::<Vec<String>>().to_owned();
        let naive: Vec<(String, String, Vec<u8>)> = states
            .iter()
            .zip(["fold", "fold#2", "fold#3"])
            .map(|(state, name)| {
                let bytes = bincode::serialize(&*state.borrow()).unwrap_or_else(|e| panic!("{e}"));
                (name.to_owned(), layout.clone(), bytes)
            })
            .collect();
        assert_eq!(
            section,
            bincode::serialize(&naive).unwrap_or_else(|e| panic!("{e}"))
        );
        Ok(())
    }

    #[test]
    fn state_no_operator_claims_or_of_another_shape_is_refused() -> Result<(), CheckpointError> {
        let book = Book::restoring(None)?;
        let a = Rc::new(RefCell::new(5u8));
        {
            let _guard = Book::building(&book);
            assert_eq!(enrol::<_, u8>("gone", &a, whole), None);
        }
        let section = saved(&book)?;
        let again = Book::restoring(Some(section.into()))?;
        assert!(matches!(
            again.borrow_mut().finish(),
            Err(CheckpointError::Unclaimed { .. })
        ));
        // The same name, a state of another type.
        {
            let _guard = Book::building(&again);
            let wrong = Rc::new(RefCell::new(String::new()));
            assert_eq!(enrol::<_, String>("gone", &wrong, whole), None);
        }
        assert!(matches!(
            again.borrow_mut().finish(),
            Err(CheckpointError::Layout { .. })
        ));
        assert!(Book::restoring(Some(b"\x01".to_vec().into())).is_err());
        Ok(())
    }

    /// A section left in its checkpoint's file is read entry by entry: a file cut short, or
    /// with a length past its end, is refused with an error, never a panic or a huge buffer.
    #[test]
    fn a_section_in_a_file_that_is_cut_short_is_refused() -> Result<(), Box<dyn std::error::Error>>
    {
        use std::io::Write;
        let book = Book::restoring(None)?;
        let a = Rc::new(RefCell::new(vec![7u64; 1000]));
        {
            let _guard = Book::building(&book);
            assert_eq!(enrol::<_, Vec<u64>>("fold", &a, whole), None);
        }
        let bytes = saved(&book)?;
        let in_file = |bytes: &[u8], at: u64, len: u64| -> std::io::Result<Section> {
            let mut file = tempfile::tempfile()?;
            file.write_all(&[0xAB; 3])?;
            file.write_all(bytes)?;
            Ok(Section::in_file(file, at, len))
        };
        // Whole, three bytes into its file: it restores.
        let n = bytes.len() as u64;
        let again = Book::restoring(Some(in_file(&bytes, 3, n)?))?;
        {
            let _guard = Book::building(&again);
            let b = Rc::new(RefCell::new(Vec::<u64>::new()));
            assert_eq!(enrol::<_, Vec<u64>>("fold", &b, whole), Some(vec![7; 1000]));
        }
        again.borrow_mut().finish()?;
        // Cut short: in the state, in the name, before the count.
        for len in [n - 1, 12, 3] {
            assert!(
                Book::restoring(Some(in_file(&bytes, 3, len)?)).is_err(),
                "{len}"
            );
        }
        // A state's length past the section's end.
        // (The state is a vector's length and its 1,000 words; its own length is before it.)
        let mut long = bytes.clone();
        let at = long.len() - (8 + 8 * 1000) - 8;
        long[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Book::restoring(Some(in_file(&long, 3, n)?)).is_err());
        // A section that says it is longer than its file: its operator's read fails.
        let past = Book::restoring(Some(in_file(&bytes[..bytes.len() - 8], 3, n)?));
        if let Ok(past) = past {
            {
                let _guard = Book::building(&past);
                let b = Rc::new(RefCell::new(Vec::<u64>::new()));
                assert_eq!(enrol::<_, Vec<u64>>("fold", &b, whole), None);
            }
            assert!(past.borrow_mut().finish().is_err());
        }
        Ok(())
    }

    /// The engine's state taken in the middle of a random stream (late, duplicate and
    /// out-of-order events of every kind, registry, commands, errors), through bytes, into a new
    /// engine that takes the rest: every view ends as in a run that never stopped.
    #[test]
    fn a_run_restarted_from_its_state_ends_with_the_views_of_a_run_that_never_stopped() {
        use crate::testing::{random_run, rows, run_restarted, steps};
        for seed in 0..3 {
            let (scenario, whole) = random_run(seed);
            let n = steps(scenario).len();
            for split in [n / 3, 2 * n / 3] {
                let (restarted, at) = run_restarted(scenario, Some(split));
                assert!(
                    at.is_some(),
                    "seed {seed}: no checkpoint taken at step {split}"
                );
                for def in crate::views::CATALOG {
                    assert_eq!(
                        rows(&restarted, def.name),
                        rows(whole, def.name),
                        "seed {seed}, restarted from a checkpoint at {at:?} (step {split} of {n}): view {}",
                        def.name
                    );
                }
            }
        }
    }

    #[test]
    fn without_a_book_nothing_is_enrolled() -> Result<(), CheckpointError> {
        let a = Rc::new(RefCell::new(1u8));
        assert_eq!(enrol::<_, u8>("alone", &a, whole), None);
        Ok(())
    }
}

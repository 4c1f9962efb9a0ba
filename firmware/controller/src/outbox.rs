//! The durable outbox: what the machine has to tell the platform, kept on flash until the
//! platform has it.
//!
//! # Format
//! An append-only log of records, each
//! `len: u32 LE | crc: u32 LE | seq: u64 LE | kind: u8 | body: len bytes`, where `crc` is the
//! CRC-32 of `seq`, `kind` and `body`. The kinds:
//! - 0, an *event* for the platform (`seq` is the machine's event number, strictly increasing,
//!   never reused), whole once written (a heartbeat);
//! - 3, an event of a *step*: one input's records (a sale, a refund, a command's answer), which
//!   stand only once the step's state follows them;
//! - 2, the controller's *state* after a step (its body is [`crate::vend::Vend::snapshot`];
//!   `seq` is the last event it has seen);
//! - 1, every event up to `seq` is acknowledged (no body).
//!
//! # State and events together ([`Outbox::commit`])
//! A step appends its events without a sync, then its state, then syncs once: after a power cut
//! the log holds the step whole or not at all. [`Outbox::open`] returns the newest state, and cuts
//! off step events that no state follows (a step the power cut short: nothing of it was sent or
//! shown, and its numbers are given again).
//!
//! # Power loss at any byte
//! A write cut short leaves a record whose length runs past the end of the log or whose
//! checksum does not match; [`Outbox::open`] reads records up to the first such one, and
//! truncates the log there (the torn tail). An event is acknowledged to its producer only once
//! its record is synced (the fsync policy: [`Outbox::push`] with `durable` syncs before it
//! returns, [`Outbox::commit`] syncs a step with its state, and every acknowledgement marker is
//! synced), so a torn tail only ever holds what was never promised.
//!
//! # Acknowledgement and truncation
//! Events are sent oldest first ([`Outbox::pending`]). Only when the platform acknowledges them
//! (MQTT QoS 1 PUBACK, the HTTP `ack`) does [`Outbox::ack`] append a marker; once the log holds
//! more than [`COMPACT_AT`] bytes of acknowledged records and older states, and at least as
//! many as it holds live, it is rewritten with the pending ones and the newest state only,
//! atomically ([`Log::replace`]). A marker is kept at the head so the numbering goes on
//! where it was.
//!
//! # Events kept too long ([`Outbox::expire`])
//! The one other way out is age, the product's offline rule: a machine keeps [`KEEP_MS`] (24
//! hours) of events it could not deliver. Older ones make room: an event declaring their
//! numbers is pushed and synced first, then they are forgotten like acknowledged ones, so the
//! platform learns of the loss (its `sequence_gaps` view) instead of finding a hole. A power cut
//! between the two leaves them in the log with the declaration; the next look declares them
//! again (the platform takes the ranges as a set).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::vend::Millis;

/// A compaction happens when acknowledged records take more than this many bytes.
pub const COMPACT_AT: u64 = 64 * 1024;

/// How long a machine keeps an event the platform has not acknowledged (the product's offline
/// rule: up to 24 hours of events are kept).
pub const KEEP_MS: Millis = 24 * 3_600_000;

/// How often [`Outbox::expire`] looks at the oldest events.
pub const EXPIRY_CHECK_MS: Millis = 600_000;

const HEADER: usize = 4 + 4 + 8 + 1;
const EVENT: u8 = 0;
const ACKED: u8 = 1;
const STATE: u8 = 2;
const STEP: u8 = 3;

/// Where the outbox lives: a file on the host, a flash partition on the machine.
pub trait Log {
    type Error: core::fmt::Debug;
    /// The whole log.
    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error>;
    /// Appends at the end (not yet durable).
    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> Result<(), Self::Error>;
    /// Cuts the log to `len` bytes, durably.
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error>;
    /// Replaces the whole log, atomically: after a power cut it holds the old bytes or the
    /// new ones, whole.
    fn replace(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// The outbox's errors: only its storage's.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError<E: core::fmt::Debug> {
    #[error("the outbox's storage failed: {0:?}")]
    Storage(E),
    #[error("an event of {0} bytes is larger than a record may be")]
    TooLarge(usize),
}

/// [`Outbox::expire`]'s errors: the storage's, or an event whose time its reader could not
/// tell.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError<S: core::fmt::Debug, E: core::fmt::Debug> {
    #[error(transparent)]
    Outbox(#[from] OutboxError<S>),
    #[error("the time of the outbox's event {seq} cannot be read: {error:?}")]
    Time { seq: u64, error: E },
}

/// Events [`Outbox::expire`] gave up on: their numbers, and the number of the event that
/// declared them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    pub first_seq: u64,
    pub last_seq: u64,
    pub declared_by: u64,
}

/// An event waiting for the platform's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub body: Vec<u8>,
}

/// What [`Outbox::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Events read back (acknowledged or not).
    pub records: usize,
    /// Bytes of a torn or damaged tail that were cut off.
    pub torn_bytes: u64,
    /// Events of a step that no state followed (the power went mid-step), cut off.
    pub unfinished: usize,
    /// The newest state committed ([`Outbox::commit`]), if any.
    pub state: Option<Vec<u8>>,
}

/// The outbox over its log.
pub struct Outbox<L: Log> {
    log: L,
    pending: VecDeque<Entry>,
    /// Every event up to it is acknowledged.
    acked: u64,
    /// The last event number given.
    last: u64,
    /// The log's length, and how much of it is acknowledged records.
    len: u64,
    acked_bytes: u64,
    /// Compaction threshold ([`COMPACT_AT`] unless set).
    compact_at: u64,
    /// The newest state committed, the last event number it has seen, and its record's size.
    state: Option<(Vec<u8>, u64, u64)>,
    /// Step events not yet committed (numbers after the state's).
    uncommitted: bool,
    /// How long an event is kept unacknowledged ([`KEEP_MS`] unless set), and when
    /// [`Outbox::expire`] looks again.
    keep_ms: Millis,
    next_expiry_check: Millis,
}

/// One record's bytes.
fn encode(seq: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(body);
    let crc = crc32fast::hash(&bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// A record read back: its kind, seq, body and length in bytes.
struct Read<'a> {
    kind: u8,
    seq: u64,
    body: &'a [u8],
    size: usize,
}

/// The record at the start of `bytes`, if whole and intact.
fn decode(bytes: &[u8]) -> Option<Read<'_>> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let size = HEADER.checked_add(len)?;
    let record = bytes.get(..size)?;
    if crc32fast::hash(&record[8..]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(record[8..16].try_into().ok()?);
    let kind = record[16];
    if kind > STEP {
        return None;
    }
    Some(Read {
        kind,
        seq,
        body: &record[HEADER..],
        size,
    })
}

impl<L: Log> Outbox<L> {
    /// Reads the log back, cuts off a torn tail and an unfinished step, and holds the events
    /// not yet acknowledged and the newest state.
    pub fn open(mut log: L) -> Result<(Outbox<L>, Opened), OutboxError<L::Error>> {
        let bytes = log.read_all().map_err(OutboxError::Storage)?;
        // First the intact records, in order, with where each starts.
        let mut records: Vec<(usize, Read<'_>)> = Vec::new();
        let mut at = 0usize;
        let mut high = 0u64;
        while let Some(r) = decode(&bytes[at..]) {
            match r.kind {
                // Numbers only go up: anything else is damage, like a bad checksum.
                EVENT | STEP if r.seq <= high => break,
                EVENT | STEP | ACKED => high = high.max(r.seq),
                // A state covers events already written.
                _ if r.seq > high => break,
                _ => {}
            }
            let size = r.size;
            records.push((at, r));
            at += size;
        }
        let torn_bytes = (bytes.len() - at) as u64;
        // Step events after the newest state belong to a step the power cut short.
        let committed = records
            .iter()
            .rev()
            .find(|(_, r)| r.kind == STATE)
            .map_or(0, |(_, r)| r.seq);
        let keep = records
            .iter()
            .position(|(_, r)| r.kind == STEP && r.seq > committed)
            .unwrap_or(records.len());
        let unfinished = records[keep..]
            .iter()
            .filter(|(_, r)| r.kind == STEP || r.kind == EVENT)
            .count();
        let end = records.get(keep).map_or(at, |(start, _)| *start);
        records.truncate(keep);
        if end < bytes.len() {
            log.truncate(end as u64).map_err(OutboxError::Storage)?;
        }
        let (mut acked, mut last) = (0u64, 0u64);
        let mut events: Vec<&Read<'_>> = Vec::new();
        let mut state: Option<(Vec<u8>, u64, u64)> = None;
        let mut acked_bytes = 0u64;
        for (_, r) in &records {
            match r.kind {
                EVENT | STEP => {
                    last = r.seq;
                    events.push(r);
                }
                ACKED => {
                    acked = acked.max(r.seq);
                    last = last.max(r.seq);
                    acked_bytes += r.size as u64;
                }
                _ => {
                    // An older state is garbage, like an acknowledged event.
                    if let Some((_, _, size)) = &state {
                        acked_bytes += size;
                    }
                    state = Some((r.body.to_vec(), r.seq, r.size as u64));
                }
            }
        }
        let mut pending = VecDeque::new();
        let records = events.len();
        for r in events {
            if r.seq <= acked {
                acked_bytes += r.size as u64;
            } else {
                pending.push_back(Entry {
                    seq: r.seq,
                    body: r.body.to_vec(),
                });
            }
        }
        let opened = Opened {
            records,
            torn_bytes,
            unfinished,
            state: state.as_ref().map(|(body, ..)| body.clone()),
        };
        let outbox = Outbox {
            log,
            pending,
            acked,
            last,
            len: end as u64,
            acked_bytes,
            compact_at: COMPACT_AT,
            state,
            uncommitted: false,
            keep_ms: KEEP_MS,
            next_expiry_check: Millis::MIN,
        };
        Ok((outbox, opened))
    }

    /// Appends an event; with `durable`, it is on flash when this returns (a sale, a refund:
    /// whatever a customer's money depends on). Returns its number.
    pub fn push(&mut self, body: &[u8], durable: bool) -> Result<u64, OutboxError<L::Error>> {
        if body.len() > u32::MAX as usize - HEADER {
            return Err(OutboxError::TooLarge(body.len()));
        }
        let seq = self.last + 1;
        let bytes = encode(seq, EVENT, body);
        self.log.append(&bytes).map_err(OutboxError::Storage)?;
        if durable {
            self.log.sync().map_err(OutboxError::Storage)?;
        }
        self.last = seq;
        self.len += bytes.len() as u64;
        self.pending.push_back(Entry {
            seq,
            body: body.to_vec(),
        });
        Ok(seq)
    }

    /// Appends an event of the step under way, not yet durable: it stands once the step is
    /// committed ([`Outbox::commit`]), and a power cut before that takes it back. Returns its
    /// number.
    pub fn push_step(&mut self, body: &[u8]) -> Result<u64, OutboxError<L::Error>> {
        if body.len() > u32::MAX as usize - HEADER {
            return Err(OutboxError::TooLarge(body.len()));
        }
        let seq = self.last + 1;
        let bytes = encode(seq, STEP, body);
        self.log.append(&bytes).map_err(OutboxError::Storage)?;
        self.last = seq;
        self.len += bytes.len() as u64;
        self.uncommitted = true;
        self.pending.push_back(Entry {
            seq,
            body: body.to_vec(),
        });
        Ok(seq)
    }

    /// Ends a step: appends the controller's `state` after it and syncs, so the step's events
    /// and the state they led to are on flash together. A failed commit leaves the step
    /// unfinished: the machine must restart from its log ([`Outbox::open`]).
    pub fn commit(&mut self, state: &[u8]) -> Result<(), OutboxError<L::Error>> {
        if state.len() > u32::MAX as usize - HEADER {
            return Err(OutboxError::TooLarge(state.len()));
        }
        let bytes = encode(self.last, STATE, state);
        self.log.append(&bytes).map_err(OutboxError::Storage)?;
        self.log.sync().map_err(OutboxError::Storage)?;
        self.len += bytes.len() as u64;
        if let Some((_, _, size)) = &self.state {
            self.acked_bytes += size;
        }
        self.state = Some((state.to_vec(), self.last, bytes.len() as u64));
        self.uncommitted = false;
        self.maybe_compact()
    }

    /// The newest state committed.
    pub fn state(&self) -> Option<&[u8]> {
        self.state.as_ref().map(|(body, ..)| body.as_slice())
    }

    /// Makes every event pushed so far durable.
    pub fn sync(&mut self) -> Result<(), OutboxError<L::Error>> {
        self.log.sync().map_err(OutboxError::Storage)
    }

    /// The events the platform has not acknowledged, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.pending.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The last event number given (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// Every event up to it is acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.acked
    }

    /// The log's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// The platform has every event up to `through`: recorded durably, forgotten, and the log
    /// compacted when enough of it is acknowledged.
    pub fn ack(&mut self, through: u64) -> Result<(), OutboxError<L::Error>> {
        let through = through.min(self.last);
        if through <= self.acked {
            return Ok(());
        }
        let marker = encode(through, ACKED, &[]);
        self.log.append(&marker).map_err(OutboxError::Storage)?;
        self.log.sync().map_err(OutboxError::Storage)?;
        self.acked = through;
        self.len += marker.len() as u64;
        self.acked_bytes += marker.len() as u64;
        while self.pending.front().is_some_and(|e| e.seq <= through) {
            if let Some(e) = self.pending.pop_front() {
                self.acked_bytes += (HEADER + e.body.len()) as u64;
            }
        }
        self.maybe_compact()
    }

    /// Gives up on every event up to `through` without the platform's acknowledgement: the
    /// machine kept them as long as it may, and has declared them dropped (a `dropped` event,
    /// pushed and synced before this). On flash it is the acknowledgement's marker: either way
    /// they are never sent again, and the numbering goes on after them.
    pub fn forget(&mut self, through: u64) -> Result<(), OutboxError<L::Error>> {
        self.ack(through)
    }

    /// The offline keep rule: at most every [`EXPIRY_CHECK_MS`] (the first call always looks),
    /// the pending events made before `now` minus the keep period ([`KEEP_MS`] unless
    /// [`Outbox::set_keep`]) are given up. `made_at` tells an event's time from its body (the
    /// outbox does not read bodies); pending events are in the order they were made, so the old
    /// ones are a prefix. `declaration(first, last, seq)` is the body of the event, numbered
    /// `seq`, that declares `first..=last` dropped: it is pushed and synced before they are
    /// forgotten. None when nothing was old enough (or it was not yet time to look).
    pub fn expire<E: core::fmt::Debug>(
        &mut self,
        now: Millis,
        made_at: impl Fn(&Entry) -> Result<Millis, E>,
        declaration: impl FnOnce(u64, u64, u64) -> Vec<u8>,
    ) -> Result<Option<Expired>, ExpireError<L::Error, E>> {
        if now < self.next_expiry_check {
            return Ok(None);
        }
        self.next_expiry_check = now.saturating_add(EXPIRY_CHECK_MS);
        let oldest_kept = now.saturating_sub(self.keep_ms);
        let mut old = None::<(u64, u64)>;
        for entry in &self.pending {
            let at = made_at(entry).map_err(|error| ExpireError::Time {
                seq: entry.seq,
                error,
            })?;
            if at >= oldest_kept {
                break;
            }
            old = Some((old.map_or(entry.seq, |(first, _)| first), entry.seq));
        }
        let Some((first_seq, last_seq)) = old else {
            return Ok(None);
        };
        let body = declaration(first_seq, last_seq, self.last + 1);
        let declared_by = self.push(&body, true)?;
        self.forget(last_seq)?;
        Ok(Some(Expired {
            first_seq,
            last_seq,
            declared_by,
        }))
    }

    /// Keeps unacknowledged events `ms` instead of [`KEEP_MS`] (at least [`EXPIRY_CHECK_MS`]):
    /// a simulation many times faster than real time stretches the network's delays by as much
    /// in the machines' time.
    pub fn set_keep(&mut self, ms: Millis) {
        self.keep_ms = ms.max(EXPIRY_CHECK_MS);
    }

    /// How long an unacknowledged event is kept ([`Outbox::set_keep`]).
    pub fn keeps(&self) -> Millis {
        self.keep_ms
    }

    /// Compacts once the garbage (acknowledged events, markers, older states) is more than the
    /// threshold and at least as large as what is still live, so that rewriting costs at most
    /// what was appended since the last rewrite (a machine offline for a day, with a day of
    /// pending events, is not rewritten at every step).
    fn maybe_compact(&mut self) -> Result<(), OutboxError<L::Error>> {
        let live = self.len.saturating_sub(self.acked_bytes);
        if self.acked_bytes > self.compact_at && self.acked_bytes >= live {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the log with a marker (so numbering continues), the pending events and the
    /// newest state where it stood among them. Not in the middle of a step (then it waits for
    /// the commit).
    pub fn compact(&mut self) -> Result<(), OutboxError<L::Error>> {
        if self.uncommitted {
            return Ok(());
        }
        let mut bytes = encode(self.acked, ACKED, &[]);
        let mut state = self.state.as_ref();
        for e in &self.pending {
            if let Some((body, seq, _)) = state
                && *seq < e.seq
            {
                bytes.extend_from_slice(&encode(*seq, STATE, body));
                state = None;
            }
            bytes.extend_from_slice(&encode(e.seq, EVENT, &e.body));
        }
        if let Some((body, seq, _)) = state {
            bytes.extend_from_slice(&encode(*seq, STATE, body));
        }
        self.log.replace(&bytes).map_err(OutboxError::Storage)?;
        self.len = bytes.len() as u64;
        self.acked_bytes = 0;
        Ok(())
    }

    /// The log underneath (to read it in tests).
    /// Compacts once acknowledged records take more than `bytes` (a controller with little
    /// RAM for its log's page cache, or a simulator holding thousands of logs in memory).
    pub fn set_compact_at(&mut self, bytes: u64) {
        self.compact_at = bytes;
    }

    /// The compaction threshold ([`Outbox::set_compact_at`]).
    pub fn compacts_at(&self) -> u64 {
        self.compact_at
    }

    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }
}

/// A log in memory: for tests, and for a machine with nothing durable (which then loses its
/// outbox at a power cut).
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    pub bytes: Vec<u8>,
    /// How many bytes are durable (a power cut keeps these).
    pub synced: usize,
    /// A power failure on its way ([`MemoryLog::power_fails_after`]): the bytes that still
    /// reach storage before it.
    pub fuse: Option<usize>,
}

impl MemoryLog {
    /// An empty log whose first event will be numbered `after + 1` (a machine's numbers go on
    /// from where its previous log left them).
    pub fn with_first_number(after: u64) -> MemoryLog {
        let bytes = if after > 0 {
            encode(after, ACKED, &[])
        } else {
            Vec::new()
        };
        MemoryLog {
            synced: bytes.len(),
            bytes,
            fuse: None,
        }
    }

    /// The power fails while the controller writes: `bytes` more bytes reach storage, then
    /// none (a record cut short at any byte, or not begun, or whole). Until the power cut
    /// ([`MemoryLog::after_power_cut`]) later writes are lost, and so is a truncation or a
    /// replacement once the power is gone.
    pub fn power_fails_after(&mut self, bytes: usize) {
        self.fuse = Some(bytes);
    }

    /// The log after a power cut: what was synced, or with a power failure that came during a
    /// write ([`MemoryLog::power_fails_after`]), everything that reached storage before it,
    /// synced or not (a torn record among it).
    pub fn after_power_cut(&self) -> MemoryLog {
        let kept = if self.fuse.is_some() {
            self.bytes.len()
        } else {
            self.synced
        };
        MemoryLog {
            bytes: self.bytes[..kept].to_vec(),
            synced: kept,
            fuse: None,
        }
    }

    /// Whether the power has gone (a failure came and its bytes are written).
    fn dead(&self) -> bool {
        self.fuse == Some(0)
    }
}

impl Log for MemoryLog {
    type Error = core::convert::Infallible;

    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error> {
        Ok(self.bytes.clone())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        let reach = match self.fuse.as_mut() {
            Some(left) => {
                let n = (*left).min(bytes.len());
                *left -= n;
                n
            }
            None => bytes.len(),
        };
        self.bytes.extend_from_slice(&bytes[..reach]);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.synced = self.bytes.len();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
        if self.dead() {
            return Ok(());
        }
        self.bytes.truncate(len as usize);
        self.synced = self.synced.min(self.bytes.len());
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        if self.dead() {
            return Ok(());
        }
        self.bytes = bytes.to_vec();
        self.synced = self.bytes.len();
        Ok(())
    }
}

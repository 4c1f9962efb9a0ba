//! JSON Lines files: recorded telemetry to replay, and registry fixtures.
//!
//! Replay runs one reader thread per engine worker. Every thread reads the whole file but decodes
//! only its share, in blocks of [`BLOCK_LINES`] lines dealt round-robin, so decoding runs in
//! parallel without a shared queue. Each thread's ingestion clock is the largest event timestamp
//! it has seen, rounded *down* to the tick, so a replay of a day gives the same views as living
//! through it, and the result does not depend on thread scheduling. When every thread is done,
//! all advance to one common end time (just past the newest event), the frontier the caller
//! waits for.
//!
//! A replay flat out is a bulk load, not a live stream: its tick is [`BULK_TICK_MS`] (one hour
//! of event time), so all events of one hour are one ingestion time, and each view changes once
//! per key and hour instead of once per event (a machine's 120 heartbeats move its liveness row
//! once). An hour is the finest grain of any view's time (hourly revenue, the stockout clock), and
//! midnights, where a load into the archive takes its history steps, fall on hours. Publishing a
//! key's row costs more than folding an event into it (a retraction and an insertion, a row, the
//! view store's update), so the coarser the step the faster the load: the 1 M-event benchmark
//! takes ~40 % less CPU than with 5-minute steps (`benches/README.md`, session 24). The clock is
//! rounded down, so no event is judged against a clock later than its own timestamp (nothing
//! becomes "too late" by the coarser tick); an event is at most one tick ahead of the clock, and
//! the engine accepts that for a step ([`Feeder::send_step`]). A batch never spans two ticks:
//! when an event's tick is past the clock, the batch so far is sent at the old clock first, so a
//! sparse history (a few sales an hour over months) is judged step by step, not at its newest
//! event.
//!
//! **Lateness follows the file's own order of time.** A file in time order (or nearly) is lived
//! through as it happened. An event older than the clock (an export in machine or product order,
//! a re-sent buffer appended at the end) arrives late, as it would live: a late sale is checked
//! against the engine's on-disk ledger and counted in its own day (or in `revenue_corrections`,
//! which the archive adds to the day's history, if its day has left the live view); other late
//! events correct their views within the views' horizons and are counted in `too_late` beyond
//! them. Revenue does not depend on the file's order; no sort pass or spill is needed.
//!
//! With a [`Pacer`] (a replay into the archive), the clock stops at every midnight until the
//! archive has taken a snapshot there, so every day is written to the history whole and final
//! just before it leaves the daily views. With a [`Tap`], every line goes to the archive's raw events at
//! its position (one stream per reader). Paced (`rate`), the tick is 1 s and each
//! batch is an ingestion time of its own (the clock moves 1 ms past it once it is sent), as a live
//! source's polls are.
//!
//! A line that does not decode becomes an [`ErrorRecord`] with its file and line number; an
//! envelope line yields one record per event.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

use vendflow_dataflows::{Batch, ErrorRecord, Feeder, Feeders, Time};
use vendflow_protocol::command::{Command, decode_command};
use vendflow_protocol::decode::{decode_line_each, decode_registry};
use vendflow_protocol::units::MS_PER_HOUR;
use vendflow_protocol::{DecodeError, Event, MachineId, RegistryRecord, Timestamp};

use crate::intake::Intake;
use crate::{IngestError, Position, Tap};

/// Lines per block dealt to one reader thread.
pub const BLOCK_LINES: u64 = 1024;
/// Events per batch sent to the engine (several batches share an ingestion time).
const BATCH_EVENTS: usize = 8192;
/// The ingestion clock's tick when replaying flat out (see the module's documentation), and the
/// longest tick a replay takes.
pub const BULK_TICK_MS: i64 = MS_PER_HOUR;
/// Batches per second and reader when the replay is paced.
const PACED_BATCHES_PER_S: f64 = 50.0;
/// The tick when the replay is paced.
pub const LIVE_TICK_MS: i64 = 1000;

/// Called with each batch's ingestion time as it is sent (freshness measurements).
pub type SentHook = Arc<dyn Fn(Time) + Send + Sync>;

#[derive(Clone)]
pub struct ReplayOptions {
    /// Granularity of the ingestion clock; `None`: [`BULK_TICK_MS`] flat out, [`LIVE_TICK_MS`]
    /// when paced.
    pub tick_ms: Option<i64>,
    /// Replay the file this many times, each copy `repeat_shift_ms` later in event time and with
    /// its transaction ids suffixed `#k` (so copies are new sales, not re-deliveries).
    pub repeat: u32,
    pub repeat_shift_ms: i64,
    pub on_sent: Option<SentHook>,
    /// Pace the replay at this many events per second in all (default: as fast as possible).
    pub rate: Option<f64>,
    /// Holds the clock back until the archive has caught up (see [`Pacer`]).
    pub pacer: Option<Arc<Pacer>>,
    /// Sees every line read, with its position (`replay-<file>-<reader>of<readers>`, line number).
    pub tap: Option<Tap>,
    /// Records refused while loading what came with the file (a registry, commands, an export's
    /// rows): they go with the replay's first batch, stamped at its ingestion time, so the
    /// `errors` view (a day of ingestion time) shows them like the file's own refused lines.
    pub refused_before: Vec<ErrorRecord>,
}

/// Holds a replay's clock at each boundary of `step` (a day) until the archive has taken a
/// snapshot there: a day of the daily views leaves them at a midnight, so the archive's snapshot
/// *at* that midnight (every time before it done, nothing at or after it ingested) holds the day
/// whole and final, however fast the file is read. The archiving side calls
/// [`Pacer::archived`] after each snapshot; readers wait in `allow` and meanwhile advance their
/// feeders to the boundary, so the frontier (and the next snapshot) reaches it.
///
/// The count starts at the earliest first clock of *all* readers: each reader's share of the
/// file starts at a different time (an export in machine or product order puts one reader in
/// January and the next in April), so no reader goes past its first boundary until every reader
/// has asked for its first clock or finished. Starting at whichever reader asked first let the
/// others run unpaced up to its clock, and the days they crossed reached the history only as far
/// as a snapshot happened to catch them.
pub struct Pacer {
    state: Mutex<PaceState>,
    moved: Condvar,
    step: i64,
    done: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct PaceState {
    /// The newest snapshot's frontier; `None` until every reader has started.
    archived: Option<Time>,
    /// Per reader: `true` until it has asked for its first clock or finished.
    pending: Vec<bool>,
    /// The earliest first clock asked for so far.
    start: Option<Time>,
    /// The furthest boundary a reader has asked to cross (its clock is past it): the readers
    /// done with their share move their inputs there ([`Pacer::follow`]).
    crossing: Time,
}

impl PaceState {
    fn started(&self) -> bool {
        !self.pending.iter().any(|p| *p)
    }

    /// Reader `reader` is past its start (with its first clock, if it read any event).
    fn start_reader(&mut self, reader: usize, clock: Option<Time>) {
        // Without a reader count, the first clock asked for starts the count.
        let first = match self.pending.get_mut(reader) {
            Some(p) => std::mem::replace(p, false),
            None => self.archived.is_none(),
        };
        if let (true, Some(c)) = (first, clock) {
            self.start = Some(self.start.map_or(c, |s| s.min(c)));
        }
        if self.started() && self.archived.is_none() {
            self.archived = self.start;
        }
    }
}

impl Pacer {
    pub fn new(step_ms: i64) -> Pacer {
        Pacer {
            state: Mutex::new(PaceState::default()),
            moved: Condvar::new(),
            step: step_ms.max(1),
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sets the number of readers to wait for before the count starts ([`replay`] does).
    pub fn readers(&self, readers: usize) {
        let mut s = self.lock();
        *s = PaceState {
            pending: vec![true; readers],
            ..PaceState::default()
        };
        self.moved.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PaceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first boundary after `t`: where the next snapshot must be taken.
    pub fn next_boundary(&self, t: Time) -> Time {
        t.window_start(self.step).saturating_add(self.step)
    }

    /// The archive has a snapshot at `frontier`. Before the readers have started nothing was
    /// ingested, and the count starts at their earliest clock instead.
    pub fn archived(&self, frontier: Time) {
        let mut s = self.lock();
        if let Some(x) = s.archived.as_mut() {
            *x = (*x).max(frontier);
        }
        self.moved.notify_all();
    }

    /// Lets every waiting reader go (the archiving side has stopped).
    pub fn release(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.moved.notify_all();
    }

    /// Reader `reader` has read its share: it no longer holds back the start.
    pub fn finished(&self, reader: usize) {
        self.lock().start_reader(reader, None);
        self.moved.notify_all();
    }

    /// For a reader done with its share while others still read: moves its input to the
    /// boundary another reader is waiting to cross, so the snapshot there does not wait for it
    /// (it holds no events for it any more), then waits a moment for the next change. Never
    /// further than a boundary some reader's clock has passed: the last advance is to the end
    /// of the file, and the clock row follows worker 0's input.
    pub fn follow(&self, feeder: &mut Feeder) -> Result<(), IngestError> {
        let s = self.lock();
        if feeder.time() < s.crossing {
            let crossing = s.crossing;
            drop(s);
            feeder.advance(crossing)?;
            return Ok(());
        }
        let _unused = self
            .moved
            .wait_timeout(s, Duration::from_millis(50))
            .unwrap_or_else(|p| p.into_inner());
        Ok(())
    }

    /// Whether the archiving side has stopped ([`Pacer::release`]).
    pub fn released(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `clock` is before the next boundary after the last snapshot (and, the
    /// first time, until every reader has started).
    pub fn allow(
        &self,
        reader: usize,
        feeder: &mut Feeder,
        clock: Time,
    ) -> Result<(), IngestError> {
        let mut s = self.lock();
        s.start_reader(reader, Some(clock));
        self.moved.notify_all();
        loop {
            if self.done.load(Ordering::SeqCst) {
                return Ok(());
            }
            if let Some(archived) = s.archived {
                let limit = self.next_boundary(archived);
                if clock < limit {
                    return Ok(());
                }
                if s.crossing < limit {
                    s.crossing = limit;
                    self.moved.notify_all();
                }
                if feeder.time() < limit {
                    drop(s);
                    feeder.advance(limit)?;
                    s = self.lock();
                    continue;
                }
            }
            s = self
                .moved
                .wait_timeout(s, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl ReplayOptions {
    /// The ingestion clock's tick in milliseconds.
    pub fn tick(&self) -> i64 {
        self.tick_ms.unwrap_or(if self.rate.is_some() {
            LIVE_TICK_MS
        } else {
            BULK_TICK_MS
        })
    }
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            tick_ms: None,
            repeat: 1,
            repeat_shift_ms: 0,
            on_sent: None,
            rate: None,
            pacer: None,
            tap: None,
            refused_before: Vec::new(),
        }
    }
}

/// What a replay read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Under every source's names: a message is a line (blank lines are not counted), an event
    /// one of its events (an envelope line has several), refused one record refused.
    pub counts: crate::Counts,
    /// The frontier to wait for: every event is ingested before it.
    pub end: Time,
}

/// Replays `path` into the engine. `progress` counts bytes read (of `repeat × file size`).
pub fn replay(
    path: &Path,
    feeders: Feeders,
    options: &ReplayOptions,
    progress: Arc<AtomicU64>,
) -> Result<ReplayStats, IngestError> {
    let feeders = feeders.into_vec();
    let threads = feeders.len();
    let barrier = Arc::new(Barrier::new(threads));
    let end = Arc::new(AtomicI64::new(0));
    let done_reading = Arc::new(AtomicUsize::new(0));
    if let Some(pacer) = &options.pacer {
        pacer.readers(threads);
    }
    let handles: Vec<_> = feeders
        .into_iter()
        .enumerate()
        .map(|(i, feeder)| {
            let path = path.to_owned();
            let mut options = options.clone();
            // Reader 0 sends the records refused before the replay, with its first batch.
            let early = std::mem::take(&mut options.refused_before);
            let early = if i == 0 { early } else { Vec::new() };
            let progress = (i == 0).then(|| progress.clone());
            let (barrier, end, done_reading) =
                (barrier.clone(), end.clone(), done_reading.clone());
            std::thread::Builder::new()
                .name(format!("vendflow-replay-{i}"))
                .spawn(move || {
                    let mut reader = Reader {
                        share: i as u64,
                        of: threads as u64,
                        feeder,
                        options,
                        clock: Time::EPOCH,
                        newest: Time::EPOCH,
                        batch: Batch::default(),
                        started: std::time::Instant::now(),
                        sent: 0,
                        early,
                    };
                    let counters = crate::Counters::default();
                    let result = reader.read(&path, progress.as_deref(), &counters);
                    if let Some(pacer) = &reader.options.pacer {
                        pacer.finished(i);
                    }
                    // Even a failed reader takes part in the final advance, so the others finish.
                    end.fetch_max(reader.clock.max(reader.newest).ms(), Ordering::SeqCst);
                    done_reading.fetch_add(1, Ordering::SeqCst);
                    // Paced, the others may still be crossing days whose snapshots wait for
                    // every worker's input: this one follows them instead of holding them back
                    // (a share of a small file can be empty, and stay at its first clock).
                    if let Some(pacer) = &reader.options.pacer {
                        while done_reading.load(Ordering::SeqCst) < threads && !pacer.released() {
                            if let Err(e) = pacer.follow(&mut reader.feeder) {
                                tracing::error!(error = %e, "a finished replay reader cannot follow the others");
                                break;
                            }
                        }
                    }
                    barrier.wait();
                    let last = Timestamp(end.load(Ordering::SeqCst) + 1);
                    result?;
                    if let Some(pacer) = &reader.options.pacer {
                        pacer.allow(i, &mut reader.feeder, last)?;
                    }
                    reader.feeder.advance(last)?;
                    Ok::<_, IngestError>(ReplayStats {
                        counts: counters.read(),
                        end: last,
                    })
                })
                .map_err(|e| IngestError::Thread(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut total = ReplayStats::default();
    for h in handles {
        let stats = h
            .join()
            .map_err(|_| IngestError::Thread("a replay reader panicked".into()))??;
        total.counts.messages += stats.counts.messages;
        total.counts.events += stats.counts.events;
        total.counts.refused += stats.counts.refused;
        total.end = total.end.max(stats.end);
    }
    Ok(total)
}

/// Reads the next line (through its `\n`, or to the end of the file), appending it to `line`
/// if `take`; a line not taken is consumed in the read buffer without being copied (that copy
/// was half of a reader's time). The bytes consumed, 0 at the end of the file, and whether the
/// line was taken.
fn next_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    take: bool,
) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((consumed, take && consumed > 0));
        }
        let (n, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if take {
            line.extend_from_slice(&buf[..n]);
        }
        reader.consume(n);
        consumed += n;
        if done {
            return Ok((consumed, take));
        }
    }
}

/// Lines of one reader read ahead of decoding them (at most [`GROUP_LINES`]).
#[derive(Default)]
struct Group {
    /// The lines, one after the other.
    bytes: Vec<u8>,
    /// Each line's end in `bytes`, and its number in the file.
    lines: Vec<(usize, u64)>,
}

impl Group {
    fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    /// [`next_line`], kept as line `number` if `take`; the bytes consumed, 0 at the end.
    fn next(
        &mut self,
        reader: &mut impl BufRead,
        number: u64,
        take: bool,
    ) -> std::io::Result<usize> {
        let (n, taken) = next_line(reader, &mut self.bytes, take)?;
        if taken {
            self.lines.push((self.bytes.len(), number));
        }
        Ok(n)
    }

    /// Each line's number and text (with its newline, if it had one).
    fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let starts = std::iter::once(0).chain(self.lines.iter().map(|&(end, _)| end));
        starts
            .zip(&self.lines)
            .map(|(start, &(end, number))| (number, &self.bytes[start..end]))
    }

    /// The lines' leading machine ids ([`leading_machine_id`]).
    fn machine_ids(&self) -> impl Iterator<Item = &str> {
        self.lines()
            .filter_map(|(_, line)| leading_machine_id(line))
    }
}

/// Lines a reader reads ahead of decoding them, to look their machines up together.
const GROUP_LINES: usize = 16;

/// The `machineId` of a line that starts with it, as encoders write a telemetry line
/// (`{"machineId":"m00042",…`, spaces allowed around the punctuation), when it has no escapes:
/// enough to look the machine up ahead of decoding the line. `None` for any other line.
fn leading_machine_id(line: &[u8]) -> Option<&str> {
    fn after<'a>(rest: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
        rest.trim_ascii_start().strip_prefix(token)
    }
    let rest = after(line, b"{")?;
    let rest = after(rest, b"\"machineId\"")?;
    let rest = after(rest, b":")?;
    let rest = after(rest, b"\"")?;
    let id = &rest[..memchr::memchr(b'"', rest)?];
    if id.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(id).ok()
}

struct Reader {
    share: u64,
    of: u64,
    feeder: Feeder,
    options: ReplayOptions,
    clock: Time,
    /// The newest event timestamp read.
    newest: Time,
    batch: Batch,
    started: std::time::Instant,
    /// Events sent so far (for pacing).
    sent: u64,
    /// [`ReplayOptions::refused_before`], until the first batch takes them.
    early: Vec<ErrorRecord>,
}

impl Reader {
    /// Reads this reader's share of `path` (every copy of it), counting into `counters`.
    fn read(
        &mut self,
        path: &Path,
        progress: Option<&AtomicU64>,
        counters: &crate::Counters,
    ) -> Result<(), IngestError> {
        let io = |source| IngestError::Io {
            path: path.display().to_string(),
            source,
        };
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for copy in 0..self.options.repeat.max(1) {
            let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
            let mut group = Group::default();
            // One line's records, taken in by the intake (and shown to the tap) before they
            // join the batch: an envelope line's events may span ticks of the clock.
            let mut taken = Batch::default();
            // This reader's stream in the archive (its lines' positions are their numbers).
            let stream = format!("replay-{name}-{}of{}", self.share, self.of);
            let tap = self.options.tap.clone();
            let intake = Intake::new(counters, tap.as_ref()).trusting_settlements();
            let mut number: u64 = 0;
            let block = self.block_lines();
            let mut at_end = false;
            while !at_end {
                // A group of this reader's lines, read before any is decoded: their machines
                // are looked up together (each lookup a cache miss in a table of every machine,
                // and misses made together overlap), and found at once when decoded.
                group.clear();
                while group.len() < GROUP_LINES {
                    // Every reader walks the whole file, taking its blocks of lines. (Taking
                    // its worker's machines instead, tried, changed the views: a reader's clock
                    // would follow its machines' events only, not the file's order.)
                    let ours = (number / block) % self.of == self.share;
                    let n = group.next(&mut reader, number + 1, ours).map_err(io)?;
                    if n == 0 {
                        at_end = true;
                        break;
                    }
                    number += 1;
                    if let Some(p) = progress {
                        p.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                MachineId::warm(group.machine_ids());
                for (number, line) in group.lines() {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let source = LineOf {
                        file: &name,
                        number,
                    };
                    let raw = line.strip_suffix(b"\n").unwrap_or(line);
                    let at = Position {
                        stream: &stream,
                        offset: number as i64,
                        received_at: self.clock,
                    };
                    // Where in the file's time a bad line was read: the newest event time so far,
                    // to the second (the bulk clock's hour steps would blur it).
                    let refused_at = (self.newest.max(self.clock) + (LIVE_TICK_MS - 1))
                        .window_start(LIVE_TICK_MS);
                    let message = intake
                        .begin(&taken, &source, at, raw)
                        .refused_at(refused_at);
                    let shift_ms = self.options.repeat_shift_ms;
                    decode_line_each(line, |result| {
                        let result = result.map(|mut event| {
                            if copy > 0 {
                                shift(&mut event, copy, shift_ms);
                            }
                            event
                        });
                        intake.take(&mut taken, &message, result);
                    });
                    intake.end(&taken, message);
                    self.batch.errors.append(&mut taken.errors);
                    let tick = self.options.tick().max(1);
                    for event in taken.events.drain(..) {
                        // An ingestion time is never before the epoch (the engine's times start
                        // there): an event dated earlier is ingested at the first tick.
                        let ts = event.timestamp.max(Time::EPOCH);
                        self.newest = self.newest.max(ts);
                        let at = ts.window_start(tick);
                        if at > self.clock {
                            self.move_clock(at)?;
                        }
                        self.batch.events.push(event);
                    }
                    if self.batch.events.len() + self.batch.errors.len() >= self.batch_limit() {
                        self.flush()?;
                    }
                }
            }
        }
        self.flush()
    }

    /// Moves the clock to `at` (later than it): the batch so far goes at the old clock, so none
    /// of its events is judged at a later one; a pacer may hold the new clock back.
    fn move_clock(&mut self, at: Time) -> Result<(), IngestError> {
        if self.options.rate.is_none() && !self.batch.is_empty() {
            self.flush()?;
        }
        if let Some(pacer) = self.options.pacer.clone() {
            pacer.allow(self.share as usize, &mut self.feeder, at)?;
        }
        self.clock = at;
        Ok(())
    }

    /// Lines per block dealt to one reader: when paced, about 1/50 s of the file each, so that the
    /// readers' clocks (and the workers' frontiers) stay within one batch of each other; flat
    /// out, [`BLOCK_LINES`].
    fn block_lines(&self) -> u64 {
        match self.options.rate {
            Some(rate) => ((rate / PACED_BATCHES_PER_S) as u64).clamp(1, BLOCK_LINES),
            None => BLOCK_LINES,
        }
    }

    /// Records per batch: large when replaying flat out; when paced, [`PACED_BATCHES_PER_S`] batches a second
    /// per reader (a live source polls about that often).
    fn batch_limit(&self) -> usize {
        match self.options.rate {
            Some(rate) => {
                ((rate / self.of as f64 / PACED_BATCHES_PER_S) as usize).clamp(1, BATCH_EVENTS)
            }
            None => BATCH_EVENTS,
        }
    }

    fn flush(&mut self) -> Result<(), IngestError> {
        let at = self.clock;
        for mut refused in self.early.drain(..) {
            refused.received_at = at;
            self.batch.errors.push(refused);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        // The next batch is as large as this one, most likely: made at that size, its events
        // are not copied again as it grows (doubling from empty copied each event once more).
        let next = Batch {
            events: Vec::with_capacity(self.batch.events.len().min(self.batch_limit())),
            ..Batch::default()
        };
        let batch = std::mem::replace(&mut self.batch, next);
        self.sent += batch.events.len() as u64;
        if let Some(rate) = self.options.rate.filter(|r| *r > 0.0) {
            let due = std::time::Duration::from_secs_f64(self.sent as f64 * self.of as f64 / rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        self.feeder
            .send_step(self.clock, self.options.tick(), batch)?;
        if let Some(hook) = &self.options.on_sent {
            hook(self.feeder.time());
        }
        if self.options.rate.is_some() {
            // Paced, as live: a batch is complete once sent (a live source's poll is), so the
            // views can publish it now instead of when the next second of event time arrives.
            let next = self.feeder.time() + 1;
            self.feeder.advance(next)?;
        }
        Ok(())
    }
}

/// A line of a replayed file, as its error records name it: `replay:<file>:<line number>`.
struct LineOf<'a> {
    file: &'a str,
    number: u64,
}

impl std::fmt::Display for LineOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "replay:{}:{}", self.file, self.number)
    }
}

fn shift(event: &mut Event, copy: u32, shift_ms: i64) {
    event.timestamp = Timestamp(event.timestamp.0 + i64::from(copy) * shift_ms);
    if let vendflow_protocol::EventKind::Sale(sale) = &mut event.kind {
        sale.transaction_id = format!("{}#{copy}", sale.transaction_id).into();
    }
}

/// Reads a registry fixture (JSON Lines of registry records). Bad lines come back as error
/// records, so a typo in one machine does not hide the others.
pub fn load_registry(path: &Path) -> Result<(Vec<RegistryRecord>, Vec<ErrorRecord>), IngestError> {
    load_records(path, "registry", decode_registry)
}

/// Reads commands as sent on `machine-commands` (JSON Lines), to replay them with the events
/// they caused: the acknowledgements in a recorded file then find their commands. Bad lines
/// come back as error records.
pub fn load_commands(path: &Path) -> Result<(Vec<Command>, Vec<ErrorRecord>), IngestError> {
    load_records(path, "commands", decode_command)
}

/// One record per non-blank line; a line that does not decode is an error record with its file
/// and line number (source `<what>:<file>:<line>`).
fn load_records<T>(
    path: &Path,
    what: &str,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<(Vec<T>, Vec<ErrorRecord>), IngestError> {
    let io = |source| IngestError::Io {
        path: path.display().to_string(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io)?);
    // The file's name, not its path: a record's source reads the same wherever the file is.
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let (mut records, mut errors) = (Vec::new(), Vec::new());
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode(&line) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::warn!(file = %name, line = i + 1, error = %e, "refused a {what} record");
                // A file of registry records or commands has no time of its own: the replay
                // stamps these with its first ingestion time (`ReplayOptions::refused_before`).
                errors.push(ErrorRecord::new(
                    Timestamp(0),
                    format!("{what}:{name}:{}", i + 1),
                    &e,
                    &line,
                ));
            }
        }
    }
    Ok((records, errors))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use anyhow::Context;

    use vendflow_dataflows::errors::ERRORS;
    use vendflow_dataflows::revenue::SLOT_SALES;
    use vendflow_dataflows::{Config, Engine, Value};

    use super::*;

    /// `path` replayed with the default options into a new engine: the engine, its store, what
    /// was read, and the bytes read.
    fn replayed(
        path: &Path,
    ) -> anyhow::Result<(
        Engine,
        vendflow_dataflows::ViewStore,
        ReplayStats,
        Arc<AtomicU64>,
    )> {
        let mut engine = Engine::start(Config::default())?;
        let store = engine.store();
        let feeders = engine.feeders().context("feeders")?;
        let progress = Arc::new(AtomicU64::new(0));
        let stats = replay(path, feeders, &ReplayOptions::default(), progress.clone())?;
        Ok((engine, store, stats, progress))
    }

    #[test]
    fn a_line_is_read_whole_and_copied_only_when_taken() -> std::io::Result<()> {
        let text = b"first line is long\nb\n\nlast without newline";
        // A 4-byte buffer: every line but one spans several refills.
        let mut r = BufReader::with_capacity(4, &text[..]);
        let mut line = Vec::new();
        assert_eq!(next_line(&mut r, &mut line, false)?, (19, false));
        assert!(line.is_empty(), "a line not taken is not kept");
        assert_eq!(next_line(&mut r, &mut line, true)?, (2, true));
        assert_eq!(line, b"b\n");
        // Taken lines are appended; one not taken leaves them as they were.
        assert_eq!(next_line(&mut r, &mut line, true)?, (1, true));
        assert_eq!(line, b"b\n\n");
        assert_eq!(next_line(&mut r, &mut line, false)?, (20, false));
        assert_eq!(line, b"b\n\n");
        assert_eq!(next_line(&mut r, &mut line, true)?, (0, false));
        let mut r = BufReader::with_capacity(4, &text[..]);
        let mut all = Vec::new();
        while next_line(&mut r, &mut all, true)?.0 > 0 {}
        assert_eq!(all, text, "every line whole, once");
        Ok(())
    }

    /// A group keeps the lines taken, each with its number and its leading machine id, whether
    /// the line lay whole in the read buffer or across its end.
    #[test]
    fn a_group_keeps_its_lines_and_their_machine_ids() -> std::io::Result<()> {
        let text = b"{\"machineId\":\"a1\",\"type\":\"sale\"}\n{\"type\":\"x\"}\n{\"machineId\":\"skip\"}\n{ \"machineId\" : \"b2\" }";
        for capacity in [4, 1 << 10] {
            let mut r = BufReader::with_capacity(capacity, &text[..]);
            let mut group = Group::default();
            for (number, take) in [(1, true), (2, true), (3, false), (4, true)] {
                assert!(group.next(&mut r, number, take)? > 0);
            }
            assert_eq!(group.next(&mut r, 5, true)?, 0, "the end");
            let lines: Vec<(u64, &[u8])> = group.lines().collect();
            assert_eq!(
                lines,
                [
                    (1, &b"{\"machineId\":\"a1\",\"type\":\"sale\"}\n"[..]),
                    (2, b"{\"type\":\"x\"}\n"),
                    (4, b"{ \"machineId\" : \"b2\" }"),
                ]
            );
            assert_eq!(group.machine_ids().collect::<Vec<_>>(), ["a1", "b2"]);
        }
        Ok(())
    }

    #[test]
    fn a_lines_leading_machine_id_is_found_without_decoding_it() {
        for (line, id) in [
            (
                &br#"{"machineId":"m00042","type":"sale"}"#[..],
                Some("m00042"),
            ),
            (
                br#"  { "machineId" : "m-7:a.b" , "events": []}"#,
                Some("m-7:a.b"),
            ),
            // Escaped: only decoding says which id it is.
            (br#"{"machineId":"m\u0030","type":"sale"}"#, None),
            // Not first, not a string, not an object, unfinished: not routed by the machine.
            (br#"{"type":"sale","machineId":"m1"}"#, None),
            (br#"{"machineId":42}"#, None),
            (br#"["machineId","m1"]"#, None),
            (br#"{"machineId":"m1"#, None),
            (b"", None),
        ] {
            assert_eq!(
                leading_machine_id(line),
                id,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Three readers (a reader per worker) read every line once, envelopes, bad and blank lines
    /// among them, and count and sell what a single reader does.
    #[test]
    fn three_readers_read_every_line_once() -> anyhow::Result<()> {
        let mut file = tempfile::NamedTempFile::new()?;
        let mut text = String::new();
        for i in 0..4_000i64 {
            let (m, t) = (i % 37, 1_700_000_000_000 + i * 500);
            text.push_str(&match i % 5 {
                0 => format!("{{\"machineId\":\"m{m}\",\"events\":[{{\"type\":\"heartbeat\",\"timestamp\":{t}}},{{\"type\":\"sale\",\"timestamp\":{t},\"payload\":{{\"slotNumber\":2,\"productId\":\"p\",\"amount\":0.5,\"transactionId\":\"e{i}\"}}}}]}}\n"),
                1 => format!("{{\"type\":\"sale\",\"machineId\":\"m{m}\",\"timestamp\":{t},\"payload\":{{\"slotNumber\":1,\"productId\":\"p\",\"amount\":1.25,\"transactionId\":\"t{i}\"}}}}\n"),
                2 => "{\"machineId\":\"m1\",\"type\":\"sale\"\n\n".to_owned(),
                _ => format!("{{\"machineId\":\"m{m}\",\"type\":\"sale\",\"timestamp\":{t},\"payload\":{{\"slotNumber\":1,\"productId\":\"p\",\"amount\":1.25,\"transactionId\":\"t{i}\"}}}}\n"),
            });
        }
        file.write_all(text.as_bytes())?;
        let run =
            |workers: usize| -> anyhow::Result<(crate::Counts, Vec<vendflow_dataflows::Row>)> {
                let mut engine = Engine::start(Config {
                    workers,
                    ..Config::default()
                })?;
                let store = engine.store();
                let feeders = engine.feeders().context("feeders")?;
                let stats = replay(
                    file.path(),
                    feeders,
                    &ReplayOptions::default(),
                    Arc::new(AtomicU64::new(0)),
                )?;
                anyhow::ensure!(store.wait_for(stats.end, Duration::from_secs(60)));
                let snapshot = store.snapshot();
                let mut rows = snapshot.rows("slot_sales")?.to_vec();
                rows.sort();
                engine.shutdown()?;
                Ok((stats.counts, rows))
            };
        let (counts, rows) = run(3)?;
        assert_eq!(
            counts,
            crate::Counts {
                messages: 4_000,
                events: 4_000 / 5 * 2 + 4_000 / 5 * 3,
                refused: 4_000 / 5
            }
        );
        assert_eq!(run(1)?, (counts, rows));
        Ok(())
    }

    #[test]
    fn replay_ingests_good_lines_and_keeps_bad_ones_as_errors() {
        let mut file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        for i in 0..3000 {
            text.push_str(&format!(
                "{{\"machineId\":\"m{}\",\"type\":\"sale\",\"timestamp\":{},\"payload\":{{\"slotNumber\":1,\"productId\":\"p\",\"amount\":1.25,\"transactionId\":\"t{i}\"}}}}\n",
                i % 7,
                1_700_000_000_000i64 + i * 1000
            ));
            if i == 1500 {
                text.push_str("{\"machineId\":\"m1\",\"type\":\"sale\"\n");
            }
            if i == 2000 {
                // Blank lines are not messages; a processor's settlement line in a file the
                // operator replays is taken (a machine could not send one).
                text.push_str("\n  \n");
                text.push_str("{\"machineId\":\"m0\",\"type\":\"settlement\",\"timestamp\":1700000000000,\"payload\":{\"transactionId\":\"t0\",\"amount\":1.25,\"status\":\"settled\"}}\n");
            }
        }
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let (engine, store, stats, progress) =
            replayed(file.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            stats.counts,
            crate::Counts {
                messages: 3002,
                events: 3001,
                refused: 1
            }
        );
        assert_eq!(progress.load(Ordering::SeqCst), text.len() as u64);
        assert!(store.wait_for(stats.end, Duration::from_secs(60)));
        let snapshot = store.snapshot();
        let lines: i64 = snapshot
            .rows("slot_sales")
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| SLOT_SALES.named(r).int("lines").unwrap_or(0))
            .sum();
        assert_eq!(lines, 3000);
        let errors = snapshot.rows("errors").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(errors.len(), 1);
        let source = ERRORS.named(&errors[0]).text("source");
        assert!(
            source.as_ref().is_some_and(|s| s.ends_with(":1502")),
            "{source:?}"
        );
        // Dated where in the file's time it was read (the newest event before it, to the
        // second), not at the bulk clock's hour.
        assert_eq!(
            ERRORS.named(&errors[0]).time("received_at"),
            Some(1_700_000_000_000 + 1500 * 1000)
        );
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Lines across the 1 MiB read buffer's end, a line longer than the buffer and a last line
    /// without a newline are each read whole, once, by the reader whose line it is.
    #[test]
    fn lines_across_the_read_buffer_and_longer_than_it_are_read_whole() -> anyhow::Result<()> {
        let mut file = tempfile::NamedTempFile::new()?;
        let line = |i: i64| {
            format!(
                "{{\"machineId\":\"m{}\",\"type\":\"sale\",\"timestamp\":{},\"payload\":{{\"slotNumber\":{},\"productId\":\"p\",\"amount\":1.25,\"transactionId\":\"t{i}\"}}}}",
                i % 50,
                1_700_000_000_000i64 + i * 100,
                1 + i % 9
            )
        };
        let mut text = String::new();
        let sales = 20_000;
        for i in 0..sales {
            text.push_str(&line(i));
            text.push('\n');
            if i == 7_000 {
                // 1.5 MB: longer than the 1 MiB read buffer.
                text.push_str(&format!(
                    "{{\"machineId\":\"m1\",\"type\":\"sale\",\"pad\":\"{}\"}}\n",
                    "x".repeat(1_500_000)
                ));
            }
        }
        text.push_str(&line(sales));
        file.write_all(text.as_bytes())?;
        let (engine, store, stats, progress) = replayed(file.path())?;
        assert_eq!(
            stats.counts,
            crate::Counts {
                messages: sales as u64 + 2,
                events: sales as u64 + 1,
                refused: 1
            }
        );
        assert_eq!(progress.load(Ordering::SeqCst), text.len() as u64);
        anyhow::ensure!(store.wait_for(stats.end, Duration::from_secs(60)));
        let snapshot = store.snapshot();
        let lines: i64 = snapshot
            .rows("slot_sales")?
            .iter()
            .map(|r| SLOT_SALES.named(r).int("lines").unwrap_or(0))
            .sum();
        assert_eq!(lines, sales + 1);
        let errors = snapshot.rows("errors")?;
        assert_eq!(errors.len(), 1);
        let source = ERRORS.named(&errors[0]).text("source");
        assert!(
            source.as_ref().is_some_and(|s| s.ends_with(":7002")),
            "{source:?}"
        );
        engine.shutdown()?;
        Ok(())
    }

    /// A bad line of a registry file loaded before a replay of older telemetry is in the
    /// `errors` view at the end, not only counted.
    #[test]
    fn a_refused_registry_line_stays_in_the_errors_view() {
        let mut registry = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        registry
            .write_all(b"{\"kind\":\"machine\",\"machineId\":\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let (records, errors) = load_registry(registry.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((records.len(), errors.len()), (0, 1));
        let mut telemetry = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        telemetry
            .write_all(
                b"{\"machineId\":\"m1\",\"type\":\"heartbeat\",\"timestamp\":1700000000000,\"payload\":{}}\n",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let stats = replay(
            telemetry.path(),
            feeders,
            &ReplayOptions {
                refused_before: errors,
                ..ReplayOptions::default()
            },
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.wait_for(stats.end, Duration::from_secs(60)));
        let snapshot = store.snapshot();
        let errors = snapshot.rows("errors").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let error = ERRORS.named(&errors[0]);
        assert!(
            error
                .text("source")
                .is_some_and(|s| s.starts_with("registry:")),
            "{errors:?}"
        );
        // Stamped at the replay's first ingestion time (its clock: the event's hour).
        let tick = BULK_TICK_MS;
        assert_eq!(
            error.get("received_at"),
            Value::Time(Timestamp(1_700_000_000_000 / tick * tick))
        );
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }

    /// A reader whose share starts in April asks first; the reader whose share starts in
    /// January must still be held at its first midnight, and the April one until the snapshots
    /// have reached April (a CI run lost two days of one machine to this race).
    #[test]
    fn the_pacer_starts_at_the_earliest_reader_whichever_asks_first() {
        const DAY: i64 = 86_400_000;
        let mut engine = Engine::start(Config {
            workers: 2,
            ..Config::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let mut feeders = engine
            .feeders()
            .unwrap_or_else(|| panic!("feeders"))
            .into_vec();
        let mut january = feeders.remove(0);
        let mut april = feeders.remove(0);
        let pacer = Arc::new(Pacer::new(DAY));
        pacer.readers(2);
        let late = {
            let pacer = pacer.clone();
            std::thread::spawn(move || pacer.allow(1, &mut april, Timestamp(100 * DAY + 5)))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !late.is_finished(),
            "a reader went ahead before the others started"
        );
        pacer
            .allow(0, &mut january, Timestamp(3 * DAY + 7))
            .unwrap_or_else(|e| panic!("{e}"));
        // The January reader may read its day, and is held at the next midnight.
        let held = {
            let pacer = pacer.clone();
            std::thread::spawn(move || {
                let r = pacer.allow(0, &mut january, Timestamp(4 * DAY));
                (r, january)
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!held.is_finished() && !late.is_finished());
        // Snapshots at every midnight let the January reader go, and the April one at April.
        pacer.archived(Timestamp(4 * DAY));
        let (r, mut january) = held.join().unwrap_or_else(|_| panic!("reader panicked"));
        r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            january.time(),
            Timestamp(4 * DAY),
            "the held reader advanced its feeder to the boundary"
        );
        for day in 5..100 {
            // The January reader reads on (the engine takes input only while its workers'
            // clocks stay close).
            january
                .advance(Timestamp(day * DAY))
                .unwrap_or_else(|e| panic!("{e}"));
            std::thread::sleep(Duration::from_millis(1));
            assert!(!late.is_finished(), "the April reader passed day {day}");
            pacer.archived(Timestamp(day * DAY));
        }
        pacer.archived(Timestamp(100 * DAY));
        late.join()
            .unwrap_or_else(|_| panic!("reader panicked"))
            .unwrap_or_else(|e| panic!("{e}"));
        engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    }
}

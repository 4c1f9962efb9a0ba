//! The Kafka source: `machine-telemetry` (and `fleet-commands`, `machine-commands`) into the
//! dataflows, and the
//! bridge's refusals (`telemetry-rejected`) into the error records, so every refused envelope is
//! counted in the `errors` / `error_counts` views next to the ones the engine itself refused.
//!
//! One consumer per timely worker, each assigned its share of the partitions (partition `p` goes
//! to worker `p % workers`). Without a checkpoint it reads from the beginning of the log: the
//! log is the record, so an engine started empty rebuilds every view from it. With a
//! checkpoint ([`Resume`]) each partition continues at the offset the checkpoint's state was
//! taken at; a [`Pause`] holds every consumer while a checkpoint is taken, so the state and the
//! offsets agree. Offsets are not committed to a group; the engine's own position per
//! partition is in [`SourceStats`].
//!
//! A [`Tap`] sees every consumed message with its topic, partition and offset: the Parquet
//! archive skips what it already holds, so reading again never archives twice. When the
//! archive's committed position is behind a checkpoint's (it had not flushed when the engine
//! stopped), reading starts at the archive's, and the messages before the checkpoint's go to the
//! tap only. `fleet-commands` is always read from its beginning (it is an upsert log, short): the
//! REST API's copy of the registry and the upsert map are rebuilt from it, and the engine gets
//! only the records after the checkpoint's offset.
//!
//! Ingestion time is the Kafka message timestamp (the bridge stamps its wall clock), so a
//! rebuild replays the same ingestion times; once a consumer has caught up and sees nothing new,
//! its worker advances with the wall clock so that time-driven views (liveness, "today") move.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use vendflow_dataflows::{Batch, ErrorRecord, Feeder, Feeders, Time};
use vendflow_protocol::command::decode_command;
use vendflow_protocol::decode::{decode_line, decode_registry};
use vendflow_protocol::{DecodeError, Timestamp};

use crate::{Position, Tap};

use super::pause::Pause;
use super::{
    COMMANDS_TOPIC, FLEET_COMMANDS_TOPIC, KafkaError, KafkaTopic, REJECTED_TOPIC, Rejection,
    TELEMETRY_TOPIC, client_config, ensure_topics_retrying,
};
use vendflow_dataflows::aligned::Positions;

/// Told of every registry record read from `fleet-commands` (the REST API keeps its copy of the
/// registry current with it).
pub type RegistryObserver = Arc<dyn Fn(crate::registry::RegistryChange<'_>) + Send + Sync>;

#[derive(Clone)]
pub struct SourceConfig {
    pub brokers: String,
    /// Partitions of `machine-telemetry` if the source has to create it.
    pub partitions: i32,
    /// Granularity of the ingestion clock.
    pub tick_ms: i64,
    pub registry_observer: Option<RegistryObserver>,
    /// Where each partition continues (a checkpoint's offsets); empty: from the beginning.
    pub resume: Resume,
    /// Holds the consumers while a checkpoint is taken.
    pub pause: Option<Arc<Pause>>,
    /// In a cluster: this process's first worker, and the workers of every process. Partitions
    /// are spread over all of them; the single-partition topics go to worker 0.
    pub cluster: Option<Share>,
    /// Cluster checkpoints: each consumer tells its worker the positions of what it sent
    /// ([`vendflow_dataflows::Feeder::mark`]), instead of being held.
    pub mark_positions: bool,
}

/// This process's part of a cluster's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub first_worker: usize,
    pub all_workers: usize,
}

/// Where the source continues after a restart from a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Per (topic, partition): the next offset the engine takes (the checkpoint's position).
    pub engine: BTreeMap<(String, i32), i64>,
    /// Per (topic, partition): where reading starts when that is before the engine's position
    /// (the archive's committed position): the messages in between go to the tap only.
    pub read_from: BTreeMap<(String, i32), i64>,
}

impl Resume {
    /// Where reading of `topic`/`partition` starts, and the first offset the engine takes.
    fn start(&self, topic: &str, partition: i32) -> (Offset, i64) {
        let key = (topic.to_owned(), partition);
        let engine = self.engine.get(&key).copied().unwrap_or(0);
        if topic == FLEET_COMMANDS_TOPIC {
            return (Offset::Beginning, engine);
        }
        match (self.read_from.get(&key), self.engine.get(&key)) {
            (Some(&read), _) if read < engine => (Offset::Offset(read.max(0)), engine),
            (_, Some(&engine)) => (Offset::Offset(engine), engine),
            (_, None) => (Offset::Beginning, 0),
        }
    }
}

/// The source's positions as a checkpoint keeps them (JSON: `[["machine-telemetry",0,1234],…]`).
pub fn positions_to_bytes(positions: &BTreeMap<(String, i32), i64>) -> Vec<u8> {
    let list: Vec<(&str, i32, i64)> = positions
        .iter()
        .map(|((t, p), o)| (t.as_str(), *p, *o))
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

/// Reads what [`positions_to_bytes`] wrote.
pub fn positions_from_bytes(
    bytes: &[u8],
) -> Result<BTreeMap<(String, i32), i64>, serde_json::Error> {
    let list: Vec<(String, i32, i64)> = serde_json::from_slice(bytes)?;
    Ok(list.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// What the source has consumed: per (topic, partition), the next offset to read.
#[derive(Default, Debug)]
pub struct SourceStats {
    pub counters: crate::Counters,
    pub positions: Mutex<BTreeMap<(String, i32), i64>>,
    /// A sample of consumed messages (at most one per consumer every 100 ms), for measuring
    /// freshness: see [`Freshness`].
    pub samples: Mutex<std::collections::VecDeque<Sample>>,
    /// Messages the log's retention deleted before the engine read them (a restart whose
    /// checkpoint is older than the log's first offset): the views miss them.
    pub lost_to_retention: AtomicU64,
}

/// A consumed message whose way to the views is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The ingestion time it lands at.
    pub at: Time,
    /// The bridge's stamp (wall clock, ms), when it produced the message to Kafka.
    pub stamped: i64,
    /// The wall clock (ms) when the engine's consumer received it.
    pub received: i64,
}

/// Freshness percentiles over the last minute, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    /// Bridge stamp → every view: the broker's transit and the engine together.
    pub p50: i64,
    pub p99: i64,
    /// Consumer received → every view: the engine alone.
    pub engine_p50: i64,
    pub engine_p99: i64,
    pub samples: usize,
}

/// Freshness: for sampled messages, the wall-clock time from the bridge stamping a message (its
/// ingestion time) until every view reflects it, and the part of it after the engine's consumer
/// received the message, over the last minute.
#[derive(Default, Debug)]
pub struct Freshness {
    /// (measured at, stamp → views ms, received → views ms), oldest first.
    recent: std::collections::VecDeque<(i64, i64, i64)>,
}

impl Freshness {
    const WINDOW_MS: i64 = 60_000;

    /// Measures the samples the views have passed at `frontier`, at wall-clock `now_ms`.
    pub fn observe(&mut self, stats: &SourceStats, frontier: Time, now_ms: i64) {
        let mut samples = stats.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.retain(|s| {
            if s.at < frontier {
                self.recent
                    .push_back((now_ms, now_ms - s.stamped, now_ms - s.received));
                false
            } else {
                true
            }
        });
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| *at < now_ms - Self::WINDOW_MS)
        {
            self.recent.pop_front();
        }
    }

    /// Percentiles of the latest measurements; `None` before the first.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.recent.is_empty() {
            return None;
        }
        let of = |pick: fn(&(i64, i64, i64)) -> i64| {
            let mut sorted: Vec<i64> = self.recent.iter().map(pick).collect();
            sorted.sort_unstable();
            let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
            (at(0.5), at(0.99))
        };
        let (p50, p99) = of(|m| m.1);
        let (engine_p50, engine_p99) = of(|m| m.2);
        Some(Percentiles {
            p50,
            p99,
            engine_p50,
            engine_p99,
            samples: self.recent.len(),
        })
    }
}

/// Positions as `topic/partition=next` pairs, the way the status and the summary line show them.
pub fn positions_line(positions: &BTreeMap<(String, i32), i64>) -> String {
    positions
        .iter()
        .map(|((t, part), o)| format!("{t}/{part}={o}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl SourceStats {
    /// Offsets consumed so far, as `topic/partition=next` pairs.
    pub fn positions_line(&self) -> String {
        positions_line(&self.positions.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The next offset of `topic`/`partition` (0 if nothing consumed).
    pub fn position(&self, topic: &str, partition: i32) -> i64 {
        let p = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        p.get(&(topic.to_owned(), partition)).copied().unwrap_or(0)
    }
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<i32, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Starts one consumer thread per worker; they run until `stop`.
pub fn start(
    config: &SourceConfig,
    feeders: Feeders,
    stats: Arc<SourceStats>,
    tap: Option<Tap>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, KafkaError> {
    let brokers = config.brokers.clone();
    let client = |brokers: &str| -> Result<BaseConsumer, KafkaError> {
        client_config(brokers)
            .set("group.id", "vendflow-engine")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // A checkpoint's offset the retention has deleted: read from the first kept one
            // (`check_retention` says what was lost), never silently from the end.
            .set("auto.offset.reset", "earliest")
            // A broker may hold a fetch open for its whole wait, which then adds to every
            // view's freshness (librdkafka's default is 500 ms; tansu answers at the deadline).
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(KafkaError::client(brokers))
    };
    let topics = [
        KafkaTopic::new(TELEMETRY_TOPIC, config.partitions),
        KafkaTopic::new(FLEET_COMMANDS_TOPIC, 1),
        KafkaTopic::new(REJECTED_TOPIC, 1),
        KafkaTopic::new(COMMANDS_TOPIC, 1),
    ];
    if !ensure_topics_retrying(&brokers, &topics, &stop) {
        return Ok(Vec::new());
    }
    let probe = client(&brokers)?;
    let telemetry_partitions =
        partitions_of(&probe, TELEMETRY_TOPIC).map_err(KafkaError::client(&brokers))?;
    let feeders = feeders.into_vec();
    let share = config.cluster.unwrap_or(Share {
        first_worker: 0,
        all_workers: feeders.len(),
    });
    let workers = share.all_workers.max(1) as i32;
    let resume = &config.resume;
    tracing::info!(
        "kafka source: {telemetry_partitions} partition(s) of {TELEMETRY_TOPIC} over {workers} worker(s) ({} here), {}",
        feeders.len(),
        if resume.engine.is_empty() {
            "from the beginning".to_owned()
        } else {
            format!(
                "from a checkpoint's offsets ({} partitions)",
                resume.engine.len()
            )
        }
    );
    if let Ok(mut positions) = stats.positions.lock() {
        positions.extend(resume.engine.iter().map(|(k, v)| (k.clone(), *v)));
    }
    if let Some(pause) = &config.pause {
        pause.set_consumers(feeders.len());
    }
    let mut handles = Vec::new();
    for (local, feeder) in feeders.into_iter().enumerate() {
        let index = share.first_worker + local;
        let consumer = client(&brokers)?;
        let mut assignment = TopicPartitionList::new();
        let mut tap_only = Vec::new();
        let mut continuity = Continuity::default();
        // Partitions read from their beginning: where that is now.
        let mut from_start: Vec<((String, i32), i64)> = Vec::new();
        let mut assign = |topic: &str, partition: i32| -> Result<(), KafkaError> {
            let (mut from, mut engine) = resume.start(topic, partition);
            if from == Offset::Beginning && topic != FLEET_COMMANDS_TOPIC {
                // The log's first kept offset, as a position: a checkpoint taken before this
                // consumer reads anything then says where it stood (not "nothing"), so a
                // restart after the retention has moved on says what it lost instead of
                // silently reading from a later beginning.
                match probe.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                    Ok((low, _)) => {
                        // The engine starts there too: what the log deleted before this
                        // start was never the engine's to miss.
                        (from, engine) = (Offset::Offset(low), low);
                        from_start.push(((topic.to_owned(), partition), low));
                    }
                    Err(e) => {
                        tracing::warn!(topic, partition, error = %e, "cannot read the log's first offset; reading from its beginning")
                    }
                }
            }
            let first = match from {
                Offset::Offset(o) => o,
                _ => 0,
            };
            if first < engine {
                tap_only.push(((topic.to_owned(), partition), engine));
            }
            if topic == TELEMETRY_TOPIC {
                // From a position, the first message must be at it; from the beginning (the
                // first offset unknown), whatever the log still keeps is the beginning.
                let resumed = matches!(from, Offset::Offset(_)).then_some(first);
                continuity.watch(topic, partition, resumed, engine);
            }
            check_retention(&probe, topic, partition, first, engine, &stats);
            assignment
                .add_partition_offset(topic, partition, from)
                .map_err(KafkaError::client(&brokers))
        };
        for p in (0..telemetry_partitions).filter(|p| p % workers == index as i32) {
            assign(TELEMETRY_TOPIC, p)?;
        }
        if index == 0 {
            for topic in [FLEET_COMMANDS_TOPIC, REJECTED_TOPIC, COMMANDS_TOPIC] {
                assign(topic, 0)?;
            }
        }
        consumer
            .assign(&assignment)
            .map_err(KafkaError::client(&brokers))?;
        if let Ok(mut positions) = stats.positions.lock() {
            positions.extend(from_start.iter().cloned());
        }
        let stats = stats.clone();
        let stop = stop.clone();
        let tap = tap.clone();
        let tick = config.tick_ms.max(1);
        let observer = config.registry_observer.clone();
        let pause = config.pause.clone();
        // The positions this consumer's worker saves: its partitions', from where it resumes.
        let marks = config.mark_positions.then(|| {
            let mine: Positions = resume
                .engine
                .iter()
                .filter(|((topic, partition), _)| {
                    assignment.find_partition(topic, *partition).is_some()
                })
                .map(|(k, v)| (k.clone(), *v))
                .chain(from_start)
                .collect();
            mine
        });
        let handle = std::thread::Builder::new()
            .name(format!("vendflow-kafka-{index}"))
            .spawn(move || {
                let sinks = Sinks {
                    tap: tap.as_ref(),
                    observer: observer.as_ref(),
                    pause: pause.as_deref(),
                };
                let reading = Reading {
                    tick,
                    tap_only,
                    continuity,
                    stop: &stop,
                    marks: std::cell::RefCell::new(marks.map(|m| (m, true))),
                };
                if let Err(e) = consume(&consumer, feeder, reading, &stats, sinks) {
                    tracing::error!("kafka consumer {index} stopped: {e}");
                }
            })
            .map_err(|e| KafkaError::Client {
                brokers: brokers.clone(),
                source: rdkafka::error::KafkaError::Subscription(e.to_string()),
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Says loudly when the log no longer holds what a restart needs: the messages between where
/// reading starts (`first`) and the log's first retained offset were deleted by its retention.
/// Those before the engine's position only cost the archive; those after it cost the views.
fn check_retention(
    probe: &BaseConsumer,
    topic: &str,
    partition: i32,
    first: i64,
    engine: i64,
    stats: &SourceStats,
) {
    if first == 0 && engine == 0 {
        return;
    }
    let low = match probe.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
        Ok((low, _)) => low,
        Err(e) => {
            tracing::warn!(topic, partition, error = %e, "cannot read the log's first offset; retention not checked");
            return;
        }
    };
    report_deleted(stats, topic, partition, first, low, engine);
}

/// Says and counts what the log's retention deleted, offsets `from..to` of a partition whose
/// engine takes from `engine`: what of it the engine had still to take is lost to the views
/// (an error, counted); what lies before the engine's position only to the archive (a warning).
fn report_deleted(
    stats: &SourceStats,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    engine: i64,
) {
    let lost = (to - from.max(engine)).max(0) as u64;
    if lost > 0 {
        stats.lost_to_retention.fetch_add(lost, Ordering::Relaxed);
        tracing::error!(
            topic,
            partition,
            engine_from = engine,
            deleted_from = from,
            deleted_to = to,
            lost,
            "the log's retention deleted messages the checkpoint had not taken: the views miss them (take checkpoints more often than the retention, and keep the engine within it)"
        );
    } else if to > from {
        tracing::warn!(
            topic,
            partition,
            deleted_from = from,
            deleted_to = to,
            "the log's retention deleted messages the archive had not written; the archive misses them"
        );
    }
}

/// Where a consumer hands what it read besides the engine.
struct Sinks<'a> {
    tap: Option<&'a Tap>,
    observer: Option<&'a RegistryObserver>,
    pause: Option<&'a Pause>,
}

/// How a consumer reads.
struct Reading<'a> {
    /// Granularity of the ingestion clock.
    tick: i64,
    /// Partitions read from before the engine's position: below that offset, messages go to
    /// the tap only.
    tap_only: Vec<((String, i32), i64)>,
    /// Whether each telemetry partition's offsets follow on without a hole.
    continuity: Continuity,
    stop: &'a AtomicBool,
    /// With cluster checkpoints: this consumer's positions, and whether they changed since its
    /// worker was last told.
    marks: std::cell::RefCell<Option<(Positions, bool)>>,
}

impl Reading<'_> {
    /// Whether the message at `offset` of `topic`/`partition` is for the tap only; a partition
    /// leaves the list once it reaches the engine's position.
    fn tap_only(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        if self.tap_only.is_empty() {
            return false;
        }
        let Some(i) = self
            .tap_only
            .iter()
            .position(|((t, p), _)| t == topic && *p == partition)
        else {
            return false;
        };
        if offset < self.tap_only[i].1 {
            true
        } else {
            self.tap_only.swap_remove(i);
            false
        }
    }
}

/// The next offset each telemetry partition must deliver. `machine-telemetry` is neither
/// compacted nor written in transactions, so its offsets follow on one by one: a hole means
/// the log's retention deleted messages before this consumer read them (librdkafka then
/// resets an out-of-range position to the first kept offset, `auto.offset.reset`). That can
/// happen after the start-up check ([`check_retention`]: deletion goes on while a restart
/// catches up) or at any time to a consumer that falls further behind than the retention;
/// either way it is said and counted, never silent.
#[derive(Default)]
struct Continuity {
    /// (topic, partition), the next offset expected (unknown until the first message of a
    /// partition read from its beginning), and the engine's first offset.
    partitions: Vec<((String, i32), Option<i64>, i64)>,
}

impl Continuity {
    fn watch(&mut self, topic: &str, partition: i32, first: Option<i64>, engine: i64) {
        self.partitions
            .push(((topic.to_owned(), partition), first, engine));
    }

    /// Notes the message at `offset`; says and counts what a hole before it lost.
    fn check(&mut self, topic: &str, partition: i32, offset: i64, stats: &SourceStats) {
        let Some((_, expected, engine)) = self
            .partitions
            .iter_mut()
            .find(|((t, p), _, _)| t == topic && *p == partition)
        else {
            return;
        };
        let from = expected.unwrap_or(offset);
        *expected = Some(offset.saturating_add(1).max(from));
        report_deleted(stats, topic, partition, from, offset, *engine);
    }
}

/// How long a consumer holds records before handing them to the engine.
const SEND_EVERY: Duration = Duration::from_millis(20);

/// How far behind the wall clock an idle consumer keeps its ingestion time: a message the
/// bridge stamped this long ago may still be on its way (bridge → broker → fetch took
/// p99 137 ms in the brokers bench), and should land at its own time. Later ones land at the
/// consumer's time.
const IN_FLIGHT_MS: i64 = 250;

fn consume(
    consumer: &BaseConsumer,
    mut feeder: Feeder,
    mut reading: Reading,
    stats: &SourceStats,
    Sinks {
        tap,
        observer,
        pause,
    }: Sinks,
) -> Result<(), vendflow_dataflows::EngineError> {
    let (tick, stop) = (reading.tick, reading.stop);
    // `fleet-commands` is an upsert log: a record replaces the one with the same key, so the
    // engine gets the old record's retraction with the new one (only this consumer reads it).
    let mut registry = crate::registry::Keyed::default();
    let intake = crate::intake::Intake::new(&stats.counters, tap);
    // Messages for the tap only (before a checkpoint's offsets) are decoded into a batch that
    // is dropped, and are not counted again.
    let replayed = crate::Counters::default();
    let replay = crate::intake::Intake::new(&replayed, tap);
    let mut clock = feeder.time();
    let mut batch = Batch::default();
    let mut idle_polls = 0u32;
    let mut last_sample = std::time::Instant::now();
    // A batch goes to the engine at least every `SEND_EVERY`, as its own ingestion time: the
    // views publish it then, not when the next tick of the clock arrives.
    let last_send = std::cell::Cell::new(std::time::Instant::now());
    let marks = std::mem::take(&mut reading.marks);
    let marks = &marks;
    let send = |feeder: &mut Feeder, clock: Time, batch: &mut Batch| {
        last_send.set(std::time::Instant::now());
        feeder.send(clock, std::mem::take(batch))?;
        if let Some((positions, changed)) = marks.borrow_mut().as_mut()
            && std::mem::take(changed)
        {
            feeder.mark(positions.clone())?;
        }
        let next = feeder.time() + 1;
        feeder.advance(next)
    };
    // Where this consumer starts, for a checkpoint taken before it sends anything.
    if let Some((positions, changed)) = marks.borrow_mut().as_mut() {
        *changed = false;
        feeder.mark(positions.clone())?;
    }
    while !stop.load(Ordering::SeqCst) {
        if let Some(pause) = pause
            && pause.requested()
        {
            // A checkpoint: everything read so far goes to the engine, then this consumer
            // holds until the state is taken, and continues at the checkpoint's frontier.
            if !batch.is_empty() {
                send(&mut feeder, clock, &mut batch)?;
            }
            if let Some(at) = pause.hold(feeder.time(), stop) {
                feeder.advance(at)?;
            }
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => {
                idle_polls = 0;
                let ts = message
                    .timestamp()
                    .to_millis()
                    .filter(|t| *t >= 0)
                    .map_or_else(Timestamp::now, Timestamp);
                let at = ts.round_up(tick);
                let topic = message.topic().to_owned();
                let partition = message.partition();
                reading
                    .continuity
                    .check(&topic, partition, message.offset(), stats);
                let tap_only = reading.tap_only(&topic, partition, message.offset());
                let mut scratch = Batch::default();
                let (batch, intake, received_at) = if tap_only {
                    (&mut scratch, &replay, at)
                } else {
                    if at > clock && !batch.is_empty() {
                        send(&mut feeder, clock, &mut batch)?;
                    }
                    clock = clock.max(at);
                    if last_sample.elapsed() >= Duration::from_millis(100) {
                        last_sample = std::time::Instant::now();
                        if let Ok(mut s) = stats.samples.lock()
                            && s.len() < 10_000
                        {
                            s.push_back(Sample {
                                at: clock,
                                stamped: ts.ms(),
                                received: Timestamp::now().0,
                            });
                        }
                    }
                    (&mut batch, &intake, clock)
                };
                let source = format!("kafka:{topic}/{partition}@{}", message.offset());
                let stream = format!("{topic}/{partition}");
                let payload = message.payload().unwrap_or(&[]);
                let at = Position {
                    stream: &stream,
                    offset: message.offset(),
                    received_at,
                };
                let taken = intake.begin(batch, &source, at, payload);
                if topic == FLEET_COMMANDS_TOPIC && message.payload().is_none() {
                    // A tombstone: the key's record is deleted.
                    match message.key().map(std::str::from_utf8) {
                        Some(Ok(key)) => {
                            if let Some(observe) = observer {
                                observe(crate::registry::RegistryChange::Delete(key));
                            }
                            registry.delete(key, &mut batch.registry);
                        }
                        _ => intake.refuse(
                            batch,
                            &taken,
                            &vendflow_protocol::DecodeError::new(
                                vendflow_protocol::ErrorKind::Schema,
                                "a registry delete (a message with no payload) needs the record's key as its UTF-8 message key",
                            ),
                        ),
                    }
                } else if topic == FLEET_COMMANDS_TOPIC {
                    match decode_registry(payload) {
                        Ok(record) => {
                            if let Some(observe) = observer {
                                observe(crate::registry::RegistryChange::Upsert(&record));
                            }
                            registry.upsert(record, &mut batch.registry);
                        }
                        Err(e) => intake.refuse(batch, &taken, &e),
                    }
                } else if topic == COMMANDS_TOPIC {
                    match decode_command(payload) {
                        Ok(command) => batch.commands.push(command),
                        Err(e) => intake.refuse(batch, &taken, &e),
                    }
                } else if topic == REJECTED_TOPIC {
                    // Refused (and counted) by the bridge: recorded here, not counted again.
                    batch
                        .errors
                        .push(rejection_record(payload, received_at, &source));
                } else {
                    intake.decoded(batch, &taken, decode_line(payload));
                }
                intake.end(batch, taken);
                if tap_only {
                    continue;
                }
                if let Some((positions, changed)) = marks.borrow_mut().as_mut() {
                    positions.insert((topic.clone(), partition), message.offset() + 1);
                    *changed = true;
                }
                if let Ok(mut p) = stats.positions.lock() {
                    p.insert((topic, partition), message.offset() + 1);
                }
                if batch.events.len() >= 8192
                    || (!batch.is_empty() && last_send.get().elapsed() >= SEND_EVERY)
                {
                    send(&mut feeder, clock, batch)?;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            None => {
                idle_polls += 1;
                if !batch.is_empty() {
                    send(&mut feeder, clock, &mut batch)?;
                }
                // Caught up: let time pass with the wall clock (`IN_FLIGHT_MS` behind, so
                // messages the bridge stamped just now still land at their own time).
                if idle_polls >= 4 {
                    let now = Timestamp::now()
                        .saturating_sub(IN_FLIGHT_MS)
                        .window_start(tick);
                    if now > clock {
                        clock = now;
                    }
                }
                feeder.advance(clock + 1)?;
            }
        }
    }
    Ok(())
}

/// A `telemetry-rejected` record as an error record: its source is where the envelope came in
/// (`mqtt:machines/<id>/telemetry`, `http:<id>`), its kind the bridge's code.
fn rejection_record(payload: &[u8], received_at: Timestamp, source: &str) -> ErrorRecord {
    match serde_json::from_slice::<Rejection>(payload) {
        Ok(r) => ErrorRecord {
            received_at: Timestamp(r.received_at),
            source: r.source(),
            kind: r.code,
            message: r.reason,
            raw: r.payload,
        },
        Err(e) => ErrorRecord::new(
            received_at,
            source,
            &DecodeError::new(
                vendflow_protocol::ErrorKind::Syntax,
                format!("not a telemetry-rejected record: {e}"),
            ),
            payload,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_in_a_partitions_offsets_is_counted_as_lost_to_retention() {
        let stats = SourceStats::default();
        let lost = || stats.lost_to_retention.load(Ordering::Relaxed);
        let mut c = Continuity::default();
        // Resumed: the archive reads from 10, the engine's checkpoint took up to 15.
        c.watch(TELEMETRY_TOPIC, 0, Some(10), 15);
        // From the beginning: whatever comes first is the beginning.
        c.watch(TELEMETRY_TOPIC, 1, None, 0);
        for offset in [10, 11, 12] {
            c.check(TELEMETRY_TOPIC, 0, offset, &stats);
        }
        c.check(TELEMETRY_TOPIC, 1, 100, &stats);
        c.check(TELEMETRY_TOPIC, 1, 101, &stats);
        c.check("fleet-commands", 0, 7, &stats);
        c.check("fleet-commands", 0, 70, &stats);
        assert_eq!(lost(), 0, "no hole yet");
        // 13 and 14 were only the archive's; 15..20 were the engine's.
        c.check(TELEMETRY_TOPIC, 0, 20, &stats);
        assert_eq!(lost(), 5);
        // A consumer fallen behind the retention mid-stream.
        c.check(TELEMETRY_TOPIC, 1, 150, &stats);
        assert_eq!(lost(), 5 + 48);
        // The same offset again (a re-fetch) is no hole.
        c.check(TELEMETRY_TOPIC, 1, 150, &stats);
        c.check(TELEMETRY_TOPIC, 1, 151, &stats);
        assert_eq!(lost(), 53);
        // A hole only the archive had to fill.
        let mut c = Continuity::default();
        c.watch(TELEMETRY_TOPIC, 0, Some(0), 40);
        c.check(TELEMETRY_TOPIC, 0, 30, &stats);
        assert_eq!(lost(), 53);
    }

    #[test]
    fn freshness_counts_a_message_once_the_views_pass_its_time() {
        let stats = SourceStats::default();
        let mut f = Freshness::default();
        stats
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([
                Sample {
                    at: Timestamp(1_000),
                    stamped: 900,
                    received: 1_000,
                },
                Sample {
                    at: Timestamp(2_000),
                    stamped: 1_950,
                    received: 2_100,
                },
            ]);
        f.observe(&stats, Timestamp(1_000), 1_100);
        assert_eq!(
            f.percentiles(),
            None,
            "frontier 1000 has not passed time 1000"
        );
        f.observe(&stats, Timestamp(1_001), 1_200);
        let p = |p50, p99, engine_p50, engine_p99, samples| Percentiles {
            p50,
            p99,
            engine_p50,
            engine_p99,
            samples,
        };
        assert_eq!(f.percentiles(), Some(p(300, 300, 200, 200, 1)));
        f.observe(&stats, Timestamp(5_000), 2_150);
        // Stamp → views 300 and 200 ms; received → views 200 and 50 ms.
        assert_eq!(f.percentiles(), Some(p(300, 300, 200, 200, 2)));
        // A minute later the old measurements have left the window.
        f.observe(&stats, Timestamp(5_000), 70_000);
        assert_eq!(f.percentiles(), None);
    }

    #[test]
    fn a_rejection_becomes_an_error_record_named_by_where_it_came_in() {
        let mut r = Rejection::new(1_000, "bad_signature", "bad signature".into(), b"{}");
        r.mqtt_topic = Some("machines/mach_00001/telemetry".into());
        let e = rejection_record(&r.to_bytes(), Timestamp(5), "kafka:telemetry-rejected/0@0");
        assert_eq!(
            (e.received_at, e.source.as_str(), e.kind.as_str()),
            (
                Timestamp(1_000),
                "mqtt:machines/mach_00001/telemetry",
                "bad_signature"
            )
        );
        let mut r = Rejection::new(1_000, "too_large", "big".into(), &[b'x'; 20_000]);
        r.http_machine_id = Some("mach_00002".into());
        let e = rejection_record(&r.to_bytes(), Timestamp(5), "k");
        assert_eq!(e.source, "http:mach_00002");
        assert!(e.raw.len() < 20_000, "the payload is cut");

        let e = rejection_record(b"not json", Timestamp(5), "kafka:telemetry-rejected/0@7");
        assert_eq!(
            (e.source.as_str(), e.kind.as_str()),
            ("kafka:telemetry-rejected/0@7", "syntax")
        );
    }
}

/// One partition's consumer lag: how far the engine's position is behind the log's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset the engine reads.
    pub position: i64,
    /// The log's end (high watermark): the offset the next produced message gets.
    pub end: i64,
}

impl PartitionLag {
    /// Messages in the log the engine has not read yet.
    pub fn lag(&self) -> i64 {
        (self.end - self.position).max(0)
    }
}

/// Measures the source's lag on every partition of the topics it reads, with its own
/// metadata-only client (it joins no group, so it never moves a partition between consumers).
pub struct LagProbe {
    consumer: BaseConsumer,
    brokers: String,
}

impl LagProbe {
    pub fn new(brokers: &str) -> Result<LagProbe, KafkaError> {
        let consumer = client_config(brokers)
            .set("group.id", "vendflow-lag-probe")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(KafkaError::client(brokers))?;
        Ok(LagProbe {
            consumer,
            brokers: brokers.to_owned(),
        })
    }

    /// Each partition of `machine-telemetry`, `fleet-commands`, `telemetry-rejected` and
    /// `machine-commands` against `stats` (blocks for at most `timeout` per broker request).
    pub fn measure(
        &self,
        stats: &SourceStats,
        timeout: Duration,
    ) -> Result<Vec<PartitionLag>, KafkaError> {
        let client = KafkaError::client(&self.brokers);
        let mut out = Vec::new();
        for topic in [
            TELEMETRY_TOPIC,
            FLEET_COMMANDS_TOPIC,
            REJECTED_TOPIC,
            COMMANDS_TOPIC,
        ] {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(client)?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len() as i32);
            for partition in 0..partitions {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .map_err(client)?;
                out.push(PartitionLag {
                    topic: topic.to_owned(),
                    partition,
                    // Nothing read yet: the engine starts at the log's first retained offset.
                    position: stats.position(topic, partition).max(low),
                    end: high,
                });
            }
        }
        Ok(out)
    }
}

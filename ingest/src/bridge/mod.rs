//! The MQTT → Kafka bridge (`vendflow bridge`).
//!
//! Subscribes `machines/+/telemetry` with QoS 1 on a persistent session (stable client id, no
//! clean start, manual acknowledgements) and produces each envelope to `machine-telemetry`,
//! keyed by machine id, with an idempotent producer. A message is acknowledged to the MQTT broker
//! only after Kafka acknowledged it, and acknowledgements go out in the order messages came in;
//! so a bridge killed at any moment leaves every unacknowledged message with the broker, which
//! delivers it again to the next bridge on the same session. Redelivery is harmless: the
//! dataflows deduplicate sale lines.
//!
//! The broker's own acknowledgement to a machine (its PUBACK) comes before the broker has
//! written the message down: Mosquitto killed with `kill -9` loses what it had acknowledged but
//! not yet handed on or saved. So once a message is durable (in `machine-telemetry`, or refused
//! into `telemetry-rejected`), the bridge also sends the machine a **delivery receipt** on
//! `machines/{id}/delivered` ([`vendflow_protocol::topics::receipt`] of the payload; the
//! receipts due for one machine go in one message, a line each). A machine
//! lets a message leave its outbox on the receipt and sends again what has none after a while
//! (`vendflow publish --receipts`); the copy is known here as a redelivery.
//!
//! Before forwarding, the bridge checks that the envelope's machine is the topic's and verifies
//! its signature, freshness and nonce ([`crate::auth::Verifier`]). A refused envelope goes to
//! `telemetry-rejected` with the reason (and is then acknowledged): never silently away.
//!
//! Backpressure: the broker bounds what the bridge holds. Mosquitto sends a session at most
//! `max_inflight_messages` unacknowledged messages and queues the rest, and the bridge
//! acknowledges only what Kafka has; so with Kafka away the bridge holds that many and waits
//! while librdkafka retries (idempotently, without a delivery timeout). Above `max_inflight`
//! messages waiting for Kafka the bridge also slows its reading.

mod commands;
mod options;

pub use crate::gateway::{BridgeStats, PendingCommands, answered_commands};
pub use commands::Downlink;
pub use options::BridgeOptions;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rumqttc::{Client, Event, MqttOptions, Packet, Publish, QoS};
use vendflow_protocol::Timestamp;
use vendflow_protocol::auth::Signed;
use vendflow_protocol::topics::Topic;

use crate::auth::{Admission, Refusal, Verifier, machine_of_topic};
use crate::kafka::{
    COMMANDS_TOPIC, KafkaError, KafkaTopic, REJECTED_TOPIC, Rejection, TELEMETRY_TOPIC,
    client_config, ensure_topics_retrying,
};

/// The MQTT subscriptions: telemetry, and machines' answers to commands (the same signed
/// envelopes, carrying `command_ack` events), both forwarded to `machine-telemetry`.
pub const TELEMETRY_FILTER: &str = Topic::Telemetry.filter();
pub const ACKS_FILTER: &str = Topic::Acks.filter();

/// The largest packet MQTT can carry (its remaining-length field tops out at 256 MiB).
const MQTT_MAX_PACKET: usize = 268_435_455;
/// The producer's default `linger.ms` (`--linger-ms`), librdkafka's being 5.
///
/// An idempotent librdkafka producer (2.12) sends a partition's next produce request only once
/// fewer than five of its messages are in flight, so with batches of five or more it waits for
/// each answer; while it waits, a message whose linger has passed makes its broker thread poll
/// with no timeout, over and over, until the answer comes. With 5 ms and a broker that answers
/// in tens of milliseconds under load, that thread took a third of a core at 10× the
/// 50,000-machine rate; with 50 ms, half as much per envelope (`benches/README.md`, session
/// 72). A message waits up to this long more before Kafka has it.
pub const DEFAULT_LINGER_MS: u32 = 50;

#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// Stable across restarts: the broker keeps the session (and unacknowledged messages) by it.
    pub client_id: String,
    pub mqtt_credentials: Option<(String, String)>,
    pub kafka: String,
    /// Partitions of `machine-telemetry` when the bridge creates it.
    pub partitions: i32,
    /// `retention.ms` of `machine-telemetry` if the bridge creates it (None: the broker's).
    pub telemetry_retention: Option<Duration>,
    pub max_inflight: usize,
    /// The producer's `linger.ms`: how long it gathers messages into one request.
    pub linger_ms: u32,
    /// Larger MQTT payloads are refused (`too_large`), not forwarded.
    pub max_payload: usize,
    /// Also accept `POST /api/telemetry` here (see [`crate::http`]).
    pub http: Option<std::net::SocketAddr>,
    /// Serve `http` over TLS with this certificate chain and private key (PEM files).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("kafka producer: {0}")]
    Producer(RdError),
    #[error(transparent)]
    Http(#[from] crate::http::ServeError),
    #[error("cannot start the MQTT thread: {0}")]
    Thread(std::io::Error),
    /// Options that cannot be carried out (bad input).
    #[error("{0}")]
    Options(String),
}

/// One MQTT message on its way: acknowledged once Kafka has it and everything before it.
struct Pending {
    seq: u64,
    /// The MQTT connection it came on: an acknowledgement only means something there.
    connection: u64,
    publish: Publish,
    done: bool,
    /// For the verifier once durable.
    signed: Option<Signed>,
    /// When it was taken: the oldest waiting long holds back every acknowledgement behind it.
    taken: Instant,
}

/// A produce to (re)try.
struct Outgoing {
    seq: u64,
    topic: &'static str,
    key: String,
    payload: Vec<u8>,
}

struct Shared {
    pending: VecDeque<Pending>,
    /// Durable in Kafka, in arrival order, waiting for the MQTT client to take the PUBACK.
    /// Only the thread that drives the MQTT event loop sends them (see [`send_acks`]): an
    /// acknowledgement dropped because the client's request channel was full would leave the
    /// message in the broker's inflight window until the next reconnect, and enough of them
    /// stall the whole subscription.
    acks: VecDeque<Publish>,
    /// Delivery receipts due (`machines/{id}/delivered`, the receipt of the payload): one for
    /// every message made durable, whichever connection it came on. Best effort (QoS 0, at
    /// most [`MAX_RECEIPTS`] waiting): a machine that misses one sends the message again, and
    /// the bridge knows it as a redelivery.
    receipts: VecDeque<(String, String)>,
    retry: Vec<Outgoing>,
    verifier: Arc<Mutex<Verifier>>,
    next_seq: u64,
    /// Counts MQTT connections; see [`Pending::connection`].
    connection: u64,
}

struct Ctx {
    shared: Arc<Mutex<Shared>>,
    stats: Arc<BridgeStats>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Outgoing>;

    fn delivery(&self, result: &DeliveryResult<'_>, out: Box<Outgoing>) {
        let mut shared = match self.shared.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err((e, _)) = result {
            // Without a delivery timeout this is a permanent error (e.g. authorisation): keep
            // the message unacknowledged and try again, loudly.
            tracing::error!(error = %e, topic = out.topic, "kafka refused a message; will retry");
            self.stats.kafka_retries.fetch_add(1, Ordering::Relaxed);
            shared.retry.push(*out);
            return;
        }
        let Shared {
            pending, verifier, ..
        } = &mut *shared;
        if let Some(p) = pending.iter_mut().find(|p| p.seq == out.seq) {
            p.done = true;
            if let Some(signed) = p.signed.take() {
                let mut verifier = verifier.lock().unwrap_or_else(|e| e.into_inner());
                verifier.forwarded(&signed, &out.payload);
                let (nonces, bytes) = verifier.nonce_window_size();
                self.stats.nonces.store(nonces as u64, Ordering::Relaxed);
                self.stats
                    .nonce_bytes
                    .store(bytes as u64, Ordering::Relaxed);
            }
        }
        if out.topic == TELEMETRY_TOPIC {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        shared.release();
        self.stats
            .inflight
            .store(shared.pending.len() as u64, Ordering::Relaxed);
    }
}

/// How long the oldest message may wait for Kafka before the bridge says so.
const STALLED: Duration = Duration::from_secs(30);

/// Receipts waiting for the MQTT client at most (the oldest go first when more are due).
const MAX_RECEIPTS: usize = 100_000;

impl Shared {
    /// Moves the done messages at the front of `pending` to `acks`, and their receipts to
    /// `receipts`.
    fn release(&mut self) {
        while self.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = self.pending.pop_front() {
                let topic = &p.publish.topic;
                if let Some(machine) = Topic::Telemetry
                    .machine(topic)
                    .or_else(|| Topic::Acks.machine(topic))
                {
                    if self.receipts.len() >= MAX_RECEIPTS {
                        self.receipts.pop_front();
                    }
                    self.receipts.push_back((
                        Topic::Delivered.of(machine),
                        vendflow_protocol::topics::receipt(&p.publish.payload),
                    ));
                }
                // From an earlier connection: the broker redelivers it on this one instead.
                if p.connection == self.connection {
                    self.acks.push_back(p.publish);
                }
            }
        }
    }
}

fn rejection(topic: &str, refusal: &Refusal, payload: &[u8], now_ms: i64) -> Vec<u8> {
    let mut r = Rejection::new(now_ms, refusal.code(), refusal.to_string(), payload);
    r.mqtt_topic = Some(topic.to_owned());
    r.to_bytes()
}

/// Runs the bridge until `stop`.
pub fn run(
    config: &BridgeConfig,
    verifier: Verifier,
    stats: Arc<BridgeStats>,
    stop: &AtomicBool,
) -> Result<(), BridgeError> {
    let verifier = Arc::new(Mutex::new(verifier));
    let pending_commands = Arc::new(PendingCommands::default());
    // HTTP first: a bad certificate is a start-up error, and while Kafka is away machines on
    // HTTP are told so (503) rather than left without an answer.
    // Told to stop when `run` returns, on every path (dropped).
    let _http = match config.http {
        Some(addr) => Some(serve_http(
            addr,
            config.tls.as_ref(),
            &config.kafka,
            verifier.clone(),
            pending_commands.clone(),
            stats.clone(),
        )?),
        None => None,
    };
    let topics = [
        KafkaTopic::new(TELEMETRY_TOPIC, config.partitions)
            .with_retention(config.telemetry_retention),
        KafkaTopic::new(REJECTED_TOPIC, 1),
        KafkaTopic::new(COMMANDS_TOPIC, 1),
    ];
    if !ensure_topics_retrying(&config.kafka, &topics, stop) {
        return Ok(());
    }
    let mut downlink = Downlink::new(&config.kafka)?;

    let mut options = MqttOptions::new(&config.client_id, &config.mqtt_host, config.mqtt_port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Take any packet MQTT allows and refuse oversized payloads ourselves: a packet over the
        // client's limit would drop the connection, and the broker would redeliver it forever.
        .set_max_packet_size(MQTT_MAX_PACKET, 1 << 20);
    if let Some((user, pass)) = &config.mqtt_credentials {
        options.set_credentials(user, pass);
    }
    let (client, connection) = Client::new(options, 1024);
    let receipts = ReceiptsConnection::start(config)?;

    let shared = Arc::new(Mutex::new(Shared {
        pending: VecDeque::new(),
        acks: VecDeque::new(),
        receipts: VecDeque::new(),
        retry: Vec::new(),
        verifier: verifier.clone(),
        next_seq: 0,
        connection: 0,
    }));
    let producer: ThreadedProducer<Ctx> = client_config(&config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // No delivery timeout: a message leaves the bridge only into Kafka.
        .set("message.timeout.ms", "0")
        .set("linger.ms", config.linger_ms.to_string())
        .set("queue.buffering.max.messages", "100000")
        .create_with_context(Ctx {
            shared: shared.clone(),
            stats: stats.clone(),
        })
        .map_err(BridgeError::Producer)?;

    let send = |out: Outgoing| -> Result<(), Outgoing> {
        let record =
            BaseRecord::with_opaque_to(out.topic, Box::new(out)).timestamp(Timestamp::now().0);
        // The record borrows from the box it carries; build key and payload from it.
        let (key, payload) = {
            let o = &record.delivery_opaque;
            (o.key.clone(), o.payload.clone())
        };
        let record = record.key(&key).payload(&payload);
        producer.send(record).map_err(|(e, record)| {
            if !matches!(e, RdError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                tracing::warn!(error = %e, "kafka produce failed; will retry");
            }
            *record.delivery_opaque
        })
    };

    // The connection is driven by a thread of its own, always polling: rumqttc hands the
    // broker one request (an acknowledgement, a receipt) per poll, and a loop that polls only
    // between its own work let thousands of acknowledgements wait (seen: 4,600), which holds
    // Mosquitto's inflight window shut and starves the bridge of messages.
    let (events_tx, events) = std::sync::mpsc::sync_channel(EVENT_BATCH);
    let driver_done = Arc::new(AtomicBool::new(false));
    let driver = {
        let (stats, host, port, done) = (
            stats.clone(),
            config.mqtt_host.clone(),
            config.mqtt_port,
            driver_done.clone(),
        );
        std::thread::Builder::new()
            .name("bridge-mqtt".into())
            .spawn(move || {
                drive(
                    connection,
                    |event| events_tx.send(event).is_ok(),
                    Some(&stats.mqtt_reconnects),
                    &host,
                    port,
                    &done,
                )
            })
            .map_err(BridgeError::Thread)?
    };
    let mut last_status = Instant::now();
    let mut subscriptions_due: Vec<&str> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        while let Some(filter) = subscriptions_due.last() {
            match client.try_subscribe(*filter, QoS::AtLeastOnce) {
                Ok(()) => {
                    subscriptions_due.pop();
                }
                Err(rumqttc::ClientError::TryRequest(_)) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe {filter}");
                    subscriptions_due.pop();
                }
            }
        }
        // Retries first, in sequence order, so Kafka sees a machine's envelopes in order.
        let mut retries = {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut s.retry)
        };
        retries.sort_by_key(|o| o.seq);
        let mut still = Vec::new();
        for out in retries {
            if let Err(out) = send(out) {
                still.push(out);
            }
        }
        if !still.is_empty() {
            shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retry
                .extend(still);
            std::thread::sleep(Duration::from_millis(50));
        }
        let inflight = shared.lock().map_or(0, |s| s.pending.len());
        if inflight >= config.max_inflight {
            // Let Kafka catch up; the broker keeps the rest.
            std::thread::sleep(Duration::from_millis(10));
            producer.poll(Duration::ZERO);
        }
        send_acks(&shared, &client, &receipts.client, &stats);
        downlink.pump(&client, &pending_commands, &stats);
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            tracing::info!("bridge: {}", stats.line());
            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(oldest) = s.pending.front().filter(|p| p.taken.elapsed() > STALLED) {
                tracing::warn!(
                    topic = %oldest.publish.topic,
                    seq = oldest.seq,
                    waited_s = oldest.taken.elapsed().as_secs(),
                    done = oldest.done,
                    kafka_in_flight = producer.in_flight_count(),
                    retries_waiting = s.retry.len(),
                    "the oldest message still waits for Kafka; every acknowledgement and receipt behind it waits too"
                );
            }
        }
        let first = match events.recv_timeout(Duration::from_millis(100)) {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let batch = std::iter::once(first).chain(events.try_iter().take(EVENT_BATCH));
        for event in batch {
            match event {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    // Packet ids of the previous connection mean nothing now; what was not
                    // acknowledged there comes again.
                    {
                        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                        s.connection += 1;
                        s.acks.clear();
                    }
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to mqtt {}:{}",
                        config.mqtt_host,
                        config.mqtt_port
                    );
                    // Subscribed at the top of the loop, as soon as the client's request channel
                    // takes it: it may be full of acknowledgements and receipts for this very
                    // connection, and a subscription dropped here would leave a session without
                    // one (`session_present=false`) receiving nothing.
                    subscriptions_due = vec![ACKS_FILTER, TELEMETRY_FILTER];
                }
                Event::Incoming(Packet::SubAck(ack)) => {
                    // From here on the broker keeps telemetry for this session even while the
                    // bridge is away; before the first subscription it has nowhere to keep it.
                    tracing::info!(return_codes = ?ack.return_codes, "subscribed");
                }
                Event::Incoming(Packet::PubAck(_)) => downlink.acknowledged(&stats),
                Event::Incoming(Packet::Publish(publish)) => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let mut out = {
                        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                        admit(
                            &mut s,
                            &stats,
                            publish,
                            config.max_payload,
                            &pending_commands,
                        )
                    };
                    while let Some(o) = out.take() {
                        if let Err(o) = send(o) {
                            // Queue full: wait for deliveries, then try the same message again.
                            producer.poll(Duration::from_millis(10));
                            out = Some(o);
                        }
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    tracing::info!("bridge stopping: {}", stats.line());
    // Give Kafka a moment for what is in flight; anything not acknowledged stays with the broker.
    let _ = producer.flush(Duration::from_secs(5));
    // The driver ends once told, or once its connection has no client left.
    driver_done.store(true, Ordering::SeqCst);
    let _ = client.disconnect();
    drop(client);
    drop(downlink);
    drop(events);
    let _ = driver.join();
    receipts.stop();
    Ok(())
}

/// The connection delivery receipts leave on, beside the one that takes the telemetry.
///
/// rumqttc's event loop writes one request per turn (and flushes it), and a fleet's receipts
/// go to as many topics as machines sent: with 50,000 machines nearly one receipt message per
/// envelope, as many requests as the acknowledgements. On one connection the two shared that
/// loop: the acknowledgements fell behind, the broker's window to the bridge stayed shut, and
/// the broker queued the fleet's messages for seconds (soak, 10× on 2 cores: receipts after
/// p50 8.5 s on one connection, 5.4 s on two; 2,500 machines at the same rate: 0.4 s).
/// QoS 0 and a clean session: a receipt lost while this connection is down only means a
/// message sent again.
struct ReceiptsConnection {
    client: Client,
    done: Arc<AtomicBool>,
    driver: std::thread::JoinHandle<()>,
}

impl ReceiptsConnection {
    fn start(config: &BridgeConfig) -> Result<ReceiptsConnection, BridgeError> {
        let mut options = MqttOptions::new(
            format!("{}-receipts", config.client_id),
            &config.mqtt_host,
            config.mqtt_port,
        );
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_clean_session(true)
            .set_max_packet_size(MQTT_MAX_PACKET, 1 << 20);
        if let Some((user, pass)) = &config.mqtt_credentials {
            options.set_credentials(user, pass);
        }
        let (client, connection) = Client::new(options, 1024);
        let done = Arc::new(AtomicBool::new(false));
        let driver = {
            let (done, host, port) = (done.clone(), config.mqtt_host.clone(), config.mqtt_port);
            std::thread::Builder::new()
                .name("bridge-receipts".into())
                .spawn(move || drive(connection, |_| true, None, &host, port, &done))
                .map_err(BridgeError::Thread)?
        };
        Ok(ReceiptsConnection {
            client,
            done,
            driver,
        })
    }

    fn stop(self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        drop(self.client);
        let _ = self.driver.join();
    }
}

/// MQTT events taken per turn of the bridge's loop, and the driver's queue.
const EVENT_BATCH: usize = 1024;

/// Polls an MQTT connection for ever, handing its events to `take` (the bridge's loop, through a
/// bounded queue: a slow loop slows the reading, not the memory), reconnecting with backoff and
/// counting each loss in `reconnects`. Ends once `done`, when `take` says no more, or when
/// every client is gone.
fn drive(
    mut connection: rumqttc::Connection,
    mut take: impl FnMut(Event) -> bool,
    reconnects: Option<&AtomicU64>,
    host: &str,
    port: u16,
    done: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(100);
    while !done.load(Ordering::SeqCst) {
        match connection.recv() {
            Ok(Ok(event)) => {
                backoff = Duration::from_millis(100);
                if !take(event) {
                    return;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    error = %e,
                    "mqtt {host}:{port} unavailable; retrying in {} ms",
                    backoff.as_millis()
                );
                if let Some(reconnects) = reconnects {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(rumqttc::RecvError) => return,
        }
    }
}

/// Hands the delivery receipts that are due to their own connection (`receipts`), then the
/// acknowledgements to the telemetry's (`client`, in order), as many as each request channel
/// takes; the rest wait for the next turn of the loop (never dropped).
fn send_acks(shared: &Mutex<Shared>, client: &Client, receipts: &Client, stats: &BridgeStats) {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    // Redeliveries of what is already in Kafka are done as soon as they are admitted.
    s.release();
    // Receipts first: a machine without its receipt sends the message again, and each copy
    // is one more message to take and acknowledge. Behind a backlog of acknowledgements (the
    // client hands the broker one request per turn of its loop, and reads up to ten packets in
    // one) receipts once waited for minutes, the machines resent everything, and the resends
    // grew the backlog: the bridge stopped forwarding (seen on a loaded 2-core machine, 40,000
    // acknowledgements waiting). Now they leave on a connection of their own
    // ([`ReceiptsConnection`]), and neither waits behind the other. One message per machine for all its receipts due, one receipt per line: after an outage
    // thousands are due at once, and a message each would flood the broker and the machines.
    if !s.receipts.is_empty() {
        let mut by_machine: std::collections::BTreeMap<String, String> = Default::default();
        for (topic, receipt) in s.receipts.drain(..) {
            let lines = by_machine.entry(topic).or_default();
            if !lines.is_empty() {
                lines.push('\n');
            }
            lines.push_str(&receipt);
        }
        let mut unsent = Vec::new();
        for (topic, lines) in by_machine {
            if !unsent.is_empty()
                || receipts
                    .try_publish(topic.as_str(), QoS::AtMostOnce, false, lines.as_bytes())
                    .is_err()
            {
                unsent.push((topic, lines));
            }
        }
        // The client's queue is full: what is left goes on the next turn.
        for (topic, lines) in unsent {
            for receipt in lines.lines() {
                s.receipts.push_back((topic.clone(), receipt.to_owned()));
            }
        }
    }
    while let Some(publish) = s.acks.front() {
        if client.try_ack(publish).is_err() {
            break;
        }
        s.acks.pop_front();
    }
    stats
        .acks_waiting
        .store(s.acks.len() as u64, Ordering::Relaxed);
    // Released above: what is left waits for Kafka, or behind one that does.
    stats
        .inflight
        .store(s.pending.len() as u64, Ordering::Relaxed);
}

/// Serves `POST /api/telemetry` on `addr` from a runtime of its own, into the same topics.
fn serve_http(
    addr: std::net::SocketAddr,
    tls: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    kafka: &str,
    verifier: Arc<Mutex<Verifier>>,
    pending_commands: Arc<PendingCommands>,
    stats: Arc<BridgeStats>,
) -> Result<crate::server::Server, BridgeError> {
    let producer: rdkafka::producer::FutureProducer = client_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(BridgeError::Producer)?;
    let state = crate::http::Telemetry {
        verifier,
        sink: crate::http::Sink::Kafka(producer),
        requests: AtomicU64::new(0),
        pending_commands,
        stats,
        rate: crate::http::MachineRate::default(),
    };
    Ok(crate::http::spawn(
        addr,
        tls,
        state,
        None,
        axum::Router::new(),
    )?)
}

/// Checks one message and queues it; returns what to produce.
fn admit(
    s: &mut Shared,
    stats: &BridgeStats,
    publish: Publish,
    max_payload: usize,
    pending_commands: &PendingCommands,
) -> Option<Outgoing> {
    let now = Timestamp::now().0;
    let seq = s.next_seq;
    s.next_seq += 1;
    let verdict = machine_of_topic(&publish.topic, Topic::Telemetry)
        .or_else(|_| machine_of_topic(&publish.topic, Topic::Acks))
        .and_then(|machine| {
            if publish.payload.len() > max_payload {
                return Err(Refusal::TooLarge {
                    bytes: publish.payload.len(),
                    limit: max_payload,
                });
            }
            let admission = s.verifier.lock().unwrap_or_else(|e| e.into_inner()).check(
                machine,
                &publish.payload,
                now,
            )?;
            Ok((machine.to_owned(), admission))
        });
    let (out, signed) = match verdict {
        Ok((machine, Admission::Forward(signed))) => {
            pending_commands.answered(&machine, &publish.payload);
            (
                Some(Outgoing {
                    seq,
                    topic: TELEMETRY_TOPIC,
                    key: machine,
                    payload: publish.payload.to_vec(),
                }),
                signed,
            )
        }
        // The same bytes again, already durable: the broker redelivering after a reconnect (its
        // DUP flag), or the machine sending again what it has no delivery receipt for. Either
        // way it is acknowledged and receipted (again), not produced again. Someone replaying a
        // captured envelope within the freshness window gains nothing either: it is not
        // forwarded. (The same nonce with other bytes is a `replay`, refused and reported.)
        Ok((machine, Admission::AlreadyForwarded { nonce })) => {
            if publish.dup {
                stats.redelivered.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.retransmitted.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(machine_id = %machine, %nonce, dup = publish.dup, "already forwarded; receipted again");
            (None, None)
        }
        Err(refusal) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %publish.topic, code = refusal.code(), "refused: {refusal}");
            let key = publish.topic.split('/').nth(1).unwrap_or("").to_owned();
            (
                Some(Outgoing {
                    seq,
                    topic: REJECTED_TOPIC,
                    key,
                    payload: rejection(&publish.topic, &refusal, &publish.payload, now),
                }),
                None,
            )
        }
    };
    s.pending.push_back(Pending {
        seq,
        connection: s.connection,
        publish,
        done: out.is_none(),
        signed,
        taken: Instant::now(),
    });
    stats
        .inflight
        .store(s.pending.len() as u64, Ordering::Relaxed);
    out
}

//! Simulated machines publishing over real MQTT, as the fleet does in production.
//!
//! Each envelope is signed with its machine's key (`vendflow_protocol::auth`) and published with
//! QoS 1 to `machines/{id}/telemetry`. Simulated machines get deterministic secrets derived from
//! the seed, so the platform side can be given their hashes ([`simulated_credentials`]) without
//! any secret being written down.
//!
//! Commands come back on `machines/+/commands` (QoS 1): [`run`] and [`serve_commands`] carry each
//! one out on the simulated machine ([`Fleet::apply`]) and answer with a signed `command_ack`
//! envelope on `machines/{id}/acks`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use vendflow_protocol::auth::{MachineKey, PublicKey, SecretHash, StoredKey, sign_envelope};
use vendflow_protocol::command::decode_command;
use vendflow_protocol::topics::Topic;
use vendflow_protocol::{AckStatus, Command, CommandAck, Envelope, EventKind, Timestamp};

use crate::fleet::Fleet;

/// A simulated machine's secret: derived from the seed, never stored.
pub fn simulated_secret(seed: u64, machine_id: &str) -> String {
    SecretHash::of(&format!("vendflow-simulated-secret/{seed}/{machine_id}")).to_hex()
}

/// The platform's view of the simulated fleet's credentials: (machine id, public key).
pub fn simulated_credentials(fleet: &Fleet, seed: u64) -> Vec<(String, StoredKey)> {
    fleet
        .machine_ids()
        .map(|m| {
            let key = PublicKey::of_secret(&simulated_secret(seed, m));
            (m.to_owned(), StoredKey::PublicKey(key))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("mqtt {0}: {1}")]
    Mqtt(String, String),
    /// Options that cannot be carried out (bad input).
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{outstanding} message(s) still unacknowledged by the broker after {waited:?}{}", why(.broker))]
    Unacknowledged {
        outstanding: u64,
        waited: Duration,
        /// The broker's last connection error, when it was not connected at the end.
        broker: Option<String>,
    },
    #[error(
        "{outstanding} message(s) without a delivery receipt from the platform after {waited:?}{}",
        why_undelivered(.broker)
    )]
    Undelivered {
        outstanding: u64,
        waited: Duration,
        /// The broker's last connection error, when it was not connected at the end.
        broker: Option<String>,
    },
}

/// What a timeout says of the broker: why it could not be reached, when it could not (a TLS
/// certificate it does not trust, a refused connection), rather than a guess.
fn why(broker: &Option<String>) -> String {
    broker.as_ref().map_or_else(String::new, |e| {
        format!(": the broker could not be reached ({e})")
    })
}

/// [`why`], or else the likeliest reason a connected broker gave no receipts.
fn why_undelivered(broker: &Option<String>) -> String {
    match broker {
        Some(_) => why(broker),
        None => " (is `vendflow bridge` running?)".to_owned(),
    }
}

/// Messages sent and not yet receipted by the platform (`machines/{id}/delivered`), by receipt,
/// and the timer that says when one is sent again. What a machine's outbox holds.
#[derive(Default)]
struct Outbox {
    unconfirmed: std::collections::HashMap<String, Unconfirmed>,
    timer: ResendTimer,
}

struct Unconfirmed {
    topic: String,
    payload: Vec<u8>,
    /// When it was first sent (a receipt for a message sent once measures the round trip).
    first_sent: Instant,
    /// When it is due to be sent again.
    due: Instant,
    times_sent: u32,
}

impl Outbox {
    fn insert(&mut self, receipt: String, topic: String, payload: Vec<u8>) {
        let now = Instant::now();
        let due = now + self.timer.timeout();
        self.unconfirmed.insert(
            receipt,
            Unconfirmed {
                topic,
                payload,
                first_sent: now,
                due,
                times_sent: 1,
            },
        );
    }

    fn receipted(&mut self, receipt: &str) {
        if let Some(m) = self.unconfirmed.remove(receipt) {
            // Karn's rule: only a message sent once says how long a round trip takes.
            if m.times_sent == 1 {
                self.timer.sample(m.first_sent.elapsed());
            }
        }
    }
}

/// When a message without a receipt is sent again: TCP's retransmission timer (RFC 6298) over
/// the receipts' round trips, never under [`RESEND_AFTER`] nor over [`RESEND_AT_MOST_AFTER`],
/// doubled while resends go unanswered. A platform that is slow rather than gone (a bridge
/// catching up behind a restarted Kafka) so sees its backlog grow by the fleet's rate, not by
/// a copy of everything every few seconds.
#[derive(Default)]
pub(crate) struct ResendTimer {
    /// Smoothed round trip and its variation, once a receipt has been measured.
    srtt: Option<(Duration, Duration)>,
    /// Doublings since the last measured round trip, and when the last one was.
    backoff: u32,
    last_expiry: Option<Instant>,
}

impl ResendTimer {
    pub(crate) fn sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let deviation = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, rttvar * 3 / 4 + deviation / 4)
            }
        });
        self.backoff = 0;
        self.last_expiry = None;
    }

    pub(crate) fn timeout(&self) -> Duration {
        let base = self
            .srtt
            .map_or(RESEND_AFTER, |(srtt, rttvar)| srtt + rttvar * 4)
            .max(RESEND_AFTER);
        (base * 2u32.pow(self.backoff.min(6))).min(RESEND_AT_MOST_AFTER)
    }

    /// A message waited a whole timeout: the timer doubles, at most once per timeout (it is
    /// one timer for the connection, as TCP's, not one per message).
    pub(crate) fn expired(&mut self, now: Instant) {
        if self
            .last_expiry
            .is_none_or(|at| now.duration_since(at) >= self.timeout())
        {
            self.backoff = self.backoff.saturating_add(1);
            self.last_expiry = Some(now);
        }
    }
}

/// The shortest wait for a receipt before a message is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// The longest.
pub(crate) const RESEND_AT_MOST_AFTER: Duration = Duration::from_secs(60);
/// Messages sent again at most per second: after an outage the receipts come back over a few
/// seconds, and sending everything at once would only make the backlog longer.
const RESEND_PER_SECOND: usize = 2_000;

pub struct Publisher {
    client: Client,
    seed: u64,
    keys: std::collections::HashMap<String, MachineKey>,
    published: u64,
    acked: Arc<AtomicU64>,
    driver: Option<std::thread::JoinHandle<()>>,
    done: Arc<AtomicBool>,
    nonce: u64,
    address: String,
    /// `Some` when messages leave only on the platform's receipt ([`Publisher::connect_with`]).
    outbox: Option<Arc<std::sync::Mutex<Outbox>>>,
    last_resend: Instant,
    commands: std::sync::mpsc::Receiver<Command>,
    /// The last connection error since the broker last accepted the connection (None while
    /// connected).
    broker_error: Arc<std::sync::Mutex<Option<String>>>,
    /// With [`Acks::Puback`]: every QoS 1 publish in the order it was asked for, with the
    /// receipt of a tracked one, until the event loop gives it its packet id.
    asked: Option<Arc<std::sync::Mutex<std::collections::VecDeque<Option<String>>>>>,
}

/// What tells a machine with its own outbox that a message it sent is the platform's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// The platform's delivery receipt (`machines/{id}/delivered`), which `vendflow bridge`
    /// sends once the message is durable in Kafka (and the demo's MQTT source once it is in
    /// the engine's input).
    Receipts,
    /// The broker's PUBACK: the broker has the message (MQTT QoS 1). Any broker gives it; what
    /// happens after depends on the broker's persistence and on whoever reads the topic.
    Puback,
}

/// Who connects and how: the session's client id, the seed of the fleet whose secrets sign,
/// the one machine whose topics alone are read (None: every machine's), and TLS.
struct Session<'a> {
    client_id: &'a str,
    seed: u64,
    machine: Option<&'a str>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where a forwarding publisher passes acknowledgements on: receipts as the platform sends
/// them, or (with `asked`) the receipts of the messages the broker acknowledged.
struct Forward {
    to: std::sync::mpsc::Sender<String>,
    asked: Option<Arc<std::sync::Mutex<std::collections::VecDeque<Option<String>>>>>,
}

/// Where the platform's delivery receipts arrive.
const RECEIPTS: &str = vendflow_protocol::topics::Topic::Delivered.filter();

/// Where commands for machines arrive.
pub const COMMANDS_FILTER: &str = vendflow_protocol::topics::Topic::Commands.filter();

impl Publisher {
    /// Connects as `client_id` to `host:port`; a message is done once the broker acknowledged
    /// it.
    pub fn connect(host: &str, port: u16, client_id: &str, seed: u64) -> Publisher {
        Self::connect_with(host, port, client_id, seed, false)
    }

    /// [`Publisher::connect`]; with `receipts`, a message is done only once the platform's
    /// delivery receipt for it came back on `machines/{id}/delivered` (from `vendflow bridge`,
    /// once the message is durable in Kafka), and a message without one after a timeout (5 s at
    /// least, adapted to the receipts' round trips; see `ResendTimer`) is sent again.
    pub fn connect_with(
        host: &str,
        port: u16,
        client_id: &str,
        seed: u64,
        receipts: bool,
    ) -> Publisher {
        let session = Session {
            client_id,
            seed,
            machine: None,
            tls: None,
        };
        Self::connect_as(host, port, session, receipts, None)
    }

    /// [`Publisher::connect`] for machines with outboxes of their own: every delivery receipt
    /// the platform sends (`machines/{id}/delivered`) is passed on to `receipts` and nothing
    /// is sent again by the publisher (the machines send again what is not acknowledged).
    /// Publish with [`Publisher::publish_tracked`].
    pub fn connect_forwarding(
        host: &str,
        port: u16,
        client_id: &str,
        seed: u64,
    ) -> (Publisher, std::sync::mpsc::Receiver<String>) {
        Self::connect_forwarding_for(host, port, client_id, seed, None, None, Acks::Receipts)
    }

    /// [`Publisher::connect_forwarding`]; with `machine`, subscribed to that machine's receipts
    /// and commands only (what one machine may read on a broker with per-machine access
    /// rules), not every machine's.
    /// With `tls`, the connection is TLS, the broker verified as the configuration says
    /// ([`tls_to_broker`]).
    /// With `acks` [`Acks::Puback`], what is passed on is the receipt of each tracked message
    /// the broker acknowledged (its PUBACK), and no receipt topic is read.
    pub fn connect_forwarding_for(
        host: &str,
        port: u16,
        client_id: &str,
        seed: u64,
        machine: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
        acks: Acks,
    ) -> (Publisher, std::sync::mpsc::Receiver<String>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let session = Session {
            client_id,
            seed,
            machine,
            tls,
        };
        let forward = Forward {
            to: tx,
            asked: (acks == Acks::Puback).then(Arc::default),
        };
        let publisher = Self::connect_as(host, port, session, false, Some(forward));
        (publisher, rx)
    }

    fn connect_as(
        host: &str,
        port: u16,
        Session {
            client_id,
            seed,
            machine,
            tls,
        }: Session<'_>,
        receipts: bool,
        forward: Option<Forward>,
    ) -> Publisher {
        let asked = forward.as_ref().and_then(|f| f.asked.clone());
        let (commands_filter, receipts_filter) = match machine {
            Some(m) => (Topic::Commands.of(m), Topic::Delivered.of(m)),
            None => (COMMANDS_FILTER.to_owned(), RECEIPTS.to_owned()),
        };
        let mut options = MqttOptions::new(client_id, host, port);
        // A persistent session, as a machine keeps: after the broker restarts (even from a
        // `kill -9`, once its persistence file holds the session), what it had not acknowledged
        // is published again. A clean session would make the client drop those messages.
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(config) = tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        let (client, mut connection) = Client::new(options, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let broker_error = Arc::new(std::sync::Mutex::new(None));
        let address = format!("{host}:{port}");
        let (commands_tx, commands) = std::sync::mpsc::channel();
        let outbox = receipts.then(|| Arc::new(std::sync::Mutex::new(Outbox::default())));
        let driver = {
            let (acked, done, address) = (acked.clone(), done.clone(), address.clone());
            let broker_error = broker_error.clone();
            let outbox = outbox.clone();
            let client = client.clone();
            let asked = asked.clone();
            std::thread::spawn(move || {
                let mut backoff = Duration::from_millis(100);
                // With PUBACKs as the acknowledgement: the receipt of each tracked publish the
                // event loop has sent, by packet id, until the broker acknowledges it. A publish
                // sent again after a reconnection keeps its packet id (and its entry).
                let mut in_flight: std::collections::HashMap<u16, String> = Default::default();
                // Subscriptions due on this connection.
                let mut filters: Vec<&str> = Vec::new();
                let (commands_filter, receipts_filter) =
                    (commands_filter.as_str(), receipts_filter.as_str());
                while !done.load(Ordering::SeqCst) {
                    while let Some(filter) = filters.last() {
                        // Receipts at most once: a lost one only means a message sent again,
                        // and the broker keeps none for a session that is away.
                        let qos = if *filter == receipts_filter {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        };
                        match client.try_subscribe(*filter, qos) {
                            Ok(()) => {
                                filters.pop();
                            }
                            Err(rumqttc::ClientError::TryRequest(_)) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot subscribe {filter}");
                                filters.pop();
                            }
                        }
                    }
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                            if let Some(receipt) = in_flight.remove(&ack.pkid)
                                && let Some(forward) = &forward
                            {
                                let _ = forward.to.send(receipt);
                            }
                        }
                        Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid))))
                            if !in_flight.contains_key(&pkid) =>
                        {
                            backoff = Duration::from_millis(100);
                            // The event loop sends requests in the order they were asked for.
                            let next = asked.as_ref().and_then(|a| {
                                a.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                            });
                            if let Some(Some(receipt)) = next {
                                in_flight.insert(pkid, receipt);
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            if let Ok(mut e) = broker_error.lock() {
                                *e = None;
                            }
                            // Subscribed below, as soon as the request channel takes it (it
                            // may be full of publishes waiting for this very connection).
                            filters = if outbox.is_some() || (forward.is_some() && asked.is_none())
                            {
                                vec![commands_filter, receipts_filter]
                            } else {
                                vec![commands_filter]
                            };
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            tracing::info!("subscribed");
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p))))
                            if Topic::Delivered.machine(&p.topic).is_some() =>
                        {
                            if let Some(forward) = forward.as_ref().filter(|_| asked.is_none()) {
                                let receipts = String::from_utf8_lossy(&p.payload);
                                for receipt in receipts.lines() {
                                    let _ = forward.to.send(receipt.to_owned());
                                }
                            }
                            if let Some(outbox) = &outbox {
                                let receipts = String::from_utf8_lossy(&p.payload);
                                let mut outbox = outbox.lock().unwrap_or_else(|e| e.into_inner());
                                for receipt in receipts.lines() {
                                    outbox.receipted(receipt);
                                }
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            match decode_command(&p.payload) {
                                Ok(c) => {
                                    let _ = commands_tx.send(c);
                                }
                                Err(e) => {
                                    tracing::warn!(topic = %p.topic, error = %e, "ignored a malformed command")
                                }
                            }
                        }
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                        Ok(Ok(_)) => backoff = Duration::from_millis(100),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "mqtt {address} unavailable; retrying in {} ms", backoff.as_millis());
                            if let Ok(mut last) = broker_error.lock() {
                                *last = Some(format!("{address}: {e}"));
                            }
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                        Err(rumqttc::RecvTimeoutError::Timeout) => {}
                        Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
        };
        Publisher {
            client,
            seed,
            keys: std::collections::HashMap::new(),
            published: 0,
            acked,
            driver: Some(driver),
            done,
            nonce: 0,
            address,
            commands,
            outbox,
            last_resend: Instant::now(),
            broker_error,
            asked,
        }
    }

    /// Notes a QoS 1 publish about to be asked of the client (with the receipt of a tracked
    /// one), when PUBACKs are the acknowledgement: before the request, so the event loop never
    /// sends one the queue does not know.
    fn asking(&self, receipt: Option<String>) {
        if let Some(asked) = &self.asked {
            asked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(receipt);
        }
    }

    /// Why the broker cannot be reached, while it cannot (its last connection error).
    pub fn broker_error(&self) -> Option<String> {
        self.broker_error.lock().ok().and_then(|e| e.clone())
    }

    /// Signs `machine`'s envelopes with `key` (a provisioned machine's own) instead of the
    /// simulated fleet's secret.
    pub fn sign_as(&mut self, machine: &str, key: MachineKey) {
        self.keys.insert(machine.to_owned(), key);
    }

    /// Commands received since the last call.
    pub fn take_commands(&self) -> Vec<Command> {
        self.commands.try_iter().collect()
    }

    /// Answers `command` on `machines/{id}/acks` with a signed `command_ack` made at `at` (the
    /// machine's clock): applied, or rejected with the reason.
    pub fn acknowledge(
        &mut self,
        command: &Command,
        outcome: Result<(), crate::fleet::Rejected>,
        at: Timestamp,
    ) -> Result<(), PublishError> {
        let (status, reason) = match outcome {
            Ok(()) => (AckStatus::Applied, None),
            Err(reason) => (AckStatus::Rejected, Some(reason.to_string())),
        };
        let envelope = Envelope {
            machine_id: command.machine_id.clone(),
            events: vec![vendflow_protocol::Event {
                machine_id: command.machine_id.clone(),
                timestamp: at,
                seq: None,
                kind: EventKind::CommandAck(CommandAck {
                    command_id: command.command_id.clone(),
                    status,
                    reason,
                }),
            }],
        };
        self.send(&envelope, Topic::Acks)
    }

    /// Signs and publishes one envelope (blocks while the client's queue is full).
    pub fn publish(&mut self, envelope: &Envelope) -> Result<(), PublishError> {
        self.send(envelope, Topic::Telemetry)
    }

    /// Signs and publishes one envelope of a machine with its own outbox; returns the receipt
    /// the platform will answer with once it is durable (see [`Publisher::connect_forwarding`]).
    pub fn publish_tracked(&mut self, envelope: &Envelope) -> Result<String, PublishError> {
        let body = self.sign(envelope);
        let receipt = vendflow_protocol::topics::receipt(body.as_bytes());
        self.asking(Some(receipt.clone()));
        self.client
            .publish(
                Topic::Telemetry.of(envelope.machine_id.as_str()),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .map_err(|e| PublishError::Mqtt(self.address.clone(), e.to_string()))?;
        self.published += 1;
        Ok(receipt)
    }

    /// The envelope signed with its machine's key, with a new nonce.
    fn sign(&mut self, envelope: &Envelope) -> String {
        let machine = envelope.machine_id.as_str();
        let seed = self.seed;
        self.nonce += 1;
        let nonce = format!("{:x}-{:x}", Timestamp::now().0, self.nonce);
        let key = self
            .keys
            .entry(machine.to_owned())
            .or_insert_with(|| MachineKey::from_secret(&simulated_secret(seed, machine)));
        sign_envelope(envelope, key, Timestamp::now().0, &nonce)
    }

    fn send(&mut self, envelope: &Envelope, topic: Topic) -> Result<(), PublishError> {
        let body = self.sign(envelope);
        let topic = topic.of(envelope.machine_id.as_str());
        if let Some(outbox) = &self.outbox {
            outbox.lock().unwrap_or_else(|e| e.into_inner()).insert(
                vendflow_protocol::topics::receipt(body.as_bytes()),
                topic.clone(),
                body.clone().into_bytes(),
            );
        }
        self.asking(None);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .map_err(|e| PublishError::Mqtt(self.address.clone(), e.to_string()))?;
        self.published += 1;
        if self.last_resend.elapsed() >= Duration::from_secs(1) {
            self.resend()?;
        }
        Ok(())
    }

    /// Sends again what has waited its timeout for its receipt; answers how many are still
    /// without one.
    fn resend(&mut self) -> Result<usize, PublishError> {
        self.last_resend = Instant::now();
        let Some(outbox) = &self.outbox else {
            return Ok(0);
        };
        let (due, waiting) = {
            let mut outbox = outbox.lock().unwrap_or_else(|e| e.into_inner());
            let Outbox { unconfirmed, timer } = &mut *outbox;
            let now = Instant::now();
            if unconfirmed.values().any(|m| now >= m.due) {
                timer.expired(now);
            }
            let wait = timer.timeout();
            let mut due = Vec::new();
            for m in unconfirmed.values_mut() {
                if due.len() >= RESEND_PER_SECOND {
                    break;
                }
                if now >= m.due {
                    m.times_sent += 1;
                    m.due = now + wait;
                    due.push((m.topic.clone(), m.payload.clone()));
                }
            }
            (due, unconfirmed.len())
        };
        if !due.is_empty() {
            tracing::info!(
                resent = due.len(),
                waiting,
                "sending again what has no delivery receipt yet"
            );
        }
        for (topic, payload) in due {
            self.asking(None);
            self.client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| PublishError::Mqtt(self.address.clone(), e.to_string()))?;
        }
        Ok(waiting)
    }

    pub fn published(&self) -> u64 {
        self.published
    }

    pub fn acknowledged(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until the broker acknowledged everything published (with receipts: until the
    /// platform receipted it, sending again what waits too long), then disconnects.
    pub fn finish(mut self, timeout: Duration) -> Result<u64, PublishError> {
        let started = Instant::now();
        let receipts = self.outbox.is_some();
        let outstanding = if receipts {
            let mut waiting = self.resend()?;
            while waiting > 0 && started.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(20));
                waiting = if self.last_resend.elapsed() >= Duration::from_secs(1) {
                    self.resend()?
                } else {
                    self.unreceipted()
                };
            }
            waiting as u64
        } else {
            while self.acknowledged() < self.published && started.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.published.saturating_sub(self.acknowledged())
        };
        let _ = self.client.disconnect();
        self.done.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
        let waited = started.elapsed();
        match outstanding {
            0 => Ok(self.published),
            _ if receipts => Err(PublishError::Undelivered {
                outstanding,
                waited,
                broker: self.broker_error(),
            }),
            _ => Err(PublishError::Unacknowledged {
                outstanding,
                waited,
                broker: self.broker_error(),
            }),
        }
    }

    /// Messages sent and not yet receipted by the platform.
    fn unreceipted(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| {
            o.lock()
                .unwrap_or_else(|e| e.into_inner())
                .unconfirmed
                .len()
        })
    }
}

/// A client configuration for MQTT over TLS that trusts the CA certificates in `ca_pem` (PEM,
/// one or more) and no other: a machine talks to its own platform's broker, not to anyone a
/// public CA vouches for. The broker's certificate must be signed by one of them (webpki takes
/// no self-signed server certificate as its own anchor: `CaUsedAsEndEntity`), and name the
/// broker (HOST of HOST:PORT, a DNS name or an IP address).
///
/// With `client` (a certificate chain and its private key, PEM), the machine proves who it is
/// to a broker that asks for a client certificate (Mosquitto's `require_certificate`, and with
/// `use_identity_as_username` the certificate's name is the machine's MQTT user): the broker
/// then refuses any connection without a certificate its CA signed, before a single packet of
/// MQTT.
pub fn tls_to_broker(
    ca_pem: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let shown = ca_pem.display();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in pem_certificates(ca_pem, "the CA certificates in")? {
        roots
            .add(certificate)
            .map_err(|e| format!("{shown} holds a certificate that cannot be trusted: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let shown = cert_pem.display();
            let chain = pem_certificates(cert_pem, "the client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| {
                format!(
                    "{} holds no PEM private key (BEGIN PRIVATE KEY): {e}",
                    key_pem.display()
                )
            })?;
            config.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "the client certificate {shown} does not go with the key {}: {e}",
                    key_pem.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file at `path` (at least one); `what` names the file in the
/// error for one that cannot be read.
fn pem_certificates(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {what} {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM certificate file: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (BEGIN CERTIFICATE)"
        ));
    }
    Ok(certificates)
}

/// An MQTT broker's address as the command line gives it, `HOST:PORT` (the host may itself hold
/// colons, as an IPv6 address does: the port is after the last one).
pub fn broker_address(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// Runs `fleet` up to `end`, publishing every envelope; `on_envelope` sees each one first (to
/// record what was sent), `on_step` the simulated time after each 10-second step.
/// `pace`: simulated ms per wall ms (None: as fast as the broker takes it).
pub fn run(
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    end: Timestamp,
    pace: Option<f64>,
    stop: &AtomicBool,
    mut on_envelope: impl FnMut(&Envelope),
    mut on_step: impl FnMut(Timestamp),
) -> Result<(), PublishError> {
    let started = Instant::now();
    let sim_start = fleet.now().0;
    let mut t = sim_start;
    // Paced near real time, machines publish in steps of at most a second of wall clock, as a
    // fleet spread over the second would; unpaced, in 10 s steps of simulated time.
    let step = pace.map_or(10_000, |speed| {
        ((speed * 1000.0) as i64).clamp(1_000, 10_000)
    });
    while t < end.0 && !stop.load(Ordering::SeqCst) {
        t = (t + step).min(end.0);
        if let Some(speed) = pace {
            let due = Duration::from_secs_f64((t - sim_start) as f64 / speed / 1000.0);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        for envelope in fleet.advance(Timestamp(t)) {
            on_envelope(&envelope);
            publisher.publish(&envelope)?;
        }
        let now = fleet.now();
        answer_commands(fleet, publisher, now)?;
        on_step(Timestamp(t));
    }
    Ok(())
}

/// Carries out and answers the commands that arrived, for the machines of this fleet (others
/// belong to another simulator on the same broker).
/// `at`: the machines' clock (simulated during the stream, the wall clock after it).
fn answer_commands(
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    at: Timestamp,
) -> Result<usize, PublishError> {
    let mut answered = 0;
    for command in publisher.take_commands() {
        if !fleet
            .machine_ids()
            .any(|m| m == command.machine_id.as_str())
        {
            continue;
        }
        let outcome = fleet.apply(&command);
        tracing::info!(command = %command.command_id, machine = %command.machine_id, ?outcome, "command");
        publisher.acknowledge(&command, outcome, at)?;
        answered += 1;
    }
    Ok(answered)
}

/// Keeps answering commands for `duration` (after the stream), until `stop`.
pub fn serve_commands(
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<usize, PublishError> {
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < duration && !stop.load(Ordering::SeqCst) {
        answered += answer_commands(fleet, publisher, Timestamp::now())?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendflow_protocol::MachineId;

    #[test]
    fn the_resend_timer_follows_round_trips_and_backs_off_once_per_timeout() {
        let mut timer = ResendTimer::default();
        assert_eq!(timer.timeout(), RESEND_AFTER);
        // Fast receipts never bring it under the floor.
        timer.sample(Duration::from_millis(20));
        assert_eq!(timer.timeout(), RESEND_AFTER);
        // A platform catching up: receipts take 8 s, so waiting 5 s would send everything twice.
        for _ in 0..20 {
            timer.sample(Duration::from_secs(8));
        }
        let slow = timer.timeout();
        assert!(slow >= Duration::from_secs(8), "{slow:?}");
        // Expiries in quick succession double it once; a timeout later, again.
        let now = Instant::now();
        timer.expired(now);
        timer.expired(now + Duration::from_secs(1));
        assert_eq!(timer.timeout(), (slow * 2).min(RESEND_AT_MOST_AFTER));
        timer.expired(now + slow * 2);
        assert_eq!(timer.timeout(), (slow * 4).min(RESEND_AT_MOST_AFTER));
        for _ in 0..10 {
            timer.expired(now + RESEND_AT_MOST_AFTER * 100);
        }
        assert_eq!(timer.timeout(), RESEND_AT_MOST_AFTER);
        // A measured round trip ends the back-off.
        timer.sample(Duration::from_secs(8));
        assert!(timer.timeout() < RESEND_AT_MOST_AFTER);
    }

    /// A machine that cannot reach its broker says why when it gives up (here nothing listens;
    /// a certificate the machine does not trust is said the same way), not that the bridge
    /// may be down.
    #[test]
    fn a_timeout_names_the_brokers_connection_error() -> Result<(), Box<dyn std::error::Error>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut publisher = Publisher::connect_with("127.0.0.1", port, "unreachable", 1, true);
        publisher.publish(&Envelope {
            machine_id: MachineId::parse("mach_unreachable")?,
            events: Vec::new(),
        })?;
        std::thread::sleep(Duration::from_millis(300));
        let said = match publisher.finish(Duration::from_millis(200)) {
            Err(e @ PublishError::Undelivered { .. }) => e.to_string(),
            other => return Err(format!("expected a timeout: {other:?}").into()),
        };
        assert!(
            said.contains(&format!(
                "the broker could not be reached (127.0.0.1:{port}: "
            )),
            "{said}"
        );
        assert!(!said.contains("vendflow bridge"), "{said}");
        Ok(())
    }

    #[test]
    fn only_a_message_sent_once_is_a_round_trip() {
        let mut outbox = Outbox::default();
        outbox.insert("a".into(), "t".into(), vec![1]);
        outbox.insert("b".into(), "t".into(), vec![2]);
        if let Some(m) = outbox.unconfirmed.get_mut("b") {
            m.times_sent = 2;
            m.first_sent -= Duration::from_secs(50);
        }
        outbox.receipted("b");
        assert!(
            outbox.timer.srtt.is_none(),
            "a resent message measured nothing"
        );
        outbox.receipted("a");
        assert!(outbox.timer.srtt.is_some());
        outbox.receipted("unknown");
        assert!(outbox.unconfirmed.is_empty());
    }
}

//! The MQTT source (embedded mode: no Kafka): `machines/+/telemetry` straight into the dataflows.
//!
//! Same checks as the bridge ([`crate::auth::Verifier`]), same decoding as the Kafka source; a
//! message is acknowledged to the broker only once its events are in the engine's input. A
//! refused envelope becomes an error record (`errors` view) with the reason.
//! [`start_embedded_broker`] runs an in-process broker (rumqttd) for `vendflow demo`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use vendflow_dataflows::{Batch, Feeders, Time};
use vendflow_protocol::decode::decode_envelope;
use vendflow_protocol::topics::Topic;
use vendflow_protocol::{DecodeError, ErrorKind, Timestamp};

use crate::auth::{Admission, Refusal, Verifier, machine_of_topic};
use crate::{Counters, Position, Tap};

/// Starts an MQTT broker on `listen` in a thread of its own (it blocks); returns once it accepts
/// connections.
pub fn start_embedded_broker(listen: SocketAddr) -> Result<(), std::io::Error> {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4-1".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 500,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            ..rumqttd::RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4-1".to_owned(), server)])),
        ..rumqttd::Config::default()
    };
    std::thread::Builder::new()
        .name("vendflow-mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded mqtt broker stopped");
            }
        })?;
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(listen).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(std::io::Error::other(format!(
                "the embedded mqtt broker does not listen on {listen}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Where the MQTT source reads and what it reports to.
pub struct MqttSource<'a> {
    pub host: &'a str,
    pub port: u16,
    /// The source's MQTT client id (and the name of its stream in the archive).
    pub client_id: &'a str,
    pub verifier: Verifier,
    /// The source's clock: the wall clock live, the simulated clock in the demo.
    pub clock: &'a (dyn Fn() -> Time + Sync),
    pub counters: &'a Counters,
    /// Sees every message as decoded (the archive).
    pub tap: Option<&'a Tap>,
    /// Sends each machine a delivery receipt ([`vendflow_protocol::topics::receipt`] on
    /// `machines/{id}/delivered`) once its message is in the engine's input, as `vendflow
    /// bridge` does once it is in Kafka: what a controller's outbox waits for before it lets an
    /// event go (the demo with `--controllers`).
    pub receipts: bool,
    /// Set once the broker has taken the source's subscription: from then on it keeps every
    /// machine's telemetry for the source (a message published before it has no subscriber).
    pub subscribed: Option<&'a AtomicBool>,
}

fn refusal_kind(r: &Refusal) -> ErrorKind {
    match r {
        Refusal::Topic(_) => ErrorKind::MachineId,
        Refusal::MachineMismatch { .. } => ErrorKind::MachineMismatch,
        Refusal::Auth(vendflow_protocol::auth::AuthError::Malformed(_)) => ErrorKind::Syntax,
        _ => ErrorKind::Unauthenticated,
    }
}

/// Runs `source` into `feeders` until `stop`. An envelope is ingested at its latest event time,
/// but never later than the source's clock, and an idle source advances with the clock.
pub fn run(
    source: MqttSource<'_>,
    mut feeders: Feeders,
    stop: &AtomicBool,
) -> Result<(), vendflow_dataflows::EngineError> {
    let MqttSource {
        host,
        port,
        client_id,
        mut verifier,
        clock,
        counters,
        tap,
        receipts,
        subscribed,
    } = source;
    let intake = crate::intake::Intake::new(counters, tap);
    // MQTT has no replayable positions: each run of the source is its own stream, numbered from 0
    // in the order messages arrive.
    let stream = format!("mqtt-{client_id}-{}", Timestamp::now().0);
    let mut offset = 0i64;
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_manual_acks(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 1024);
    let mut time = Time::EPOCH;
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        let event = match connection.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(e)) => {
                backoff = Duration::from_millis(100);
                e
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "mqtt {host}:{port} unavailable; retrying in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {
                let now = clock();
                if now > time {
                    time = now;
                    feeders.advance_all(time)?;
                }
                continue;
            }
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                if let Err(e) = client.try_subscribe(Topic::Telemetry.filter(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, filter = Topic::Telemetry.filter(), "cannot subscribe");
                }
            }
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(flag) = subscribed {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let now = clock();
                let wall = Timestamp::now().0;
                let verdict = machine_of_topic(&publish.topic, Topic::Telemetry)
                    .and_then(|m| verifier.check(m, &publish.payload, wall).map(|a| (m, a)));
                let (key, signed, decoded, refusal) = match verdict {
                    Ok((machine, Admission::Forward(signed))) => (
                        machine_key(machine),
                        signed,
                        Some(decode_envelope(&publish.payload)),
                        None,
                    ),
                    // A redelivery of what was already forwarded: acknowledged, not taken again.
                    Ok((machine, _)) => (machine_key(machine), None, None, None),
                    Err(refusal) => (0, None, None, Some(refusal)),
                };
                // The envelope is ingested at its latest event time (never after the clock), and
                // its records carry that time.
                if let Some(Ok(results)) = &decoded {
                    for e in results.iter().flatten() {
                        time = time.max(e.timestamp.min(now));
                    }
                }
                let source = format!("mqtt:{}", publish.topic);
                let at = Position {
                    stream: &stream,
                    offset,
                    received_at: time,
                };
                let mut batch = Batch::default();
                let message = intake.begin(&batch, &source, at, &publish.payload);
                match (decoded, refusal) {
                    (Some(Ok(results)), _) => intake.decoded(&mut batch, &message, results),
                    (Some(Err(e)), _) => intake.refuse(&mut batch, &message, &e),
                    (None, Some(refusal)) => {
                        let e = DecodeError::new(refusal_kind(&refusal), refusal.to_string());
                        intake.refuse(&mut batch, &message, &e);
                    }
                    (None, None) => {}
                }
                if let Some(signed) = signed {
                    verifier.forwarded(&signed, &publish.payload);
                }
                intake.end(&batch, message);
                offset += 1;
                if !batch.is_empty() {
                    feeders.send_keyed(key, time, batch)?;
                }
                // In the engine's input now: acknowledge, and receipt (a refused message too:
                // sending it again would not change its verdict).
                if let Err(e) = client.try_ack(&publish) {
                    tracing::debug!(error = %e, "mqtt ack not sent; the broker will redeliver");
                }
                if receipts && let Ok(machine) = machine_of_topic(&publish.topic, Topic::Telemetry)
                {
                    let receipt = vendflow_protocol::topics::receipt(&publish.payload);
                    if let Err(e) = client.try_publish(
                        Topic::Delivered.of(machine),
                        QoS::AtLeastOnce,
                        false,
                        receipt,
                    ) {
                        tracing::debug!(error = %e, "delivery receipt not sent; the machine will send again");
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Spreads machines over workers (any stable hash will do; the dataflow re-partitions anyway).
fn machine_key(machine: &str) -> u64 {
    machine.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

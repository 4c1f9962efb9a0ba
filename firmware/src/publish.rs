//! `vendflow publish`: a simulated fleet publishing signed telemetry over a real MQTT broker,
//! for load and end-to-end tests. Its span ends now, so event times are what a live fleet sends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vendflow_protocol::Timestamp;
use vendflow_protocol::units::MS_PER_HOUR;

use crate::controlled::{ControlledConfig, Controllers, Resend, WorldOptions};
use crate::mqtt::{self, PublishError, Publisher};
use crate::{Fault, Fleet, FleetConfig};

/// How long [`publish`] waits for the broker's acknowledgements (or the platform's receipts)
/// of what it sent.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// The options of `vendflow publish`.
#[derive(clap::Args, Clone, Debug)]
pub struct PublishOptions {
    /// MQTT broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    #[arg(long, default_value_t = 20)]
    pub machines: usize,
    /// Simulated hours to publish, ending now (fractions too: 0.05 is 3 minutes).
    #[arg(long, default_value_t = 6.0)]
    pub hours: f64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Simulated seconds per wall-clock second (default: as fast as the broker takes it).
    #[arg(long)]
    pub speed: Option<f64>,
    /// Write the fleet's credentials file (public keys) here, for the bridge.
    #[arg(long)]
    pub credentials_out: Option<PathBuf>,
    /// Write the fleet's registry records here.
    #[arg(long)]
    pub registry_out: Option<PathBuf>,
    /// Record every published event here as JSON Lines (what an oracle should count).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Only write --credentials-out / --registry-out, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Take machine N (0-based) off the network for H hours, one hour into the stream:
    /// `N:H` (instead of an outage drawn by `--outage-share`). It keeps its events and sends
    /// them when the network returns. A controller's outage must end before the stream does.
    #[arg(long, value_parser = parse_outage)]
    pub outage: Vec<(usize, u32)>,
    /// After the stream, stay connected this many seconds answering commands
    /// (`machines/+/commands`; they are answered during the stream too).
    #[arg(long, default_value_t = 0)]
    pub linger: u64,
    /// Keep every message until the platform's delivery receipt for it arrives
    /// (`machines/{id}/delivered`, sent by `vendflow bridge` once the message is in Kafka), and
    /// send again what has none after a timeout (at least 5 s, adapted to how long receipts
    /// take, doubled while resends go unanswered), so that nothing is lost when the broker dies
    /// after acknowledging. Needs a bridge (not the demo's embedded broker). Without it, a
    /// machine's outbox lets go of what the broker acknowledged (its PUBACK), and the event
    /// simulator of what its client handed over.
    #[arg(long)]
    pub receipts: bool,
    /// Run the event simulator instead of the real controller. By default every machine runs
    /// the real controller (`vendflow-controller`: the vend cycle and its durable outbox):
    /// customers fill carts and pay, cards are declined or not read, units jam and are
    /// refunded, machines lose their network (see `--outage-share`) and their power, and the
    /// fleet's faults show in their readings. Each machine sends its outbox oldest first,
    /// forgets an event on the broker's PUBACK (or, with `--receipts`, the platform's
    /// delivery receipt) and sends again what is not acknowledged in time. The event
    /// simulator emits events without a controller.
    #[arg(long)]
    pub event_simulator: bool,
    /// The default (the real controller on every machine); kept so that earlier command lines
    /// still run.
    #[arg(long, hide = true, conflicts_with = "event_simulator")]
    pub controllers: bool,
    /// The controllers' world (heartbeats, outages, the outbox's keep, jams, power cuts), as
    /// `simulate` takes it.
    #[command(flatten)]
    pub world: WorldOptions,
    /// Controllers only: a machine sends what its outbox holds at most once per this many
    /// simulated seconds (0: at once). Fewer, larger envelopes for a long span at full speed.
    #[arg(long, default_value_t = 0)]
    pub batch_secs: u32,
}

/// `N:H` of `--outage`.
fn parse_outage(text: &str) -> Result<(usize, u32), String> {
    let (machine, hours) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not MACHINE_INDEX:HOURS, e.g. 7:5"))?;
    let machine = machine
        .parse()
        .map_err(|_| format!("{machine:?} is not a machine index"))?;
    let hours = hours
        .parse()
        .map_err(|_| format!("{hours:?} is not a number of hours"))?;
    Ok((machine, hours))
}

impl PublishOptions {
    /// Whether the machines run the real controller (unless `--event-simulator`).
    pub fn runs_controllers(&self) -> bool {
        !self.event_simulator
    }

    /// Refuses an `--outage` of a machine the fleet does not have.
    fn outages_fit(&self) -> Result<(), PublishError> {
        match self.outage.iter().find(|(m, _)| *m >= self.machines) {
            Some((machine, hours)) => Err(PublishError::Invalid(format!(
                "--outage {machine}:{hours}: there are only {} machines",
                self.machines
            ))),
            None => Ok(()),
        }
    }

    /// `--mqtt` as host and port.
    fn broker(&self) -> Result<(&str, u16), PublishError> {
        mqtt::broker_address(&self.mqtt).ok_or_else(|| {
            PublishError::Invalid(format!("--mqtt {:?} is not HOST:PORT", self.mqtt))
        })
    }

    /// The fleet of controllers to publish (`--controllers`), and the end of its span.
    pub fn controllers(&self, now: Timestamp) -> Result<(Controllers, Timestamp), PublishError> {
        if self.machines == 0 || self.hours.is_nan() || self.hours <= 0.0 {
            return Err(PublishError::Invalid(
                "--machines and --hours must be positive".into(),
            ));
        }
        self.outages_fit()?;
        if let Some((machine, hours)) = self
            .outage
            .iter()
            .find(|(_, hours)| 1.0 + f64::from(*hours) >= self.hours)
        {
            return Err(PublishError::Invalid(format!(
                "--outage {machine}:{hours}: a controller's outage starts an hour into the stream and must end before it does (--hours {})",
                self.hours
            )));
        }
        let end = now.0 - now.0.rem_euclid(60_000);
        let start = Timestamp(end - (self.hours * MS_PER_HOUR as f64) as i64);
        let mut config = ControlledConfig::new(self.machines, self.seed, start, Timestamp(end));
        self.world
            .apply(&mut config)
            .map_err(PublishError::Invalid)?;
        config.scripted_outages = self
            .outage
            .iter()
            .map(|&(machine, hours)| (machine, i64::from(hours) * MS_PER_HOUR))
            .collect();
        config.first_number = u64::try_from(now.0).unwrap_or(0).saturating_mul(1000);
        config.batch_ms = i64::from(self.batch_secs) * 1000;
        let fleet = Controllers::new(config)
            .map_err(|e| PublishError::Invalid(format!("the controllers cannot start: {e}")))?;
        Ok((fleet, Timestamp(end)))
    }

    /// The fleet to publish and the end of its span: the whole minute before `now`. Its machines'
    /// numbers continue from `now`, as firmware's do across restarts.
    pub fn fleet(&self, now: Timestamp) -> Result<(Fleet, Timestamp), PublishError> {
        if self.machines == 0 || self.hours.is_nan() || self.hours <= 0.0 {
            return Err(PublishError::Invalid(
                "--machines and --hours must be positive".into(),
            ));
        }
        self.world
            .only_for_controllers()
            .map_err(PublishError::Invalid)?;
        if self.batch_secs != 0 {
            return Err(PublishError::Invalid(
                "--batch-secs shapes the controllers; the event simulator (--event-simulator) does not take it".into(),
            ));
        }
        self.outages_fit()?;
        let end = now.0 - now.0.rem_euclid(60_000);
        let fleet = Fleet::new(&FleetConfig {
            machines: self.machines,
            seed: self.seed,
            start: Timestamp(end - (self.hours * MS_PER_HOUR as f64) as i64),
            scripted: self
                .outage
                .iter()
                .map(|&(m, hours)| (m, Fault::NetworkOutage { hours }, MS_PER_HOUR))
                .collect(),
            // A thousand numbers a millisecond apart: ids stay below 2^53, exact in JSON readers.
            first_number: u64::try_from(now.0).unwrap_or(0).saturating_mul(1000),
            ..FleetConfig::default()
        });
        Ok((fleet, Timestamp(end)))
    }
}

/// Writes `fleet`'s registry records (JSON Lines) to `path`.
pub fn write_registry(fleet: &Fleet, path: &Path) -> Result<(), PublishError> {
    std::fs::write(path, fleet.registry_json_lines()).map_err(|source| PublishError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// What [`publish`] did.
#[derive(Clone, Debug)]
pub struct Published {
    pub envelopes: u64,
    pub events: u64,
    /// Commands answered after the stream (`--linger`).
    pub answered: usize,
    pub elapsed: Duration,
    /// With receipts: envelopes sent again for want of one, and the receipts' round trips.
    pub receipts: Option<Receipts>,
}

/// How the platform's receipts came back to a fleet of controllers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Receipts {
    /// Envelopes sent again: the one before had no receipt within the resend timeout.
    pub resent: u64,
    /// Sent → receipt taken, for the envelopes receipted: median and 99th percentile, in ms.
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// Round trips counted by the millisecond up to a minute (the longest resend timeout), longer
/// ones in the last count.
struct RoundTrips(Vec<u64>);

impl RoundTrips {
    fn new() -> Self {
        RoundTrips(vec![0; 60_001])
    }

    fn add(&mut self, rtt: Duration) {
        let ms = usize::try_from(rtt.as_millis()).unwrap_or(usize::MAX);
        let last = self.0.len() - 1;
        if let Some(n) = self.0.get_mut(ms.min(last)) {
            *n += 1;
        }
    }

    /// The round trip at quantile `q` (0 when none was counted).
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.0.iter().sum();
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ms as u64;
            }
        }
        0
    }
}

impl Published {
    /// The line `vendflow publish` ends with.
    pub fn summary(&self, options: &PublishOptions) -> String {
        format!(
            "published {} envelopes ({} events) of {} machines in {:.1}s, all {} {}",
            self.envelopes,
            self.events,
            options.machines,
            self.elapsed.as_secs_f64(),
            if options.receipts {
                "receipted (durable in Kafka) through"
            } else {
                "acknowledged by"
            },
            options.mqtt
        ) + &self.receipts.map_or(String::new(), |r| {
            format!(
                "; receipts after p50 {} ms, p99 {} ms; {} envelopes sent again for want of one",
                r.p50_ms, r.p99_ms, r.resent
            )
        })
    }
}

/// `--record`: every event as a JSON line; a write error is kept and reported at the end (the
/// stream goes on: what was published is published).
struct Recorder {
    out: Option<(std::io::BufWriter<std::fs::File>, PathBuf)>,
    error: Option<std::io::Error>,
}

impl Recorder {
    fn open(path: Option<&Path>) -> Result<Recorder, PublishError> {
        Recorder::opened(path, false)
    }

    /// With `durable`, the file is appended to and every line flushed as it is written: a
    /// machine killed and started again records on after what it recorded before.
    fn opened(path: Option<&Path>, durable: bool) -> Result<Recorder, PublishError> {
        let out = match path {
            Some(path) => {
                let file = if durable {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                } else {
                    std::fs::File::create(path)
                };
                let file = file.map_err(|source| io_error(path, source))?;
                let capacity = if durable { 0 } else { 8 * 1024 };
                Some((
                    std::io::BufWriter::with_capacity(capacity, file),
                    path.to_owned(),
                ))
            }
            None => None,
        };
        Ok(Recorder { out, error: None })
    }

    fn write(&mut self, event: &vendflow_protocol::Event) {
        if let Some((w, _)) = self.out.as_mut() {
            // One write per line: unbuffered, a kill never leaves half a line to append to.
            let mut line = event.to_json_line();
            line.push('\n');
            if let Err(err) = w.write_all(line.as_bytes()) {
                self.error.get_or_insert(err);
            }
        }
    }

    fn finish(self) -> Result<(), PublishError> {
        let Some((mut w, path)) = self.out else {
            return Ok(());
        };
        match self.error {
            Some(e) => Err(io_error(&path, e)),
            None => w.flush().map_err(|e| io_error(&path, e)),
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> PublishError {
    PublishError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Publishes `fleet` up to `end` to the broker of `options` (until `stop`), recording the
/// events if asked, answers commands for `--linger` seconds, and waits until everything sent
/// is acknowledged (or receipted).
pub fn publish(
    options: &PublishOptions,
    fleet: &mut Fleet,
    end: Timestamp,
    stop: &AtomicBool,
) -> Result<Published, PublishError> {
    let (host, port) = options.broker()?;
    let client_id = format!("vendflow-publisher-{}", std::process::id());
    let mut publisher =
        Publisher::connect_with(host, port, &client_id, options.seed, options.receipts);
    let mut record = Recorder::open(options.record.as_deref())?;
    let mut events = 0u64;
    let started = Instant::now();
    mqtt::run(
        fleet,
        &mut publisher,
        end,
        options.speed,
        stop,
        |envelope| {
            events += envelope.events.len() as u64;
            for e in &envelope.events {
                record.write(e);
            }
        },
        |_| {},
    )?;
    record.finish()?;
    let answered = if options.linger > 0 {
        mqtt::serve_commands(
            fleet,
            &mut publisher,
            Duration::from_secs(options.linger),
            stop,
        )?
    } else {
        0
    };
    let envelopes = publisher.finish(FINISH_TIMEOUT)?;
    Ok(Published {
        envelopes,
        events,
        answered,
        elapsed: started.elapsed(),
        receipts: None,
    })
}

/// Publishes a fleet of controllers (the default) up to `end`: the simulated clock runs at
/// `--speed` (or as fast as the machines' outboxes drain), every machine sends what its outbox
/// holds, forgets it on the broker's PUBACK (with `--receipts`, on the platform's delivery
/// receipt) and sends again what waits too long (each machine's resend timer follows its own
/// acknowledgements' round trips, as TCP's does). Commands from
/// the platform go to the machines' controllers, whose answers are events of their outboxes.
/// Ends once every outbox is empty (and `--linger` seconds have passed since), or fails after [`FINISH_TIMEOUT`] of waiting at the end.
pub fn publish_controllers(
    options: &PublishOptions,
    fleet: &mut Controllers,
    end: Timestamp,
    stop: &AtomicBool,
) -> Result<Published, PublishError> {
    let link = Link {
        mqtt: &options.mqtt,
        client_id: format!("vendflow-controllers-{}", std::process::id()),
        seed: options.seed,
        key: None,
        speed: options.speed,
        record: options.record.as_deref(),
        durable_record: false,
        linger: options.linger,
        tls: None,
        clock: None,
        acks: if options.receipts {
            mqtt::Acks::Receipts
        } else {
            mqtt::Acks::Puback
        },
    };
    run_controllers(&link, fleet, end, stop)
}

/// How controllers reach the platform: the broker, the client, the keys they sign with, and
/// how their clock runs.
pub struct Link<'a> {
    /// The MQTT broker, HOST:PORT.
    pub mqtt: &'a str,
    pub client_id: String,
    /// Machines sign with the simulated fleet's secret of this seed...
    pub seed: u64,
    /// ...except this one, which signs with its own (a provisioned machine's) and then reads
    /// only its own receipts and commands.
    pub key: Option<(String, vendflow_protocol::auth::MachineKey)>,
    /// Simulated seconds per wall-clock second (None: as fast as receipts come back).
    pub speed: Option<f64>,
    /// Every event as it is first sent, as JSON Lines.
    pub record: Option<&'a Path>,
    /// The record appended to and flushed line by line (a machine that may be killed).
    pub durable_record: bool,
    /// Seconds to stay connected once everything is delivered, answering commands.
    pub linger: u64,
    /// MQTT over TLS with this configuration ([`mqtt::tls_to_broker`]); None: plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Where the simulated clock is told, in ms, as it moves (the demo's ingestion clock).
    pub clock: Option<&'a std::sync::atomic::AtomicI64>,
    /// What lets a machine forget what it sent: the platform's receipts, or the broker's
    /// PUBACK.
    pub acks: mqtt::Acks,
}

/// Runs `fleet` up to `end` over `link` (see [`publish_controllers`]).
pub fn run_controllers<L: vendflow_controller::outbox::Log>(
    link: &Link,
    fleet: &mut Controllers<L>,
    end: Timestamp,
    stop: &AtomicBool,
) -> Result<Published, PublishError>
where
    crate::machine::Machine<L>: crate::machine::PowerCut,
    L::Error: std::fmt::Debug,
{
    let (host, port) = mqtt::broker_address(link.mqtt).ok_or_else(|| {
        PublishError::Invalid(format!("the MQTT broker {:?} is not HOST:PORT", link.mqtt))
    })?;
    let only = link.key.as_ref().map(|(machine, _)| machine.as_str());
    let (mut publisher, receipts) = Publisher::connect_forwarding_for(
        host,
        port,
        &link.client_id,
        link.seed,
        only,
        link.tls.clone(),
        link.acks,
    );
    if let Some((machine, key)) = &link.key {
        publisher.sign_as(machine, key.clone());
    }
    let mut record = Recorder::opened(link.record, link.durable_record)?;
    let machine_error = |e: crate::machine::MachineError| PublishError::Invalid(e.to_string());
    let started = Instant::now();
    let begin = fleet.now();
    let mut round_trips = RoundTrips::new();
    // Receipt → (machine, last event number, when it was sent).
    let mut sent: std::collections::HashMap<String, (usize, u64, Instant)> = Default::default();
    let mut events = 0u64;
    let mut reached_end: Option<Instant> = None;
    let mut drained: Option<Instant> = None;
    let mut last_report = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let elapsed = started.elapsed();
        let target = match link.speed {
            Some(speed) => begin.0 + (elapsed.as_secs_f64() * speed * 1000.0) as i64,
            // As fast as the machines are receipted: a simulated minute a round.
            None => fleet.now().0 + 60_000,
        }
        .min(end.0);
        fleet.advance(Timestamp(target)).map_err(machine_error)?;
        if let Some(clock) = link.clock {
            clock.store(fleet.now().0, std::sync::atomic::Ordering::SeqCst);
        }
        for command in publisher.take_commands() {
            let id = command.command_id.clone();
            let machine = command.machine_id.clone();
            match controller_command(&command.action) {
                Some(command) => {
                    if !fleet
                        .command(&machine, id, command)
                        .map_err(machine_error)?
                    {
                        tracing::warn!(machine_id = %machine, "a command for a machine not in this fleet");
                    }
                }
                None => {
                    tracing::warn!(machine_id = %machine, command_id = %id, "a command with a negative price; ignored")
                }
            }
        }
        let wall = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let ready = fleet
            .ready(wall, Resend::Adaptive, target >= end.0, |e| {
                events += 1;
                record.write(e);
            })
            .map_err(machine_error)?;
        for (i, envelope, last) in ready {
            let receipt = publisher.publish_tracked(&envelope)?;
            sent.insert(receipt, (i, last, Instant::now()));
        }
        for receipt in receipts.try_iter() {
            if let Some((i, last, at)) = sent.remove(&receipt) {
                let rtt = at.elapsed();
                fleet.round_trip(i, rtt);
                round_trips.add(rtt);
                fleet.acknowledged(i, last).map_err(machine_error)?;
            }
        }
        // Sends that were overtaken (sent again since) no longer wait for their receipts.
        // (Each machine's timer waits at most `RESEND_AT_MOST_AFTER`.)
        if sent.len() > 4 * fleet.len() + 1024 {
            let stale = mqtt::RESEND_AT_MOST_AFTER * 4;
            sent.retain(|_, (_, _, at)| at.elapsed() < stale);
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                simulated = %fleet.now(),
                pending = fleet.pending(),
                offline = fleet.offline(),
                "controllers publishing"
            );
        }
        if target >= end.0 {
            // Drained; with `--linger`, the machines stay connected answering commands.
            if fleet.pending() == 0 {
                let since = *drained.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(link.linger) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            drained = None;
            let since = *reached_end.get_or_insert_with(Instant::now);
            if since.elapsed() > FINISH_TIMEOUT {
                let (outstanding, waited, broker) = (
                    fleet.pending() as u64,
                    since.elapsed(),
                    publisher.broker_error(),
                );
                return Err(match link.acks {
                    mqtt::Acks::Receipts => PublishError::Undelivered {
                        outstanding,
                        waited,
                        broker,
                    },
                    mqtt::Acks::Puback => PublishError::Unacknowledged {
                        outstanding,
                        waited,
                        broker,
                    },
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        } else if link.speed.is_some() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    record.finish()?;
    let envelopes = publisher.finish(FINISH_TIMEOUT)?;
    Ok(Published {
        envelopes,
        events,
        answered: 0,
        elapsed: started.elapsed(),
        receipts: matches!(link.acks, mqtt::Acks::Receipts).then(|| Receipts {
            resent: fleet.resent(),
            p50_ms: round_trips.quantile(0.5),
            p99_ms: round_trips.quantile(0.99),
        }),
    })
}

/// A platform command as the controller takes it (None for one it does not know).
fn controller_command(
    action: &vendflow_protocol::Action,
) -> Option<vendflow_controller::vend::Command> {
    use vendflow_controller::vend::Command;
    match action {
        vendflow_protocol::Action::UpdatePrice {
            slot_number,
            new_price,
        } => Some(Command::UpdatePrice {
            slot: *slot_number,
            price: u64::try_from(new_price.0).ok()?,
        }),
        vendflow_protocol::Action::Reboot => Some(Command::Reboot),
        vendflow_protocol::Action::SetPlanogram { slots } => Some(Command::SetPlanogram(
            slots
                .iter()
                .map(|s| {
                    Some(vendflow_controller::vend::PlanSlot {
                        code: s.slot_number,
                        product: s.product_id.clone(),
                        price: u64::try_from(s.price.0).ok()?,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        )),
        vendflow_protocol::Action::Dispense {
            order_id,
            slot_number,
            quantity,
        } => Some(Command::Dispense {
            order: order_id.clone(),
            slot: *slot_number,
            quantity: *quantity,
        }),
        vendflow_protocol::Action::UpdateFirmware {
            version,
            url,
            sha256,
        } => Some(Command::UpdateFirmware {
            version: version.clone(),
            url: url.clone(),
            sha256: *sha256,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn round_trips_give_their_quantiles_by_the_millisecond() {
        let mut rtts = RoundTrips::new();
        assert_eq!(rtts.quantile(0.5), 0);
        for ms in 1..=100u64 {
            rtts.add(Duration::from_millis(ms));
        }
        // Past the longest timeout: counted at a minute.
        rtts.add(Duration::from_secs(3600));
        assert_eq!(rtts.quantile(0.5), 51);
        assert_eq!(rtts.quantile(0.99), 100);
        assert_eq!(rtts.quantile(1.0), 60_000);
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: PublishOptions,
    }

    fn parse(args: &[&str]) -> Result<PublishOptions, clap::Error> {
        Cli::try_parse_from(std::iter::once("publish").chain(args.iter().copied()))
            .map(|c| c.options)
    }

    #[test]
    fn outages_are_machine_and_hours() {
        let options = parse(&["--machines", "3", "--outage", "2:5"]).expect("parses");
        assert_eq!(options.outage, vec![(2, 5)]);
        assert!(parse(&["--outage", "2"]).is_err());
        assert!(parse(&["--outage", "x:5"]).is_err());
        let beyond = parse(&["--machines", "2", "--outage", "2:5"]).expect("parses");
        let e = beyond.fleet(Timestamp(1_705_305_600_000)).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("--outage 2:5: there are only 2 machines".to_owned())
        );
        let e = beyond.controllers(Timestamp(1_705_305_600_000)).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("--outage 2:5: there are only 2 machines".to_owned())
        );
        let too_long = parse(&["--machines", "3", "--hours", "6", "--outage", "2:5"])
            .expect("parses")
            .controllers(Timestamp(1_705_305_600_000))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(too_long.contains("must end before it does"), "{too_long}");
    }

    /// A controller scripted off the network is offline from an hour into the stream for its
    /// hours, and only it (no outage is drawn here).
    #[test]
    fn a_scripted_outage_takes_that_controller_off_the_network() -> anyhow::Result<()> {
        let options = parse(&[
            "--machines",
            "4",
            "--hours",
            "6",
            "--outage",
            "2:3",
            "--outage-share",
            "0",
            "--power-cut-share",
            "0",
        ])?;
        let (mut fleet, end) = options.controllers(Timestamp(1_705_305_600_000))?;
        let start = end.0 - 6 * MS_PER_HOUR;
        let mut offline = Vec::new();
        for minutes in [30, 90, 200, 230, 250, 350] {
            fleet.advance(Timestamp(start + minutes * 60_000))?;
            offline.push(fleet.offline());
        }
        assert_eq!(offline, [0, 1, 1, 1, 0, 0]);
        Ok(())
    }

    #[test]
    fn the_span_ends_on_the_minute_before_now() {
        let options = parse(&["--machines", "2", "--hours", "0.5"]).expect("parses");
        let now = Timestamp(1_705_305_600_000 + 61_234);
        let (fleet, end) = options.fleet(now).expect("fleet");
        assert_eq!(end, Timestamp(1_705_305_660_000));
        assert_eq!(fleet.now(), Timestamp(end.0 - 30 * 60_000));
        assert!(
            parse(&["--hours", "0"])
                .expect("parses")
                .fleet(now)
                .is_err()
        );
    }
}

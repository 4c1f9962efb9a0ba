//! `vendflow publish`: a simulated fleet publishing signed telemetry over a real MQTT broker,
//! for load and end-to-end tests. Its span ends now, so event times are what a live fleet sends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vendflow_protocol::Timestamp;
use vendflow_protocol::units::MS_PER_HOUR;

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
    /// `N:H`. It buffers its sales and flushes them when the network returns.
    #[arg(long, value_parser = parse_outage)]
    pub outage: Vec<(usize, u32)>,
    /// After the stream, stay connected this many seconds answering commands
    /// (`machines/+/commands`; they are answered during the stream too).
    #[arg(long, default_value_t = 0)]
    pub linger: u64,
    /// Keep every message until the platform's delivery receipt for it arrives
    /// (`machines/{id}/delivered`, sent by `vendflow bridge` once the message is in Kafka), and
    /// send again what has none after a timeout (at least 5 s, adapted to how long receipts
    /// take, doubled while resends go unanswered): what a machine's outbox does, so that nothing is lost
    /// when the broker dies after acknowledging. Needs a bridge (not the demo's embedded broker).
    #[arg(long)]
    pub receipts: bool,
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
    /// The fleet to publish and the end of its span: the whole minute before `now`. Its machines'
    /// numbers continue from `now`, as firmware's do across restarts.
    pub fn fleet(&self, now: Timestamp) -> Result<(Fleet, Timestamp), PublishError> {
        if self.machines == 0 || self.hours.is_nan() || self.hours <= 0.0 {
            return Err(PublishError::Invalid(
                "--machines and --hours must be positive".into(),
            ));
        }
        if let Some((machine, hours)) = self.outage.iter().find(|(m, _)| *m >= self.machines) {
            return Err(PublishError::Invalid(format!(
                "--outage {machine}:{hours}: there are only {} machines",
                self.machines
            )));
        }
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
        )
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
    let (host, port) = mqtt::broker_address(&options.mqtt).ok_or_else(|| {
        PublishError::Invalid(format!("--mqtt {:?} is not HOST:PORT", options.mqtt))
    })?;
    let client_id = format!("vendflow-publisher-{}", std::process::id());
    let mut publisher =
        Publisher::connect_with(host, port, &client_id, options.seed, options.receipts);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| PublishError::Io { path, source }
    };
    let mut record = match &options.record {
        Some(path) => Some((
            std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?),
            path,
        )),
        None => None,
    };
    let mut events = 0u64;
    let mut write_error = None;
    let started = Instant::now();
    mqtt::run(
        fleet,
        &mut publisher,
        end,
        options.speed,
        stop,
        |envelope| {
            events += envelope.events.len() as u64;
            if let Some((w, _)) = record.as_mut() {
                for e in &envelope.events {
                    if let Err(err) = writeln!(w, "{}", e.to_json_line()) {
                        write_error.get_or_insert(err);
                    }
                }
            }
        },
        |_| {},
    )?;
    if let Some((mut w, path)) = record {
        match write_error {
            Some(e) => return Err(io(path)(e)),
            None => w.flush().map_err(io(path))?,
        }
    }
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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

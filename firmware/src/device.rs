//! `vendflow device run BUNDLE`: one machine, as a Linux-based controller runs it. The
//! controller core boots from its provisioning bundle, keeps its outbox in a file (read back
//! on every start, so a process killed at any moment resumes where the machine stood), signs
//! with the bundle's secret and publishes to the bundle's broker; only the hardware and the
//! customers around it are simulated ([`crate::controlled`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use vendflow_protocol::auth::MachineKey;
use vendflow_protocol::provision::Bundle;
use vendflow_protocol::units::MS_PER_HOUR;
use vendflow_protocol::{LocationType, Timestamp};

use crate::controlled::{ControlledConfig, Controllers};
use crate::mqtt::PublishError;
use crate::publish::{Link, Published, run_controllers};

/// The options of `vendflow device run`.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceRunOptions {
    /// The provisioning bundle (`vendflow device provision --out`): the machine's id, its
    /// secret, its broker and its planogram.
    pub bundle: PathBuf,
    /// The outbox: an append-only log of the machine's events and state, each record with its
    /// checksum, synced before anything it holds is sent or shown (default: beside the
    /// bundle, `BUNDLE.outbox`). Started again, the machine resumes from it.
    #[arg(long)]
    pub outbox: Option<PathBuf>,
    /// The MQTT broker, HOST:PORT (default: the bundle's).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Speak MQTT over TLS, trusting only the CA certificates in this PEM file: the CA that
    /// signed the broker's certificate (a self-signed server certificate is not accepted as
    /// its own CA), whose host name or IP address must be the broker's. Without it, plain TCP.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: the machine's own certificate (PEM; signed by a CA the broker trusts),
    /// for a broker that asks each client for one (Mosquitto's `require_certificate`).
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run this many simulated hours, ending now, then deliver what the outbox holds and stop
    /// (default: run from now on in real time until Ctrl-C).
    #[arg(long)]
    pub hours: Option<f64>,
    /// Simulated seconds per wall-clock second (with --hours; default 1, real time).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Where the machine stands: its customers come at this location type's rates (office,
    /// hospital, airport, gym, warehouse, other).
    #[arg(long, default_value = "other")]
    pub location_type: String,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u32,
    /// Hours of undelivered events the machine keeps (older ones are dropped, and declared).
    #[arg(long, default_value_t = 24)]
    pub keep_hours: u32,
    /// The chance that a unit does not drop at a try (a unit that fails its retry too is
    /// refunded).
    #[arg(long, default_value_t = 0.01)]
    pub jam_share: f64,
    /// Seeds the simulated customers and hardware.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Append every event, as first sent, to this file as JSON Lines (flushed line by line).
    #[arg(long)]
    pub record: Option<PathBuf>,
}

/// What a run of the machine did.
pub struct DeviceRun {
    pub machine_id: String,
    pub outbox: PathBuf,
    pub published: Published,
    /// The number of the machine's newest event.
    pub last_seq: u64,
    /// Events still waiting for the platform (0 after a run that ended on its own).
    pub pending: usize,
    pub tally: crate::controlled::Tally,
}

impl DeviceRun {
    /// The line `vendflow device run` ends with.
    pub fn summary(&self) -> String {
        format!(
            "machine {}: {} envelopes ({} events) sent in {:.1}s; newest event #{}, {} waiting in {}; {} units sold (${:.2}), {} refunds",
            self.machine_id,
            self.published.envelopes,
            self.published.events,
            self.published.elapsed.as_secs_f64(),
            self.last_seq,
            self.pending,
            self.outbox.display(),
            self.tally.units_sold,
            self.tally.sold_cents as f64 / 100.0,
            self.tally.refunds,
        )
    }
}

/// Boots the machine of `options.bundle` and runs it (until `stop`, or the end of `--hours`).
pub fn run_device(
    options: &DeviceRunOptions,
    stop: &AtomicBool,
) -> Result<DeviceRun, PublishError> {
    let invalid = PublishError::Invalid;
    let share = |name: &str, x: f64| {
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            Err(invalid(format!("{name} {x} is not between 0 and 1")))
        }
    };
    let jam = share("--jam-share", options.jam_share)?;
    if !options.speed.is_finite() || options.speed <= 0.0 {
        return Err(invalid(format!(
            "--speed {} must be positive",
            options.speed
        )));
    }
    if options.hours.is_some_and(|h| !h.is_finite() || h <= 0.0) {
        return Err(invalid("--hours must be positive".into()));
    }
    if options.hours.is_none() && options.speed != 1.0 {
        return Err(invalid(
            "--speed needs --hours: without it the machine runs in real time from now".into(),
        ));
    }
    let location = LocationType::parse(&options.location_type);
    if location == LocationType::Other && options.location_type != "other" {
        return Err(invalid(format!(
            "--location-type {:?}: one of office, hospital, airport, gym, warehouse, other",
            options.location_type
        )));
    }
    let tls = match &options.tls_ca {
        Some(ca) => {
            let client = options.tls_cert.as_deref().zip(options.tls_key.as_deref());
            Some(crate::mqtt::tls_to_broker(ca, client).map_err(|e| {
                let option = if client.is_some() {
                    "--tls-ca/--tls-cert/--tls-key"
                } else {
                    "--tls-ca"
                };
                invalid(format!("{option}: {e}"))
            })?)
        }
        None => None,
    };
    let text = std::fs::read(&options.bundle).map_err(|source| PublishError::Io {
        path: options.bundle.display().to_string(),
        source,
    })?;
    let bundle = Bundle::from_json(&text)
        .map_err(|e| invalid(format!("{}: {e}", options.bundle.display())))?;
    let outbox = options
        .outbox
        .clone()
        .unwrap_or_else(|| beside(&options.bundle, "outbox"));
    let now = Timestamp::now();
    let (start, end) = match options.hours {
        // The span ends on the minute before now, so no event is from the future.
        Some(hours) => {
            let end = now.0 - now.0.rem_euclid(60_000);
            (end - (hours * MS_PER_HOUR as f64) as i64, end)
        }
        None => (now.0, i64::MAX / 4),
    };
    let mut config = ControlledConfig::new(1, options.seed, Timestamp(start), Timestamp(end));
    config.heartbeat_ms = i64::from(options.heartbeat_secs.max(1)) * 1000;
    config.keep_ms = i64::from(options.keep_hours.max(1)) * MS_PER_HOUR;
    config.jam = jam;
    config.outages = 0.0;
    config.power_cuts = 0.0;
    let mut machine = Controllers::provisioned(&bundle, &outbox, location, config)
        .map_err(|e| invalid(format!("the machine cannot start: {e}")))?;
    let mqtt = options.mqtt.as_deref().unwrap_or(&bundle.mqtt);
    let link = Link {
        mqtt,
        // The machine's own session: the broker keeps what it had not acknowledged across a
        // restart of the process.
        client_id: bundle.machine_id.clone(),
        seed: options.seed,
        key: Some((
            bundle.machine_id.clone(),
            MachineKey::from_secret(&bundle.secret),
        )),
        speed: Some(options.speed),
        record: options.record.as_deref(),
        durable_record: true,
        linger: 0,
        tls,
        clock: None,
        // A machine in the field forgets an event only once the platform has it in Kafka.
        acks: crate::mqtt::Acks::Receipts,
    };
    tracing::info!(machine_id = %bundle.machine_id, outbox = %outbox.display(), broker = mqtt, tls = options.tls_ca.is_some(), client_certificate = options.tls_cert.is_some(), "machine booted");
    let published = run_controllers(&link, &mut machine, Timestamp(end), stop)?;
    Ok(DeviceRun {
        machine_id: bundle.machine_id,
        outbox,
        published,
        last_seq: machine.last_seq(0),
        pending: machine.pending(),
        tally: machine.tally.clone(),
    })
}

/// `path` with `extension` added (`m1.json` → `m1.json.outbox`).
fn beside(path: &Path, extension: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: DeviceRunOptions,
    }

    fn refused(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()));
        match cli.map(|c| run_device(&c.options, &AtomicBool::new(true))) {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(_)) => "ran".into(),
            Err(e) => e.to_string(),
        }
    }

    /// Bad options and a bad bundle are refused with what is wrong, before anything starts.
    #[test]
    fn bad_options_and_bundles_are_refused_with_the_reason() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bundle = dir.path().join("b.json");
        let path = bundle.display().to_string();
        assert!(refused(&[&path]).contains("b.json"), "a missing bundle");
        std::fs::write(&bundle, "{}")?;
        assert!(refused(&[&path]).contains("not a provisioning bundle"));
        let missing_ca = dir.path().join("none.pem").display().to_string();
        let no_certificate = dir.path().join("key.pem");
        std::fs::write(&no_certificate, "not a certificate\n")?;
        let no_certificate = no_certificate.display().to_string();
        for (args, says) in [
            (
                vec!["--speed", "0", "--hours", "1"],
                "--speed 0 must be positive",
            ),
            (vec!["--speed", "60"], "--speed needs --hours"),
            (vec!["--hours=-1"], "--hours must be positive"),
            (vec!["--location-type", "moon"], "--location-type \"moon\""),
            (
                vec!["--jam-share", "2"],
                "--jam-share 2 is not between 0 and 1",
            ),
            // A TLS trust file that is missing, or holds no certificate, stops the machine
            // before it connects (it would otherwise fail every handshake, silently retrying).
            (vec!["--tls-ca", &missing_ca], "--tls-ca: cannot read"),
            (
                vec!["--tls-ca", &no_certificate],
                "holds no PEM certificate",
            ),
            // A client certificate goes with its key, over TLS.
            (vec!["--tls-cert", &no_certificate], "--tls-ca"),
            (
                vec!["--tls-ca", &missing_ca, "--tls-cert", &no_certificate],
                "--tls-key",
            ),
            (vec!["--tls-key", &no_certificate], "--tls-cert"),
        ] {
            let mut all = vec![path.as_str()];
            all.extend(args);
            let said = refused(&all);
            assert!(said.contains(says), "{all:?}: {said}");
        }
        Ok(())
    }
}

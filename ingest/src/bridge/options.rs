//! The options of `vendflow bridge`, declared beside the bridge they configure.

use std::path::PathBuf;

use super::{BridgeConfig, BridgeError, DEFAULT_LINGER_MS};
use crate::auth::{Credentials, Verifier};

/// Bridge machine telemetry from MQTT into Kafka (`vendflow bridge`).
#[derive(clap::Args, Clone, Debug)]
pub struct BridgeOptions {
    /// MQTT broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT…].
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// MQTT client id; keep it stable: the broker keeps unacknowledged messages under it.
    #[arg(long, default_value = "vendflow-bridge")]
    pub client_id: String,
    /// MQTT username (password from VENDFLOW_MQTT_PASSWORD).
    #[arg(long)]
    pub mqtt_user: Option<String>,
    /// Device credentials (JSON Lines of machineId + publicKey), see `vendflow device
    /// register`. Lines of the first scheme (machineId + secretSha256) are read too, and
    /// replaced by the machine's public key when its firmware enrols one.
    #[arg(long, required_unless_present = "insecure_no_auth")]
    pub credentials: Option<PathBuf>,
    /// Refuse machines that still sign with the first scheme's shared-key HMAC (once the
    /// fleet has migrated to Ed25519; until then a leaked hash file could sign for them).
    #[arg(long)]
    pub refuse_legacy_credentials: bool,
    /// Accept unsigned envelopes (trusted test networks only).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Largest accepted difference between an envelope's sentAt and this clock, in seconds.
    #[arg(long, default_value_t = 900)]
    pub max_skew_secs: i64,
    /// Partitions of `machine-telemetry` if the bridge creates it.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Retention of `machine-telemetry` in seconds if the bridge creates it (`retention.ms`,
    /// `cleanup.policy=delete`); default: the broker's. The engine's checkpoints (`vendflow run
    /// --state`) must be taken more often than this.
    #[arg(long)]
    pub telemetry_retention_secs: Option<f64>,
    /// Messages waiting for Kafka before the bridge stops reading MQTT.
    #[arg(long, default_value_t = 10_000)]
    pub max_inflight: usize,
    /// How long the Kafka producer gathers messages into one request, in milliseconds
    /// (librdkafka's `linger.ms`). Longer: fewer, larger requests, less CPU in the bridge and
    /// the broker; each message waits up to this long more before Kafka has it.
    #[arg(long, default_value_t = DEFAULT_LINGER_MS, env = "VENDFLOW_BRIDGE_LINGER_MS")]
    pub linger_ms: u32,
    /// Largest MQTT payload forwarded, in KiB; larger ones go to `telemetry-rejected`
    /// as `too_large` (the same limit as `POST /api/telemetry`).
    #[arg(long, default_value_t = 256)]
    pub max_payload_kib: usize,
    /// Also accept telemetry over HTTP (`POST /api/telemetry`) on this address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// Serve --http over TLS (HTTPS) with this certificate chain (PEM).
    #[arg(long, requires_all = ["http", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl BridgeOptions {
    /// The bridge's settings; `mqtt_password` goes with `--mqtt-user`.
    pub fn config(&self, mqtt_password: String) -> Result<BridgeConfig, BridgeError> {
        let (host, port) =
            vendflow_firmware::mqtt::broker_address(&self.mqtt).ok_or_else(|| {
                BridgeError::Options(format!("--mqtt {:?} is not HOST:PORT", self.mqtt))
            })?;
        Ok(BridgeConfig {
            mqtt_host: host.to_owned(),
            mqtt_port: port,
            client_id: self.client_id.clone(),
            mqtt_credentials: self.mqtt_user.clone().map(|u| (u, mqtt_password)),
            kafka: self.kafka.clone(),
            partitions: self.partitions,
            telemetry_retention: self
                .telemetry_retention_secs
                .map(|s| std::time::Duration::from_secs_f64(s.max(0.001))),
            max_inflight: self.max_inflight.max(1),
            linger_ms: self.linger_ms,
            max_payload: self.max_payload_kib.saturating_mul(1024),
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            http: self.http,
        })
    }

    /// The verifier of envelopes over `credentials` (None: `--insecure-no-auth`, unsigned
    /// envelopes accepted), refusing the legacy scheme if asked.
    pub fn verifier(&self, credentials: Option<Credentials>) -> Verifier {
        let verifier = Verifier::new(credentials, self.max_skew_secs.saturating_mul(1000));
        if self.refuse_legacy_credentials {
            verifier.refuse_legacy()
        } else {
            verifier
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: BridgeOptions,
    }

    fn parse(args: &[&str]) -> Result<BridgeOptions, clap::Error> {
        Cli::try_parse_from(std::iter::once("bridge").chain(args.iter().copied()))
            .map(|c| c.options)
    }

    #[test]
    fn options_become_the_bridge_settings() {
        let options = parse(&[
            "--insecure-no-auth",
            "--mqtt",
            "broker.local:8883",
            "--mqtt-user",
            "bridge",
            "--max-inflight",
            "0",
            "--max-payload-kib",
            "4",
            "--linger-ms",
            "7",
        ])
        .expect("parses");
        let config = options.config("pw".into()).expect("config");
        assert_eq!(
            (config.mqtt_host.as_str(), config.mqtt_port),
            ("broker.local", 8883)
        );
        assert_eq!(
            config.mqtt_credentials,
            Some(("bridge".into(), "pw".into()))
        );
        assert_eq!(config.max_inflight, 1, "at least one message in flight");
        assert_eq!(config.max_payload, 4096);
        assert_eq!(config.linger_ms, 7);
        // The declared default, not a parse: VENDFLOW_BRIDGE_LINGER_MS in the test's
        // environment would take its place in a parse.
        let declared = <Cli as clap::CommandFactory>::command()
            .get_arguments()
            .find(|a| a.get_id() == "linger_ms")
            .map(|a| {
                a.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            });
        assert_eq!(
            declared,
            Some(vec![DEFAULT_LINGER_MS.to_string()]),
            "--linger-ms defaults to DEFAULT_LINGER_MS"
        );
        let bad = parse(&["--insecure-no-auth", "--mqtt", "no-port"]).expect("parses");
        assert_eq!(
            bad.config(String::new()).err().map(|e| e.to_string()),
            Some("--mqtt \"no-port\" is not HOST:PORT".to_owned())
        );
    }

    #[test]
    fn credentials_are_required_unless_explicitly_insecure() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--credentials", "creds.jsonl"]).is_ok());
        assert!(parse(&["--insecure-no-auth", "--tls-cert", "c.pem"]).is_err());
    }
}

//! Shared pieces of the benchmarks: a realistic event stream and process measurements.

use std::path::{Path, PathBuf};

use vendflow_firmware::{Fleet, FleetConfig};
use vendflow_protocol::{Event, RegistryRecord, Timestamp};

/// `hours` of a simulated fleet as (delivery time, event), plus its registry.
pub fn fleet_stream(machines: usize, hours: i64) -> (Vec<RegistryRecord>, Vec<(Timestamp, Event)>) {
    let config = FleetConfig {
        machines,
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::new(&config);
    let mut out = Vec::new();
    let end = config.start.0 + hours * 3_600_000;
    let mut t = config.start.0;
    while t < end {
        t += 1000;
        for env in fleet.advance(Timestamp(t)) {
            out.extend(env.events.into_iter().map(|e| (Timestamp(t), e)));
        }
    }
    (fleet.registry().to_vec(), out)
}

pub use vendflow_dataflows::peak_rss_bytes;

/// A bench's `--name N` argument (a whole number), or `default`.
pub fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    use anyhow::Context;
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} takes a whole number")),
        None => Ok(default),
    }
}

/// The `q`-quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The build's target directory (`CARGO_TARGET_DIR`, or `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// The release `vendflow` binary the process benchmarks run, or how to build it.
pub fn release_bin() -> anyhow::Result<PathBuf> {
    let bin = target_dir().join("release/vendflow");
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: run `cargo build --release --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

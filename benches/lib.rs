//! Shared pieces of the benchmarks: a realistic event stream and process measurements.

use std::path::{Path, PathBuf};

use vendflow_firmware::{Fleet, FleetConfig};
use vendflow_protocol::{Event, RegistryRecord, Timestamp};

/// `hours` of a simulated fleet as (delivery time, event), plus its registry.
pub fn fleet_stream(machines: usize, hours: i64) -> (Vec<RegistryRecord>, Vec<(u64, Event)>) {
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
            out.extend(env.events.into_iter().map(|e| (t as u64, e)));
        }
    }
    (fleet.registry().to_vec(), out)
}

/// Peak resident set size of this process, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The `q`-quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The release `vendflow` binary the process benchmarks run, or how to build it.
pub fn release_bin() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/vendflow");
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: run `cargo build --release --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

//! What a restart from a checkpoint costs: the newest checkpoint of a state directory (as
//! `vendflow replay --state DIR` or a live engine's `--checkpoint-secs` leaves it) read, an
//! engine started from it as `vendflow run --state DIR` starts one, and the engine's first step
//! after it; the time and the resident memory of each step, and where the views' rows are.
//!
//! `cargo run --release -p vendflow-dataflows --example restore_profile -- DIR [WORKERS]`
//! (WORKERS: those the state was taken with, 2 by default).

use std::time::{Duration, Instant};

use vendflow_dataflows::checkpoint::file::CheckpointDir;
use vendflow_dataflows::{Config, Engine, peak_rss_bytes};

/// The process's resident set now, in MiB (Linux).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib >> 10)
}

fn peak_mib() -> u64 {
    peak_rss_bytes().unwrap_or(0) >> 20
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: restore_profile STATE_DIR [WORKERS]")?;
    let workers: usize = args.next().map_or(Ok(2), |w| w.parse())?;
    let started = Instant::now();
    let loaded = CheckpointDir::open(std::path::Path::new(&dir))?.load_newest()?;
    let (path, checkpoint) = loaded.checkpoint.ok_or("no checkpoint in the directory")?;
    let frontier = checkpoint.engine.frontier;
    println!(
        "{}: read in {:.2} s; RSS {} MiB, peak {} MiB",
        path.display(),
        started.elapsed().as_secs_f64(),
        rss_mib(),
        peak_mib()
    );
    let state_dir = tempfile::tempdir()?;
    let at = Instant::now();
    let mut engine = Engine::start_from(
        Config {
            workers,
            state_dir: Some(state_dir.path().to_owned()),
            ..Config::default()
        },
        Some(checkpoint.engine),
    )?;
    println!(
        "engine started from it in {:.2} s; RSS {} MiB, peak {} MiB",
        at.elapsed().as_secs_f64(),
        rss_mib(),
        peak_mib()
    );
    // The workers restore their operators' state as they start: the first step after the
    // frontier waits for all of them.
    let at = Instant::now();
    let store = engine.store();
    let mut feeders = engine.feeders().ok_or("feeders")?;
    let next = frontier + 1;
    feeders.advance_all(next)?;
    if !store.wait_for(next, Duration::from_secs(3600)) {
        return Err("the engine never took its first step".into());
    }
    let (_, counts) = store.row_counts();
    let rows: usize = counts.iter().map(|(_, n)| n).sum();
    println!(
        "first step in {:.2} s ({:.2} s since the read began); {rows} rows in the views; RSS {} MiB, peak {} MiB",
        at.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        rss_mib(),
        peak_mib()
    );
    let on_disk: u64 = walk_bytes(state_dir.path());
    println!(
        "state directory: {:.1} MiB on disk",
        on_disk as f64 / (1u64 << 20) as f64
    );
    engine.abandon_at_exit();
    Ok(())
}

/// Bytes of the files under `dir`.
fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

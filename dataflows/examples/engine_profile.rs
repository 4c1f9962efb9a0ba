//! The engine alone, fed from one thread (no ingest crate, so it builds quickly with
//! `--profile profiling` for line-level profiles: `valgrind --tool=callgrind`, `perf`).
//!
//! `cargo build --profile profiling -p vendflow-dataflows --example engine_profile`
//! `target/profiling/examples/engine_profile FILE [WORKERS [BATCH_EVENTS [TICK_MS]]]`
//!
//! Like a bulk replay, events are stamped with their time rounded down to `TICK_MS` (default five
//! minutes) and handed over `BATCH_EVENTS` at a time.
//!
//! With `VENDFLOW_CHECKPOINT_DIR=DIR`, the engine's state at the end is taken, written there as
//! a checkpoint file and loaded into a second engine: sizes and times of each step are printed.

use std::io::BufRead;
use std::time::{Duration, Instant};

use vendflow_dataflows::{Batch, Config, Engine};
use vendflow_protocol::Timestamp;
use vendflow_protocol::decode::decode_line;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .ok_or("usage: engine_profile FILE [WORKERS [BATCH_EVENTS [TICK_MS]]]")?;
    let workers = args.next().map_or(Ok(1), |w| w.parse())?;
    let batch_events: usize = args.next().map_or(Ok(8192), |b| b.parse())?;
    let tick_ms: i64 = args.next().map_or(Ok(300_000), |t| t.parse())?;
    let mut engine = Engine::start(Config {
        workers,
        ..Config::default()
    })?;
    let store = engine.store();
    let mut feeders = engine.feeders().ok_or("feeders")?;
    let started = Instant::now();
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
    let (mut clock, mut newest, mut events, mut batch) =
        (Timestamp::EPOCH, Timestamp::EPOCH, 0u64, Batch::default());
    for line in reader.split(b'\n') {
        for event in decode_line(&line?).into_iter().flatten() {
            let ts = event.timestamp.max(Timestamp::EPOCH);
            clock = clock.max(ts.window_start(tick_ms));
            newest = newest.max(ts);
            batch.events.push(event);
            events += 1;
        }
        if batch.events.len() >= batch_events {
            feeders.send(clock, std::mem::take(&mut batch))?;
        }
    }
    feeders.send(clock, batch)?;
    let end = newest.max(clock) + 1;
    feeders.advance_all(end)?;
    if !store.wait_for(end, Duration::from_secs(3600)) {
        return Err("the views never caught up".into());
    }
    println!(
        "{events} events, {workers} workers: views at the end in {:.2} s (peak RSS so far {})",
        started.elapsed().as_secs_f64(),
        peak_rss()
    );
    // What `vendflow replay` does next, before its CSV writer: a sorted snapshot of every view,
    // each as an Arrow batch.
    let at = Instant::now();
    let snapshot = store.snapshot();
    let sorted = at.elapsed();
    for def in vendflow_dataflows::CATALOG {
        snapshot.batch(def.name)?;
    }
    println!(
        "snapshot sorted in {:.2} s, as Arrow batches in {:.2} s more",
        sorted.as_secs_f64(),
        (at.elapsed() - sorted).as_secs_f64()
    );
    if let Some(dir) = std::env::var_os("VENDFLOW_CHECKPOINT_DIR") {
        checkpoint(
            &mut feeders,
            end,
            std::path::Path::new(&dir),
            workers,
            events,
        )?;
    }
    drop(feeders);
    engine.shutdown()?;
    Ok(())
}

/// Takes the state at `end`, writes it, reads it back and starts an engine from it.
fn checkpoint(
    feeders: &mut vendflow_dataflows::Feeders,
    end: Timestamp,
    dir: &std::path::Path,
    workers: usize,
    events: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use vendflow_dataflows::checkpoint::file::{Checkpoint, CheckpointDir};
    let at = Instant::now();
    let state = feeders.checkpoint(end, Duration::from_secs(600))?;
    let taken = at.elapsed();
    let operators: u64 = state.workers.iter().map(|s| s.len()).sum();
    let files = CheckpointDir::open(dir)?;
    let at = Instant::now();
    let written = files.write(&Checkpoint {
        engine: state,
        source: Vec::new(),
    })?;
    let write = at.elapsed();
    let at = Instant::now();
    let (_, loaded) = files
        .load_newest()?
        .checkpoint
        .ok_or("the checkpoint is not there")?;
    let read = at.elapsed();
    let at = Instant::now();
    let restored = Engine::start_from(
        Config {
            workers,
            ..Config::default()
        },
        Some(loaded.engine),
    )?;
    let started = at.elapsed();
    println!(
        "checkpoint of {events} events: taken in {:.2} s ({:.1} MB of operator state), written in {:.2} s ({:.1} MB file), read in {:.2} s, an engine started from it in {:.2} s (peak RSS {})",
        taken.as_secs_f64(),
        operators as f64 / 1e6,
        write.as_secs_f64(),
        written.bytes as f64 / 1e6,
        read.as_secs_f64(),
        started.as_secs_f64(),
        peak_rss()
    );
    restored.shutdown()?;
    Ok(())
}

/// The process's peak resident set so far, as the kernel counts it (Linux).
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

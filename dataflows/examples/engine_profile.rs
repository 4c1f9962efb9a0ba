//! The engine alone, fed from one thread (no ingest crate, so it builds quickly with
//! `--profile profiling` for line-level profiles: `valgrind --tool=callgrind`, `perf`).
//!
//! `cargo build --profile profiling -p vendflow-dataflows --example engine_profile`
//! `target/profiling/examples/engine_profile FILE [WORKERS [BATCH_EVENTS [TICK_MS]]]`
//!
//! Like a bulk replay, events are stamped with their time rounded down to `TICK_MS` (default five
//! minutes) and handed over `BATCH_EVENTS` at a time.

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
    engine.shutdown()?;
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

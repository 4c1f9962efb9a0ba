//! The engine alone, fed from one thread (no ingest crate, so it builds quickly with
//! `--profile profiling` for line-level profiles: `valgrind --tool=callgrind`, `perf`).
//!
//! `cargo build --profile profiling -p vendflow-dataflows --example engine_profile`
//! `target/profiling/examples/engine_profile FILE [WORKERS [BATCH_EVENTS]]`

use std::io::BufRead;
use std::time::{Duration, Instant};

use vendflow_dataflows::{Batch, Config, Engine};
use vendflow_protocol::decode::decode_line;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .ok_or("usage: engine_profile FILE [WORKERS [BATCH_EVENTS]]")?;
    let workers = args.next().map_or(Ok(1), |w| w.parse())?;
    let batch_events: usize = args.next().map_or(Ok(8192), |b| b.parse())?;
    let mut engine = Engine::start(Config {
        workers,
        ..Config::default()
    })?;
    let store = engine.store();
    let mut feeders = engine.feeders().ok_or("feeders")?;
    let started = Instant::now();
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
    let (mut clock, mut events, mut batch) = (0u64, 0u64, Batch::default());
    for line in reader.split(b'\n') {
        for event in decode_line(&line?).into_iter().flatten() {
            let ts = u64::try_from(event.timestamp.0).unwrap_or(0);
            clock = clock.max(ts.div_ceil(1000) * 1000);
            batch.events.push(event);
            events += 1;
        }
        if batch.events.len() >= batch_events {
            feeders.send(clock, std::mem::take(&mut batch))?;
        }
    }
    feeders.send(clock, batch)?;
    feeders.advance_all(clock + 1)?;
    if !store.wait_for(clock + 1, Duration::from_secs(3600)) {
        return Err("the views never caught up".into());
    }
    println!(
        "{events} events, {workers} workers: views at the end in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    engine.shutdown()?;
    Ok(())
}

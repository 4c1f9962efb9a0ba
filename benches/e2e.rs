//! End-to-end harness: replays the shared benchmark workload through the same path as
//! `vendflow replay` (decode on every worker, all views, view store) and prints
//! events/s, freshness (batch handed to the engine → first publication that includes it)
//! p50/p99, and the process's peak RSS.
//!
//! ```text
//! cargo bench -p vendflow-benches --bench e2e                      # 1 M events
//! cargo bench -p vendflow-benches --bench e2e -- --repeat 10       # 10 copies, a day apart
//! cargo bench -p vendflow-benches --bench e2e -- --events 200000 --workers 1
//! cargo bench -p vendflow-benches --bench e2e -- --events 200000 --rate 2000   # freshness at fleet rate
//! ```
//! Freshness is only meaningful with `--rate`: replaying flat out, batches queue in front of the
//! dataflow and freshness measures the queue. At the target fleet's rate (50 K machines: about
//! 1,700 heartbeats/s plus sales) use `--rate 2000`.
//! The workload is generated once by `benches/workload/gen_workload.py` into
//! `target/bench-data/` (needs `python3`). Each copy of `--repeat` is shifted one day later in
//! event time with fresh transaction ids, so the same 50 K machines keep going for ten days and
//! every horizon gets to expire: peak RSS shows whether state is bounded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vendflow_benches::{peak_rss_bytes, quantile};
use vendflow_dataflows::{Config, Engine, Time};
use vendflow_ingest::file::{ReplayOptions, replay};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    events: u64,
    repeat: u32,
    workers: usize,
    rate: Option<f64>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 1_000_000,
        repeat: 1,
        workers: 2,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--events" => a.events = value("--events")?.parse()?,
            "--repeat" => a.repeat = value("--repeat")?.parse()?,
            "--workers" => a.workers = value("--workers")?.parse()?,
            "--rate" => a.rate = Some(value("--rate")?.parse()?),
            // cargo bench passes --bench; criterion-style filters are not ours.
            _ => {}
        }
    }
    Ok(a)
}

fn workload(events: u64) -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("bench-data");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("workload-{events}.jsonl"));
    if !path.exists() {
        let script = root.join("benches/workload/gen_workload.py");
        eprintln!("generating {} with {}", path.display(), script.display());
        let status = Command::new("python3")
            .arg(&script)
            .arg(events.to_string())
            .arg(&path)
            .status()?;
        if !status.success() {
            bail!("{} failed", script.display());
        }
    }
    Ok(path)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let path = workload(args.events)?;
    let mut engine = Engine::start(Config {
        workers: args.workers,
        ..Config::default()
    })?;
    let store = engine.store();
    let progress = store.progress();
    let feeders = engine.feeders().context("feeders")?;

    // First hand-over of each ingestion time to the engine.
    let sent: Arc<Mutex<HashMap<Time, Instant>>> = Arc::default();
    let hook_sent = sent.clone();
    let options = ReplayOptions {
        repeat: args.repeat,
        repeat_shift_ms: 86_400_000,
        rate: args.rate,
        on_sent: Some(Arc::new(move |t| {
            if let Ok(mut m) = hook_sent.lock() {
                m.entry(t).or_insert_with(Instant::now);
            }
        })),
        ..ReplayOptions::default()
    };
    let started = Instant::now();
    let stats = replay(&path, feeders, &options, Arc::new(AtomicU64::new(0)))?;
    if !store.wait_for(stats.end, Duration::from_secs(3600)) {
        bail!("the views never caught up");
    }
    let elapsed = started.elapsed();

    let publications: Vec<(Time, Instant)> = progress.try_iter().collect();
    let sent = sent.lock().map(|m| m.clone()).unwrap_or_default();
    let mut freshness: Vec<f64> = sent
        .iter()
        .filter_map(|(t, at)| {
            let published = publications.iter().find(|(frontier, _)| frontier > t)?;
            Some(published.1.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    freshness.sort_by(f64::total_cmp);
    let snapshot = store.snapshot();
    let windows = snapshot
        .rows("anomaly_windows")
        .map(<[_]>::len)
        .unwrap_or(0);
    engine.shutdown()?;

    println!(
        "workload   {} ({} events x {} copies, {} workers)",
        path.display(),
        args.events,
        args.repeat,
        args.workers
    );
    println!(
        "events     {} in {:.2} s = {:.0} events/s",
        stats.events,
        elapsed.as_secs_f64(),
        stats.events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "freshness  p50 {:.1} ms, p99 {:.1} ms over {} ingestion times ({} publications)",
        quantile(&freshness, 0.5),
        quantile(&freshness, 0.99),
        freshness.len(),
        publications.len()
    );
    println!(
        "peak RSS   {:.0} MiB",
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    println!("state      {windows} live anomaly windows at the end");
    Ok(())
}

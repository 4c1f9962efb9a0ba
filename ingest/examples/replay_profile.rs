//! The replay path alone (file → decode → dataflows → view store), without writing CSVs: a
//! quick loop for profiling the engine (`VENDFLOW_PROFILE=1`, `perf record`) that builds without
//! the SQL and archive crates.
//!
//! `cargo run --release -p vendflow-ingest --example replay_profile -- FILE [WORKERS [REPEAT
//! [SHIFT_MINUTES]]]`; `VENDFLOW_CSV_OUT=DIR` also writes the views' CSVs there, as `vendflow
//! replay --out DIR` does, and `VENDFLOW_COLD_VIEWS=1` keeps old rows on disk as a live engine
//! does; with `--features vendflow-ingest/heap-profile`, the system allocator for
//! heaptrack (`heaptrack …/replay_profile FILE 2 3 3`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use vendflow_dataflows::{Config, Engine};
use vendflow_ingest::file::{ReplayOptions, replay};

// With the `heap-profile` feature the system allocator, so that heaptrack sees every allocation.
#[cfg(not(feature = "heap-profile"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .ok_or("usage: replay_profile FILE [WORKERS [REPEAT [SHIFT_MINUTES]]]")?;
    let workers = args.next().map_or(Ok(2), |w| w.parse())?;
    // As `vendflow replay --repeat N --repeat-shift-minutes M`: the file N times, each copy M
    // minutes (default a day) after the last.
    let repeat: u32 = args.next().map_or(Ok(1), |r| r.parse())?;
    let shift_minutes: i64 = args.next().map_or(Ok(24 * 60), |m| m.parse())?;
    // As `vendflow replay`: a bulk load keeps its views in memory (`VENDFLOW_COLD_VIEWS=1`: old
    // rows on disk, as a live engine keeps them).
    let mut config = Config {
        workers,
        cold_views: std::env::var_os("VENDFLOW_COLD_VIEWS").is_some_and(|v| v == "1"),
        ..Config::default()
    };
    // As `vendflow --settlement-memory-transactions N`.
    if let Some(n) = std::env::var_os("VENDFLOW_SETTLEMENT_MEMORY_TRANSACTIONS") {
        config.settlement_memory_transactions = n.to_string_lossy().parse()?;
    }
    let mut engine = Engine::start(config)?;
    let store = engine.store();
    let feeders = engine.feeders().ok_or("feeders")?;
    let started = Instant::now();
    let stats = replay(
        std::path::Path::new(&file),
        feeders,
        &ReplayOptions {
            repeat,
            repeat_shift_ms: shift_minutes * 60_000,
            ..ReplayOptions::default()
        },
        Arc::new(AtomicU64::new(0)),
    )?;
    let read = started.elapsed();
    // As `vendflow replay`: the workers' state goes once the store has every update.
    if !engine.finish_load(stats.end, Duration::from_secs(3600)) {
        return Err("the views never caught up".into());
    }
    let done = started.elapsed();
    // The sorted snapshot adds its copies to the peak (~40 MiB on the 1 M workload).
    let engine_peak = vendflow_dataflows::peak_rss_bytes().unwrap_or(0) >> 20;
    // As `vendflow replay --out DIR` ends, before the snapshot (whose copies would
    // add to the peak): every view as CSV, to profile that phase too.
    if let Some(dir) = std::env::var_os("VENDFLOW_CSV_OUT") {
        let at = Instant::now();
        let written = vendflow_sinks::csv::write_store(&store, std::path::Path::new(&dir))?;
        eprintln!(
            "{} CSVs written in {:.2} s; peak RSS {} MiB",
            written.len(),
            at.elapsed().as_secs_f64(),
            vendflow_dataflows::peak_rss_bytes().unwrap_or(0) >> 20
        );
    }
    for (view, n) in store.rows_on_disk() {
        eprintln!("{n:>10} rows of {view} on disk");
    }
    let snapshot = store.snapshot();
    let per_view: Vec<(&str, usize)> = vendflow_dataflows::CATALOG
        .iter()
        .map(|v| (v.name, snapshot.rows(v.name).map_or(0, <[_]>::len)))
        .collect();
    let rows: usize = per_view.iter().map(|(_, n)| n).sum();
    if std::env::var_os("VENDFLOW_ROWS").is_some() {
        for (view, n) in &per_view {
            eprintln!("{n:>10} {view}");
        }
    }
    let peak = vendflow_dataflows::peak_rss_bytes().unwrap_or(0) >> 20;
    println!(
        "{} events, {workers} workers: input read in {:.2} s, views at the end in {:.2} s ({:.0} events/s); {rows} rows; peak RSS {peak} MiB ({engine_peak} MiB before the snapshot)",
        stats.counts.events,
        read.as_secs_f64(),
        done.as_secs_f64(),
        stats.counts.events as f64 / done.as_secs_f64()
    );
    // As `vendflow replay` ends: draining the workers would expire every window and dedup key
    // at the end of time, work that only pollutes a profile taken of the whole process. The
    // operator profile is printed as the workers stop, so with it the engine is shut down.
    if std::env::var_os("VENDFLOW_PROFILE").is_some() {
        engine.shutdown()?;
    } else {
        engine.abandon_at_exit();
    }
    Ok(())
}

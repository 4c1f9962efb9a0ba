//! The service's one periodic loop, on the thread that called [`super::Running::run`]: every
//! 10 ms it watches the published frontier pass sampled messages (freshness, Kafka); at each
//! archive period it hands a snapshot of every view to the archive; at each tick it summarizes
//! the fleet, tells the caller, and writes the status file and `out`'s CSVs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vendflow_dataflows::FleetSummary;
use vendflow_ingest::kafka::source::{Freshness, Percentiles};
use vendflow_protocol::Timestamp;

use super::source::Kind;
use super::{Running, ServiceError};
use crate::api::SourceCounters;

/// One tick of a running service.
#[derive(Clone, Debug)]
pub struct Tick {
    /// The views' published frontier (event time, ms).
    pub frontier: Timestamp,
    pub summary: FleetSummary,
    pub source: SourceCounters,
    /// Consumed offsets per topic partition (Kafka).
    pub positions: Option<String>,
    /// Ingested → every view published, over the latest sampled messages (Kafka).
    pub freshness: Option<Percentiles>,
}

impl Tick {
    /// The summary line the binary prints.
    pub fn line(&self) -> String {
        let mut line = format!("[{}] {}", self.frontier, self.summary);
        if let Some(positions) = &self.positions {
            line.push_str(&format!(
                " | consumed {} messages, {} events, {} refused | {positions}",
                self.source.messages, self.source.events, self.source.refused
            ));
        }
        if let Some(f) = &self.freshness {
            line.push_str(&format!(
                " | freshness p50 {} ms p99 {} ms (engine p50 {} ms p99 {} ms)",
                f.p50, f.p99, f.engine_p50, f.engine_p99
            ));
        }
        line
    }
}

pub(super) fn run(
    running: &mut Running,
    mut on_tick: impl FnMut(&Tick),
) -> Result<(), ServiceError> {
    let mut freshness = Freshness::default();
    let mut last_tick = Instant::now();
    let mut last_archived = Instant::now();
    let (every, snapshot_every) = (
        running.config.summary_every.max(Duration::from_millis(100)),
        running
            .config
            .snapshot_every
            .max(Duration::from_millis(100)),
    );
    while !running.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
        if let Some(stats) = &running.freshness {
            freshness.observe(stats, running.store.frontier(), Timestamp::now().0);
        }
        if running.deadline.is_some_and(|d| Instant::now() >= d) {
            running.stop.store(true, Ordering::SeqCst);
            break;
        }
        let tick_due = last_tick.elapsed() >= every;
        // In a cluster the views are on process 0: only it archives them (every process
        // archives the raw records of its partitions).
        let archive_due = running.archive.is_some()
            && running.config.engine.process() == 0
            && last_archived.elapsed() >= snapshot_every;
        if !tick_due && !archive_due {
            continue;
        }
        // Every view is copied only when the archive or `out` takes them; the summary reads a
        // few (the copy holds the store's read lock, and publication waits for it).
        let snapshot = if archive_due || (tick_due && running.config.out.is_some()) {
            running.store.snapshot()
        } else {
            running.store.snapshot_of(FleetSummary::views(
                vendflow_dataflows::summary::Scope::Fleet,
            ))
        };
        let positions = running
            .freshness
            .as_ref()
            .map(|stats| stats.positions_line());
        if let Some(archive) = &running.archive
            && archive_due
        {
            last_archived = Instant::now();
            archive
                .tap()
                .views(snapshot.clone(), positions.clone().unwrap_or_default());
        }
        if !tick_due {
            continue;
        }
        last_tick = Instant::now();
        let summary = match FleetSummary::from_snapshot(&snapshot) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot summarize the fleet");
                continue;
            }
        };
        let tick = Tick {
            frontier: snapshot.frontier,
            summary,
            source: (running.counters)(),
            positions: (running.kind == Kind::Kafka).then(|| positions.unwrap_or_default()),
            freshness: freshness.percentiles(),
        };
        on_tick(&tick);
        let mut status_files: Vec<PathBuf> = running.config.status.iter().cloned().collect();
        if let Some(dir) = &running.config.out {
            vendflow_sinks::csv::write_snapshot(&snapshot, dir)?;
            status_files.push(dir.join("status.json"));
        }
        if !status_files.is_empty() {
            write_status(running, &tick, &status_files)?;
        }
    }
    Ok(())
}

/// The status file: where the views are, how fresh, what was consumed and archived.
fn write_status(running: &Running, tick: &Tick, paths: &[PathBuf]) -> Result<(), ServiceError> {
    let fresh = tick.freshness;
    // Freshness: how far the published views are behind the wall clock. Ingestion time is the
    // bridge's clock when it produced each envelope, so this is the time from the bridge to a
    // view (plus at most one tick).
    let lag_ms = Timestamp::now() - tick.frontier;
    let archive = running.archive.as_ref();
    let status = serde_json::json!({
        "frontier": tick.frontier.ms(),
        "lagMs": lag_ms,
        // Bridge stamp → every view, over the latest sampled messages.
        "freshnessP50Ms": fresh.map(|f| f.p50),
        "freshnessP99Ms": fresh.map(|f| f.p99),
        // Consumer received → every view: the engine's own part of the above.
        "engineFreshnessP50Ms": fresh.map(|f| f.engine_p50),
        "engineFreshnessP99Ms": fresh.map(|f| f.engine_p99),
        "freshnessSamples": fresh.map_or(0, |f| f.samples),
        "messages": tick.source.messages,
        "events": tick.source.events,
        "errors": tick.source.refused,
        "positions": tick.positions.clone().unwrap_or_default(),
        "archive": archive.map(|a| a.stats().line()),
        "archived": archive.map(|a| {
            a.stats().committed.lock().map(|c| c.clone()).unwrap_or_default()
        }),
        "checkpoints": running.checkpoints.as_ref().map(|c| {
            let latest = c.latest();
            serde_json::json!({
                "written": c.written.load(Ordering::Relaxed),
                "failed": c.failed.load(Ordering::Relaxed),
                "damagedSkippedAtStart": c.skipped_at_start.load(Ordering::Relaxed),
                "restoredFromFrontierMs": c.restored().map(|r| r.frontier.ms()),
                "resumedFrom": c.restored().map(|r| r.positions),
                "latestFrontierMs": latest.as_ref().map(|w| w.frontier.ms()),
                "latestBytes": latest.as_ref().map(|w| w.bytes),
            })
        }),
    });
    for path in paths {
        let tmp = path.with_extension("json.tmp");
        let io = |source| ServiceError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        };
        std::fs::write(&tmp, status.to_string()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
    }
    Ok(())
}

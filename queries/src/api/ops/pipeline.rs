//! The health and metrics of the parts around the engine: its source, the source's lag, the
//! archive.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Value as Json, json};
use vendflow_ingest::kafka::source::PartitionLag;

/// What the binary knows about the parts around the engine.
pub trait Health: Send + Sync {
    /// Components by name (`brokers`, `sink`, …), each an object with a `status` of `ok` or
    /// something else that says what is wrong.
    fn components(&self) -> BTreeMap<String, Json>;
    /// Prometheus text of the sources and sinks: events in, rejected, lag.
    fn metrics(&self) -> String;
}

/// The engine alone (tests, servers without sources of their own).
pub struct EngineOnly;

impl Health for EngineOnly {
    fn components(&self) -> BTreeMap<String, Json> {
        BTreeMap::new()
    }

    fn metrics(&self) -> String {
        String::new()
    }
}

/// What a source has taken in so far (messages, events, refused records).
pub type SourceCounters = vendflow_ingest::Counts;

/// The latest lag measurement (taken in the background: it asks the brokers): per partition,
/// `(topic, partition, the engine's next offset, the log's end)`.
#[derive(Clone, Debug)]
pub struct LagReading {
    pub taken: std::time::Instant,
    pub result: Result<Vec<PartitionLag>, String>,
}

/// What the archive has written so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchiveCounters {
    pub files: u64,
    pub events: u64,
    pub errors: u64,
}

/// What the checkpoints have done (`vendflow run --state`).
#[derive(Clone, Debug, Default)]
pub struct CheckpointCounters {
    pub written: u64,
    pub failed: u64,
    /// Damaged checkpoint files skipped at start.
    pub skipped_at_start: u64,
    /// The frontier (ms) of the checkpoint this run started from.
    pub restored_from: Option<i64>,
    pub latest: Option<LatestCheckpoint>,
    /// The latest attempt's error, when it failed.
    pub last_error: Option<String>,
    /// Messages the log's retention deleted before the engine read them.
    pub lost_to_retention: u64,
}

/// The newest checkpoint written.
#[derive(Clone, Debug)]
pub struct LatestCheckpoint {
    pub frontier_ms: i64,
    pub bytes: u64,
    pub age: std::time::Duration,
    /// How long the source was held while the state was taken.
    pub held: std::time::Duration,
    pub write: std::time::Duration,
}

/// Health and metrics of a running pipeline: its source (`mqtt` in the demo, `kafka` with
/// `run`), the source's lag when it has one, and the Parquet archive when there is one.
pub struct Pipeline {
    pub source: &'static str,
    /// Where the source reads (broker addresses), for people reading `/health`.
    pub address: String,
    pub counters: Box<dyn Fn() -> SourceCounters + Send + Sync>,
    pub lag: Option<Box<dyn Fn() -> Option<LagReading> + Send + Sync>>,
    pub archive: Option<Box<dyn Fn() -> ArchiveCounters + Send + Sync>>,
    pub checkpoints: Option<Box<dyn Fn() -> CheckpointCounters + Send + Sync>>,
    /// The archive's error count last seen to change, and when: an error makes the archive
    /// `failing` for five minutes, not for ever.
    archive_seen: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// How old a lag reading may be before the brokers count as unreachable.
const LAG_STALE: std::time::Duration = std::time::Duration::from_secs(30);
const ARCHIVE_FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(300);

impl Pipeline {
    pub fn new(
        source: &'static str,
        address: impl Into<String>,
        counters: Box<dyn Fn() -> SourceCounters + Send + Sync>,
    ) -> Pipeline {
        Pipeline {
            source,
            address: address.into(),
            counters,
            lag: None,
            archive: None,
            checkpoints: None,
            archive_seen: std::sync::Mutex::new((0, None)),
        }
    }

    pub fn with_lag(mut self, lag: Box<dyn Fn() -> Option<LagReading> + Send + Sync>) -> Pipeline {
        self.lag = Some(lag);
        self
    }

    pub fn with_archive(
        mut self,
        archive: Box<dyn Fn() -> ArchiveCounters + Send + Sync>,
    ) -> Pipeline {
        self.archive = Some(archive);
        self
    }

    pub fn with_checkpoints(
        mut self,
        checkpoints: Box<dyn Fn() -> CheckpointCounters + Send + Sync>,
    ) -> Pipeline {
        self.checkpoints = Some(checkpoints);
        self
    }

    fn checkpoints_json(c: &CheckpointCounters) -> Json {
        let status = match (&c.last_error, c.lost_to_retention) {
            (Some(e), _) => format!("failing: the latest checkpoint was not taken: {e}"),
            (None, lost) if lost > 0 => format!(
                "degraded: the log's retention deleted {lost} message(s) the checkpoint had not taken; the views miss them"
            ),
            (None, _) => "ok".to_owned(),
        };
        let mut out = json!({
            "status": status,
            "written": c.written, "failed": c.failed,
            "damagedSkippedAtStart": c.skipped_at_start,
            "restoredFromFrontierMs": c.restored_from,
            "lostToRetention": c.lost_to_retention,
        });
        if let Some(l) = &c.latest {
            out["latest"] = json!({
                "frontierMs": l.frontier_ms, "bytes": l.bytes,
                "ageSeconds": l.age.as_secs_f64(), "heldSeconds": l.held.as_secs_f64(),
                "writeSeconds": l.write.as_secs_f64(),
            });
        }
        out
    }

    fn source_json(&self) -> Json {
        let c = (self.counters)();
        let mut out = json!({
            "status": "ok", "address": self.address,
            "messages": c.messages, "events": c.events, "refused": c.refused,
        });
        if let Some(lag) = &self.lag {
            match lag() {
                None => out["status"] = json!("starting: lag not measured yet"),
                Some(reading) => {
                    let age = reading.taken.elapsed();
                    match &reading.result {
                        Err(e) => out["status"] = json!(format!("unreachable: {e}")),
                        Ok(_) if age > LAG_STALE => {
                            out["status"] = json!(format!(
                                "unreachable: no answer from the brokers for {} s",
                                age.as_secs()
                            ))
                        }
                        Ok(parts) => {
                            out["lag"] = json!(parts.iter().map(PartitionLag::lag).sum::<i64>());
                            out["partitions"] = parts
                                .iter()
                                .map(|p| json!({"topic": p.topic, "partition": p.partition, "position": p.position, "end": p.end, "lag": p.lag()}))
                                .collect();
                        }
                    }
                    out["lagMeasuredSecondsAgo"] = json!(age.as_secs_f64());
                }
            }
        }
        out
    }

    fn archive_json(&self, archive: &(dyn Fn() -> ArchiveCounters + Send + Sync)) -> Json {
        let a = archive();
        let mut seen = self.archive_seen.lock().unwrap_or_else(|e| e.into_inner());
        if a.errors != seen.0 {
            *seen = (a.errors, Some(std::time::Instant::now()));
        }
        let failing = seen.1.is_some_and(|at| at.elapsed() < ARCHIVE_FAILING_FOR);
        json!({
            "status": if failing {
                format!("failing: {} write error(s), the latest {} s ago (see the log)", a.errors, seen.1.map_or(0, |t| t.elapsed().as_secs()))
            } else {
                "ok".to_owned()
            },
            "filesWritten": a.files, "eventsWritten": a.events, "errors": a.errors,
        })
    }
}

impl Health for Pipeline {
    fn components(&self) -> BTreeMap<String, Json> {
        let mut out = BTreeMap::from([(self.source.to_owned(), self.source_json())]);
        if let Some(archive) = &self.archive {
            out.insert("archive".to_owned(), self.archive_json(archive.as_ref()));
        }
        if let Some(checkpoints) = &self.checkpoints {
            out.insert(
                "checkpoints".to_owned(),
                Self::checkpoints_json(&checkpoints()),
            );
        }
        out
    }

    fn metrics(&self) -> String {
        let c = (self.counters)();
        let source = self.source;
        let mut out = String::new();
        for (name, help, value) in [
            (
                "messages",
                "Messages (envelopes) the source consumed.",
                c.messages,
            ),
            (
                "events",
                "Events the source fed to the dataflows.",
                c.events,
            ),
            (
                "refused",
                "Records the source refused (each is an error record).",
                c.refused,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP vendflow_source_{name}_total {help}\n# TYPE vendflow_source_{name}_total counter\n\
                 vendflow_source_{name}_total{{source=\"{source}\"}} {value}\n"
            );
        }
        if let Some(Some(LagReading {
            result: Ok(parts), ..
        })) = self.lag.as_ref().map(|l| l())
        {
            out.push_str(
                "# HELP vendflow_source_lag_messages Messages in the log the engine has not read yet, per partition.\n\
                 # TYPE vendflow_source_lag_messages gauge\n",
            );
            for p in &parts {
                let _ = writeln!(
                    out,
                    "vendflow_source_lag_messages{{source=\"{source}\",topic=\"{}\",partition=\"{}\"}} {}",
                    p.topic,
                    p.partition,
                    p.lag()
                );
            }
        }
        if let Some(archive) = &self.archive {
            let a = archive();
            for (name, help, value) in [
                ("files_written", "Parquet files the archive wrote.", a.files),
                ("events_written", "Events the archive wrote.", a.events),
                (
                    "errors",
                    "Archive writes that failed (retried at the next flush).",
                    a.errors,
                ),
            ] {
                let _ = write!(
                    out,
                    "# HELP vendflow_archive_{name}_total {help}\n# TYPE vendflow_archive_{name}_total counter\n\
                     vendflow_archive_{name}_total {value}\n"
                );
            }
        }
        if let Some(checkpoints) = &self.checkpoints {
            let c = checkpoints();
            for (name, kind, help, value) in [
                ("checkpoints_written_total", "counter", "Checkpoints written.", c.written as f64),
                ("checkpoints_failed_total", "counter", "Checkpoints that failed (tried again at the next period).", c.failed as f64),
                ("checkpoints_damaged_skipped_total", "counter", "Damaged checkpoint files skipped at start (the one before was used).", c.skipped_at_start as f64),
                ("source_lost_to_retention_total", "counter", "Messages the log's retention deleted before the engine read them.", c.lost_to_retention as f64),
            ]
            .into_iter()
            .chain(c.latest.iter().flat_map(|l| {
                [
                    ("checkpoint_age_seconds", "gauge", "Seconds since the newest checkpoint was written.", l.age.as_secs_f64()),
                    ("checkpoint_bytes", "gauge", "Size of the newest checkpoint file.", l.bytes as f64),
                    ("checkpoint_frontier_ms", "gauge", "Frontier (ingestion time, epoch ms) of the newest checkpoint.", l.frontier_ms as f64),
                    ("checkpoint_held_seconds", "gauge", "How long the source was held while the newest checkpoint's state was taken.", l.held.as_secs_f64()),
                    ("checkpoint_write_seconds", "gauge", "How long the newest checkpoint file took to write.", l.write.as_secs_f64()),
                ]
            })) {
                let _ = write!(
                    out,
                    "# HELP vendflow_{name} {help}\n# TYPE vendflow_{name} {kind}\nvendflow_{name} {value}\n"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_pipeline_reports_its_checkpoints_and_says_when_the_latest_failed() {
        let state: Arc<Mutex<CheckpointCounters>> = Arc::default();
        let s = state.clone();
        let pipeline = Pipeline::new("kafka", "k:9092", Box::new(SourceCounters::default))
            .with_checkpoints(Box::new(move || {
                s.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }));
        assert_eq!(pipeline.components()["checkpoints"]["status"], "ok");
        assert!(
            !pipeline.metrics().contains("vendflow_checkpoint_bytes"),
            "none written yet"
        );
        *state.lock().unwrap_or_else(|e| e.into_inner()) = CheckpointCounters {
            written: 3,
            failed: 1,
            skipped_at_start: 1,
            restored_from: Some(1_000),
            latest: Some(LatestCheckpoint {
                frontier_ms: 9_000,
                bytes: 1_234,
                age: Duration::from_secs(2),
                held: Duration::from_millis(100),
                write: Duration::from_millis(300),
            }),
            last_error: None,
            lost_to_retention: 0,
        };
        let metrics = pipeline.metrics();
        for line in [
            "vendflow_checkpoints_written_total 3",
            "vendflow_checkpoints_failed_total 1",
            "vendflow_checkpoints_damaged_skipped_total 1",
            "vendflow_source_lost_to_retention_total 0",
            "vendflow_checkpoint_bytes 1234",
            "vendflow_checkpoint_frontier_ms 9000",
            "vendflow_checkpoint_held_seconds 0.1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
        }
        let health = &pipeline.components()["checkpoints"];
        assert_eq!(
            (
                &health["status"],
                &health["latest"]["bytes"],
                &health["restoredFromFrontierMs"]
            ),
            (&json!("ok"), &json!(1_234), &json!(1_000))
        );
        state.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some("disk full".into());
        let status = pipeline.components()["checkpoints"]["status"].clone();
        assert!(
            status
                .as_str()
                .is_some_and(|s| s.starts_with("failing") && s.contains("disk full"))
        );
        let mut c = state.lock().unwrap_or_else(|e| e.into_inner());
        c.last_error = None;
        c.lost_to_retention = 7;
        drop(c);
        let status = pipeline.components()["checkpoints"]["status"].clone();
        assert!(
            status
                .as_str()
                .is_some_and(|s| s.starts_with("degraded") && s.contains('7'))
        );
    }

    #[test]
    fn a_pipeline_reports_its_source_lag_and_archive() {
        let lag: Arc<Mutex<Option<LagReading>>> = Arc::new(Mutex::new(None));
        let errors = Arc::new(AtomicU64::new(0));
        let (l, e) = (lag.clone(), errors.clone());
        let pipeline = Pipeline::new(
            "kafka",
            "127.0.0.1:9092",
            Box::new(|| SourceCounters {
                messages: 7,
                events: 9,
                refused: 1,
            }),
        )
        .with_lag(Box::new(move || {
            l.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }))
        .with_archive(Box::new(move || ArchiveCounters {
            files: 2,
            events: 9,
            errors: e.load(Ordering::SeqCst),
        }));
        let status = |c: &BTreeMap<String, Json>, part: &str| {
            c[part]["status"].as_str().unwrap_or_default().to_owned()
        };
        // Not measured yet, then measured, then failing, then stale.
        let c = pipeline.components();
        assert!(status(&c, "kafka").starts_with("starting"), "{c:?}");
        *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagReading {
            taken: Instant::now(),
            result: Ok(vec![
                PartitionLag {
                    topic: "machine-telemetry".into(),
                    partition: 0,
                    position: 10,
                    end: 15,
                },
                PartitionLag {
                    topic: "machine-telemetry".into(),
                    partition: 1,
                    position: 4,
                    end: 4,
                },
            ]),
        });
        let c = pipeline.components();
        assert_eq!(status(&c, "kafka"), "ok");
        assert_eq!(c["kafka"]["lag"], 5);
        assert_eq!(status(&c, "archive"), "ok");
        let metrics = pipeline.metrics();
        for line in [
            "vendflow_source_messages_total{source=\"kafka\"} 7",
            "vendflow_source_refused_total{source=\"kafka\"} 1",
            "vendflow_source_lag_messages{source=\"kafka\",topic=\"machine-telemetry\",partition=\"0\"} 5",
            "vendflow_archive_files_written_total 2",
        ] {
            assert!(metrics.contains(line), "{line} missing:\n{metrics}");
        }
        errors.store(1, Ordering::SeqCst);
        assert!(status(&pipeline.components(), "archive").starts_with("failing: 1 write error"));
        *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagReading {
            taken: Instant::now() - Duration::from_secs(60),
            result: Ok(Vec::new()),
        });
        assert!(status(&pipeline.components(), "kafka").starts_with("unreachable"));
        *lag.lock().unwrap_or_else(|p| p.into_inner()) = Some(LagReading {
            taken: Instant::now(),
            result: Err("broker down".into()),
        });
        assert_eq!(
            status(&pipeline.components(), "kafka"),
            "unreachable: broker down"
        );
    }
}

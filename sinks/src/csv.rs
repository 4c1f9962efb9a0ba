//! CSV files of a snapshot: `<dir>/<view>.csv`, with a header row.
//!
//! Every view comes from the same [`Snapshot`], so the files agree with each other. Each file is
//! written under a temporary name and renamed, so a reader never sees half a file. Money is
//! printed as a decimal with two places and instants as RFC 3339 in UTC.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use vendflow_dataflows::Snapshot;

use crate::SinkError;

/// One written file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub view: &'static str,
    pub path: PathBuf,
    pub rows: usize,
}

/// Writes every view of `snapshot` into `dir` (created if missing).
pub fn write_snapshot(snapshot: &Snapshot, dir: &Path) -> Result<Vec<Written>, SinkError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SinkError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // One thread per view: the large views take most of the time, and they are independent.
    std::thread::scope(|scope| {
        let handles: Vec<_> = vendflow_dataflows::CATALOG
            .iter()
            .map(|def| scope.spawn(move || write_view(snapshot, def.name, dir)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SinkError::Encode {
                        view: "csv".into(),
                        message: "a CSV writer thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

/// Rows converted to Arrow and encoded at a time: a view is written chunk by chunk, so writing
/// holds one chunk per view in memory, not the whole file (the 1 M-event replay's views are
/// ~100 MB of CSV; encoded whole and in parts at once they added a quarter to its peak memory).
const ROWS_PER_CHUNK: usize = 16_384;

/// Writes one view of `snapshot` as `<dir>/<view>.csv`, converted and encoded
/// [`ROWS_PER_CHUNK`] rows at a time (views are written on threads of their own).
fn write_view(snapshot: &Snapshot, view: &'static str, dir: &Path) -> Result<Written, SinkError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SinkError::Io { path, source }
    };
    let encode = |e: &dyn std::fmt::Display| SinkError::Encode {
        view: view.into(),
        message: e.to_string(),
    };
    let rows = snapshot.rows(view).map_err(|e| encode(&e))?.len();
    let path = dir.join(format!("{view}.csv"));
    let tmp = dir.join(format!(".{view}.csv.tmp"));
    let file = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io(&tmp))?);
    let mut writer = arrow_csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    // At least one batch, so that an empty view still gets its header.
    let mut start = 0;
    loop {
        let batch = snapshot
            .batch_range(view, start..start + ROWS_PER_CHUNK)
            .map_err(|e| encode(&e))?;
        writer.write(&batch).map_err(|e| match e {
            arrow_schema::ArrowError::IoError(_, source) => SinkError::Io {
                path: tmp.display().to_string(),
                source,
            },
            e => encode(&e),
        })?;
        start += ROWS_PER_CHUNK;
        if start >= rows {
            break;
        }
    }
    let file = writer
        .into_inner()
        .into_inner()
        .map_err(|e| SinkError::Io {
            path: tmp.display().to_string(),
            source: e.into_error(),
        })?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(Written { view, path, rows })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Context;
    use vendflow_dataflows::{Batch, Config, Engine};
    use vendflow_protocol::decode::decode_line;

    use super::*;

    /// A view large enough to be written in chunks is the same file as encoded whole: one header,
    /// every row once, in the snapshot's order.
    #[test]
    fn a_large_view_written_in_chunks_is_the_view_written_whole() -> anyhow::Result<()> {
        let machines = ROWS_PER_CHUNK * 2 + 17;
        let mut engine = Engine::start(Config::default())?;
        let store = engine.store();
        let mut feeders = engine.feeders().context("feeders")?;
        let start = 1_700_000_000_000i64;
        let events = (0..machines)
            .flat_map(|i| {
                let line = format!(
                    r#"{{"machineId":"m{i:06}","type":"heartbeat","timestamp":{},"payload":{{"temperature":5.5}}}}"#,
                    start + i as i64
                );
                decode_line(line.as_bytes())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let end = (start as u64) + machines as u64 + 1;
        feeders.send(
            start as u64,
            Batch {
                events,
                ..Batch::default()
            },
        )?;
        feeders.advance_all(end)?;
        anyhow::ensure!(
            store.wait_for(end, Duration::from_secs(120)),
            "views never caught up"
        );
        let snapshot = store.snapshot();
        let dir = tempfile::tempdir()?;
        let written = write_snapshot(&snapshot, dir.path())?;
        let liveness = written
            .iter()
            .find(|w| w.view == "liveness")
            .context("no liveness.csv")?;
        assert_eq!(liveness.rows, machines);
        let mut whole = Vec::new();
        arrow_csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut whole)
            .write(&snapshot.batch("liveness")?)?;
        let file = std::fs::read(&liveness.path)?;
        assert_eq!(file.iter().filter(|b| **b == b'\n').count(), machines + 1);
        assert!(
            file == whole,
            "liveness.csv differs from the view written whole"
        );
        engine.shutdown()?;
        Ok(())
    }
}

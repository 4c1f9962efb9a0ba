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

/// Writes one view of `snapshot` as `<dir>/<view>.csv`.
fn write_view(snapshot: &Snapshot, view: &'static str, dir: &Path) -> Result<Written, SinkError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SinkError::Io { path, source }
    };
    let encode = |e: &dyn std::fmt::Display| SinkError::Encode {
        view: view.into(),
        message: e.to_string(),
    };
    let batch = snapshot.batch(view).map_err(|e| encode(&e))?;
    let path = dir.join(format!("{view}.csv"));
    let tmp = dir.join(format!(".{view}.csv.tmp"));
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut writer = arrow_csv::WriterBuilder::new()
        .with_header(true)
        .build(BufWriter::new(file));
    writer.write(&batch).map_err(|e| encode(&e))?;
    let inner = writer.into_inner();
    let file = inner.into_inner().map_err(|e| SinkError::Io {
        path: tmp.display().to_string(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(Written {
        view,
        path,
        rows: batch.num_rows(),
    })
}

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
    let batches = snapshot.batches().map_err(|e| SinkError::Encode {
        view: "snapshot".into(),
        message: e.to_string(),
    })?;
    let mut written = Vec::with_capacity(batches.len());
    for (def, batch) in batches {
        let path = dir.join(format!("{}.csv", def.name));
        let tmp = dir.join(format!(".{}.csv.tmp", def.name));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut writer = arrow_csv::WriterBuilder::new()
            .with_header(true)
            .build(BufWriter::new(file));
        writer.write(&batch).map_err(|e| SinkError::Encode {
            view: def.name.into(),
            message: e.to_string(),
        })?;
        let inner = writer.into_inner();
        let file = inner.into_inner().map_err(|e| SinkError::Io {
            path: tmp.display().to_string(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        written.push(Written {
            view: def.name,
            path,
            rows: batch.num_rows(),
        });
    }
    Ok(written)
}

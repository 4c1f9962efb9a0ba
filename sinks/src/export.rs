//! `vendflow export`: the chosen days of the archive, copied for the data team.
//!
//! Copies `events/`, `rejected/` and `history/<view>/` partitions whose `date=` falls in
//! `[from, to]` into `out/` with the same layout, each file through a temporary name, then writes
//! `out/manifest.json` listing every file with its row count and size, and the rows per table.
//! The manifest is written last: an export without one is incomplete.
//!
//! The archive may be compacting while it is copied. Each partition is listed, copied, and listed
//! again; if its files changed meanwhile, its copies are removed and it is copied again, so an
//! export never holds both a compacted file and its inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::SinkError;
use crate::files::{io, parquet_files, parse_date_partition, read_metadata, temporary};

/// One exported file.
#[derive(Clone, Debug)]
pub struct ExportedFile {
    /// Relative to the export directory, `/`-separated.
    pub path: String,
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub files: Vec<ExportedFile>,
}

impl Manifest {
    pub fn rows(&self) -> BTreeMap<&str, u64> {
        let mut rows = BTreeMap::new();
        for f in &self.files {
            *rows.entry(f.table.as_str()).or_default() += f.rows;
        }
        rows
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A partition directory of one day: `(table, dir relative to the root)`.
fn partitions(root: &Path, from: i64, to: i64) -> Result<Vec<(String, PathBuf)>, SinkError> {
    let mut tables: Vec<(String, PathBuf)> = vec![
        ("events".into(), PathBuf::from("events")),
        ("rejected".into(), PathBuf::from("rejected")),
    ];
    let history = root.join("history");
    if let Ok(entries) = std::fs::read_dir(&history) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            tables.push((format!("history/{name}"), Path::new("history").join(&name)));
        }
    }
    let mut out = Vec::new();
    for (table, dir) in tables {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        let mut days: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                parse_date_partition(&e.file_name().to_string_lossy())
                    .is_some_and(|d| d >= from && d <= to)
            })
            .map(|e| dir.join(e.file_name()))
            .collect();
        days.sort();
        out.extend(days.into_iter().map(|d| (table.clone(), d)));
    }
    Ok(out)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `vendflow export`: copy days of the Parquet archive for the data team: raw events, rejected
/// records and the per-day history tables, same layout, with `manifest.json` (every file, its
/// rows and size).
#[derive(clap::Args)]
pub struct ExportOptions {
    /// The archive (`--archive` of `run` or `demo`).
    #[arg(long)]
    pub archive: PathBuf,
    /// First day, `YYYY-MM-DD` (UTC).
    #[arg(long)]
    pub from: String,
    /// Last day, included.
    #[arg(long)]
    pub to: String,
    /// Where the copy goes (created).
    #[arg(long)]
    pub out: PathBuf,
}

impl ExportOptions {
    /// Copies the days with a progress bar on stderr; says what it copied.
    pub fn run(&self) -> Result<String, SinkError> {
        let day = |text: &str| {
            vendflow_protocol::Timestamp::parse_date(text)
                .map(vendflow_protocol::Timestamp::day)
                .map_err(|e| {
                    SinkError::Invalid(format!("{text:?} is not a date (YYYY-MM-DD): {e}"))
                })
        };
        let (from_day, to_day) = (day(&self.from)?, day(&self.to)?);
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let manifest = export(
            &self.archive,
            from_day,
            to_day,
            &self.out,
            &mut |p| match p {
                Progress::Total(n) => bar.set_length(n),
                Progress::Copied(n) => bar.inc(n),
            },
        )?;
        bar.finish_and_clear();
        let rows: Vec<String> = manifest
            .rows()
            .iter()
            .map(|(table, rows)| format!("{table} {rows}"))
            .collect();
        Ok(format!(
            "exported {}..={}: {} files, {} bytes into {} ({}); manifest: {}",
            self.from,
            self.to,
            manifest.files.len(),
            manifest.bytes(),
            self.out.display(),
            if rows.is_empty() {
                "no rows".to_owned()
            } else {
                rows.join(", ")
            },
            self.out.join("manifest.json").display()
        ))
    }
}

/// Copies days `from..=to` (days since the epoch) of the archive at `root` into `out`.
/// `progress` is told the total bytes first, then each copied file's size.
pub fn export(
    root: &Path,
    from: i64,
    to: i64,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, SinkError> {
    if from > to {
        return Err(SinkError::Invalid(
            "--from is after --to: nothing to export".into(),
        ));
    }
    if !root.join("events").is_dir() && !root.join("history").is_dir() {
        return Err(SinkError::Invalid(format!(
            "{} is not a vendflow archive (no events/ or history/ in it)",
            root.display()
        )));
    }
    let plan = partitions(root, from, to)?;
    let mut total = 0;
    for (_, dir) in &plan {
        total += parquet_files(&root.join(dir))?
            .iter()
            .map(|f| size(f))
            .sum::<u64>();
    }
    progress(Progress::Total(total));
    let mut manifest = Manifest::default();
    for (table, dir) in &plan {
        manifest
            .files
            .extend(copy_partition(root, table, dir, out, progress)?);
    }
    let files: Vec<_> = manifest
        .files
        .iter()
        .map(|f| json!({"path": f.path, "table": f.table, "rows": f.rows, "bytes": f.bytes}))
        .collect();
    let document = json!({
        "from": vendflow_protocol::units::format_day(from),
        "to": vendflow_protocol::units::format_day(to),
        "files": files,
        "rows": manifest.rows(),
        "bytes": manifest.bytes(),
    });
    let path = out.join("manifest.json");
    let tmp = temporary(&path);
    std::fs::create_dir_all(out).map_err(io(out))?;
    let text = serde_json::to_string_pretty(&document).map_err(|e| SinkError::Encode {
        view: "manifest".into(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(manifest)
}

/// What `export` reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    Total(u64),
    Copied(u64),
}

fn copy_partition(
    root: &Path,
    table: &str,
    dir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<ExportedFile>, SinkError> {
    for _attempt in 0..5 {
        let before = parquet_files(&root.join(dir))?;
        let mut copied = Vec::new();
        let mut vanished = false;
        for file in &before {
            let relative = file.strip_prefix(root).unwrap_or(file).to_path_buf();
            let target = out.join(&relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let tmp = temporary(&target);
            match std::fs::copy(file, &tmp) {
                Ok(bytes) => {
                    std::fs::rename(&tmp, &target).map_err(io(&target))?;
                    let (rows, _) = read_metadata(&target)?;
                    progress(Progress::Copied(bytes));
                    copied.push(ExportedFile {
                        path: relative.to_string_lossy().replace('\\', "/"),
                        table: table.to_owned(),
                        rows,
                        bytes,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    vanished = true;
                    break;
                }
                Err(e) => return Err(io(file)(e)),
            }
        }
        if !vanished && parquet_files(&root.join(dir))? == before {
            return Ok(copied);
        }
        // Compacted while copying: start this partition again.
        for f in &copied {
            let _ = std::fs::remove_file(out.join(&f.path));
        }
    }
    Err(SinkError::Invalid(format!(
        "{} kept changing while it was copied; try again",
        root.join(dir).display()
    )))
}

//! Parquet files written whole or not at all, and the Hive partition a row goes to.
//!
//! Every file is written to a hidden temporary name beside its final name (`.<name>.tmp`), synced,
//! and renamed; the directory is synced after the rename. Readers (DuckDB, Spark, pyarrow,
//! DataFusion) list `*.parquet` and skip hidden files, so they never see half a file. Files are
//! zstd-compressed with row groups of at most 128 Ki rows; key-value metadata records where the
//! rows came from.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::SinkError;

pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 86_400_000;

/// `date=YYYY-MM-DD/hour=HH` of an instant (epoch ms, UTC).
pub fn hour_partition(ms: i64) -> String {
    let hour = ms.div_euclid(MS_PER_HOUR);
    format!(
        "{}/hour={:02}",
        date_partition(ms.div_euclid(MS_PER_DAY)),
        hour.rem_euclid(24)
    )
}

/// `date=YYYY-MM-DD` of a day (days since the epoch).
pub fn date_partition(day: i64) -> String {
    format!("date={}", vendflow_protocol::units::format_day(day))
}

/// The day (since the epoch) of a `date=YYYY-MM-DD` directory name.
pub fn parse_date_partition(name: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(name.strip_prefix("date=")?, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days())
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + use<> {
    let path = path.display().to_string();
    move |source| SinkError::Io { path, source }
}

fn encode(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> SinkError + use<> {
    let path = path.display().to_string();
    move |e| SinkError::Encode {
        view: path.clone(),
        message: e.to_string(),
    }
}

/// Writes `batches` to `path` through a temporary file and a rename, with `metadata` as the
/// file's key-value metadata. Creates the directory if needed.
pub fn write_parquet(
    path: &Path,
    batches: &[RecordBatch],
    metadata: &[(&str, String)],
) -> Result<u64, SinkError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return Ok(0);
    };
    let tmp = temporary(path);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(k, v)| KeyValue::new((*k).to_owned(), v.clone()))
                .collect(),
        ))
        .build();
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(encode(path))?;
    let mut rows = 0;
    for batch in batches {
        writer.write(batch).map_err(encode(path))?;
        rows += batch.num_rows() as u64;
    }
    let file = writer.into_inner().map_err(encode(path))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)?;
    Ok(rows)
}

/// The hidden name a file is written under before its rename.
pub fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// A Parquet file's key-value metadata, in file order.
pub type KeyValues = Vec<(String, String)>;

/// Reads a whole Parquet file: its batches and its key-value metadata.
pub fn read_parquet(path: &Path) -> Result<(Vec<RecordBatch>, KeyValues), SinkError> {
    let file = File::open(path).map_err(io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(encode(path))?;
    let metadata = key_values(builder.metadata().file_metadata().key_value_metadata());
    let reader = builder.build().map_err(encode(path))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SinkError::Encode {
            view: path.display().to_string(),
            message: e.to_string(),
        })?;
    Ok((batches, metadata))
}

/// A Parquet file's key-value metadata and row count, without reading its rows.
pub fn read_metadata(path: &Path) -> Result<(u64, KeyValues), SinkError> {
    let file = File::open(path).map_err(io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(encode(path))?;
    let meta = builder.metadata().file_metadata();
    Ok((
        u64::try_from(meta.num_rows()).unwrap_or(0),
        key_values(meta.key_value_metadata()),
    ))
}

fn key_values(kv: Option<&Vec<KeyValue>>) -> Vec<(String, String)> {
    kv.map(|kv| {
        kv.iter()
            .filter_map(|e| Some((e.key.clone(), e.value.clone()?)))
            .collect()
    })
    .unwrap_or_default()
}

/// Every `*.parquet` file under `dir` (recursively), sorted.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, SinkError> {
    let mut out = Vec::new();
    walk(dir, &mut |p| {
        if p.extension().is_some_and(|e| e == "parquet") && !is_hidden(p) {
            out.push(p.to_path_buf());
        }
    })?;
    out.sort();
    Ok(out)
}

pub(crate) fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Calls `f` on every file under `dir` (recursively); a missing `dir` has no files.
pub(crate) fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<(), SinkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io(&path))?.is_dir() {
            walk(&path, f)?;
        } else {
            f(&path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_utc_date_and_hour() {
        // 2024-03-10T23:59:59.999Z and one ms later.
        let t = 1_710_115_199_999;
        assert_eq!(hour_partition(t), "date=2024-03-10/hour=23");
        assert_eq!(hour_partition(t + 1), "date=2024-03-11/hour=00");
        let day = (t + 1) / MS_PER_DAY;
        assert_eq!(parse_date_partition(&date_partition(day)), Some(day));
        assert_eq!(parse_date_partition("date=nope"), None);
    }
}

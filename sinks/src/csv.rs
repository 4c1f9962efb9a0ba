//! CSV files of a snapshot: `<dir>/<view>.csv`, with a header row.
//!
//! Every view comes from the same [`Snapshot`], so the files agree with each other. Each file is
//! written under a temporary name and renamed, so a reader never sees half a file. Money is
//! printed as a decimal with two places and instants as RFC 3339 in UTC.

use std::borrow::Borrow;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use vendflow_dataflows::row::Column;
use vendflow_dataflows::{CellRef, Row, Snapshot, ViewDef, ViewStore};

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
            .map(|def| {
                scope.spawn(move || {
                    let rows = snapshot.rows(def.name).map_err(|e| SinkError::Encode {
                        view: def.name.into(),
                        message: e.to_string(),
                    })?;
                    write_view(rows, def, dir, PART_ROWS)
                })
            })
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

/// Writes every view of `store` into `dir` like [`write_snapshot`], for a store that no longer
/// changes (a finished load): each view is sorted only when its turn comes, on
/// [`STORE_WRITERS`] threads, the largest views first, and let go once written; the rows are
/// read in place under the store's read lock, not copied (a copy of a row is a reference count
/// on its own allocation: a cache miss for each of a million rows). A snapshot of
/// every view at once (and every view's sort side by side) was the peak of a replay's memory,
/// ~60 MiB above the engine's state at 1 M events.
pub fn write_store(store: &ViewStore, dir: &Path) -> Result<Vec<Written>, SinkError> {
    std::fs::create_dir_all(dir).map_err(|source| SinkError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (_, counts) = store.row_counts();
    let mut order: Vec<(usize, usize)> = counts
        .iter()
        .enumerate()
        .map(|(i, (_, rows))| (i, *rows))
        .collect();
    order.sort_by_key(|&(i, rows)| (std::cmp::Reverse(rows), i));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let written = std::sync::Mutex::new(Vec::with_capacity(order.len()));
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..STORE_WRITERS)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(i, _)) = order.get(k) else {
                            return Ok(());
                        };
                        let def = &vendflow_dataflows::CATALOG[i];
                        let w = store
                            .with_sorted_rows(def.name, |_, rows| {
                                write_view(rows, def, dir, PART_ROWS)
                            })
                            .map_err(|e| SinkError::Encode {
                                view: def.name.into(),
                                message: e.to_string(),
                            })??;
                        written
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, w));
                    }
                })
            })
            .collect();
        writers.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(SinkError::Encode {
                    view: "csv".into(),
                    message: "a CSV writer thread panicked".into(),
                })
            })
        })
    })?;
    let mut written = written.into_inner().unwrap_or_else(|p| p.into_inner());
    written.sort_by_key(|(i, _)| *i);
    Ok(written.into_iter().map(|(_, w)| w).collect())
}

/// Views written at the same time by [`write_store`] (a large view is itself written in parts
/// side by side).
const STORE_WRITERS: usize = 2;

/// Writes one view's `rows` as `<dir>/<view>.csv`, row by row straight from the rows' cells:
/// converting to Arrow first and formatting each array cell through Arrow's formatters cost
/// more than the rest of the file's writing. The text is what Arrow's CSV writer prints (a test
/// holds the two to the same bytes).
fn write_view<R: Borrow<Row> + Sync>(
    rows: &[R],
    def: &'static ViewDef,
    dir: &Path,
    part_rows: usize,
) -> Result<Written, SinkError> {
    let view = def.name;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SinkError::Io { path, source }
    };
    let path = dir.join(format!("{view}.csv"));
    let tmp = dir.join(format!(".{view}.csv.tmp"));
    // A large view is cut into parts formatted side by side (one view, the anomaly windows,
    // is two thirds of all the text), each into a file of its own; the parts after the first
    // are then appended to it in order, file to file in the kernel. Holding them in memory
    // instead cost the process's peak 40 MB.
    let parts = rows.len().div_ceil(part_rows.max(1)).clamp(1, MAX_PARTS);
    let size = rows.len().div_ceil(parts).max(1);
    let part_path = |k: usize| dir.join(format!(".{view}.csv.part{k}.tmp"));
    let written = std::thread::scope(|scope| {
        let mut chunks = rows.chunks(size).enumerate();
        let first = chunks.next().map_or(&[][..], |(_, c)| c);
        let rest: Vec<_> = chunks
            .map(|(k, part)| {
                let at = part_path(k);
                scope.spawn(move || write_part(&at, def, part, false).map(|_| at))
            })
            .collect();
        let mut file = write_part(&tmp, def, first, true)?;
        for part in rest {
            let at = part
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            let mut from = File::open(&at).map_err(io(&at))?;
            std::io::copy(&mut from, &mut file).map_err(io(&tmp))?;
            std::fs::remove_file(&at).map_err(io(&at))?;
        }
        Ok::<_, SinkError>(file)
    });
    let file = match written {
        Ok(file) => file,
        Err(e) => {
            // What a failed write left behind (the error says what failed).
            for k in 0..parts {
                let _ = std::fs::remove_file(part_path(k));
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(Written {
        view,
        path,
        rows: rows.len(),
    })
}

/// Writes `rows` of `def` (after its header, if `header`) to a new file at `path`; the file,
/// written through and positioned at its end.
fn write_part<R: Borrow<Row>>(
    path: &Path,
    def: &ViewDef,
    rows: &[R],
    header: bool,
) -> Result<File, SinkError> {
    let io = |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::create(path).map_err(io)?;
    let mut out = Lines::new(&mut file);
    if header {
        out.header(def.columns);
    }
    write_body(&mut out, def.columns, rows)
        .and_then(|()| out.flush())
        .map_err(|e| match e {
            RowsError::Io(source) => io(source),
            RowsError::Cell(message) => SinkError::Encode {
                view: def.name.into(),
                message,
            },
        })?;
    Ok(file)
}

enum RowsError {
    Io(std::io::Error),
    Cell(String),
}

/// Rows per part of a large view's file (see [`write_view`]), and the most parts of one file.
const PART_ROWS: usize = 100_000;
const MAX_PARTS: usize = 4;

/// The header and every row of a view, each cell formatted by [`Lines::cell`].
#[cfg(test)]
fn write_rows<W: Write>(
    out: &mut W,
    columns: &[Column],
    rows: &[vendflow_dataflows::Row],
) -> Result<(), RowsError> {
    let mut lines = Lines::new(out);
    lines.header(columns);
    write_body(&mut lines, columns, rows)?;
    lines.flush()
}

/// Rows of a view, each cell formatted by [`Lines::cell`].
fn write_body<W: Write, R: Borrow<Row>>(
    out: &mut Lines<'_, W>,
    columns: &[Column],
    rows: &[R],
) -> Result<(), RowsError> {
    for row in rows {
        // The cells as they stand in the row: text printed from the row's own bytes, not copied
        // into a value first.
        let mut cells = row.borrow().cell_refs();
        for (k, column) in columns.iter().enumerate() {
            let value = cells.next().unwrap_or(CellRef::Null);
            out.cell(k, columns.len(), column, value).ok_or_else(|| {
                RowsError::Cell(format!(
                    "column {} ({:?}) got {value:?}",
                    column.name, column.ty
                ))
            })?;
        }
        out.end_row()?;
    }
    Ok(())
}

/// CSV text being written: rows formatted straight into one buffer, handed to the writer a
/// megabyte at a time. The fields are what the `csv` crate writes with its defaults (which is
/// what Arrow's CSV writer uses): comma-separated, `\n`-terminated, a field quoted only when
/// it holds a comma, a quote, `\r` or `\n` (quotes doubled inside), and a record of one empty
/// field written as `""`. Formatting a cell into a record of its own first, then copying the
/// record into the writer's buffer, was a third of the CSV phase.
struct Lines<'w, W: Write> {
    out: &'w mut W,
    buf: Vec<u8>,
}

/// Bytes formatted before they are written out.
const LINES_BUFFER: usize = 1 << 20;

impl<'w, W: Write> Lines<'w, W> {
    fn new(out: &'w mut W) -> Self {
        Lines {
            out,
            buf: Vec::with_capacity(LINES_BUFFER + 4096),
        }
    }

    /// The column names as a row.
    fn header(&mut self, columns: &[Column]) {
        for (k, column) in columns.iter().enumerate() {
            if k > 0 {
                self.buf.push(b',');
            }
            self.text(column.name.as_bytes(), columns.len());
        }
        self.buf.push(b'\n');
    }

    /// A text field, quoted when it must be.
    fn text(&mut self, text: &[u8], fields: usize) {
        let quote = text
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
            || (text.is_empty() && fields == 1);
        if !quote {
            self.buf.extend_from_slice(text);
            return;
        }
        self.buf.push(b'"');
        for part in text.split_inclusive(|b| *b == b'"') {
            self.buf.extend_from_slice(part);
            if part.last() == Some(&b'"') {
                self.buf.push(b'"');
            }
        }
        self.buf.push(b'"');
    }

    /// Appends `value` (the `k`th of `fields` cells) as Arrow's CSV writer prints a cell of
    /// `column`'s Arrow type (see [`vendflow_dataflows::row::to_batch`]); None when the value
    /// does not fit the column.
    fn cell(&mut self, k: usize, fields: usize, column: &Column, value: CellRef<'_>) -> Option<()> {
        use vendflow_dataflows::ColumnType as T;
        if k > 0 {
            self.buf.push(b',');
        }
        let out = &mut self.buf;
        match (column.ty, value) {
            // Arrow's default null is an empty field.
            (_, CellRef::Null) if fields == 1 => out.extend_from_slice(b"\"\""),
            (_, CellRef::Null) => {}
            (T::Bool, CellRef::Bool(b)) => {
                out.extend_from_slice(if b { b"true" } else { b"false" })
            }
            (T::Int, CellRef::Int(i)) => {
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes())
            }
            (T::Float, CellRef::Float(f)) => {
                out.extend_from_slice(ryu::Buffer::new().format(f.0).as_bytes())
            }
            (T::Text, CellRef::Text(t)) => self.text(t.as_bytes(), fields),
            (T::Money, CellRef::Money(c)) => decimal(out, c.0, 2),
            (T::Reading, CellRef::Reading(m)) => decimal(out, m.0, 3),
            (T::Time, CellRef::Time(t)) => instant(out, t.0)?,
            (T::Date, CellRef::Date(d)) => day(out, d)?,
            _ => return None,
        }
        Some(())
    }

    /// Ends a row; a full buffer is written out.
    fn end_row(&mut self) -> Result<(), RowsError> {
        self.buf.push(b'\n');
        if self.buf.len() >= LINES_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RowsError> {
        self.out.write_all(&self.buf).map_err(RowsError::Io)?;
        self.buf.clear();
        Ok(())
    }
}

/// A decimal of `scale` places (Arrow's `Decimal128(18, scale)`: `-0.05`, `10.75`, `8.900`).
fn decimal(out: &mut Vec<u8>, value: i64, scale: u32) {
    let unit = 10u64.pow(scale);
    let abs = value.unsigned_abs();
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(itoa::Buffer::new().format(abs / unit).as_bytes());
    out.push(b'.');
    let mut buffer = itoa::Buffer::new();
    let fraction = buffer.format(abs % unit).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        (scale as usize).saturating_sub(fraction.len()),
    ));
    out.extend_from_slice(fraction);
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn two(out: &mut Vec<u8>, n: u32) {
    out.push(b'0' + (n / 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// `YYYY-MM-DD` (Arrow's `Date32`, as chrono prints a date); None past chrono's range, where
/// Arrow fails too.
fn day(out: &mut Vec<u8>, days: i64) -> Option<()> {
    let (y, m, d) = civil(days);
    let Some(y) = u32::try_from(y).ok().filter(|y| *y <= 9999) else {
        // Years chrono writes with a sign or more digits: its own text.
        let date = i32::try_from(days)
            .ok()
            .and_then(|d| d.checked_add(719_163))
            .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)?;
        out.extend_from_slice(date.to_string().as_bytes());
        return Some(());
    };
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, m);
    out.push(b'-');
    two(out, d);
    Some(())
}

/// RFC 3339 in UTC with milliseconds only when there are any (Arrow's timestamp with a time
/// zone: `2023-11-14T22:15:00Z`, `2023-11-14T22:40:35.085Z`); None past chrono's range, where
/// Arrow fails too.
fn instant(out: &mut Vec<u8>, ms: i64) -> Option<()> {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    if !(0..=9999).contains(&civil(days).0) {
        let at = chrono::DateTime::from_timestamp_millis(ms)?;
        let text = at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        out.extend_from_slice(text.as_bytes());
        return Some(());
    }
    day(out, days)?;
    let secs = (in_day / 1000) as u32;
    out.push(b'T');
    two(out, secs / 3600);
    out.push(b':');
    two(out, secs / 60 % 60);
    out.push(b':');
    two(out, secs % 60);
    let millis = (in_day % 1000) as u32;
    if millis != 0 {
        out.push(b'.');
        out.push(b'0' + (millis / 100) as u8);
        two(out, millis % 100);
    }
    out.push(b'Z');
    Some(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Context;
    use vendflow_dataflows::{Batch, Config, Engine};
    use vendflow_protocol::Timestamp;
    use vendflow_protocol::decode::decode_line;

    use super::*;
    use vendflow_dataflows::Value;

    /// A large view's file is the bytes Arrow's CSV writer gives for the view's batch: one
    /// header, every row once, in the snapshot's order.
    #[test]
    fn a_large_view_is_written_as_arrow_writes_it() -> anyhow::Result<()> {
        let machines = 40_017;
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
        let end = Timestamp(start + machines as i64 + 1);
        feeders.send(
            Timestamp(start),
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
            "liveness.csv differs from Arrow's CSV of the view"
        );
        // Written in parts formatted side by side: the same bytes.
        let def = vendflow_dataflows::CATALOG
            .iter()
            .find(|d| d.name == "liveness")
            .context("no liveness view")?;
        let parts = tempfile::tempdir()?;
        let in_parts = write_view(snapshot.rows("liveness")?, def, parts.path(), 7_000)?;
        assert!(
            std::fs::read(&in_parts.path)? == whole,
            "liveness.csv written in parts differs from Arrow's CSV of the view"
        );
        let left: Vec<_> = std::fs::read_dir(parts.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(left, ["liveness.csv"], "the parts' files are gone");
        // A finished store written view by view: every file the same bytes as the snapshot's,
        // reported in the catalog's order.
        let by_view = tempfile::tempdir()?;
        let from_store = write_store(&store, by_view.path())?;
        assert_eq!(
            from_store
                .iter()
                .map(|w| (w.view, w.rows))
                .collect::<Vec<_>>(),
            written.iter().map(|w| (w.view, w.rows)).collect::<Vec<_>>()
        );
        for (a, b) in written.iter().zip(&from_store) {
            assert!(
                std::fs::read(&a.path)? == std::fs::read(&b.path)?,
                "{} differs when written from the store",
                a.view
            );
        }
        engine.shutdown()?;
        Ok(())
    }

    /// Every column type, with the values whose text is easy to get wrong (negative and small
    /// decimals, whole and huge floats, times with and without milliseconds, dates before 1970
    /// and after 9999, texts to quote, nulls), formatted as Arrow's CSV writer formats them.
    #[test]
    fn every_cell_is_printed_as_arrow_prints_it() -> anyhow::Result<()> {
        use vendflow_dataflows::row::ColumnType as T;
        use vendflow_protocol::{Cents, Milli, Timestamp};
        let col = |name, ty| Column {
            name,
            ty,
            nullable: true,
        };
        let columns = [
            col("b", T::Bool),
            col("i", T::Int),
            col("f", T::Float),
            col("t", T::Text),
            col("m", T::Money),
            col("r", T::Reading),
            col("at", T::Time),
            col("d", T::Date),
        ];
        let ints = [
            0,
            1,
            -1,
            5,
            -5,
            99,
            100,
            -100,
            1075,
            123_456_789,
            -987_654_321_012,
        ];
        let floats = [
            0.0,
            -0.0,
            6.8,
            7.0,
            1e20,
            1.5e-7,
            -3.25,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ];
        let texts = [
            "",
            "plain",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "carriage\rreturn",
            "\"",
            " padded ",
            "é€",
        ];
        let times = [
            0,
            1,
            -1,
            1_699_999_999_000,
            1_700_000_000_085,
            -62_135_596_800_000, // 0001-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01
            -62_167_219_200_001, // before year 0
        ];
        let days = [0, -1, 19_675, -719_528, 2_932_896, 2_932_897, -800_000];
        let mut rows = Vec::new();
        for k in 0..40 {
            let pick = |n: usize| (k * 7 + n) % 11;
            let cell = |j: usize, v: Value| {
                if (k + j).is_multiple_of(9) {
                    Value::Null
                } else {
                    v
                }
            };
            rows.push(vendflow_dataflows::Row::from(vec![
                cell(0, Value::Bool(k % 2 == 0)),
                cell(1, Value::Int(ints[pick(1) % ints.len()])),
                cell(
                    2,
                    Value::Float(vendflow_dataflows::row::OrdF64(
                        floats[pick(2) % floats.len()],
                    )),
                ),
                cell(3, Value::text(texts[pick(3) % texts.len()])),
                cell(4, Value::Money(Cents(ints[pick(4) % ints.len()]))),
                cell(5, Value::Reading(Milli(ints[pick(5) % ints.len()]))),
                cell(6, Value::Time(Timestamp(times[pick(6) % times.len()]))),
                cell(7, Value::Date(days[pick(7) % days.len()])),
            ]));
        }
        written_as_arrow_writes(&columns, &rows)
    }

    /// Our CSV of `rows` is the text Arrow's CSV writer gives for their batch.
    fn written_as_arrow_writes(
        columns: &[Column],
        rows: &[vendflow_dataflows::Row],
    ) -> anyhow::Result<()> {
        let mut ours = Vec::new();
        if write_rows(&mut ours, columns, rows).is_err() {
            anyhow::bail!("a cell was refused");
        }
        let mut arrow = Vec::new();
        arrow_csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut arrow)
            .write(&vendflow_dataflows::row::to_batch(columns, rows)?)?;
        assert_eq!(String::from_utf8(ours)?, String::from_utf8(arrow)?);
        Ok(())
    }

    /// A view of one column: an empty text and a null are each a record of one empty field,
    /// which the `csv` crate (and so Arrow) writes as `""` so that the line is not blank.
    #[test]
    fn a_record_of_one_empty_field_is_written_as_arrow_writes_it() -> anyhow::Result<()> {
        use vendflow_dataflows::row::ColumnType as T;
        let columns = [Column {
            name: "t",
            ty: T::Text,
            nullable: true,
        }];
        let rows: Vec<vendflow_dataflows::Row> = ["", "x", "a,b"]
            .into_iter()
            .map(|t| vec![Value::text(t)])
            .chain([vec![Value::Null]])
            .map(vendflow_dataflows::Row::from)
            .collect();
        written_as_arrow_writes(&columns, &rows)
    }
}

//! Imports of what operators already have: sales exports as CSV (`vendflow import csv`), and
//! payment processors' settlement files (`vendflow import settlement`, the same CSV reading with
//! a `status` column: settled / declined / reversed, in the words processors use).
//!
//! An export has a header and one sale line per row; [`ColumnMap`] says which column holds what
//! (`--map 'machine=Machine,time=Trans Date,amount=Line Total,…'`). Each good row becomes a
//! sale event; the file of events then goes through the same bulk load as `vendflow replay`.
//! A row that cannot be read is refused with its line number and the reason, and becomes an
//! error record (the `errors` view); nothing is dropped silently.
//!
//! - Money is read exactly as text: `12.5`, `$1,234.50`, `(3.00)` or `-3.00` (a refund), at
//!   most two decimals; never through a float.
//! - Dates: `1/31/2022`, `2022-01-31`, `31.01.2022`, `Monday, January 31, 2022`, `Jan 31 2022`,
//!   each with or without a time (`13:05`, `13:05:07`, `1:05 PM`), or RFC 3339; or a date column
//!   and a separate time-of-day column. Local times are in `--tz` (an IANA zone, default UTC).
//! - Without a transaction column, a row is its own transaction, named by file and line (so an
//!   import of the same file twice counts each sale once); without a slot column, slot 0.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use vendflow_dataflows::ErrorRecord;
use vendflow_protocol::registry::{Machine, MachineStatus};
use vendflow_protocol::units::ParseError;
use vendflow_protocol::{
    Cents, DecodeError, ErrorKind, Event, EventKind, MachineId, RegistryRecord, Sale, Settlement,
    SettlementStatus, Timestamp,
};

use crate::IngestError;

/// What an export's columns hold: field → header name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnMap {
    pub fields: BTreeMap<Field, String>,
}

/// The fields a sales export can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Machine,
    Product,
    Transaction,
    Slot,
    Quantity,
    /// The line total.
    Amount,
    /// Date, with or without the time of day.
    Time,
    /// A separate time-of-day column.
    Clock,
    Payment,
    Location,
    /// A settlement line's verdict.
    Status,
    /// Whether the machine authorised a card sale alone while offline (yes/no, true/false,
    /// 1/0, offline/online; empty: no).
    Offline,
}

impl Field {
    const ALL: [(&'static str, Field); 12] = [
        ("machine", Field::Machine),
        ("product", Field::Product),
        ("transaction", Field::Transaction),
        ("slot", Field::Slot),
        ("quantity", Field::Quantity),
        ("amount", Field::Amount),
        ("time", Field::Time),
        ("clock", Field::Clock),
        ("payment", Field::Payment),
        ("location", Field::Location),
        ("status", Field::Status),
        ("offline", Field::Offline),
    ];

    fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }
}

/// `vendflow import`: what operators already have.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum ImportCommand {
    /// A sales export with a header row, one sale line per row.
    ///
    /// Example: vendflow import csv sales.csv --archive archive/
    ///   --map 'machine=Machine,time=Trans Date,transaction=Trans ID,slot=Coil,quantity=Qty,amount=Line Total,payment=Type,location=Location'
    ///
    /// Fields: machine, product, transaction, slot, quantity, amount (the line total), time (the
    /// date, with or without the time of day), clock (a separate time-of-day column), payment,
    /// location, offline (yes/no: a card sale the machine authorised alone while offline).
    /// amount and time are required, and machine unless --machine is given. Money is
    /// read exactly ($1,234.50, (3.00) for a refund); dates as exports write them (1/31/2022,
    /// 2022-01-31, Monday, January 31, 2022, with or without 13:05 or 1:05 PM). Refused rows are
    /// listed with their line numbers and kept in the errors view.
    Csv(TableOptions),
    /// A payment processor's settlement file: one card transaction per row, with what became of
    /// it (settled, declined or reversed).
    ///
    /// Example: vendflow import settlement settlement.csv --telemetry sales.jsonl --out views/
    ///   --map 'machine=Terminal,time=Auth Time,transaction=Reference,amount=Amount,status=Result'
    ///
    /// Fields: machine, transaction, amount, time, clock, status (all but clock required; machine
    /// unless --machine is given). Status words: settled / approved / captured / paid, declined /
    /// failed / rejected, reversed / refunded / chargeback. With the machines' telemetry
    /// (--telemetry, JSON Lines) loaded alongside, `settlement_daily` compares each machine-day's
    /// card sales with what the processor paid, and `settlement_exceptions` lists each
    /// transaction they disagree on; an offline sale the processor declined is marked for review.
    Settlement {
        #[command(flatten)]
        table: TableOptions,
        /// The machines' telemetry (JSON Lines) over the same span, loaded with the file.
        #[arg(long)]
        telemetry: Option<std::path::PathBuf>,
    },
    /// EVA-DTS / DEX audit files, the audit read from every machine (DXS, ST, ID1, VA1, CA2,
    /// PA1 price per column, PA2 vend counters, EA3 / ID5 read time, SE, DXE).
    ///
    /// Consecutive audits of a machine become per-column sales for the period between them
    /// (`dex_audits`), and with the machine's telemetry (--telemetry) the `reconciliation` view:
    /// per period and slot, matched, missing in telemetry, missing in the audit, or an amount
    /// difference. Counter resets and unreadable segments are reported, not guessed.
    Dex {
        /// Audit files, in any order.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// The machine of every file (default: each audit's serial number, ID101).
        #[arg(long)]
        machine: Option<String>,
        /// The machines' telemetry (JSON Lines) over the same span, loaded with the audits.
        #[arg(long)]
        telemetry: Option<std::path::PathBuf>,
        /// Directory for `<view>.csv` (created if missing).
        #[arg(long, short, required_unless_present = "archive")]
        out: Option<std::path::PathBuf>,
        /// Parquet archive directory.
        #[arg(long)]
        archive: Option<std::path::PathBuf>,
        /// Registry records (machines, locations, leases) as JSON Lines.
        #[arg(long)]
        registry: Option<std::path::PathBuf>,
    },
}

/// A CSV file with a header row and a column mapping (`import csv`, `import settlement`).
#[derive(clap::Args, Clone, Debug)]
pub struct TableOptions {
    pub file: std::path::PathBuf,
    /// FIELD=COLUMN pairs, separated by commas (a pair with a comma in its column name is
    /// quoted whole: "amount=Line, Total").
    #[arg(long)]
    pub map: String,
    /// The machine of every row (a file of one machine with no machine column).
    #[arg(long)]
    pub machine: Option<String>,
    /// The time zone of the file's local times (IANA name, e.g. Europe/Paris).
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// Keep the converted events (JSON Lines) here (default: a temporary file).
    #[arg(long)]
    pub events: Option<std::path::PathBuf>,
    /// Directory for `<view>.csv` (created if missing).
    #[arg(long, short, required_unless_present = "archive")]
    pub out: Option<std::path::PathBuf>,
    /// Parquet archive directory: raw events, history of the daily views, final snapshot.
    #[arg(long)]
    pub archive: Option<std::path::PathBuf>,
    /// Registry records (machines, locations, leases) as JSON Lines.
    #[arg(long)]
    pub registry: Option<std::path::PathBuf>,
}

impl TableOptions {
    /// Converts the file's rows into events written (JSON Lines) to `events`: sale lines, or with
    /// `settlement` the processor's settlement lines merged in time order into `telemetry` (the
    /// machines' own events over the same span, when given).
    pub fn convert(
        &self,
        settlement: bool,
        telemetry: Option<&Path>,
        events: &Path,
    ) -> Result<Converted, ImportError> {
        let map = ColumnMap::parse(&self.map, self.machine.is_some())?;
        let import = CsvImport::new(map, self.machine.clone(), Some(&self.tz))?;
        if settlement {
            // Settlement lines are few (card transactions): held, then merged.
            let mut lines = Vec::new();
            let converted = convert_settlement(&self.file, &import, &mut lines)?;
            merge_by_time(&lines, telemetry, events)?;
            return Ok(converted);
        }
        let cannot_write = |e: std::io::Error| ImportError::File {
            path: events.display().to_string(),
            message: format!("cannot write: {e}"),
        };
        let mut writer =
            std::io::BufWriter::new(std::fs::File::create(events).map_err(cannot_write)?);
        let converted = convert_csv(&self.file, &import, &mut writer)?;
        writer.flush().map_err(cannot_write)?;
        Ok(converted)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "--map: {0} (expected FIELD=COLUMN pairs separated by commas; fields: machine, product, transaction, slot, quantity, amount, time, clock, payment, location, status)"
    )]
    Map(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Paris or America/New_York)")]
    TimeZone(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ColumnMap {
    /// Parses `machine=Machine,time=Trans Date,…` (a pair whose column name holds a comma is
    /// quoted whole, as in CSV: `"amount=Line, Total"`).
    /// `machine` (unless `machine_constant`), `amount` and `time` are required.
    pub fn parse(text: &str, machine_constant: bool) -> Result<ColumnMap, ImportError> {
        let mut fields = BTreeMap::new();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let record = reader
            .records()
            .next()
            .transpose()
            .map_err(|e| ImportError::Map(e.to_string()))?
            .unwrap_or_default();
        for pair in record.iter().filter(|p| !p.trim().is_empty()) {
            let (key, column) = pair
                .split_once('=')
                .ok_or_else(|| ImportError::Map(format!("{pair:?} has no '='")))?;
            let field = Field::ALL
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(key.trim()))
                .map(|(_, f)| *f)
                .ok_or_else(|| ImportError::Map(format!("unknown field {:?}", key.trim())))?;
            if fields.insert(field, column.trim().to_owned()).is_some() {
                return Err(ImportError::Map(format!(
                    "{} is mapped twice",
                    field.name()
                )));
            }
        }
        let mut required = vec![Field::Amount, Field::Time];
        if !machine_constant {
            required.push(Field::Machine);
        }
        for f in required {
            if !fields.contains_key(&f) {
                return Err(ImportError::Map(format!("{} is required", f.name())));
            }
        }
        Ok(ColumnMap { fields })
    }
}

/// How to read an export.
#[derive(Clone, Debug)]
pub struct CsvImport {
    pub map: ColumnMap,
    /// The machine of every row, for an export of one machine without a machine column.
    pub machine: Option<String>,
    /// The zone of local times in the export.
    pub tz: chrono_tz::Tz,
}

impl CsvImport {
    pub fn new(
        map: ColumnMap,
        machine: Option<String>,
        tz: Option<&str>,
    ) -> Result<Self, ImportError> {
        let tz = match tz {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| ImportError::TimeZone(name.to_owned()))?,
        };
        Ok(CsvImport { map, machine, tz })
    }
}

/// A refused row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub line: u64,
    pub reason: String,
}

/// What an import read and wrote.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    pub rows: u64,
    /// Events written: sale lines, or settlement lines.
    pub events: u64,
    pub refused: Vec<Refused>,
    /// Error records of the refused rows (for the `errors` view).
    pub errors: Vec<ErrorRecord>,
    /// One machine record per machine with a location in the export (machine → location).
    pub registry: Vec<RegistryRecord>,
}

impl Converted {
    /// What a conversion of `file` did, for the user: rows, events and refusals (the first 20
    /// with their line and reason; every one is in the `errors` view).
    pub fn report(&self, file: &Path, settlement: bool) -> Vec<String> {
        let what = if settlement {
            "settlement lines"
        } else {
            "sales"
        };
        let mut lines = vec![format!(
            "{}: {} rows, {} {what}, {} refused",
            file.display(),
            self.rows,
            self.events,
            self.refused.len()
        )];
        lines.extend(
            (self.refused.iter().take(20)).map(|r| format!("  line {}: {}", r.line, r.reason)),
        );
        if self.refused.len() > 20 {
            lines.push(format!(
                "  … and {} more (all in the errors view)",
                self.refused.len() - 20
            ));
        }
        lines
    }
}

/// Reads the export at `path` and writes its sales as JSON Lines events to `events`.
pub fn convert_csv(
    path: &Path,
    import: &CsvImport,
    events: &mut impl Write,
) -> Result<Converted, ImportError> {
    convert(path, import, events, sale_of)
}

/// Reads a payment processor's settlement file at `path` (one card transaction per row:
/// machine, transaction, amount, time, status) and writes its lines as `settlement` events.
pub fn convert_settlement(
    path: &Path,
    import: &CsvImport,
    events: &mut impl Write,
) -> Result<Converted, ImportError> {
    for field in [Field::Transaction, Field::Status] {
        if !import.map.fields.contains_key(&field) {
            return Err(ImportError::Map(format!(
                "{} is required for a settlement file",
                field.name()
            )));
        }
    }
    convert(path, import, events, settlement_of)
}

/// What one row becomes: an event, and its machine's location if the file has one.
type RowReader = for<'a> fn(
    &dyn Fn(Field) -> &'a str,
    &CsvImport,
    &str,
    u64,
) -> Result<(Event, Option<String>), DecodeError>;

fn convert(
    path: &Path,
    import: &CsvImport,
    events: &mut impl Write,
    read_row: RowReader,
) -> Result<Converted, ImportError> {
    let file_error = |message: String| ImportError::File {
        path: path.display().to_string(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| file_error(e.to_string()))?;
    let header = reader
        .headers()
        .map_err(|e| file_error(e.to_string()))?
        .clone();
    let mut columns: HashMap<Field, usize> = HashMap::new();
    for (field, name) in &import.map.fields {
        let index = header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                file_error(format!(
                    "no column {name:?} (for {}); the header has: {}",
                    field.name(),
                    header.iter().collect::<Vec<_>>().join(", ")
                ))
            })?;
        columns.insert(*field, index);
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = Converted::default();
    let mut locations: BTreeMap<String, String> = BTreeMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                out.refuse(&name, line, ErrorKind::Syntax, e.to_string(), b"");
                continue;
            }
        };
        out.rows += 1;
        let line = record.position().map_or(out.rows + 1, |p| p.line());
        let cell = |f: Field| columns.get(&f).and_then(|i| record.get(*i)).unwrap_or("");
        match read_row(&cell, import, &name, line) {
            Ok((event, location)) => {
                if let Some(l) = location {
                    locations.insert(event.machine_id.as_str().to_owned(), l);
                }
                writeln!(events, "{}", event.to_json_line())
                    .map_err(|e| file_error(e.to_string()))?;
                out.events += 1;
            }
            Err(error) => {
                let raw = record.iter().collect::<Vec<_>>().join(",");
                out.refuse(&name, line, error.kind, error.message, raw.as_bytes());
            }
        }
    }
    for (machine, location) in locations {
        if let Ok(machine_id) = MachineId::parse(&machine) {
            out.registry.push(RegistryRecord::Machine(Machine {
                machine_id,
                serial_number: machine.clone(),
                model: "imported".into(),
                location_id: Some(location),
                status: MachineStatus::Active,
                firmware_version: None,
                slots: Vec::new(),
                registered_at: None,
            }));
        }
    }
    Ok(out)
}

impl Converted {
    fn refuse(&mut self, file: &str, line: u64, kind: ErrorKind, reason: String, raw: &[u8]) {
        tracing::warn!(file, line, reason = %reason, "refused an export row");
        let error = DecodeError::new(kind, reason.clone());
        // The row's own time may be what is wrong with it: the replay of the converted file
        // stamps these with its first ingestion time (`ReplayOptions::refused_before`).
        self.errors.push(ErrorRecord::new(
            Timestamp(0),
            format!("import:{file}:{line}"),
            &error,
            raw,
        ));
        self.refused.push(Refused { line, reason });
    }
}

/// The machine, amount and time of a row: the cells every kind of file has.
fn common<'a>(
    cell: &dyn Fn(Field) -> &'a str,
    import: &CsvImport,
) -> Result<(MachineId, Cents, Timestamp), DecodeError> {
    let machine = match &import.machine {
        Some(m) => m.as_str(),
        None => cell(Field::Machine),
    };
    let machine_id = MachineId::parse(machine)
        .map_err(|m| DecodeError::new(ErrorKind::MachineId, format!("machine {machine:?}: {m}")))?;
    let amount = parse_money(cell(Field::Amount)).map_err(|m| {
        DecodeError::new(
            ErrorKind::Number,
            format!("amount {:?}: {m}", cell(Field::Amount)),
        )
    })?;
    let timestamp = parse_time(cell(Field::Time), cell(Field::Clock), import.tz)
        .map_err(|m| DecodeError::new(ErrorKind::Timestamp, m.to_string()))?;
    Ok((machine_id, amount, timestamp))
}

/// The settlement line of one row.
fn settlement_of<'a>(
    cell: &dyn Fn(Field) -> &'a str,
    import: &CsvImport,
    _file: &str,
    _line: u64,
) -> Result<(Event, Option<String>), DecodeError> {
    let schema = |m: String| DecodeError::new(ErrorKind::Schema, m);
    let (machine_id, amount, timestamp) = common(cell, import)?;
    let transaction = cell(Field::Transaction);
    if transaction.is_empty() {
        return Err(schema("no transaction id".into()));
    }
    let status = SettlementStatus::parse(cell(Field::Status)).ok_or_else(|| {
        schema(format!(
            "status {:?}: expected settled (approved, captured, paid), declined (failed, rejected) or reversed (refunded, chargeback)",
            cell(Field::Status)
        ))
    })?;
    Ok((
        Event {
            machine_id,
            timestamp,
            seq: None,
            kind: EventKind::Settlement(Settlement {
                transaction_id: transaction.into(),
                // A refund written as a negative amount is still the transaction's amount.
                amount: Cents(amount.0.abs()),
                status,
            }),
        },
        None,
    ))
}

/// The sale of one row, and its machine's location if the export has one.
fn sale_of<'a>(
    cell: &dyn Fn(Field) -> &'a str,
    import: &CsvImport,
    file: &str,
    line: u64,
) -> Result<(Event, Option<String>), DecodeError> {
    let schema = |m: String| DecodeError::new(ErrorKind::Schema, m);
    let (machine_id, amount, timestamp) = common(cell, import)?;
    let quantity = match cell(Field::Quantity) {
        "" => 1,
        q => q
            .parse::<u32>()
            .ok()
            .filter(|q| *q > 0)
            .ok_or_else(|| schema(format!("quantity {q:?} is not a whole number above 0")))?,
    };
    let slot_number = match cell(Field::Slot) {
        "" => 0,
        s => s
            .parse::<u32>()
            .map_err(|_| schema(format!("slot {s:?} is not a whole number")))?,
    };
    let product = match cell(Field::Product) {
        "" => format!("slot-{slot_number}"),
        p => p.to_owned(),
    };
    let transaction = match cell(Field::Transaction) {
        "" => format!("{file}:{line}"),
        t => t.to_owned(),
    };
    let payment = cell(Field::Payment).to_ascii_lowercase();
    let payment = match payment.as_str() {
        "" => "unknown".to_owned(),
        p if p.contains("cash") || p.contains("coin") || p.contains("bill") => "cash".to_owned(),
        p if ["card", "credit", "debit", "visa", "mastercard", "amex"]
            .iter()
            .any(|c| p.contains(c)) =>
        {
            "card".to_owned()
        }
        p if ["mobile", "nfc", "apple", "google", "wallet"]
            .iter()
            .any(|c| p.contains(c)) =>
        {
            "mobile".to_owned()
        }
        p => p.to_owned(),
    };
    let location = Some(cell(Field::Location))
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let offline = match cell(Field::Offline).trim().to_ascii_lowercase().as_str() {
        "" | "no" | "n" | "false" | "f" | "0" | "online" => false,
        "yes" | "y" | "true" | "t" | "1" | "offline" => true,
        other => {
            return Err(schema(format!(
                "offline {other:?} is not yes or no (true/false, 1/0, offline/online)"
            )));
        }
    };
    Ok((
        Event {
            machine_id,
            timestamp,
            seq: None,
            kind: EventKind::Sale(Sale {
                slot_number,
                product_id: product.into(),
                amount,
                quantity,
                payment_method: payment.into(),
                transaction_id: transaction.into(),
                offline,
            }),
        },
        location,
    ))
}

/// Money as text, exactly: `12.5`, `$1,234.50`, `-3.00`, `(3.00)`, `€ 4`.
pub fn parse_money(text: &str) -> Result<Cents, ParseError> {
    let mut t = text.trim();
    let mut negative = false;
    if let Some(inner) = t.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        negative = true;
        t = inner.trim();
    }
    if let Some(rest) = t.strip_prefix('-') {
        negative = !negative;
        t = rest.trim();
    }
    let t: String = t
        .chars()
        .filter(|c| !matches!(c, '$' | '€' | '£' | ',' | ' ' | '\u{a0}'))
        .collect();
    if t.is_empty() {
        return Err(ParseError::new("empty"));
    }
    let (whole, fraction) = t.split_once('.').unwrap_or((&t, ""));
    if fraction.len() > 2 {
        return Err(ParseError::new("more than two decimals"));
    }
    if whole.is_empty() && fraction.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return Err(ParseError::new("not a decimal number"));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| ParseError::new("too large"))?
    };
    let cents: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    let total = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(|| ParseError::new("too large"))?;
    Ok(Cents(if negative { -total } else { total }))
}

const DATE_FORMATS: &[&str] = &[
    "%Y-%m-%d",
    "%m/%d/%Y",
    "%m/%d/%y",
    "%d.%m.%Y",
    "%A, %B %d, %Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%b %d %Y",
    "%d %B %Y",
    "%d %b %Y",
];
const TIME_FORMATS: &[&str] = &[
    "%H:%M:%S%.f",
    "%H:%M:%S",
    "%H:%M",
    "%I:%M:%S %p",
    "%I:%M %p",
];

/// A local date (and time) in `tz`, or RFC 3339; `clock` is a separate time-of-day cell.
pub fn parse_time(text: &str, clock: &str, tz: chrono_tz::Tz) -> Result<Timestamp, ParseError> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp(t.timestamp_millis()));
    }
    let local = local_time(text, clock.trim())
        .ok_or_else(|| ParseError::new(format!("cannot read {text:?} as a date (and time)")))?;
    let instant = tz.from_local_datetime(&local).earliest().ok_or_else(|| {
        ParseError::new(format!("{local} does not exist in {tz} (a clock change)"))
    })?;
    Ok(Timestamp(instant.timestamp_millis()))
}

fn local_time(text: &str, clock: &str) -> Option<NaiveDateTime> {
    let time_of = |t: &str| {
        TIME_FORMATS
            .iter()
            .find_map(|f| NaiveTime::parse_from_str(t, f).ok())
    };
    for date_format in DATE_FORMATS {
        if let Ok(date) = NaiveDate::parse_from_str(text, date_format) {
            let time = if clock.is_empty() {
                NaiveTime::MIN
            } else {
                time_of(clock)?
            };
            return Some(date.and_time(time));
        }
        for time_format in TIME_FORMATS {
            for sep in [" ", "T", ", "] {
                let format = format!("{date_format}{sep}{time_format}");
                if let Ok(t) = NaiveDateTime::parse_from_str(text, &format) {
                    return Some(t);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as the file `name` in a new temporary directory (kept while the guard lives).
    fn csv_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    /// An import by the column map `map` (no time zone, no location).
    fn import_by(map: &str) -> CsvImport {
        ColumnMap::parse(map, false)
            .and_then(|map| CsvImport::new(map, None, None))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn money_is_read_exactly() {
        assert_eq!(parse_money("12.5"), Ok(Cents(1250)));
        assert_eq!(parse_money("$1,234.05"), Ok(Cents(123_405)));
        assert_eq!(parse_money("(3.00)"), Ok(Cents(-300)));
        assert_eq!(parse_money("-0.99"), Ok(Cents(-99)));
        assert_eq!(parse_money("€ 4"), Ok(Cents(400)));
        assert_eq!(parse_money(".5"), Ok(Cents(50)));
        assert!(parse_money("1.234").is_err());
        assert!(parse_money("1.2.3").is_err());
        assert!(parse_money("").is_err());
        assert!(parse_money("abc").is_err());
        assert!(parse_money("99999999999999999999").is_err());
    }

    #[test]
    fn dates_in_the_formats_exports_use() {
        let utc = chrono_tz::UTC;
        let day = 1_641_081_600_000; // 2022-01-02T00:00:00Z
        for text in [
            "1/2/2022",
            "2022-01-02",
            "Sunday, January 2, 2022",
            "January 2, 2022",
            "02.01.2022",
        ] {
            assert_eq!(parse_time(text, "", utc), Ok(Timestamp(day)), "{text}");
        }
        let later = day + 13 * 3_600_000 + 5 * 60_000;
        for text in [
            "1/2/2022 13:05",
            "1/2/2022 1:05 PM",
            "2022-01-02 13:05:00",
            "2022-01-02T13:05:00Z",
            "Sunday, January 2, 2022 13:05",
        ] {
            assert_eq!(parse_time(text, "", utc), Ok(Timestamp(later)), "{text}");
        }
        assert_eq!(parse_time("1/2/2022", "13:05", utc), Ok(Timestamp(later)));
        // Local time in Tokyo is 9 hours ahead of UTC.
        let tokyo: chrono_tz::Tz = "Asia/Tokyo".parse().unwrap_or(chrono_tz::UTC);
        assert_eq!(
            parse_time("1/2/2022 13:05", "", tokyo),
            Ok(Timestamp(later - 9 * 3_600_000))
        );
        assert!(parse_time("yesterday", "", utc).is_err());
        assert!(parse_time("13/45/2022", "", utc).is_err());
    }

    #[test]
    fn a_map_names_columns_and_says_what_is_missing() {
        let map = ColumnMap::parse(
            "machine=Machine,time=Trans Date,\"amount=Line, Total\"",
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.fields[&Field::Amount], "Line, Total");
        assert_eq!(map.fields[&Field::Time], "Trans Date");
        let missing = ColumnMap::parse("machine=M,time=T", false);
        assert!(matches!(missing, Err(ImportError::Map(m)) if m.contains("amount")));
        assert!(ColumnMap::parse("amount=A,time=T", true).is_ok());
        assert!(ColumnMap::parse("amount=A,time=T,colour=C", true).is_err());
    }

    #[test]
    fn an_offline_column_marks_sales_the_machine_authorised_alone() {
        let (_dir, path) = csv_file(
            "offline.csv",
            "Machine,Date,Total,Offline\n\
             VM-1,2022-01-02 13:05,1.50,Yes\n\
             VM-1,2022-01-02 13:06,1.50,\n\
             VM-1,2022-01-02 13:07,1.50,online\n\
             VM-1,2022-01-02 13:08,1.50,maybe\n",
        );
        let import = import_by("machine=Machine,time=Date,amount=Total,offline=Offline");
        let mut out = Vec::new();
        let converted = convert_csv(&path, &import, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((converted.rows, converted.events), (4, 3));
        assert_eq!(converted.refused.len(), 1);
        assert!(
            converted.refused[0].reason.contains("\"maybe\""),
            "{:?}",
            converted.refused
        );
        let offline: Vec<bool> = String::from_utf8_lossy(&out)
            .lines()
            .flat_map(|l| vendflow_protocol::decode::decode_line(l.as_bytes()))
            .filter_map(|e| match e.map(|e| e.kind) {
                Ok(EventKind::Sale(s)) => Some(s.offline),
                _ => None,
            })
            .collect();
        assert_eq!(offline, [true, false, false]);
    }

    #[test]
    fn an_export_becomes_sale_events_and_bad_rows_are_refused_with_their_line() {
        let (_dir, path) = csv_file(
            "export.csv",
            "Machine,Date,Time,Txn,Coil,Qty,Total,Type,Site\n\
             VM-1,1/2/2022,13:05,t1,148,2,$3.50,Card,airport\n\
             VM-1,1/2/2022,13:05,t1,101,1,$1.25,Card,airport\n\
             VM-2,not a date,,t2,101,1,$1.25,Cash,\n\
             VM-2,1/3/2022,,t3,101,1,1.255,Cash,\n\
             VM-2,1/3/2022,9:00 AM,,101,,2,coins,\n",
        );
        let import = import_by(
            "machine=Machine,time=Date,clock=Time,transaction=Txn,slot=Coil,quantity=Qty,amount=Total,payment=Type,location=Site",
        );
        let mut out = Vec::new();
        let converted = convert_csv(&path, &import, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((converted.rows, converted.events), (5, 3));
        let lines: Vec<u64> = converted.refused.iter().map(|r| r.line).collect();
        assert_eq!(lines, [4, 5]);
        assert!(converted.refused[1].reason.contains("two decimals"));
        assert_eq!(converted.errors.len(), 2);
        assert_eq!(converted.errors[0].source, "import:export.csv:4");
        let events: Vec<Event> = String::from_utf8_lossy(&out)
            .lines()
            .flat_map(|l| vendflow_protocol::decode::decode_line(l.as_bytes()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        let sales: Vec<&Sale> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Sale(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(sales[0].slot_number, 148);
        assert_eq!((sales[0].quantity, sales[0].amount), (2, Cents(350)));
        assert_eq!(sales[0].payment_method.as_str(), "card");
        assert_eq!(sales[2].transaction_id.as_str(), "export.csv:6");
        assert_eq!(sales[2].payment_method.as_str(), "cash");
        assert_eq!(events[2].timestamp, Timestamp(1_641_200_400_000));
        assert_eq!(converted.registry.len(), 1, "VM-1 is at the airport");
    }

    #[test]
    fn a_settlement_file_becomes_settlement_events_and_bad_rows_are_refused() {
        let (_dir, path) = csv_file(
            "settlement.csv",
            "Terminal,Auth Time,Reference,Amount,Result\n\
             VM-1,2022-01-02 13:05,t1,$4.75,APPROVED\n\
             VM-1,2022-01-02 14:00,t2,1.50,Declined\n\
             VM-1,2022-01-03 09:00,t3,(2.00),Chargeback\n\
             VM-1,2022-01-03 09:30,t4,2.00,pending review\n\
             VM-1,2022-01-03 09:45,,2.00,settled\n",
        );
        let without_status =
            import_by("machine=Terminal,time=Auth Time,transaction=Reference,amount=Amount");
        let refused = convert_settlement(&path, &without_status, &mut Vec::new());
        assert!(matches!(refused, Err(ImportError::Map(m)) if m.contains("status")));
        let import = import_by(
            "machine=Terminal,time=Auth Time,transaction=Reference,amount=Amount,status=Result",
        );
        let mut out = Vec::new();
        let converted =
            convert_settlement(&path, &import, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((converted.rows, converted.events), (5, 3));
        let refused: Vec<(u64, bool)> = converted
            .refused
            .iter()
            .map(|r| (r.line, r.reason.contains("pending review")))
            .collect();
        assert_eq!(refused, [(5, true), (6, false)]);
        let verdicts: Vec<(String, i64, SettlementStatus)> = String::from_utf8_lossy(&out)
            .lines()
            .flat_map(|l| vendflow_protocol::decode::decode_line(l.as_bytes()))
            .map(|e| match e.map(|e| e.kind) {
                Ok(EventKind::Settlement(s)) => {
                    (s.transaction_id.to_string(), s.amount.0, s.status)
                }
                other => panic!("not a settlement: {other:?}"),
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                ("t1".to_owned(), 475, SettlementStatus::Settled),
                ("t2".to_owned(), 150, SettlementStatus::Declined),
                ("t3".to_owned(), 200, SettlementStatus::Reversed),
            ]
        );
    }
}

/// What a DEX import read.
#[derive(Clone, Debug, Default)]
pub struct DexConverted {
    pub audits: u64,
    /// Files refused, with the reason.
    pub refused: Vec<(String, String)>,
    /// Problems the parser reported in audits it kept, by file.
    pub problems: Vec<(String, String)>,
}

/// Reads EVA-DTS / DEX audit files and writes each as a `dex` event (JSON Lines) to `events`:
/// the machine is `machine`, or the audit's serial number (ID101); the time is when it was read
/// (EA3, else ID5). A file that is not an audit, or says neither which machine nor when, is
/// refused with the reason.
pub fn convert_dex(
    paths: &[std::path::PathBuf],
    machine: Option<&str>,
    events: &mut impl Write,
) -> Result<DexConverted, ImportError> {
    let mut out = DexConverted::default();
    for path in paths {
        let name = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                out.refused.push((name, e.to_string()));
                continue;
            }
        };
        let audit = match vendflow_protocol::dex::parse(&text) {
            Ok(a) => a,
            Err(e) => {
                out.refused.push((name, e.message));
                continue;
            }
        };
        let Some(machine) = machine.map(str::to_owned).or_else(|| audit.serial.clone()) else {
            out.refused.push((
                name,
                "no machine: the audit has no ID1 serial; give --machine".into(),
            ));
            continue;
        };
        let machine_id = match MachineId::parse(&machine) {
            Ok(m) => m,
            Err(e) => {
                out.refused
                    .push((name, format!("machine {machine:?}: {e}")));
                continue;
            }
        };
        let Some(read_at) = audit.read_at else {
            out.refused.push((
                name,
                "no read time: the audit has neither EA3 nor ID5".into(),
            ));
            continue;
        };
        for p in &audit.problems {
            tracing::warn!(file = %name, problem = %p, "DEX audit");
            out.problems.push((name.clone(), p.clone()));
        }
        let event = Event {
            machine_id,
            timestamp: read_at,
            seq: None,
            kind: EventKind::Dex(Box::new(audit)),
        };
        writeln!(events, "{}", event.to_json_line()).map_err(|e| ImportError::File {
            path: name.clone(),
            message: e.to_string(),
        })?;
        out.audits += 1;
    }
    Ok(out)
}

/// Writes the telemetry file's lines in their own order to `to`, each of the other events (JSON
/// Lines, `audits`: DEX audits, settlement lines) just before the first line dated at or after
/// it, so they and the sales are lived through together.
pub fn merge_by_time(
    audits: &[u8],
    telemetry: Option<&Path>,
    to: &Path,
) -> Result<(), ImportError> {
    use std::io::BufRead;
    let mut pending: Vec<(i64, &[u8])> = audits
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let at = vendflow_protocol::decode::decode_line(l)
                .into_iter()
                .find_map(Result::ok)
                .map_or(i64::MIN, |e| e.timestamp.0);
            (at, l)
        })
        .collect();
    pending.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| ImportError::File {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(to).map_err(io(to))?);
    if let Some(path) = telemetry {
        let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io(path))?);
        for line in reader.split(b'\n') {
            let line = line.map_err(io(path))?;
            let at = vendflow_protocol::decode::decode_line(&line)
                .into_iter()
                .find_map(Result::ok)
                .map(|e| e.timestamp.0);
            while let Some(a) = at
                && pending.last().is_some_and(|(t, _)| *t <= a)
                && let Some((_, audit)) = pending.pop()
            {
                out.write_all(audit).map_err(io(to))?;
                out.write_all(b"\n").map_err(io(to))?;
            }
            out.write_all(&line).map_err(io(to))?;
            out.write_all(b"\n").map_err(io(to))?;
        }
    }
    while let Some((_, audit)) = pending.pop() {
        out.write_all(audit).map_err(io(to))?;
        out.write_all(b"\n").map_err(io(to))?;
    }
    out.flush().map_err(io(to))?;
    Ok(())
}

#[cfg(test)]
mod dex_tests {
    use super::*;

    #[test]
    fn audit_files_become_dex_events_and_bad_ones_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let good = dir.path().join("good.dex");
        std::fs::write(
            &good,
            "DXS*X*VA*V0/6*1\nST*001*0001\nID1*VM-7*VX\nID5*240115*1430\nPA1*148*250\nPA2*3*750\nSE*6*0001\nDXE*1*1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let undated = dir.path().join("undated.dex");
        std::fs::write(
            &undated,
            "DXS*X\nST*001*1\nID1*VM-7\nPA1*1*100\nPA2*1*100\nSE*5*1\nDXE*1*1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let junk = dir.path().join("junk.dex");
        std::fs::write(&junk, "not an audit").unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let converted = convert_dex(
            &[good, undated, junk, dir.path().join("missing.dex")],
            None,
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(converted.audits, 1);
        assert_eq!(converted.refused.len(), 3, "{:?}", converted.refused);
        assert!(converted.refused[0].1.contains("no read time"));
        let text = String::from_utf8_lossy(&out);
        let events: Vec<Event> = vendflow_protocol::decode::decode_line(text.trim().as_bytes())
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events[0].machine_id.as_str(), "VM-7");
        assert_eq!(events[0].timestamp, Timestamp(1_705_329_000_000));
        match &events[0].kind {
            EventKind::Dex(a) => assert_eq!(a.column("148").and_then(|c| c.vends), Some(3)),
            other => panic!("{other:?}"),
        }
    }
}

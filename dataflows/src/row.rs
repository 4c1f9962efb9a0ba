//! The uniform shape of published view rows, and their Arrow schema.
//!
//! Inside the dataflows every view has its own typed records; at the edge they become [`Row`]s of
//! [`Value`]s so that one view store, one Arrow conversion and one CSV writer serve all views.
//! Money stays integer cents (`Decimal128(18, 2)`), readings stay fixed-point thousandths
//! (`Decimal128(18, 3)`), instants are `Timestamp(ms, UTC)` and days are `Date32`.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use vendflow_protocol::{Cents, Milli, Text, Timestamp};

/// The timezone of every timestamp column: an offset, so that readers need no tz database.
pub const UTC: &str = "+00:00";

/// A float that can live in a differential collection (ordered by `total_cmp`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct OrdF64(pub f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for OrdF64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// One cell of a view row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(OrdF64),
    /// Inline up to 24 bytes (ids, statuses): no allocation per cell.
    Text(Text),
    Money(Cents),
    Reading(Milli),
    Time(Timestamp),
    /// Days since the epoch.
    Date(i64),
}

impl Value {
    pub fn text(s: impl AsRef<str>) -> Value {
        Value::Text(Text::from(s.as_ref()))
    }

    pub fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
        v.map_or(Value::Null, f)
    }

    /// The cell as CSV / display text (money `12.50`, readings `4.1`, instants RFC 3339).
    pub fn render(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{:.3}", f.0),
            Value::Text(s) => s.to_string(),
            Value::Money(c) => c.to_string(),
            Value::Reading(m) => m.to_string(),
            Value::Time(t) => t.to_rfc3339(),
            Value::Date(d) => vendflow_protocol::units::format_day(*d),
        }
    }
}

/// A published row of a view.
pub type Row = std::sync::Arc<[Value]>;

/// The logical type of a view column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int,
    Float,
    Text,
    Money,
    Reading,
    Time,
    Date,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Text => DataType::Utf8,
            ColumnType::Money => DataType::Decimal128(18, 2),
            ColumnType::Reading => DataType::Decimal128(18, 3),
            ColumnType::Time => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            ColumnType::Date => DataType::Date32,
        }
    }
}

/// A column of a view: name, type, and whether it may be null.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
}

pub const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
    }
}

pub const fn null(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
    }
}

/// Arrow schema of a list of columns.
pub fn schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// Builds a record batch from rows; a cell whose value does not fit its column is an error.
pub fn to_batch<'a>(
    columns: &[Column],
    rows: impl IntoIterator<Item = &'a Row> + Clone,
) -> Result<RecordBatch, ArrowError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let cells = rows
            .clone()
            .into_iter()
            .map(|r| r.get(i).unwrap_or(&Value::Null));
        let mismatch = |v: &Value| {
            ArrowError::InvalidArgumentError(format!("column {} ({:?}) got {v:?}", c.name, c.ty))
        };
        let array: ArrayRef = match c.ty {
            ColumnType::Bool => {
                let mut b = BooleanBuilder::new();
                for v in cells {
                    match v {
                        Value::Bool(x) => b.append_value(*x),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Int => {
                let mut b = Int64Builder::new();
                for v in cells {
                    match v {
                        Value::Int(x) => b.append_value(*x),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Float => {
                let mut b = Float64Builder::new();
                for v in cells {
                    match v {
                        Value::Float(x) => b.append_value(x.0),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Text => {
                let mut b = StringBuilder::new();
                for v in cells {
                    match v {
                        Value::Text(x) => b.append_value(x),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Money | ColumnType::Reading => {
                let scale = if c.ty == ColumnType::Money { 2 } else { 3 };
                let mut b = Decimal128Builder::new().with_precision_and_scale(18, scale)?;
                for v in cells {
                    match v {
                        Value::Money(x) if scale == 2 => b.append_value(i128::from(x.0)),
                        Value::Reading(x) if scale == 3 => b.append_value(i128::from(x.0)),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Time => {
                let mut b = TimestampMillisecondBuilder::new().with_timezone(UTC);
                for v in cells {
                    match v {
                        Value::Time(x) => b.append_value(x.0),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnType::Date => {
                let mut b = Date32Builder::new();
                for v in cells {
                    match v {
                        Value::Date(d) => b.append_value(
                            i32::try_from(*d).map_err(|_| mismatch(&Value::Date(*d)))?,
                        ),
                        Value::Null => b.append_null(),
                        other => return Err(mismatch(other)),
                    }
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    RecordBatch::try_new(schema(columns), arrays)
}

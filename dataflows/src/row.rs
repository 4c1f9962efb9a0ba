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

/// A published row of a view: its cells encoded in one shared allocation.
///
/// Rows are most of what the engine holds (every view's rows in the store, each fold's last
/// published outputs share them), so a row is bytes, not a slice of [`Value`]s: a cell is a tag
/// byte and its payload, integers as zigzag varints, texts as a varint length and their UTF-8.
/// A window row takes ~150 bytes where 17 `Value`s took 560. The encoding is canonical (one
/// byte string per list of values), so equality and hashing work on the bytes; ordering
/// compares the decoded cells, as `[Value]` would.
///
/// A row is one shared allocation (reference count, length, bytes) behind a one-word pointer:
/// the view store keeps a pointer per row, and a snapshot or a message one per row copied, so
/// a thin pointer halves those (`Arc<[u8]>` is two words, and its allocation also carries a
/// weak count nothing uses).
#[derive(Clone)]
pub struct Row(triomphe::ThinArc<(), u8>);

const _: () = assert!(std::mem::size_of::<Row>() == 8);

impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Row {}

impl std::hash::Hash for Row {
    /// As the bytes hash (what an `Arc<[u8]>` row hashed as).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

mod tag {
    pub const NULL: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const INT: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const TEXT: u8 = 5;
    pub const MONEY: u8 = 6;
    pub const READING: u8 = 7;
    pub const TIME: u8 = 8;
    pub const DATE: u8 = 9;
    /// A text that is one of [`WORDS`](super::WORDS): its index, one byte. Orders and decodes
    /// as the text it stands for (a [`TEXT`] cell).
    pub const WORD: u8 = 10;
}

/// Texts most view rows repeat (a window's five levels and its status, a machine's grade and
/// liveness): written as a tag and an index, two bytes where `normal` took eight. Six of a
/// window row's cells are levels, so this is about 40 of its ~110 bytes (9 MB of the 1 M
/// benchmark's peak heap). Every text in the list is always written this way, and no other
/// text is, so the encoding stays canonical. At most 256 of them (an index is one byte).
const WORDS: [&str; 11] = [
    "normal",
    "warning",
    "critical",
    "active",
    "offline",
    "good",
    "degraded",
    "poor",
    "UTC",
    "matched",
    "unsettled",
];

/// Where `text` is in [`WORDS`].
fn word_of(text: &str) -> Option<u8> {
    if text.len() > LONGEST_WORD {
        return None;
    }
    // Eleven lengths compared, a few bytes for the one of the same length.
    let i = WORDS.iter().position(|w| *w == text)?;
    u8::try_from(i).ok()
}

/// The longest text in [`WORDS`].
const LONGEST_WORD: usize = {
    let (mut i, mut longest) = (0, 0);
    while i < WORDS.len() {
        if WORDS[i].len() > longest {
            longest = WORDS[i].len();
        }
        i += 1;
    }
    longest
};

/// Appends `v` as a LEB128 varint (7 bits a byte, low first).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint [`put_varint`] wrote off the front of `bytes`; `None` if they end first or it
/// runs past 64 bits.
pub(crate) fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads cells off the front of a row's bytes (which only [`RowWriter`] wrote).
struct Cells<'a>(&'a [u8]);

impl<'a> Cells<'a> {
    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while let Some((&b, rest)) = self.0.split_first() {
            self.0 = rest;
            // Bytes from outside (a checkpoint) may run past 64 bits: those bits are dropped.
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b < 0x80 {
                break;
            }
            shift = shift.saturating_add(7);
        }
        v
    }

    fn int(&mut self) -> i64 {
        let z = self.varint();
        ((z >> 1) as i64) ^ -((z & 1) as i64)
    }

    /// A float's eight bytes (zeros for those missing, in bytes that end first).
    fn float(&mut self) -> f64 {
        let mut bits = [0u8; 8];
        let got = self.bytes(8);
        bits[..got.len()].copy_from_slice(got);
        f64::from_bits(u64::from_le_bytes(bits))
    }

    /// A [`tag::WORD`] cell's text (empty for an index no writer wrote).
    fn word(&mut self) -> &'static str {
        let i = self.bytes(1).first().copied().unwrap_or(u8::MAX);
        WORDS.get(usize::from(i)).copied().unwrap_or_default()
    }

    /// The text of a text cell whose tag (`TEXT` or `WORD`) was just read.
    fn text_bytes(&mut self, tag: u8) -> &'a [u8] {
        if tag == tag::WORD {
            self.word().as_bytes()
        } else {
            let n = self.varint() as usize;
            self.bytes(n)
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// Skips one cell without building its value.
    fn skip_cell(&mut self) -> bool {
        let Some((&t, rest)) = self.0.split_first() else {
            return false;
        };
        self.0 = rest;
        match t {
            tag::FLOAT => {
                self.bytes(8);
            }
            tag::TEXT => {
                let n = self.varint() as usize;
                self.bytes(n);
            }
            tag::WORD => {
                self.bytes(1);
            }
            tag::INT | tag::MONEY | tag::READING | tag::TIME | tag::DATE => {
                self.varint();
            }
            _ => {}
        }
        true
    }

    /// The next cell as it stands in the row (its text borrowed).
    fn next_ref(&mut self) -> Option<CellRef<'a>> {
        let (&t, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(match t {
            tag::FALSE => CellRef::Bool(false),
            tag::TRUE => CellRef::Bool(true),
            tag::INT => CellRef::Int(self.int()),
            tag::FLOAT => CellRef::Float(OrdF64(self.float())),
            tag::TEXT => {
                let n = self.varint() as usize;
                // Only `RowWriter` writes rows, from `str`s: the bytes are UTF-8.
                CellRef::Text(std::str::from_utf8(self.bytes(n)).unwrap_or_default())
            }
            tag::WORD => CellRef::Text(self.word()),
            tag::MONEY => CellRef::Money(Cents(self.int())),
            tag::READING => CellRef::Reading(Milli(self.int())),
            tag::TIME => CellRef::Time(Timestamp(self.int())),
            tag::DATE => CellRef::Date(self.int()),
            _ => CellRef::Null,
        })
    }
}

impl Iterator for Cells<'_> {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        self.next_ref().map(CellRef::to_value)
    }
}

/// A cell as it stands in its row: a [`Value`] whose text is borrowed, not copied (what a
/// writer that only prints the cell needs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CellRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(OrdF64),
    Text(&'a str),
    Money(Cents),
    Reading(Milli),
    Time(Timestamp),
    Date(i64),
}

impl CellRef<'_> {
    /// The cell as a value of its own.
    pub fn to_value(self) -> Value {
        match self {
            CellRef::Null => Value::Null,
            CellRef::Bool(b) => Value::Bool(b),
            CellRef::Int(i) => Value::Int(i),
            CellRef::Float(f) => Value::Float(f),
            CellRef::Text(t) => Value::Text(Text::from(t)),
            CellRef::Money(c) => Value::Money(c),
            CellRef::Reading(m) => Value::Reading(m),
            CellRef::Time(t) => Value::Time(t),
            CellRef::Date(d) => Value::Date(d),
        }
    }
}

impl Row {
    /// The encoded cells.
    fn bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// The cells, decoded in order.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        Cells(self.bytes())
    }

    /// The cells in order, their text borrowed from the row.
    pub fn cell_refs(&self) -> impl Iterator<Item = CellRef<'_>> + '_ {
        let mut cells = Cells(self.bytes());
        std::iter::from_fn(move || cells.next_ref())
    }

    /// Cell `i`, if the row has that many.
    pub fn get(&self, i: usize) -> Option<Value> {
        let mut cells = Cells(self.bytes());
        for _ in 0..i {
            if !cells.skip_cell() {
                return None;
            }
        }
        cells.next()
    }

    /// Cell `i`, `Null` past the end.
    pub fn cell(&self, i: usize) -> Value {
        self.get(i).unwrap_or(Value::Null)
    }

    /// The first cell (a view's key: the machine, mostly).
    pub fn first(&self) -> Option<Value> {
        Cells(self.bytes()).next()
    }

    /// The first cell's encoded bytes (empty for an empty row): a key that costs no decoding
    /// and no allocation. Two rows' first cells are equal exactly when these bytes are (the
    /// encoding is canonical), and [`cmp_cells`] orders them as their values.
    pub fn first_cell(&self) -> &[u8] {
        let bytes = self.bytes();
        let mut rest = Cells(bytes);
        rest.skip_cell();
        &bytes[..bytes.len() - rest.0.len()]
    }

    pub fn len(&self) -> usize {
        let mut cells = Cells(self.bytes());
        let mut n = 0;
        while cells.skip_cell() {
            n += 1;
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The encoded size in bytes (what the row costs, besides its shared header).
    pub fn encoded_len(&self) -> usize {
        self.bytes().len()
    }

    /// The cells as values.
    pub fn to_vec(&self) -> Vec<Value> {
        self.iter().collect()
    }

    /// The row's encoding, to keep it on disk ([`Row::from_encoded`] reads it back).
    pub(crate) fn encoded(&self) -> &[u8] {
        self.bytes()
    }

    /// The row [`Row::encoded`] gave these bytes for. (Bytes that are not one decode as
    /// whatever cells they spell, never a panic.)
    pub(crate) fn from_encoded(bytes: &[u8]) -> Row {
        Row(triomphe::ThinArc::from_header_and_slice((), bytes))
    }
}

impl<'a> FromIterator<&'a Value> for Row {
    fn from_iter<I: IntoIterator<Item = &'a Value>>(cells: I) -> Row {
        Row::build(|w| cells.into_iter().for_each(|v| w.value(v)))
    }
}

thread_local! {
    /// The bytes of the row being built: reused, so a row costs one allocation (its own).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Row {
    /// A row written cell by cell, without building a [`Value`] per cell (a text is copied once,
    /// into the row).
    pub fn build(cells: impl FnOnce(&mut RowWriter<'_>)) -> Row {
        SCRATCH.with(|scratch| {
            // A row built while building another (never, today) gets a buffer of its own.
            let mut own = Vec::new();
            let mut borrowed = scratch.try_borrow_mut();
            let bytes = borrowed.as_deref_mut().unwrap_or(&mut own);
            bytes.clear();
            cells(&mut RowWriter(bytes));
            Row(triomphe::ThinArc::from_header_and_slice((), bytes))
        })
    }
}

/// Appends cells to a row being built ([`Row::build`]); each method is one cell.
pub struct RowWriter<'a>(&'a mut Vec<u8>);

impl RowWriter<'_> {
    /// The one encoder of a cell: every other writer is one of its cases.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.null(),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => self.float(f.0),
            Value::Text(t) => self.text(t),
            Value::Money(c) => self.money(*c),
            Value::Reading(m) => self.reading(*m),
            Value::Time(t) => self.time(*t),
            Value::Date(d) => self.date(*d),
        }
    }

    pub fn null(&mut self) {
        self.0.push(tag::NULL);
    }

    pub fn bool(&mut self, b: bool) {
        self.0.push(if b { tag::TRUE } else { tag::FALSE });
    }

    pub fn int(&mut self, i: i64) {
        self.0.push(tag::INT);
        put_int(self.0, i);
    }

    pub fn float(&mut self, f: f64) {
        self.0.push(tag::FLOAT);
        self.0.extend_from_slice(&f.to_bits().to_le_bytes());
    }

    pub fn text(&mut self, t: &str) {
        if let Some(i) = word_of(t) {
            self.0.extend_from_slice(&[tag::WORD, i]);
            return;
        }
        self.0.push(tag::TEXT);
        put_varint(self.0, t.len() as u64);
        self.0.extend_from_slice(t.as_bytes());
    }

    /// One text cell: `parts` joined by `separator`.
    pub fn text_joined<S: AsRef<str>>(&mut self, parts: &[S], separator: &str) {
        let len = parts.iter().map(|p| p.as_ref().len()).sum::<usize>()
            + separator.len() * parts.len().saturating_sub(1);
        if len <= LONGEST_WORD {
            // Short enough to be a word, which has one encoding whoever writes it.
            let joined = parts
                .iter()
                .map(AsRef::as_ref)
                .collect::<Vec<&str>>()
                .join(separator);
            self.text(&joined);
            return;
        }
        self.0.push(tag::TEXT);
        put_varint(self.0, len as u64);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.0.extend_from_slice(separator.as_bytes());
            }
            self.0.extend_from_slice(p.as_ref().as_bytes());
        }
    }

    pub fn money(&mut self, c: Cents) {
        self.0.push(tag::MONEY);
        put_int(self.0, c.0);
    }

    pub fn reading(&mut self, m: Milli) {
        self.0.push(tag::READING);
        put_int(self.0, m.0);
    }

    pub fn time(&mut self, t: Timestamp) {
        self.0.push(tag::TIME);
        put_int(self.0, t.0);
    }

    pub fn date(&mut self, days: i64) {
        self.0.push(tag::DATE);
        put_int(self.0, days);
    }

    /// A cell as another row holds it.
    pub fn cell(&mut self, c: CellRef<'_>) {
        match c {
            CellRef::Null => self.null(),
            CellRef::Bool(b) => self.bool(b),
            CellRef::Int(i) => self.int(i),
            CellRef::Float(f) => self.float(f.0),
            CellRef::Text(t) => self.text(t),
            CellRef::Money(c) => self.money(c),
            CellRef::Reading(m) => self.reading(m),
            CellRef::Time(t) => self.time(t),
            CellRef::Date(d) => self.date(d),
        }
    }

    /// `cell(v)` when there is a value, else a null.
    pub fn opt<T>(&mut self, v: Option<T>, cell: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => cell(self, v),
            None => self.null(),
        }
    }
}

impl<const N: usize> From<[Value; N]> for Row {
    fn from(cells: [Value; N]) -> Row {
        cells.iter().collect()
    }
}

impl From<Vec<Value>> for Row {
    fn from(cells: Vec<Value>) -> Row {
        cells.iter().collect()
    }
}

impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Row) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Row {
    /// [`Ord::cmp`] for two rows whose first `first` bytes are the same first cell (rows of one
    /// view store group): only the cells after it are compared (a machine id's text, the same
    /// in every row of its group, was decoded and compared in every comparison).
    pub(crate) fn cmp_after_first(&self, other: &Row, first: usize) -> Ordering {
        let (a, b) = (self.bytes(), other.bytes());
        debug_assert_eq!(a.get(..first), b.get(..first));
        match (a.get(first..), b.get(first..)) {
            (Some(a), Some(b)) => cmp_cells(a, b),
            _ => self.cmp(other),
        }
    }
}

impl Ord for Row {
    /// Cell by cell, as `[Value]` orders, on the encoded cells (no value is built).
    fn cmp(&self, other: &Row) -> Ordering {
        if self.bytes() == other.bytes() {
            return Ordering::Equal;
        }
        cmp_cells(self.bytes(), other.bytes())
    }
}

/// Encoded cells (a row's, or its first cell's: [`Row::first_cell`]) in the order of the
/// `[Value]`s they encode.
pub fn cmp_cells(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a, mut b) = (Cells(a), Cells(b));
    loop {
        let (ta, tb) = match (a.0.split_first(), b.0.split_first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((&ta, ra)), Some((&tb, rb))) => {
                a.0 = ra;
                b.0 = rb;
                (ta, tb)
            }
        };
        // Tags are numbered in `Value`'s variant order, `false` before `true`; a word is a
        // text.
        let rank = |t: u8| if t == tag::WORD { tag::TEXT } else { t };
        if rank(ta) != rank(tb) {
            return rank(ta).cmp(&rank(tb));
        }
        let order = match rank(ta) {
            tag::INT | tag::MONEY | tag::READING | tag::TIME | tag::DATE => a.int().cmp(&b.int()),
            tag::FLOAT => a.float().total_cmp(&b.float()),
            // `str` orders by its UTF-8 bytes.
            tag::TEXT => a.text_bytes(ta).cmp(b.text_bytes(tb)),
            _ => Ordering::Equal,
        };
        if order != Ordering::Equal {
            return order;
        }
    }
}

/// A key of an encoded cell's leading part that orders as [`cmp_cells`] does wherever two keys
/// differ (equal keys say nothing: compare the cells): the tag in the top byte, then an
/// integer's value or a text's first 15 bytes. A sort compares these inline instead of
/// following each row's pointer; two words, so a sort entry stays small.
pub fn cell_order_key(cell: &[u8]) -> [u64; 2] {
    let mut cells = Cells(cell);
    let Some((&t, rest)) = cells.0.split_first() else {
        return [0, 0];
    };
    cells.0 = rest;
    let mut bytes = [0u8; 16];
    // A word keys as the text it stands for.
    bytes[0] = if t == tag::WORD { tag::TEXT } else { t };
    match t {
        tag::INT | tag::MONEY | tag::READING | tag::TIME | tag::DATE => {
            // Flipping the sign bit orders i64 as u64.
            let v = (cells.int() as u64) ^ (1 << 63);
            bytes[1..9].copy_from_slice(&v.to_be_bytes());
        }
        tag::TEXT | tag::WORD => {
            let text = cells.text_bytes(t);
            let k = text.len().min(15);
            bytes[1..=k].copy_from_slice(&text[..k]);
        }
        _ => {}
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i..i + 8]);
        u64::from_be_bytes(w)
    };
    [word(0), word(8)]
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Row {
    /// In a binary format (bincode: checkpoints, parked state, exchange between processes) a
    /// row is its encoded bytes, as it is held: a window row's ~110 bytes where its cells as
    /// tagged values took ~270. In a readable one (JSON) it is its list of values.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if !s.is_human_readable() {
            return s.serialize_bytes(self.bytes());
        }
        // With its length first, as a sequence's.
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for value in self.iter() {
            seq.serialize_element(&value)?;
        }
        seq.end()
    }
}

impl Row {
    /// The row these bytes encode, if they are exactly what [`RowWriter`] writes for some
    /// cells: equality and hashing work on the bytes, so a row read from outside must be in the
    /// one canonical encoding (a word spelled as a text, a varint with a trailing zero byte, a
    /// text cut short or not UTF-8 would each be a different row of the same values, or none).
    pub(crate) fn from_canonical(bytes: &[u8]) -> Option<Row> {
        let row = Row::build(|w| {
            let mut cells = Cells(bytes);
            while let Some(cell) = cells.next_ref() {
                w.cell(cell);
            }
        });
        (row.bytes() == bytes).then_some(row)
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        if d.is_human_readable() {
            return Ok(Row::from(Vec::<Value>::deserialize(d)?));
        }
        struct Encoded;
        impl<'de> serde::de::Visitor<'de> for Encoded {
            type Value = Row;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a view row's encoded cells")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Row, E> {
                Row::from_canonical(bytes).ok_or_else(|| {
                    E::custom(format!(
                        "{} bytes that are not a view row's encoded cells",
                        bytes.len()
                    ))
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Row, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                self.visit_bytes(&bytes)
            }
        }
        d.deserialize_bytes(Encoded)
    }
}

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
///
/// Row by row: each row's cells are decoded once, in order, into the columns' builders (taking
/// cell `i` of a row for column `i` would skip over the cells before it, for every column).
pub fn to_batch<'a>(
    columns: &[Column],
    rows: impl IntoIterator<Item = &'a Row> + Clone,
) -> Result<RecordBatch, ArrowError> {
    let capacity = rows.clone().into_iter().count();
    let mut builders = columns
        .iter()
        .map(|c| ColumnBuilder::new(c.ty, capacity))
        .collect::<Result<Vec<_>, _>>()?;
    for row in rows {
        let mut cells = row.iter();
        for (c, b) in columns.iter().zip(&mut builders) {
            b.append(c, cells.next().unwrap_or(Value::Null))?;
        }
    }
    let arrays = builders.into_iter().map(ColumnBuilder::finish).collect();
    RecordBatch::try_new(schema(columns), arrays)
}

/// The rows of a record batch written by [`to_batch`] (columns found by name, so a file with
/// extra or reordered columns reads too); a missing column or a type that does not match is an
/// error.
pub fn from_batch(columns: &[Column], batch: &RecordBatch) -> Result<Vec<Row>, ArrowError> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Date32Type, Decimal128Type, Float64Type, Int64Type, TimestampMillisecondType,
    };
    let arrays = columns
        .iter()
        .map(|c| {
            batch.column_by_name(c.name).cloned().ok_or_else(|| {
                ArrowError::SchemaError(format!("no column {:?} in the batch", c.name))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut cells = Vec::with_capacity(columns.len());
        for (c, a) in columns.iter().zip(&arrays) {
            if a.is_null(i) {
                cells.push(Value::Null);
                continue;
            }
            let wrong = || {
                ArrowError::SchemaError(format!("column {:?} has type {}", c.name, a.data_type()))
            };
            cells.push(match c.ty {
                ColumnType::Bool => Value::Bool(a.as_boolean_opt().ok_or_else(wrong)?.value(i)),
                ColumnType::Int => Value::Int(
                    a.as_primitive_opt::<Int64Type>()
                        .ok_or_else(wrong)?
                        .value(i),
                ),
                ColumnType::Float => Value::Float(OrdF64(
                    a.as_primitive_opt::<Float64Type>()
                        .ok_or_else(wrong)?
                        .value(i),
                )),
                ColumnType::Text => {
                    Value::text(a.as_string_opt::<i32>().ok_or_else(wrong)?.value(i))
                }
                ColumnType::Money | ColumnType::Reading => {
                    let v = a
                        .as_primitive_opt::<Decimal128Type>()
                        .ok_or_else(wrong)?
                        .value(i);
                    let v = i64::try_from(v).map_err(|_| wrong())?;
                    if c.ty == ColumnType::Money {
                        Value::Money(Cents(v))
                    } else {
                        Value::Reading(Milli(v))
                    }
                }
                ColumnType::Time => Value::Time(Timestamp(
                    a.as_primitive_opt::<TimestampMillisecondType>()
                        .ok_or_else(wrong)?
                        .value(i),
                )),
                ColumnType::Date => Value::Date(i64::from(
                    a.as_primitive_opt::<Date32Type>()
                        .ok_or_else(wrong)?
                        .value(i),
                )),
            });
        }
        rows.push(Row::from(cells));
    }
    Ok(rows)
}

/// The Arrow builder of one column.
enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    Decimal(Decimal128Builder),
    Time(TimestampMillisecondBuilder),
    Date(Date32Builder),
}

impl ColumnBuilder {
    fn new(ty: ColumnType, rows: usize) -> Result<Self, ArrowError> {
        Ok(match ty {
            ColumnType::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::Int => Self::Int(Int64Builder::with_capacity(rows)),
            ColumnType::Float => Self::Float(Float64Builder::with_capacity(rows)),
            ColumnType::Text => Self::Text(StringBuilder::with_capacity(rows, rows * 16)),
            ColumnType::Money | ColumnType::Reading => {
                let scale = if ty == ColumnType::Money { 2 } else { 3 };
                Self::Decimal(
                    Decimal128Builder::with_capacity(rows).with_precision_and_scale(18, scale)?,
                )
            }
            ColumnType::Time => {
                Self::Time(TimestampMillisecondBuilder::with_capacity(rows).with_timezone(UTC))
            }
            ColumnType::Date => Self::Date(Date32Builder::with_capacity(rows)),
        })
    }

    fn append(&mut self, c: &Column, v: Value) -> Result<(), ArrowError> {
        match (self, v) {
            (Self::Bool(b), Value::Bool(x)) => b.append_value(x),
            (Self::Bool(b), Value::Null) => b.append_null(),
            (Self::Int(b), Value::Int(x)) => b.append_value(x),
            (Self::Int(b), Value::Null) => b.append_null(),
            (Self::Float(b), Value::Float(x)) => b.append_value(x.0),
            (Self::Float(b), Value::Null) => b.append_null(),
            (Self::Text(b), Value::Text(x)) => b.append_value(x),
            (Self::Text(b), Value::Null) => b.append_null(),
            (Self::Decimal(b), Value::Money(x)) if c.ty == ColumnType::Money => {
                b.append_value(i128::from(x.0))
            }
            (Self::Decimal(b), Value::Reading(x)) if c.ty == ColumnType::Reading => {
                b.append_value(i128::from(x.0))
            }
            (Self::Decimal(b), Value::Null) => b.append_null(),
            (Self::Time(b), Value::Time(x)) => b.append_value(x.0),
            (Self::Time(b), Value::Null) => b.append_null(),
            (Self::Date(b), Value::Date(d)) => match i32::try_from(d) {
                Ok(d) => b.append_value(d),
                Err(_) => return Err(mismatch(c, &Value::Date(d))),
            },
            (Self::Date(b), Value::Null) => b.append_null(),
            (_, other) => return Err(mismatch(c, &other)),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::Int(mut b) => Arc::new(b.finish()),
            Self::Float(mut b) => Arc::new(b.finish()),
            Self::Text(mut b) => Arc::new(b.finish()),
            Self::Decimal(mut b) => Arc::new(b.finish()),
            Self::Time(mut b) => Arc::new(b.finish()),
            Self::Date(mut b) => Arc::new(b.finish()),
        }
    }
}

fn mismatch(c: &Column, v: &Value) -> ArrowError {
    ArrowError::InvalidArgumentError(format!("column {} ({:?}) got {v:?}", c.name, c.ty))
}

/// A published view's definition.
#[derive(Clone, Copy, Debug)]
pub struct ViewDef {
    pub name: &'static str,
    pub description: &'static str,
    pub columns: &'static [Column],
}

impl ViewDef {
    pub fn schema(&self) -> arrow_schema::SchemaRef {
        schema(self.columns)
    }

    /// The position of the column called `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The cell of `row` (a row of this view) in the column called `name`; `None` if the view
    /// has no such column.
    pub fn get(&self, row: &Row, name: &str) -> Option<Value> {
        self.column(name).map(|i| row.cell(i))
    }

    /// The positions of the columns called `names`, resolved once for a pass over many rows
    /// (where reading each cell by name would search the columns again); `None` if the view
    /// lacks one.
    pub fn columns<const N: usize>(&self, names: [&str; N]) -> Option<[usize; N]> {
        let mut positions = [0; N];
        for (position, name) in positions.iter_mut().zip(names) {
            *position = self.column(name)?;
        }
        Some(positions)
    }

    /// `row` (a row of this view), read by column name.
    pub fn named<'a>(&'a self, row: &'a Row) -> Named<'a> {
        Named { view: self, row }
    }
}

/// A row of a view read by column name: how code outside the dataflows reads views, so that a
/// column added or moved cannot shift what it reads. A name the view does not have is a bug: it
/// panics in debug builds (so every test that reaches it fails) and reads as null in release.
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    view: &'a ViewDef,
    row: &'a Row,
}

impl<'a> Named<'a> {
    pub fn row(&self) -> &'a Row {
        self.row
    }

    /// The cell in the column called `name`.
    pub fn get(&self, name: &str) -> Value {
        match self.view.column(name) {
            Some(i) => self.row.cell(i),
            None => {
                debug_assert!(false, "view {} has no column {name:?}", self.view.name);
                Value::Null
            }
        }
    }

    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Value::Text(t) => Some(t.into()),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Value::Int(n) => Some(n),
            _ => None,
        }
    }

    /// Money in cents.
    pub fn cents(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Value::Money(c) => Some(c.0),
            _ => None,
        }
    }

    /// A day, as days since the epoch.
    pub fn date(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Value::Date(d) => Some(d),
            _ => None,
        }
    }

    pub fn time(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Value::Time(t) => Some(t.0),
            _ => None,
        }
    }

    /// True only for a true boolean.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Value::Bool(true)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random_value(rng: &mut SmallRng) -> Value {
        let big = |rng: &mut SmallRng| match rng.random_range(0..4) {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => rng.random_range(-1000..1000),
            _ => rng.random(),
        };
        match rng.random_range(0..10) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => Value::Int(big(rng)),
            3 => Value::Float(OrdF64(match rng.random_range(0..4) {
                0 => -0.0,
                1 => f64::NAN,
                _ => rng.random_range(-1e9..1e9),
            })),
            // A word, or a text that shares its start with one.
            4 if rng.random_bool(0.3) => {
                let word = WORDS[rng.random_range(0..WORDS.len())];
                let cut = rng.random_range(0..=word.len());
                Value::text(match rng.random_range(0..3) {
                    0 => word.to_owned(),
                    1 => word[..cut].to_owned(),
                    _ => format!("{word}{}", ['a', 'z', ' ', '~'][rng.random_range(0..4)]),
                })
            }
            4 => {
                let len = rng.random_range(0..40);
                let text: String = (0..len)
                    .map(|_| ['a', 'z', '_', '0', 'é', '€', '😀'][rng.random_range(0..7)])
                    .collect();
                Value::text(text)
            }
            5 => Value::Money(Cents(big(rng))),
            6 => Value::Reading(Milli(big(rng))),
            7 => Value::Time(Timestamp(big(rng))),
            _ => Value::Date(big(rng)),
        }
    }

    /// Where two cells' order keys differ they order as the values do (the naive order of
    /// `Value`, not `cmp_cells`); texts share long prefixes here, so ties are common too.
    #[test]
    fn order_keys_order_as_the_values_do() {
        let mut rng = SmallRng::seed_from_u64(13);
        let mut decided = 0;
        for _ in 0..50_000 {
            let (a, b) = (random_value(&mut rng), random_value(&mut rng));
            let (ra, rb) = (Row::from([a.clone()]), Row::from([b.clone()]));
            let (ka, kb) = (
                cell_order_key(ra.first_cell()),
                cell_order_key(rb.first_cell()),
            );
            if ka != kb {
                decided += 1;
                assert_eq!(ka.cmp(&kb), a.cmp(&b), "{a:?} against {b:?}");
            }
            if a == b {
                assert_eq!(ka, kb);
            }
        }
        assert!(decided > 30_000, "{decided}");
    }

    /// Rows of one group (the same first cell) order the same from the cell after it as
    /// whole: the naive order of their values.
    #[test]
    fn rows_of_one_group_order_from_their_second_cell_as_whole() {
        let mut rng = SmallRng::seed_from_u64(17);
        for _ in 0..20_000 {
            let first = random_value(&mut rng);
            let values = |rng: &mut SmallRng| {
                let n = rng.random_range(0..4);
                let mut v = vec![first.clone()];
                v.extend((0..n).map(|_| random_value(rng)));
                v
            };
            let (a, b) = (values(&mut rng), values(&mut rng));
            let (ra, rb) = (Row::from(a.clone()), Row::from(b.clone()));
            let len = ra.first_cell().len();
            assert_eq!(rb.first_cell().len(), len);
            assert_eq!(
                ra.cmp_after_first(&rb, len),
                a.cmp(&b),
                "{a:?} against {b:?}"
            );
            assert_eq!(ra.cmp_after_first(&ra, len), std::cmp::Ordering::Equal);
        }
    }

    /// A batch read back gives the rows it was written from, for every column type.
    #[test]
    fn a_batch_reads_back_as_its_rows() {
        const COLUMNS: &[Column] = &[
            null("t", ColumnType::Text),
            null("b", ColumnType::Bool),
            null("i", ColumnType::Int),
            null("f", ColumnType::Float),
            null("m", ColumnType::Money),
            null("r", ColumnType::Reading),
            null("ts", ColumnType::Time),
            null("d", ColumnType::Date),
        ];
        let rows = vec![
            Row::from([
                Value::text("mach-1"),
                Value::Bool(true),
                Value::Int(-3),
                Value::Float(OrdF64(1.5)),
                Value::Money(Cents(1_256_550)),
                Value::Reading(Milli(-75_000)),
                Value::Time(Timestamp(1_700_000_000_123)),
                Value::Date(19_000),
            ]),
            Row::from(std::array::from_fn::<Value, 8, _>(|_| Value::Null)),
        ];
        let batch = to_batch(COLUMNS, &rows).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            from_batch(COLUMNS, &batch).unwrap_or_else(|e| panic!("{e}")),
            rows
        );
        let missing = [col("nope", ColumnType::Int)];
        assert!(from_batch(&missing, &batch).is_err());
        let wrong = [col("t", ColumnType::Int)];
        assert!(from_batch(&wrong, &batch).is_err());
    }

    /// A word is written as two bytes however it is written (a value, a text cell, joined
    /// parts), reads back as its text, and orders among texts as its text does.
    #[test]
    fn a_word_is_two_bytes_and_its_text() {
        for word in WORDS {
            let (cut, rest) = word.split_at(word.len() / 2);
            let rows = [
                Row::from([Value::text(word)]),
                Row::build(|r| r.text(word)),
                Row::build(|r| r.text_joined(&[cut, rest], "")),
            ];
            for row in &rows {
                assert_eq!(row.encoded_len(), 2, "{word}");
                assert_eq!(row.to_vec(), vec![Value::text(word)]);
                assert_eq!(row, &rows[0]);
            }
            let longer = Row::from([Value::text(format!("{word}s"))]);
            assert_eq!(longer.to_vec(), vec![Value::text(format!("{word}s"))]);
            assert!(rows[0] < longer);
            assert!(Row::from([Value::text(cut)]) < rows[0] || cut == word);
        }
        assert!(LONGEST_WORD >= WORDS.iter().map(|w| w.len()).max().unwrap_or(0));
        assert!(
            WORDS
                .iter()
                .enumerate()
                .all(|(i, w)| word_of(w) == Some(i as u8))
        );
        // An index no writer writes decodes as an empty text, never a panic.
        assert_eq!(
            Row::from_encoded(&[tag::WORD, 200]).to_vec(),
            vec![Value::text("")]
        );
    }

    /// A row written cell by cell is the row of the same values: the writers encode as
    /// `Value`s do.
    #[test]
    fn a_written_row_is_the_row_of_its_values() {
        let row = Row::build(|r| {
            r.text("m-ü1");
            r.null();
            r.bool(true);
            r.bool(false);
            r.int(-5);
            r.float(-0.0);
            r.money(Cents(1250));
            r.reading(Milli(-75_000));
            r.time(Timestamp(1_700_000_000_123));
            r.date(19_000);
            r.opt(None::<i64>, RowWriter::int);
            r.opt(Some(i64::MIN), RowWriter::int);
            r.text_joined(&["offline", "temperature critical"], "; ");
            r.text_joined::<&str>(&[], "; ");
            r.value(&Value::Float(OrdF64(f64::NAN)));
        });
        let values = vec![
            Value::text("m-ü1"),
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-5),
            Value::Float(OrdF64(-0.0)),
            Value::Money(Cents(1250)),
            Value::Reading(Milli(-75_000)),
            Value::Time(Timestamp(1_700_000_000_123)),
            Value::Date(19_000),
            Value::Null,
            Value::Int(i64::MIN),
            Value::text("offline; temperature critical"),
            Value::text(""),
            Value::Float(OrdF64(f64::NAN)),
        ];
        assert_eq!(row, Row::from(values.clone()));
        assert_eq!(row.to_vec(), values);
    }

    /// A row holds exactly the values it was built from, and compares, hashes and orders as
    /// the list of those values does (the view store, snapshots and golden files rely on it).
    #[test]
    fn a_row_is_its_values() {
        use std::hash::BuildHasher;
        let mut rng = SmallRng::seed_from_u64(7);
        let rows: Vec<Vec<Value>> = (0..3_000)
            .map(|_| {
                let len = rng.random_range(0..6);
                // Few distinct values, so that equal rows and shared prefixes are common.
                (0..len)
                    .map(|_| {
                        if rng.random_bool(0.5) {
                            Value::Int(rng.random_range(0..3))
                        } else {
                            random_value(&mut rng)
                        }
                    })
                    .collect()
            })
            .collect();
        let state = std::hash::RandomState::new();
        for values in &rows {
            let row = Row::from(values.clone());
            assert_eq!(row.to_vec(), *values);
            assert_eq!(row.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                assert_eq!(row.get(i).as_ref(), Some(v));
            }
            assert_eq!(row.get(values.len()), None);
            assert_eq!(row.cell(values.len()), Value::Null);
            // Borrowed, the same cells.
            let borrowed: Vec<Value> = row.cell_refs().map(CellRef::to_value).collect();
            assert_eq!(borrowed, *values);
        }
        for pair in rows.windows(2) {
            let (a, b) = (Row::from(pair[0].clone()), Row::from(pair[1].clone()));
            assert_eq!(a.cmp(&b), pair[0].cmp(&pair[1]), "{a:?} {b:?}");
            assert_eq!(a == b, pair[0] == pair[1]);
            if a == b {
                assert_eq!(state.hash_one(&a), state.hash_one(&b));
            }
        }
        let mut sorted_rows: Vec<Row> = rows.iter().map(|v| Row::from(v.clone())).collect();
        sorted_rows.sort();
        let mut sorted_values = rows.clone();
        sorted_values.sort();
        assert_eq!(
            sorted_rows.iter().map(Row::to_vec).collect::<Vec<_>>(),
            sorted_values
        );
    }

    #[test]
    fn a_named_row_reads_each_column_by_its_name() {
        const VIEW: ViewDef = ViewDef {
            name: "test_view",
            description: "",
            columns: &[
                col("machine_id", ColumnType::Text),
                col("day", ColumnType::Date),
                col("revenue", ColumnType::Money),
                col("units", ColumnType::Int),
                col("sold_out", ColumnType::Bool),
            ],
        };
        let view = &VIEW;
        let row = Row::from([
            Value::text("mach_00007"),
            Value::Date(20_000),
            Value::Money(vendflow_protocol::Cents(1_250)),
            Value::Int(3),
            Value::Bool(true),
        ]);
        let named = view.named(&row);
        assert_eq!(named.text("machine_id").as_deref(), Some("mach_00007"));
        assert_eq!(named.date("day"), Some(20_000));
        assert_eq!(named.cents("revenue"), Some(1_250));
        assert_eq!(named.int("units"), Some(3));
        assert!(named.flag("sold_out"));
        // A column of another type reads as absent, not as a wrong value.
        assert_eq!(named.int("machine_id"), None);
        assert!(!named.flag("units"));
        // A name the view lacks is a bug the tests catch.
        let missing = std::panic::catch_unwind(|| view.named(&row).get("no_such_column"));
        assert!(missing.is_err(), "debug builds panic on an unknown column");
    }

    #[test]
    fn a_window_row_is_a_quarter_of_its_values() {
        let row = Row::from([
            Value::text("mach_00042"),
            Value::Time(Timestamp(1_767_225_600_000)),
            Value::Int(10),
            Value::Reading(Milli(4_100)),
            Value::Float(OrdF64(4.05)),
            Value::Int(0),
            Value::Int(3),
            Value::Int(0),
            Value::Int(0),
            Value::Reading(Milli(1_200)),
            Value::Reading(Milli(-67_000)),
            Value::text("normal"),
            Value::text("normal"),
            Value::text("warning"),
            Value::text("normal"),
            Value::text("normal"),
            Value::text("warning"),
        ]);
        assert!(
            row.encoded_len() * 4 < 17 * size_of::<Value>(),
            "{}",
            row.encoded_len()
        );
        // In a checkpoint: its bytes and their length, not 17 tagged values.
        let as_values = bincode::serialized_size(&row.to_vec()).expect("values encode");
        let as_row = bincode::serialized_size(&row).expect("a row encodes");
        assert_eq!(as_row, 8 + row.encoded_len() as u64);
        assert!(as_row * 2 < as_values, "{as_row} against {as_values}");
    }

    /// Through bincode a row is its bytes and comes back equal (the same bytes, so the same
    /// hash); through JSON it is still its list of values; a list of rows too.
    #[test]
    fn a_row_comes_back_from_bincode_and_json_as_itself() {
        let mut rng = SmallRng::seed_from_u64(11);
        let rows: Vec<Row> = (0..2_000)
            .map(|_| {
                let len = rng.random_range(0..12);
                Row::from((0..len).map(|_| random_value(&mut rng)).collect::<Vec<_>>())
            })
            .collect();
        for row in &rows {
            let bytes = bincode::serialize(row).expect("a row encodes");
            let back: Row = bincode::deserialize(&bytes).expect("and decodes");
            assert_eq!(back.bytes(), row.bytes());
            let json = serde_json::to_value(row).expect("a row is JSON");
            assert_eq!(json, serde_json::to_value(row.to_vec()).expect("values"));
            // JSON has no NaN (it writes a null).
            if !row
                .iter()
                .any(|v| matches!(v, Value::Float(f) if f.0.is_nan()))
            {
                let back: Row = serde_json::from_value(json).expect("JSON decodes");
                assert_eq!(back, *row);
            }
        }
        let bytes = bincode::serialize(&rows).expect("rows encode");
        // Read from a stream, as a checkpoint's body is.
        let back: Vec<Row> = bincode::deserialize_from(&bytes[..]).expect("rows decode");
        assert_eq!(back, rows);
    }

    /// Bytes that are not exactly what the writer writes are refused, each with an error and
    /// none with a panic: a row is compared and hashed by its bytes, so a second spelling of
    /// the same cells would be a second row.
    #[test]
    fn bytes_that_are_not_a_rows_encoding_are_refused() {
        let encoded = |bytes: &[u8]| bincode::serialize(&bytes.to_vec()).expect("bytes encode");
        let good = Row::from([
            Value::text("mach_1"),
            Value::Int(300),
            Value::text("normal"),
        ]);
        assert!(bincode::deserialize::<Row>(&encoded(good.bytes())).is_ok());
        let refused: [(&str, Vec<u8>); 8] = [
            ("a word spelled as a text", {
                let mut b = vec![tag::TEXT, 6];
                b.extend_from_slice(b"normal");
                b
            }),
            ("a varint with a trailing zero", vec![tag::INT, 0x80, 0x00]),
            ("a varint past 64 bits", {
                let mut b = vec![tag::INT];
                b.extend_from_slice(&[0xff; 11]);
                b.push(0x01);
                b
            }),
            ("a text cut short", vec![tag::TEXT, 9, b'a', b'b']),
            ("a text that is not UTF-8", vec![tag::TEXT, 2, 0xc3, 0x28]),
            ("an unknown tag", vec![200]),
            ("a word index past the list", vec![tag::WORD, 250]),
            ("a float cut short", vec![tag::FLOAT, 1, 2, 3]),
        ];
        for (what, bytes) in refused {
            let error = bincode::deserialize::<Row>(&encoded(&bytes))
                .expect_err(what)
                .to_string();
            assert!(
                error.contains("not a view row's encoded cells"),
                "{what}: {error}"
            );
        }
        // Random bytes: never a panic; what is accepted writes back as itself.
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        rng.random_range(0..=tag::WORD)
                    } else {
                        rng.random()
                    }
                })
                .collect();
            if let Ok(row) = bincode::deserialize::<Row>(&encoded(&bytes)) {
                assert_eq!(row.bytes(), &bytes[..]);
                assert_eq!(Row::from(row.to_vec()), row);
            }
        }
    }
}

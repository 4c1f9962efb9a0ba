//! The archive's two row shapes as Arrow: raw events (one flat, typed row per event) and rejected
//! records.
//!
//! An event row keeps every field the wire carries, typed: money as `Decimal128(18, 2)`, readings
//! as `Decimal128(18, 3)`, instants as `Timestamp(ms, UTC)`; `payload` keeps the event's wire JSON
//! so that nothing is lost for kinds with fields of their own (command answers). `stream` and
//! `offset` say where in the input the row was read.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Decimal128Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use vendflow_dataflows::ErrorRecord;
use vendflow_dataflows::row::UTC;
use vendflow_protocol::{Event, EventKind, Timestamp};

fn time() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

pub static EVENT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let money = DataType::Decimal128(18, 2);
    let reading = DataType::Decimal128(18, 3);
    Arc::new(Schema::new(vec![
        Field::new("machine_id", DataType::Utf8, false),
        Field::new("event_time", time(), false),
        Field::new("type", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, true),
        Field::new("slot_number", DataType::Int64, true),
        Field::new("product_id", DataType::Utf8, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("amount", money, true),
        Field::new("payment_method", DataType::Utf8, true),
        Field::new("transaction_id", DataType::Utf8, true),
        Field::new("temperature", reading.clone(), true),
        Field::new("door_status", DataType::Utf8, true),
        Field::new("payment_module_status", DataType::Utf8, true),
        Field::new("network_signal", reading.clone(), true),
        Field::new("motor_current", reading, true),
        Field::new("error_code", DataType::Utf8, true),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, false),
        Field::new("received_at", time(), false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("offset", DataType::Int64, false),
    ]))
});

pub static REJECTED_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("received_at", time(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("offset", DataType::Int64, false),
    ]))
});

/// An event as read, with where it was read.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub event: Event,
    pub received_at: Timestamp,
    pub offset: i64,
}

/// A rejected record as read, with where it was read.
#[derive(Clone, Debug)]
pub struct RejectedRow {
    pub record: ErrorRecord,
    pub offset: i64,
}

fn decimal(scale: i8) -> Decimal128Builder {
    Decimal128Builder::new().with_data_type(DataType::Decimal128(18, scale))
}

/// The rows of one stream as a batch of [`EVENT_SCHEMA`].
pub fn events_batch(stream: &str, rows: &[&EventRow]) -> Result<RecordBatch, ArrowError> {
    let mut machine = StringBuilder::new();
    let mut at = TimestampMillisecondBuilder::new().with_timezone(UTC);
    let mut kind = StringBuilder::new();
    let mut seq = UInt64Builder::new();
    let mut slot = Int64Builder::new();
    let mut product = StringBuilder::new();
    let mut quantity = Int64Builder::new();
    let mut amount = decimal(2);
    let mut payment = StringBuilder::new();
    let mut transaction = StringBuilder::new();
    let mut temperature = decimal(3);
    let mut door = StringBuilder::new();
    let mut module = StringBuilder::new();
    let mut signal = decimal(3);
    let mut motor = decimal(3);
    let mut code = StringBuilder::new();
    let mut message = StringBuilder::new();
    let mut payload = StringBuilder::new();
    let mut received = TimestampMillisecondBuilder::new().with_timezone(UTC);
    let mut streams = StringBuilder::new();
    let mut offset = Int64Builder::new();
    for row in rows {
        let e = &row.event;
        machine.append_value(e.machine_id.as_str());
        at.append_value(e.timestamp.0);
        kind.append_value(e.kind.type_name());
        seq.append_option(e.seq);
        let (mut s, mut p, mut q) = (None, None, None);
        let (mut a, mut pm, mut tx) = (None, None, None);
        let (mut t, mut d, mut m, mut n, mut c) = (None, None, None, None, None);
        let (mut ec, mut em) = (None, None);
        match &e.kind {
            EventKind::Sale(sale) => {
                s = Some(i64::from(sale.slot_number));
                p = Some(sale.product_id.as_str());
                q = Some(i64::from(sale.quantity));
                a = Some(i128::from(sale.amount.0));
                pm = Some(sale.payment_method.as_str());
                tx = Some(sale.transaction_id.as_str());
            }
            EventKind::Restock(r) => {
                s = Some(i64::from(r.slot_number));
                p = r.product_id.as_deref();
                q = Some(i64::from(r.quantity));
            }
            EventKind::Heartbeat(h) => {
                t = h.temperature.map(|v| i128::from(v.0));
                d = h.door_status.map(|v| v.as_str());
                m = h.payment_module_status.as_deref();
                n = h.network_signal.map(|v| i128::from(v.0));
                c = h.motor_current.map(|v| i128::from(v.0));
            }
            EventKind::Door(status) => d = Some(status.as_str()),
            EventKind::Error(err) => {
                ec = Some(err.code.as_str());
                em = Some(err.message.as_str());
            }
            EventKind::Settlement(st) => {
                a = Some(i128::from(st.amount.0));
                tx = Some(st.transaction_id.as_str());
            }
            EventKind::Refund(r) => {
                s = r.slot_number.map(i64::from);
                q = Some(i64::from(r.quantity));
                a = Some(i128::from(r.amount.0));
                tx = Some(r.transaction_id.as_str());
                em = Some(r.reason.as_str());
            }
            // Its numbers are in the payload column.
            EventKind::Dropped(d) => em = Some(d.reason.as_str()),
            EventKind::CommandAck(_) | EventKind::Dex(_) => {}
        }
        slot.append_option(s);
        product.append_option(p);
        quantity.append_option(q);
        amount.append_option(a);
        payment.append_option(pm);
        transaction.append_option(tx);
        temperature.append_option(t);
        door.append_option(d);
        module.append_option(m);
        signal.append_option(n);
        motor.append_option(c);
        code.append_option(ec);
        message.append_option(em);
        payload.append_value(e.body_json().to_string());
        received.append_value(row.received_at.0);
        streams.append_value(stream);
        offset.append_value(row.offset);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(machine.finish()),
        Arc::new(at.finish()),
        Arc::new(kind.finish()),
        Arc::new(seq.finish()),
        Arc::new(slot.finish()),
        Arc::new(product.finish()),
        Arc::new(quantity.finish()),
        Arc::new(amount.finish()),
        Arc::new(payment.finish()),
        Arc::new(transaction.finish()),
        Arc::new(temperature.finish()),
        Arc::new(door.finish()),
        Arc::new(module.finish()),
        Arc::new(signal.finish()),
        Arc::new(motor.finish()),
        Arc::new(code.finish()),
        Arc::new(message.finish()),
        Arc::new(payload.finish()),
        Arc::new(received.finish()),
        Arc::new(streams.finish()),
        Arc::new(offset.finish()),
    ];
    RecordBatch::try_new(EVENT_SCHEMA.clone(), columns)
}

/// The rejected records of one stream as a batch of [`REJECTED_SCHEMA`].
pub fn rejected_batch(stream: &str, rows: &[&RejectedRow]) -> Result<RecordBatch, ArrowError> {
    let mut received = TimestampMillisecondBuilder::new().with_timezone(UTC);
    let mut source = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut message = StringBuilder::new();
    let mut raw = StringBuilder::new();
    let mut streams = StringBuilder::new();
    let mut offset = Int64Builder::new();
    for row in rows {
        let r = &row.record;
        received.append_value(r.received_at.0);
        source.append_value(&r.source);
        kind.append_value(&r.kind);
        message.append_value(&r.message);
        raw.append_value(&r.raw);
        streams.append_value(stream);
        offset.append_value(row.offset);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(received.finish()),
        Arc::new(source.finish()),
        Arc::new(kind.finish()),
        Arc::new(message.finish()),
        Arc::new(raw.finish()),
        Arc::new(streams.finish()),
        Arc::new(offset.finish()),
    ];
    RecordBatch::try_new(REJECTED_SCHEMA.clone(), columns)
}

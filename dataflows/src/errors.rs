//! `errors`, `error_counts` and `too_late`: nothing disappears without a trace.
//!
//! ```sql
//! -- errors: each refused record for `error_retention_ms`, with its reason and raw bytes
//! SELECT received_at, source, kind, message, raw FROM refused_records
//! -- error_counts: all time
//! SELECT source, kind, count(*) FROM refused_records GROUP BY 1, 2
//! -- too_late: events that arrived after the horizon of a view they belong to
//! SELECT view, count(*) FROM late_events GROUP BY 1
//! ```
//! A record that fails to decode is still data: it arrives here as an [`ErrorRecord`] (the
//! source decoded it and split the result), is counted, and stays visible for a day so that whoever
//! sent it can be told what was wrong.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::{DecodeError, Timestamp};

use crate::config::Config;
use crate::operators::{Temporal, Time};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col};

pub const ERRORS: ViewDef = ViewDef {
    name: "errors",
    description: "records refused in the last day: when, from where, why, and the raw bytes",
    columns: &[
        col("received_at", Time),
        col("source", Text),
        col("kind", Text),
        col("message", Text),
        col("raw", Text),
    ],
};
pub const ERROR_COUNTS: ViewDef = ViewDef {
    name: "error_counts",
    description: "refused records per source and kind, all time",
    columns: &[col("source", Text), col("kind", Text), col("records", Int)],
};
pub const TOO_LATE: ViewDef = ViewDef {
    name: "too_late",
    description: "events that arrived after the horizon of a view they belong to, per view",
    columns: &[col("view", Text), col("events", Int)],
};

/// `sales 12, anomaly_windows 3`: the `too_late` view of `snapshot` in a line (empty when no
/// event arrived too late).
pub fn too_late_summary(store: &crate::ViewStore) -> String {
    store
        .sorted_rows(TOO_LATE.name)
        .map(|(_, rows)| {
            rows.iter()
                .map(|r| {
                    let n = TOO_LATE.named(r);
                    format!(
                        "{} {}",
                        n.text("view").unwrap_or_default(),
                        n.int("events").unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Raw bytes kept per refused record; the rest is cut (and says so).
const RAW_LIMIT: usize = 4096;

/// A refused record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub received_at: Timestamp,
    /// Where it came from: `replay:FILE:LINE`, `mqtt:TOPIC`, …
    pub source: String,
    pub kind: String,
    pub message: String,
    pub raw: String,
}

impl ErrorRecord {
    pub fn new(
        received_at: Timestamp,
        source: impl Into<String>,
        error: &DecodeError,
        raw: &[u8],
    ) -> Self {
        let mut text = String::from_utf8_lossy(&raw[..raw.len().min(RAW_LIMIT)]).into_owned();
        if raw.len() > RAW_LIMIT {
            text.push_str(&format!("… ({} bytes in all)", raw.len()));
        }
        ErrorRecord {
            received_at,
            source: source.into(),
            kind: error.kind.as_str().to_owned(),
            message: error.message.clone(),
            raw: text,
        }
    }

    /// The source without its position (`replay:file.jsonl:17` → `replay:file.jsonl`,
    /// `kafka:machine-telemetry/0@812` → `kafka:machine-telemetry/0`).
    pub fn source_name(&self) -> &str {
        for separator in [':', '@'] {
            if let Some((name, pos)) = self.source.rsplit_once(separator)
                && !pos.is_empty()
                && pos.bytes().all(|b| b.is_ascii_digit())
            {
                return name;
            }
        }
        &self.source
    }
}

pub struct Errors<'s> {
    pub recent: VecCollection<'s, Time, ErrorRecord>,
    pub counts: VecCollection<'s, Time, ((String, String), isize)>,
    pub too_late: VecCollection<'s, Time, (String, isize)>,
}

pub fn render<'s>(
    errors: VecCollection<'s, Time, ErrorRecord>,
    too_late: VecCollection<'s, Time, String>,
    config: &Config,
) -> Errors<'s> {
    let retention = config.error_retention_ms;
    let counts = crate::fold::count_total(
        errors
            .clone()
            .map(|e| (e.source_name().to_owned(), e.kind.clone())),
        "Errors: counts",
    );
    let recent = errors
        .retain_between(move |e: &ErrorRecord| (Time::EPOCH, e.received_at + retention))
        .0;
    Errors {
        recent,
        counts,
        too_late: crate::fold::count_total(too_late, "Errors: too late"),
    }
}

pub fn row(e: ErrorRecord) -> Row {
    Row::from([
        Value::Time(e.received_at),
        Value::text(e.source),
        Value::text(e.kind),
        Value::text(e.message),
        Value::text(e.raw),
    ])
}

pub fn count_row(((source, kind), n): ((String, String), isize)) -> Row {
    Row::from([Value::text(source), Value::text(kind), Value::Int(n as i64)])
}

pub fn too_late_row((view, n): (String, isize)) -> Row {
    Row::from([Value::text(view), Value::Int(n as i64)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_a_source_without_its_position() {
        let e = |source: &str| ErrorRecord {
            received_at: Timestamp(0),
            source: source.into(),
            kind: "syntax".into(),
            message: String::new(),
            raw: String::new(),
        };
        assert_eq!(e("replay:a.jsonl:17").source_name(), "replay:a.jsonl");
        assert_eq!(
            e("kafka:machine-telemetry/0@812").source_name(),
            "kafka:machine-telemetry/0"
        );
        assert_eq!(
            e("mqtt:machines/mach_00001/telemetry").source_name(),
            "mqtt:machines/mach_00001/telemetry"
        );
    }
    use crate::testing::{self, Scenario};
    use vendflow_protocol::decode::decode_line;

    #[test]
    fn refused_records_are_kept_and_counted() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        for (i, raw) in [
            "{oops",
            r#"{"machineId":"m1","type":"warp","timestamp":1700000000000}"#,
        ]
        .iter()
        .enumerate()
        {
            let err = decode_line(raw.as_bytes())
                .pop()
                .and_then(Result::err)
                .unwrap_or_else(|| panic!("{raw} decoded"));
            scenario.errors.push((
                Timestamp(t),
                ErrorRecord::new(Timestamp(t), format!("test:{i}"), &err, raw.as_bytes()),
            ));
        }
        scenario.deliver(t + 10, testing::heartbeat("m1", t + 10, 4_000));
        let views = testing::run(&scenario);
        let errors = testing::rows(&views, "errors");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].cell(2), Value::text("syntax"));
        assert_eq!(errors[1].cell(2), Value::text("unknown_type"));
        assert_eq!(errors[0].cell(4), Value::text("{oops"));
        let counts = testing::rows(&views, "error_counts");
        assert_eq!(
            counts,
            vec![
                Row::from([Value::text("test"), Value::text("syntax"), Value::Int(1)]),
                Row::from([
                    Value::text("test"),
                    Value::text("unknown_type"),
                    Value::Int(1)
                ]),
            ]
        );
    }

    #[test]
    fn too_late_counts_match_the_oracle_horizons() {
        let mut saw_late = false;
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let (_, _, late) = crate::sales::oracle(&scenario.deliveries, &scenario.config);
            let got = testing::rows(views, "too_late");
            let dedup = got
                .iter()
                .find(|r| r.cell(0) == Value::text("sales"))
                .map(|r| r.cell(1));
            let expected = (!late.is_empty()).then_some(Value::Int(late.len() as i64));
            assert_eq!(dedup, expected, "seed {seed}");
            saw_late |= !late.is_empty();
            assert!(
                got.iter()
                    .any(|r| r.cell(0) == Value::text("anomaly_windows")),
                "seed {seed}: late probes"
            );
        }
        assert!(
            saw_late,
            "some seed delivers a sale after its dedup horizon"
        );
    }
}

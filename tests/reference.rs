//! `vendflow replay` on the shared benchmark workload equals DuckDB's batch answer, row for row:
//! revenue per machine over distinct transactions, sales per (machine, slot), and the maximum
//! temperature per machine and 5-minute window (`benches/workload/reference.py`).
//!
//! The workload here is 60,000 events (seconds to run); `VENDFLOW_REFERENCE_EVENTS=1000000`
//! runs the full size.

use std::collections::BTreeMap;
use std::fmt::Debug;

use anyhow::Context;
use vendflow_tests::{Table, fixed, python_with_duckdb, run_python, vendflow, workload_scripts};

fn diff<K: Ord + Debug, V: PartialEq + Debug>(
    what: &str,
    ours: &BTreeMap<K, V>,
    reference: &BTreeMap<K, V>,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (k, v) in reference {
        match ours.get(k) {
            Some(o) if o == v => {}
            other => problems.push(format!("{k:?}: duckdb {v:?}, vendflow {other:?}")),
        }
    }
    for k in ours.keys().filter(|k| !reference.contains_key(k)) {
        problems.push(format!("{k:?}: only in vendflow"));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{what}: {} of {} rows differ, e.g.\n  {}",
        problems.len(),
        reference.len(),
        problems
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    anyhow::ensure!(
        !reference.is_empty(),
        "{what}: the reference is empty; nothing was compared"
    );
    Ok(())
}

fn epoch_ms(text: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text} is not RFC 3339"))?
        .timestamp_millis())
}

fn compare() -> anyhow::Result<()> {
    let Some(python) = python_with_duckdb()? else {
        return Ok(());
    };
    let events = std::env::var("VENDFLOW_REFERENCE_EVENTS").unwrap_or_else(|_| "60000".into());
    let dir = tempfile::tempdir()?;
    let workload = dir.path().join("workload.jsonl");
    let (reference, ours) = (dir.path().join("reference"), dir.path().join("ours"));
    let bench = workload_scripts();
    run_python(
        &python,
        &[&bench.join("gen_workload.py"), events.as_ref(), &workload],
    )?;
    run_python(
        &python,
        &[&bench.join("reference.py"), &workload, &reference],
    )?;
    let out = vendflow(&[
        "replay",
        &workload.to_string_lossy(),
        "--out",
        &ours.to_string_lossy(),
    ])?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    // Revenue per machine: the sum of its days.
    let mut revenue: BTreeMap<String, i64> = BTreeMap::new();
    for r in Table::read(&ours.join("revenue_machine_daily.csv"))?.records() {
        *revenue.entry(r["machine_id"].to_owned()).or_default() += fixed(r["revenue"], 2)?;
    }
    let mut expected = BTreeMap::new();
    for r in Table::read(&reference.join("revenue.csv"))?.records() {
        expected.insert(r["machineId"].to_owned(), fixed(r["revenue"], 2)?);
    }
    diff("revenue per machine", &revenue, &expected)?;

    let mut slots = BTreeMap::new();
    for r in Table::read(&ours.join("slot_sales.csv"))?.records() {
        slots.insert(
            (r["machine_id"].to_owned(), r["slot_number"].parse::<u32>()?),
            r["lines"].parse::<i64>()?,
        );
    }
    let mut expected = BTreeMap::new();
    for r in Table::read(&reference.join("slot_sales.csv"))?.records() {
        expected.insert(
            (r["machineId"].to_owned(), r["slotNumber"].parse::<u32>()?),
            r["sales"].parse::<i64>()?,
        );
    }
    diff("sales per machine and slot", &slots, &expected)?;

    let mut temps = BTreeMap::new();
    for r in Table::read(&ours.join("anomaly_windows.csv"))?.records() {
        if !r["max_temperature"].is_empty() {
            temps.insert(
                (r["machine_id"].to_owned(), epoch_ms(r["window_start"])?),
                fixed(r["max_temperature"], 3)?,
            );
        }
    }
    let mut expected = BTreeMap::new();
    for r in Table::read(&reference.join("maxtemp.csv"))?.records() {
        expected.insert(
            (r["machineId"].to_owned(), r["window_start"].parse::<i64>()?),
            fixed(r["max_temperature"], 3)?,
        );
    }
    diff("max temperature per machine and window", &temps, &expected)
}

#[test]
fn replay_of_the_benchmark_workload_equals_duckdb() {
    compare().unwrap_or_else(|e| panic!("{e:#}"));
}

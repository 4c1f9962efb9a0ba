//! Forecasts that prove themselves (issue 19): `vendflow forecast backtest` on a history with
//! location-type weekday patterns. Its naive row equals DuckDB's independent scoring of the same
//! method; the engine's model is 20 % under it overall and far more on offices; no method beats the
//! generator's own expected demand by more than chance (no look-ahead); bad lines are counted
//! and shown, never fatal.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;
use vendflow_tests::{
    Table, python_with_duckdb, run_python, vendflow, vendflow_bin, workload_scripts,
};

fn wape(report: &Value, method: &str) -> anyhow::Result<f64> {
    report["scores"]
        .as_array()
        .context("no scores")?
        .iter()
        .find(|s| s["method"] == method)
        .and_then(|s| s["wape"].as_f64())
        .with_context(|| format!("no WAPE for {method}"))
}

fn location_wape(report: &Value, kind: &str, method: &str) -> anyhow::Result<f64> {
    let group = report["by_location"]
        .as_array()
        .context("no by_location")?
        .iter()
        .find(|l| l["location_type"] == kind)
        .with_context(|| format!("no {kind} machines"))?;
    wape(group, method)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn the_backtest_beats_the_naive_average_and_scores_it_as_duckdb_does() -> anyhow::Result<()> {
    let Some(python) = python_with_duckdb()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let scripts = workload_scripts();
    run_python(
        &python,
        &[
            &scripts.join("gen_history.py"),
            &data,
            Path::new("--machines"),
            Path::new("30"),
            Path::new("--days"),
            Path::new("140"),
            Path::new("--seed"),
            Path::new("11"),
            Path::new("--locations"),
        ],
    )?;
    let history = data.join("history.jsonl");
    let per_slot = dir.path().join("slots.csv");
    let out = vendflow(&[
        "forecast",
        "backtest",
        &history.to_string_lossy(),
        "--registry",
        &data.join("registry.jsonl").to_string_lossy(),
        "--holidays",
        &data.join("holidays.txt").to_string_lossy(),
        "--per-slot",
        &per_slot.to_string_lossy(),
        "--json",
    ])?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let reference = run_python(
        &python,
        &[
            &scripts.join("forecast_reference.py"),
            &history,
            Path::new("--expected"),
            &data.join("expected.csv"),
        ],
    )?;
    let reference: Value = serde_json::from_slice(&reference.stdout)?;
    eprintln!("backtest: {report}\nreference: {reference}");

    // The naive method, scored by DuckDB from the raw file: the same slot-days, units and errors.
    let naive = report["scores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["method"] == "naive"))
        .context("no naive row")?;
    anyhow::ensure!(report["slot_days"] == reference["naive"]["slot_days"]);
    anyhow::ensure!(report["units"].as_f64() == reference["naive"]["units"].as_f64());
    for metric in ["wape", "mape"] {
        let (ours, duck) = (naive[metric].as_f64(), reference["naive"][metric].as_f64());
        anyhow::ensure!(
            matches!((ours, duck), (Some(a), Some(b)) if close(a, b)),
            "naive {metric}: backtest {ours:?}, DuckDB {duck:?}"
        );
    }
    anyhow::ensure!(
        report["read"]["duplicates"].as_u64() > Some(0) && report["read"]["errors"] == 0,
        "re-deliveries are counted once and nothing failed: {}",
        report["read"]
    );

    // The engine's model (what `stockout_forecast` runs): its machine's weekday index, its own
    // holidays and the median point take it at least 20 % under the naive average's error
    // (the issue's goal), most of all where the weekdays differ most (offices); the pooled
    // index alone (its model before) already lifts it well clear.
    let naive_wape = wape(&report, "naive")?;
    let engine = wape(&report, "engine")?;
    anyhow::ensure!(
        engine <= 0.80 * naive_wape,
        "engine WAPE {engine} against naive {naive_wape}"
    );
    let pooled = wape(&report, "machine_weekday")?;
    anyhow::ensure!(pooled <= 0.88 * naive_wape && engine < pooled);
    anyhow::ensure!(wape(&report, "slot_weekday")? > pooled);
    let office = location_wape(&report, "office", "engine")?;
    let office_naive = location_wape(&report, "office", "naive")?;
    anyhow::ensure!(
        office <= 0.8 * office_naive,
        "office WAPE {office} against naive {office_naive}"
    );
    // No method knows tomorrow: none beats the generator's own expected demand (the mean it
    // draws from) by more than chance; the mean's floor is the limit of a mean forecast.
    let floor = reference["floor"]["wape"].as_f64().context("no floor")?;
    for s in report["scores"].as_array().context("no scores")? {
        let w = s["wape"].as_f64().context("no WAPE")?;
        anyhow::ensure!(
            w >= 0.95 * floor,
            "{} WAPE {w} under the floor {floor}",
            s["method"]
        );
    }

    // Each slot's scores, per method.
    let slots = Table::read(&per_slot)?;
    slots.col("wape_naive")?;
    slots.col("mape_machine_weekday")?;
    anyhow::ensure!(
        Some(slots.rows.len() as u64) == report["slots"].as_u64(),
        "{} per-slot rows for {} slots",
        slots.rows.len(),
        report["slots"]
    );

    // The table a person reads, with the generator's holiday calendar: one more step.
    let text = vendflow(&[
        "forecast",
        "backtest",
        &history.to_string_lossy(),
        "--registry",
        &data.join("registry.jsonl").to_string_lossy(),
        "--holidays",
        &data.join("holidays.txt").to_string_lossy(),
    ])?;
    let text = String::from_utf8(text.stdout)?;
    for expected in [
        "WAPE vs naive",
        "naive: 30-day average",
        "machine weekday index",
        "engine (own holidays, median)",
        "office",
        "+ holidays",
    ] {
        anyhow::ensure!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    Ok(())
}

#[test]
fn bad_lines_are_counted_and_shown_and_an_unusable_history_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let history = dir.path().join("history.jsonl");
    // One machine selling 3 of coil 101 a day for 20 days (2024-01-01 on), two broken lines.
    let mut lines = Vec::new();
    for day in 0..20i64 {
        let ts = 1_704_067_200_000 + day * 86_400_000 + 3_600_000;
        lines.push(format!(
            r#"{{"machineId":"VM-001","type":"sale","timestamp":{ts},"payload":{{"slotNumber":101,"productId":"P101","quantity":3,"amount":4.50,"paymentMethod":"card","transactionId":"t{day}"}}}}"#
        ));
    }
    lines.insert(5, "not json at all".into());
    lines.insert(
        9,
        r#"{"machineId":"VM-001","type":"sale","timestamp":1704067200000}"#.into(),
    );
    std::fs::write(&history, lines.join("\n"))?;
    let out = vendflow(&[
        "forecast",
        "backtest",
        &history.to_string_lossy(),
        "--warmup-days",
        "7",
        "--json",
    ])?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(report["read"]["errors"] == 2, "{}", report["read"]);
    let first = report["read"]["first_errors"].to_string();
    anyhow::ensure!(
        first.contains("line 6") && first.contains("line 10"),
        "{first}"
    );
    // A slot that sells 3 every day: every method forecasts 3, without error, but the slot's
    // own weekday profile (the engine's former model), which counts each weekday as a seventh
    // of the observed days and so is off while they are not whole weeks.
    anyhow::ensure!(report["slot_days"] == 13, "{}", report["slot_days"]);
    for s in report["scores"].as_array().context("no scores")? {
        if s["method"] != "slot_weekday" {
            anyhow::ensure!(s["wape"].as_f64().is_some_and(|w| w < 1e-9), "{s}");
        }
    }

    // Nothing to score: a clear message and a failing exit, no panic.
    let fails = |args: &[&str], says: &str| -> anyhow::Result<()> {
        let out = Command::new(vendflow_bin()?).args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            !out.status.success() && stderr.contains(says) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        Ok(())
    };
    let path = history.to_string_lossy().into_owned();
    fails(&["forecast", "backtest", &path], "warm-up days")?;
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "")?;
    fails(
        &["forecast", "backtest", &empty.to_string_lossy()],
        "no events",
    )?;
    // A bad line of a side file (`--registry`, `--holidays`) is named in the message.
    let bad_file = |option: &str, name: &str, text: &str, says: &str| -> anyhow::Result<()> {
        let file = dir.path().join(name);
        std::fs::write(&file, text)?;
        fails(
            &[
                "forecast",
                "backtest",
                &path,
                "--warmup-days",
                "7",
                option,
                &file.to_string_lossy(),
            ],
            says,
        )
    };
    bad_file(
        "--registry",
        "registry.jsonl",
        "{\"type\":\"spaceship\"}\n",
        "line 1",
    )?;
    bad_file(
        "--holidays",
        "holidays.txt",
        "# two holidays\n2024-01-01\n\n2024-13-45 # no such day\n",
        "line 4: not a holiday",
    )?;
    Ok(())
}

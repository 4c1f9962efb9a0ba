//! The forecast bench: the demand backtest on a year of a 200-machine fleet with location-type
//! weekday patterns, next to the noise floor.
//!
//! `benches/workload/gen_history.py --locations` writes the history (offices quiet at weekends
//! and on public holidays, airports busiest on Mondays and Fridays, volumes at the fleet
//! simulator's rates, product swaps, summer drinks, trends), its registry, its holiday calendar
//! and the demand it drew from. `vendflow_forecast` scores every method day by day (as
//! `vendflow forecast backtest --holidays` does); `benches/workload/forecast_reference.py`
//! scores the naive method again with DuckDB (they must agree) and the generator's own expected
//! demand: no forecast of the mean does better than that, so it is the most any method can gain
//! over the naive average.
//!
//! `cargo bench -p vendflow-benches --bench forecast -- [--machines N] [--days N] [--seed N]`
//! (needs the test venv: `tests/install.sh`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use vendflow_benches::arg;
use vendflow_forecast::{Method, Options, backtest, history};

fn python(python: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(python)
        .args(args)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn main() -> anyhow::Result<()> {
    let machines = arg("--machines", 200)?;
    let days = arg("--days", 365)?;
    let seed = arg("--seed", 7)?;
    let Some(py) = vendflow_tests::python_with(&["duckdb"])? else {
        bail!("no Python with duckdb: run tests/install.sh or set VENDFLOW_PYTHON");
    };
    let workload = Path::new(env!("CARGO_MANIFEST_DIR")).join("workload");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("history");
    let data_s = data.to_string_lossy().into_owned();
    let started = Instant::now();
    python(
        &py,
        &[
            &workload.join("gen_history.py").to_string_lossy(),
            &data_s,
            "--machines",
            &machines.to_string(),
            "--days",
            &days.to_string(),
            "--seed",
            &seed.to_string(),
            "--locations",
        ],
    )?;
    eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let history = history::read(
        &data.join("history.jsonl"),
        Some(&data.join("registry.jsonl")),
    )?;
    let read_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let holidays = vendflow_forecast::read_holidays(&data.join("holidays.txt"))?;
    let report = backtest::run(
        &history,
        &Options {
            holidays,
            ..Options::default()
        },
    );
    let run_secs = started.elapsed().as_secs_f64();
    println!("{}", report.table());

    let reference: serde_json::Value = serde_json::from_str(&python(
        &py,
        &[
            &workload.join("forecast_reference.py").to_string_lossy(),
            &data.join("history.jsonl").to_string_lossy(),
            "--expected",
            &data.join("expected.csv").to_string_lossy(),
        ],
    )?)?;
    let wape = |m: Method| {
        report
            .scores
            .iter()
            .find(|s| s.method == m)
            .and_then(|s| s.wape)
    };
    let (Some(naive), Some(engine), Some(floor), Some(duck)) = (
        wape(Method::Naive),
        wape(Method::MachineWeekday),
        reference["floor"]["wape"].as_f64(),
        reference["naive"]["wape"].as_f64(),
    ) else {
        bail!("missing scores: {reference}");
    };
    let gain = |w: f64| (1.0 - w / naive) * 100.0;
    println!(
        "DuckDB's naive WAPE {:.4} % (the backtest's {:.4} %): {}",
        duck * 100.0,
        naive * 100.0,
        if (duck - naive).abs() < 1e-9 {
            "equal"
        } else {
            "DIFFERENT"
        }
    );
    println!(
        "Noise floor: the generator's expected demand scores WAPE {:.1} %, {:.1} % under naive: \
         the most any forecast of the mean can gain here.",
        floor * 100.0,
        gain(floor)
    );
    println!(
        "The engine's model: WAPE {:.1} %, {:.1} % under naive: {:.0} % of what is attainable.",
        engine * 100.0,
        gain(engine),
        gain(engine) / gain(floor) * 100.0
    );
    for m in [Method::Recency, Method::Median, Method::Holidays] {
        if let Some(w) = wape(m) {
            println!(
                "{}: WAPE {:.1} %, {:.1} % under naive.",
                m.name(),
                w * 100.0,
                gain(w)
            );
        }
    }
    println!(
        "Read {} lines in {read_secs:.1} s; scored {} slot-days × {} methods in {run_secs:.1} s.",
        history.stats.lines,
        report.slot_days,
        report.scores.len()
    );
    Ok(())
}

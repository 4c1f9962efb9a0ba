//! vendflow's demand forecast and the backtest that proves it.
//!
//! - [`model`]: the forecasting methods; [`model::demand`] is the one the engine's
//!   `stockout_forecast` (and so `restock_needed` and the restock routes) runs.
//! - [`history`]: a sales history (JSON Lines telemetry, any order, re-deliveries counted once)
//!   as daily series per slot and machine.
//! - [`backtest`]: day by day, every method forecasts each slot's next-day units from the days
//!   before and is scored against what sold (WAPE, MAPE, bias; overall, per slot, per location
//!   type).
//!
//! `vendflow forecast backtest HISTORY.jsonl [--registry registry.jsonl]` prints the comparison.

use std::path::PathBuf;

pub mod backtest;
pub mod history;
pub mod model;

pub use backtest::{Options, Report};
pub use model::{Demand, Method, demand, empty_threshold, weekday_index, weekday_rates};

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{file} line {line}: not a registry record: {message}")]
    Registry {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file} line {line}: not a holiday: {message}")]
    Holidays {
        file: String,
        line: usize,
        message: String,
    },
    #[error("the history has no events")]
    Empty,
    #[error(
        "the history spans {days} days (more than {} between its first and last event): is a timestamp wrong?",
        history::MAX_DAYS
    )]
    Span { days: usize },
    #[error(
        "the history has {days} days, not more than the {warmup} warm-up days: nothing to score (lower --warmup-days)"
    )]
    TooShort { days: usize, warmup: usize },
    #[error("{0}: {1}")]
    Write(String, #[source] csv::Error),
    #[error("the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `vendflow forecast …`
#[derive(clap::Subcommand, Debug)]
pub enum ForecastCommand {
    /// Score the demand forecast on a sales history: day by day, every method forecasts each
    /// slot's units for the next day from the days before, and is scored against what sold.
    ///
    /// Prints WAPE (Σ|forecast − actual| / Σ actual), MAPE (over the slot-days that sold), bias
    /// and the median of the slots' own scores, for the naive 30-day average, a slot's own
    /// weekday profile, the engine's model (the slot's level times its machine's weekday index),
    /// and the steps weighed on top of it (location type, recency weighting, trend, the median
    /// point, and a holiday calendar with `--holidays`), overall and per location type. The history is vendflow's JSON Lines telemetry (`vendflow import csv`
    /// turns an operator's export into it), in any order; each sale line counts once.
    Backtest(BacktestArgs),
}

#[derive(clap::Args, Debug)]
pub struct BacktestArgs {
    /// The sales history (JSON Lines telemetry).
    pub history: PathBuf,
    /// A registry (JSON Lines: locations and machines) for each machine's location type: scores
    /// per type, and the location-type step.
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Days from the history's first day before the first scored day (every method has its
    /// whole window from then on).
    #[arg(long, default_value_t = model::LONG_DAYS)]
    pub warmup_days: usize,
    /// A holiday calendar: one date (YYYY-MM-DD) a line, `#` starts a comment. Adds the
    /// holidays step: holidays are left out of the level and the weekday index, and a holiday's
    /// forecast is scaled by what the holidays before it did to machines of the same location
    /// type.
    #[arg(long)]
    pub holidays: Option<PathBuf>,
    /// Also write each slot's scores, per method, to this CSV file.
    #[arg(long)]
    pub per_slot: Option<PathBuf>,
    /// Print the report as JSON rather than a table.
    #[arg(long)]
    pub json: bool,
}

/// A holiday calendar: the days (since the epoch, UTC) of its dates, one a line; blank lines
/// and `#` comments are skipped; a line that is not a date is an error naming it.
pub fn read_holidays(
    path: &std::path::Path,
) -> Result<std::collections::BTreeSet<i64>, ForecastError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ForecastError::Io(file.clone(), e))?;
    let mut days = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let date = line.split('#').next().unwrap_or("").trim();
        if date.is_empty() {
            continue;
        }
        let t = vendflow_protocol::Timestamp::parse_date(date).map_err(|e| {
            ForecastError::Holidays {
                file: file.clone(),
                line: i + 1,
                message: e.to_string(),
            }
        })?;
        days.insert(t.day());
    }
    Ok(days)
}

/// Runs `vendflow forecast backtest`: the report, as text (or JSON).
pub fn backtest_command(args: &BacktestArgs) -> Result<String, ForecastError> {
    let history = history::read(&args.history, args.registry.as_deref())?;
    if history.days <= args.warmup_days {
        return Err(ForecastError::TooShort {
            days: history.days,
            warmup: args.warmup_days,
        });
    }
    let holidays = match &args.holidays {
        Some(path) => read_holidays(path)?,
        None => Default::default(),
    };
    let report = backtest::run(
        &history,
        &Options {
            warmup_days: args.warmup_days,
            holidays,
            ..Options::default()
        },
    );
    if let Some(path) = &args.per_slot {
        let file = std::fs::File::create(path)
            .map_err(|e| ForecastError::Io(path.display().to_string(), e))?;
        report
            .write_per_slot(std::io::BufWriter::new(file))
            .map_err(|e| ForecastError::Write(path.display().to_string(), e))?;
    }
    if args.json {
        Ok(serde_json::to_string_pretty(&report)?)
    } else {
        Ok(report.table())
    }
}

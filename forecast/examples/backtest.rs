//! `vendflow forecast backtest` without the rest of the CLI (the forecast crate builds in a
//! minute in release, the whole binary in half an hour on a 2-core machine):
//! `cargo run --release -p vendflow-forecast --example backtest -- HISTORY [--registry FILE] [--holidays FILE] …`
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    backtest: vendflow_forecast::BacktestArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("{}", vendflow_forecast::backtest_command(&args.backtest)?);
    Ok(())
}

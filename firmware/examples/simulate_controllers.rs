//! Times the controller fleet simulation alone (`vendflow simulate` without the
//! CLI): `cargo run --release -p vendflow-firmware --example simulate_controllers -- MACHINES HOURS DIR`.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let machines: usize = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let hours: i64 = args.next().unwrap_or_else(|| "1".into()).parse()?;
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/simulated".into()));
    let options = vendflow_firmware::simulate::SimulateOptions {
        out,
        machines,
        hours,
        seed: 7,
        scenario: None,
        event_simulator: false,
        controllers: false,
        world: vendflow_firmware::controlled::WorldOptions::default(),
    };
    let started = std::time::Instant::now();
    let done = vendflow_firmware::simulate::write_files(&options)?;
    println!(
        "{machines} machines, {hours} h: {} events in {:.1} s",
        done.events,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! The routing bench: vendflow's restock planner against OR-Tools on the same stops.
//!
//! A fleet's restock list of 4,000 machines over 10 regions (one depot each, machines within
//! ~12 km of it, a third of them urgent) for 200 crews of at most 20 stops and an 8-hour shift.
//! vendflow plans it (`vendflow_routes::plan`, its default 30 s budget for the whole fleet); then
//! OR-Tools (`benches/workload/ortools_routes.py`: its routing solver, guided local search) solves
//! each region with the same integer metre matrix, driving times, service times, crews, stops per
//! crew and shift. Printed: per region and in all, metres driven, stops visited (urgent ones too),
//! seconds, and vendflow's metres over OR-Tools'.
//!
//! `cargo bench -p vendflow-benches --bench routes -- [--stops N] [--crews N] [--regions N]
//! [--seed N] [--secs N] [--ortools-secs N]` (needs the test venv: `tests/install.sh`).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vendflow_benches::arg;
use vendflow_routes::{Depot, Matrix, Need, Options, Shift, Stop, plan};

const HOUR: i64 = 3_600_000;

fn fleet(stops: usize, regions: usize, seed: u64) -> (Vec<Depot>, Vec<Stop>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let depots: Vec<Depot> = (0..regions)
        .map(|r| Depot {
            region: format!("region{r:02}"),
            lat: 40.3 + 0.25 * (r / 4) as f64,
            lng: -74.4 + 0.3 * (r % 4) as f64,
        })
        .collect();
    let stops = (0..stops)
        .map(|i| {
            let depot = &depots[i % regions];
            let needs = (1..=rng.random_range(1..8))
                .map(|slot| {
                    let capacity = rng.random_range(8..16);
                    Need {
                        slot_number: slot,
                        product_id: format!("product{:02}", rng.random_range(0..20)),
                        capacity,
                        units: rng.random_range(0..=capacity),
                        daily_demand: rng.random_range(0.5..10.0),
                    }
                })
                .collect();
            Stop {
                machine_id: format!("mach_{i:05}"),
                region: depot.region.clone(),
                lat: depot.lat + rng.random_range(-0.1..0.1),
                lng: depot.lng + rng.random_range(-0.12..0.12),
                hours_to_empty: if rng.random_bool(0.33) {
                    rng.random_range(0.0..12.0)
                } else {
                    rng.random_range(12.0..48.0)
                },
                needs,
            }
        })
        .collect();
    (depots, stops)
}

fn main() -> anyhow::Result<()> {
    let n = arg("--stops", 4000)? as usize;
    let regions = arg("--regions", 10)?.max(1) as usize;
    let options = Options {
        crews: arg("--crews", 200)? as usize,
        time_limit_secs: arg("--secs", 30)? as usize,
        ..Options::default()
    };
    let ortools_secs = arg("--ortools-secs", 10)?;
    let (depots, stops) = fleet(n, regions, arg("--seed", 1)?);
    let now = 20_000 * 24 * HOUR + 6 * HOUR;
    let shift = Shift::next(now, 8, &options);

    let started = Instant::now();
    let planned = plan(&depots, &stops, shift, &options)?;
    let took = started.elapsed().as_secs_f64();

    // The same problem for OR-Tools, region by region, with the numbers vendflow's solver used
    // (its own matrix; OR-Tools takes integers, so seconds are rounded up).
    let available = ((shift.end_ms(&options) - shift.departure_ms()) / 1000 - 1).max(0);
    let mut instance = Vec::new();
    for depot in &depots {
        let mine: Vec<&Stop> = stops.iter().filter(|s| s.region == depot.region).collect();
        let m = Matrix::of(depot, &mine, &shift, &options);
        let rows = |cells: &[f64], round: fn(f64) -> f64| -> Vec<Vec<i64>> {
            cells
                .chunks(m.n)
                .map(|row| row.iter().map(|&c| round(c) as i64).collect())
                .collect()
        };
        let distances = rows(&m.metres, f64::round);
        let durations = rows(&m.secs, f64::ceil);
        let service: Vec<i64> = m.service.iter().map(|s| s.ceil() as i64).collect();
        let urgent: Vec<bool> = std::iter::once(false)
            .chain(mine.iter().map(|s| s.urgent(&shift, &options)))
            .collect();
        instance.push(serde_json::json!({
            "region": depot.region,
            "distances": distances,
            "durations": durations,
            "service": service,
            "urgent": urgent,
            "crews": planned.crews.get(&depot.region).copied().unwrap_or(0),
            "stops_per_crew": options.stops_per_crew,
            "shift_secs": available,
        }));
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("instance.json");
    std::fs::write(
        &file,
        serde_json::json!({ "regions": instance }).to_string(),
    )?;
    let Some(python) = vendflow_tests::python_with(&["ortools"])? else {
        bail!("no Python with ortools: run tests/install.sh or set VENDFLOW_PYTHON");
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workload/ortools_routes.py");
    let started = Instant::now();
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(&file)
        .arg(ortools_secs.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let ortools_took = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "OR-Tools failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answers: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;

    let mut ours: BTreeMap<&str, (f64, usize, usize)> = BTreeMap::new();
    for r in &planned.routes {
        let e = ours.entry(r.region.as_str()).or_default();
        e.0 += r.distance_m;
        e.1 += r.visits.len();
        e.2 += r.visits.iter().filter(|v| v.urgent).count();
    }
    let urgent_total = stops.iter().filter(|s| s.urgent(&shift, &options)).count();
    println!(
        "{n} stops ({urgent_total} urgent) in {regions} regions, {} crews of at most {} stops, {} h shift",
        options.crews,
        options.stops_per_crew,
        options.shift_minutes / 60
    );
    println!(
        "{:<10} {:>6} {:>12} {:>8} {:>12} {:>8} {:>7}",
        "region", "crews", "vendflow km", "visits", "OR-Tools km", "visits", "ratio"
    );
    let (mut a_m, mut b_m, mut a_v, mut b_v, mut a_u, mut b_u) = (0.0, 0.0, 0, 0, 0, 0);
    for answer in &answers {
        let region = answer["region"].as_str().unwrap_or_default();
        let (m, v, u) = ours.get(region).copied().unwrap_or_default();
        let their_m = answer["metres"].as_f64().unwrap_or(f64::NAN);
        let their_v = answer["visited"].as_u64().unwrap_or(0) as usize;
        let their_u = answer["urgent_visited"].as_u64().unwrap_or(0) as usize;
        println!(
            "{region:<10} {:>6} {:>12.1} {:>8} {:>12.1} {:>8} {:>7.3}",
            planned.crews.get(region).copied().unwrap_or(0),
            m / 1000.0,
            v,
            their_m / 1000.0,
            their_v,
            m / their_m
        );
        (a_m, b_m, a_v, b_v, a_u, b_u) = (
            a_m + m,
            b_m + their_m,
            a_v + v,
            b_v + their_v,
            a_u + u,
            b_u + their_u,
        );
    }
    println!(
        "{:<10} {:>6} {:>12.1} {:>8} {:>12.1} {:>8} {:>7.3}",
        "all",
        planned.crews.values().sum::<usize>(),
        a_m / 1000.0,
        a_v,
        b_m / 1000.0,
        b_v,
        a_m / b_m
    );
    println!("urgent visited: vendflow {a_u} of {urgent_total}, OR-Tools {b_u} of {urgent_total}");
    println!(
        "time: vendflow {took:.1} s for the fleet; OR-Tools {ortools_took:.1} s ({ortools_secs} s a region)"
    );
    Ok(())
}

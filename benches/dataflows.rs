//! Criterion benchmarks, one per dataflow: each builds only that dataflow on one worker and
//! pushes one hour of a 500-machine simulated fleet through it (decoding excluded).
//!
//! `cargo bench -p vendflow-benches --bench dataflows`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use differential_dataflow::VecCollection;
use differential_dataflow::input::Input;
use timely::dataflow::operators::probe::Handle;
use vendflow_dataflows::{
    Config, FanOut, Time, anomaly_windows, inventory, liveness, revenue, sales,
};
use vendflow_protocol::{Event, RegistryRecord};

type Build = for<'s> fn(
    VecCollection<'s, Time, Event>,
    VecCollection<'s, Time, RegistryRecord>,
    &Config,
) -> Handle<Time>;

fn run(registry: &[RegistryRecord], events: &[(Time, Event)], build: Build) {
    let (registry, events) = (registry.to_vec(), events.to_vec());
    timely::execute_directly(move |worker| {
        let config = Config::default();
        let (mut ev, mut reg, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (ev, events) = scope.new_collection::<Event, isize>();
            let (reg, registry) = scope.new_collection::<RegistryRecord, isize>();
            (ev, reg, build(events, registry, &config))
        });
        for r in &registry {
            reg.insert(r.clone());
        }
        for (t, e) in &events {
            if *t > *ev.time() {
                ev.advance_to(*t);
                reg.advance_to(*t);
                ev.flush();
                reg.flush();
                worker.step();
            }
            ev.insert(e.clone());
        }
        let end = *ev.time() + 1;
        ev.advance_to(end);
        reg.advance_to(end);
        ev.flush();
        reg.flush();
        worker.step_while(|| probe.less_than(&end));
    });
}

/// An empty sale-line ledger in the temporary directory (one per dataflow built).
fn ledger() -> vendflow_dataflows::ledger::Ledger {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "vendflow-bench-ledger-{}-{}.redb",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    vendflow_dataflows::ledger::Ledger::create(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A store for the windows that leave memory (none do in this bench's span).
fn parked_windows(
    c: &Config,
) -> (
    vendflow_dataflows::parked::Parked,
    std::sync::Arc<anomaly_windows::ParkedCounts>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "vendflow-bench-windows-{}-{}.redb",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let store = vendflow_dataflows::parked::Parked::with_buckets(&path, c.window_ms)
        .unwrap_or_else(|e| panic!("{e}"));
    (store, Default::default())
}

fn sales_dedup<'s>(
    e: VecCollection<'s, Time, Event>,
    _r: VecCollection<'s, Time, RegistryRecord>,
    c: &Config,
) -> Handle<Time> {
    sales::render(e.flat_map(sales::SaleLine::of_event), ledger(), c)
        .accepted
        .probe()
        .0
}

fn revenue_views<'s>(
    e: VecCollection<'s, Time, Event>,
    r: VecCollection<'s, Time, RegistryRecord>,
    c: &Config,
) -> Handle<Time> {
    let zones = r.clone().flat_map(|r| match r {
        RegistryRecord::Location(l) => l.time_zone.map(|z| (l.location_id, z)),
        _ => None,
    });
    let loc = r.flat_map(|r| match r {
        RegistryRecord::Machine(m) => m.location_id.map(|l| (m.machine_id, l)),
        _ => None,
    });
    let mut accepted = accepted_lines(e, c);
    let v = revenue::render(&mut accepted, loc, zones, c, None);
    accepted.finish();
    v.location_daily.probe_with(&Handle::new());
    v.machine_daily.probe().0
}

/// The accepted sale lines of `e`, for the view under test to take its projections from.
fn accepted_lines<'s>(
    e: VecCollection<'s, Time, Event>,
    c: &Config,
) -> FanOut<'s, sales::SaleLine> {
    let accepted = sales::render(e.flat_map(sales::SaleLine::of_event), ledger(), c).accepted;
    FanOut::new(accepted, "Sales: to readers")
}

fn inventory_levels<'s>(
    e: VecCollection<'s, Time, Event>,
    r: VecCollection<'s, Time, RegistryRecord>,
    c: &Config,
) -> Handle<Time> {
    let cc = c.clone();
    let plans = r.flat_map(move |r| inventory::planogram(&r, &cc));
    let mut accepted = accepted_lines(e.clone(), c);
    let levels = inventory::render(e, &mut accepted, plans);
    accepted.finish();
    levels.probe().0
}

fn windows<'s>(
    e: VecCollection<'s, Time, Event>,
    _r: VecCollection<'s, Time, RegistryRecord>,
    c: &Config,
) -> Handle<Time> {
    let width = c.window_ms;
    let telemetry = e
        .clone()
        .flat_map(move |e| anomaly_windows::contribution(&e, width));
    let mut accepted = accepted_lines(e, c);
    let windows = anomaly_windows::render(telemetry, &mut accepted, parked_windows(c), c);
    accepted.finish();
    windows.windows.probe().0
}

fn liveness_view<'s>(
    e: VecCollection<'s, Time, Event>,
    r: VecCollection<'s, Time, RegistryRecord>,
    c: &Config,
) -> Handle<Time> {
    let heartbeats = e.flat_map(|e| {
        matches!(e.kind, vendflow_protocol::EventKind::Heartbeat(_))
            .then_some((e.machine_id, e.timestamp))
    });
    liveness::render(heartbeats, r, c).probe().0
}

fn benches(c: &mut Criterion) {
    let (registry, events) = vendflow_benches::fleet_stream(500, 1);
    let mut group = c.benchmark_group(format!("dataflow/{}_events", events.len()));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let all: [(&str, Build); 5] = [
        ("sales_dedup", sales_dedup),
        ("revenue", revenue_views),
        ("inventory", inventory_levels),
        ("anomaly_windows", windows),
        ("liveness", liveness_view),
    ];
    for (name, build) in all {
        group.bench_function(name, |b| b.iter(|| run(&registry, &events, build)));
    }
    group.finish();
}

criterion_group!(dataflow_benches, benches);
criterion_main!(dataflow_benches);

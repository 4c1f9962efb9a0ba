//! Wires every view into one timely dataflow, so they all advance at one timestamp.
//!
//! ```text
//! events ─▶ sales (dedup) ─▶ accepted ─┬▶ revenue ──────────────────────────────┐
//!    │                                 ├▶ inventory ─▶ stockout ─┐               │
//!    ├────────────────────────────────┬┴▶ anomaly_windows ───────┼▶ health       ├▶ rows ─▶ store
//!    └▶ liveness ◀── registry ────────┘                          │               │
//! errors ─▶ errors / error_counts;  late records of every view ─▶ too_late ──────┤
//! commands + command_ack events ─▶ commands ─────────────────────────────────────┤
//! registry leases ─▶ leases ──────────────────────────────────────────────────────┘
//! ```

use std::convert::Infallible;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::operate::FrontierInterest;
use vendflow_protocol::{
    Command, Event, EventKind, MachineId, RegistryRecord, Settlement, Timestamp,
};

use crate::anomaly_windows::{Piece, WindowKey};
use crate::config::Config;
use crate::errors::ErrorRecord;
use crate::ledger::Ledger;
use crate::operators::{FanOut, Fork, MachineSet, Time, fork, hash_of, ship};
use crate::parked::Parked;
use crate::row::Row;
use crate::sales::SaleLine;
use crate::views::CATALOG;
use crate::{
    anomaly_windows, commands, dedup, dex, errors, fold, health, inventory, leases, liveness,
    maintenance, refunds, revenue, sales, sequence_gaps, settlement, signals, stockout, zero_sales,
};
use std::sync::Arc;

/// The dataflow's inputs.
pub(crate) struct Inputs<'s> {
    pub events: VecCollection<'s, Time, Event>,
    pub registry: VecCollection<'s, Time, RegistryRecord>,
    pub errors: VecCollection<'s, Time, ErrorRecord>,
    pub commands: VecCollection<'s, Time, Command>,
    /// One row: the start of the current ingestion hour.
    pub clock: VecCollection<'s, Time, Timestamp>,
    /// This worker's files of state on disk.
    pub stores: Stores,
}

/// One worker's state on disk (each a file in the state directory, created empty at start).
pub(crate) struct Stores {
    /// The sale-line ledger.
    pub ledger: Ledger,
    /// Card transactions waiting for their settlement, and machines' closed settlement days.
    pub settlement: (Parked, Parked),
    /// Anomaly windows closed long enough to leave memory, for the rest of their retention,
    /// and the engine's count of them.
    pub windows: (Parked, Arc<anomaly_windows::ParkedCounts>),
    /// Machines' closed days of revenue, for the rest of their retention (UTC days, local days).
    pub revenue_days: revenue::DayStores,
}

impl Stores {
    /// Worker `index`'s stores in the state directory `dir`.
    pub fn for_worker(
        dir: &std::path::Path,
        index: usize,
        config: &Config,
        counts: &Arc<anomaly_windows::ParkedCounts>,
    ) -> Result<Stores, crate::state_file::StateFileError> {
        Ok(Stores {
            ledger: Ledger::for_worker(dir, index)?,
            settlement: (
                Parked::for_worker(dir, "settlement", index)?,
                Parked::for_worker_cold(dir, "settlement-days", index)?,
            ),
            // Windows end on their width's grid, so a bucket holds one start's windows.
            windows: (
                Parked::for_worker_by(dir, "windows", index, config.window_ms)?,
                counts.clone(),
            ),
            revenue_days: (
                Parked::for_worker_cold(dir, "revenue-days", index)?,
                Parked::for_worker_cold(dir, "revenue-local-days", index)?,
            ),
        })
    }
}

/// The events split by what reads them, in one pass: a collection read by several operators is
/// copied whole for each, so each event is moved to the one view that reads its kind, and the
/// views that read every event get a small projection instead.
struct Demuxed<'s> {
    /// What heartbeats, door and error events contribute to their anomaly window.
    telemetry: VecCollection<'s, Time, (WindowKey, Piece)>,
    /// The sale lines, as delivered (before dedup).
    sales: VecCollection<'s, Time, SaleLine>,
    restocks: VecCollection<'s, Time, Event>,
    /// Command answers.
    acks: VecCollection<'s, Time, Event>,
    /// Refunds the machines made.
    refunds: VecCollection<'s, Time, Event>,
    /// Each numbered event's machine and number (`seq`), and the numbers a machine declared
    /// it dropped.
    numbered: VecCollection<'s, Time, (MachineId, sequence_gaps::Mark)>,
    /// When each machine's heartbeats happened (liveness).
    heartbeats: VecCollection<'s, Time, (MachineId, Timestamp)>,
    /// When a machine's events happened (days observed): at least its first event of each day.
    seen: VecCollection<'s, Time, (MachineId, Timestamp)>,
    /// DEX audits, by machine.
    audits: VecCollection<'s, Time, (MachineId, dex::Read)>,
    /// Payment processors' settlement lines.
    settlements: VecCollection<'s, Time, (MachineId, Timestamp, Settlement)>,
}

impl<'s> Demuxed<'s> {
    /// One operator with an output per reader: each event is moved once, to the output of its
    /// kind as the record its reader takes (a window contribution, a sale line), and its instants
    /// are copied to the two projections.
    fn of(events: VecCollection<'s, Time, Event>, window_ms: i64) -> Self {
        type Out<D> = Vec<(D, Time, isize)>;
        let mut builder = OperatorBuilder::new("Demux events".to_owned(), events.inner.scope());
        // Exchanged by machine once, here: every operator after it that routes by the machine
        // (nearly all of them) then finds its records on its own worker.
        let by_machine = Exchange::new(|(e, _, _): &(Event, Time, isize)| hash_of(&e.machine_id));
        let mut input = builder.new_input(events.inner, by_machine);
        builder.set_notify_for(0, FrontierInterest::Never);
        let (mut telemetry_out, telemetry) = builder.new_output::<Out<(WindowKey, Piece)>>();
        let (mut sales_out, sales) = builder.new_output::<Out<SaleLine>>();
        let (mut restocks_out, restocks) = builder.new_output::<Out<Event>>();
        let (mut acks_out, acks) = builder.new_output::<Out<Event>>();
        let (mut refunds_out, refunds) = builder.new_output::<Out<Event>>();
        let (mut numbered_out, numbered) =
            builder.new_output::<Out<(MachineId, sequence_gaps::Mark)>>();
        let (mut heartbeats_out, heartbeats) = builder.new_output::<Out<(MachineId, Timestamp)>>();
        let (mut seen_out, seen) = builder.new_output::<Out<(MachineId, Timestamp)>>();
        let (mut audits_out, audits) = builder.new_output::<Out<(MachineId, dex::Read)>>();
        let (mut settlements_out, settlements) =
            builder.new_output::<Out<(MachineId, Timestamp, Settlement)>>();
        builder.build(move |_| {
            let (mut contributions, mut lines) = (Vec::new(), Vec::new());
            let (mut restocks, mut acks) = (Vec::new(), Vec::new());
            let (mut refunds, mut numbers) = (Vec::new(), Vec::new());
            let (mut beats, mut instants) = (Vec::new(), Vec::new());
            let (mut reads, mut verdicts) = (Vec::new(), Vec::new());
            // The machines that have had an event of the newest day already passed on: only a
            // machine's first event of a day tells the days-observed count anything.
            let (mut today, mut seen_today) = (i64::MIN, MachineSet::default());
            move |_frontiers| {
                let mut to_contributions = telemetry_out.activate();
                let mut to_lines = sales_out.activate();
                let mut to_restocks = restocks_out.activate();
                let mut to_acks = acks_out.activate();
                let mut to_refunds = refunds_out.activate();
                let mut to_numbers = numbered_out.activate();
                let mut to_beats = heartbeats_out.activate();
                let mut to_instants = seen_out.activate();
                let mut to_reads = audits_out.activate();
                let mut to_verdicts = settlements_out.activate();
                input.for_each_stamp(|cap, data| {
                    for container in data {
                        // Nearly every event is a heartbeat: room for the container's records
                        // at once, instead of growing from nothing for each container.
                        contributions.reserve(container.len());
                        beats.reserve(container.len());
                        for (e, t, r) in container.drain(..) {
                            // A processor's settlement line is not the machine at work.
                            let activity = !matches!(e.kind, EventKind::Settlement(_));
                            if activity && (first_of_day(&mut today, &mut seen_today, &e) || r <= 0)
                            {
                                instants.push(((e.machine_id.clone(), e.timestamp), t, r));
                            }
                            if let Some(seq) = e.seq {
                                let mark = sequence_gaps::Mark::Received(seq);
                                numbers.push(((e.machine_id.clone(), mark), t, r));
                            }
                            if let EventKind::Heartbeat(_) = &e.kind {
                                beats.push(((e.machine_id.clone(), e.timestamp), t, r));
                            }
                            match &e.kind {
                                EventKind::Heartbeat(_)
                                | EventKind::Door(_)
                                | EventKind::Error(_) => {
                                    if let Some(c) = anomaly_windows::contribution(&e, window_ms) {
                                        contributions.push((c, t, r));
                                    }
                                }
                                EventKind::Sale(_) => {
                                    if let Some(line) = SaleLine::of_event(e) {
                                        lines.push((line, t, r));
                                    }
                                }
                                EventKind::Restock(_) => restocks.push((e, t, r)),
                                EventKind::CommandAck(_) => acks.push((e, t, r)),
                                EventKind::Refund(_) => refunds.push((e, t, r)),
                                EventKind::Dex(audit) => reads.push((
                                    (e.machine_id.clone(), dex::Read::of(audit, e.timestamp)),
                                    t,
                                    r,
                                )),
                                EventKind::Settlement(s) => {
                                    verdicts.push(((e.machine_id, e.timestamp, s.clone()), t, r));
                                }
                                EventKind::Dropped(d) => {
                                    let mark =
                                        sequence_gaps::Mark::Dropped(d.first_seq, d.last_seq);
                                    numbers.push(((e.machine_id, mark), t, r));
                                }
                            }
                        }
                        ship(&mut to_contributions, &cap, &mut contributions);
                        ship(&mut to_lines, &cap, &mut lines);
                        ship(&mut to_restocks, &cap, &mut restocks);
                        ship(&mut to_acks, &cap, &mut acks);
                        ship(&mut to_refunds, &cap, &mut refunds);
                        ship(&mut to_numbers, &cap, &mut numbers);
                        ship(&mut to_beats, &cap, &mut beats);
                        ship(&mut to_instants, &cap, &mut instants);
                        ship(&mut to_reads, &cap, &mut reads);
                        ship(&mut to_verdicts, &cap, &mut verdicts);
                    }
                });
            }
        });
        Demuxed {
            telemetry: telemetry.as_collection(),
            sales: sales.as_collection(),
            restocks: restocks.as_collection(),
            acks: acks.as_collection(),
            refunds: refunds.as_collection(),
            numbered: numbered.as_collection(),
            heartbeats: heartbeats.as_collection(),
            seen: seen.as_collection(),
            audits: audits.as_collection(),
            settlements: settlements.as_collection(),
        }
    }
}

/// Whether `event` may be its machine's first of its day: false only for a later event of a
/// machine on the newest day seen (`today`), once one has been passed on. Passing an event on twice
/// is harmless (the days-observed fold ignores a day it has); holding one back is safe because
/// records reach this operator in ingestion-time order, so the first of the day went before it.
/// Holds the machines of one day only.
fn first_of_day(today: &mut i64, seen_today: &mut MachineSet, event: &Event) -> bool {
    let day = event.timestamp.day();
    if day > *today {
        *today = day;
        seen_today.clear();
    }
    day < *today || seen_today.insert(&event.machine_id)
}

/// Builds every view; returns their rows in [`CATALOG`] order.
pub(crate) fn build<'s>(inputs: Inputs<'s>, config: &Config) -> Vec<VecCollection<'s, Time, Row>> {
    let Inputs {
        events,
        registry,
        errors,
        commands,
        clock,
        stores:
            Stores {
                ledger,
                settlement: parked,
                windows: parked_windows,
                revenue_days,
            },
    } = inputs;

    let location_zone = registry.clone().flat_map(|r| match r {
        RegistryRecord::Location(l) => l.time_zone.map(|z| (l.location_id, z)),
        _ => None,
    });
    let machine_location = registry.clone().flat_map(|r| match r {
        RegistryRecord::Machine(m) => m.location_id.map(|l| (m.machine_id, l)),
        _ => None,
    });
    let plan_config = config.clone();
    let plans = registry
        .clone()
        .flat_map(move |r| inventory::planogram(&r, &plan_config));

    let events = Demuxed::of(events, config.window_ms);
    let gaps = sequence_gaps::render(events.numbered);
    let commands = commands::render(commands, events.acks, config);
    let (refunds, refunds_too_late) = refunds::render(events.refunds, config);
    let sales = sales::render(events.sales, ledger, config);
    // Every reader of the accepted lines takes its projection from one operator.
    let mut accepted = FanOut::new(sales.accepted, "Sales: to readers");
    let revenue = revenue::render(
        &mut accepted,
        machine_location,
        location_zone,
        config,
        Some(revenue_days),
    );
    let (restocks, restock_duplicates) = inventory::restocks_once(events.restocks, config);
    // Its three readers take their projections from one operator.
    let mut levels = FanOut::new(
        inventory::render(restocks, &mut accepted, plans),
        "Inventory: to readers",
    );
    let windows = anomaly_windows::render(events.telemetry, &mut accepted, parked_windows, config);
    let signals = signals::render(windows.readings, config);
    let candidates = maintenance::render(signals.baselines.clone(), config);
    let silent = zero_sales::render(&mut accepted, config);
    let leases = leases::render(registry.clone());
    let lease_events = leases::render_events(registry.clone());
    let liveness = liveness::render(events.heartbeats, registry, config);
    let dex = dex::render(events.audits, &mut accepted, config);
    let (settlement_daily, settlement_exceptions, _) = fork(
        settlement::render(&mut accepted, events.settlements, parked, config),
        "Settlement: split",
        |o| match o {
            settlement::Out::Daily(d) => Fork::<_, _, Infallible>::A(d),
            settlement::Out::Exception(x) => Fork::B(x),
        },
    );
    // The planned views' collection: it never holds a row (the planner writes to the store).
    let planned = clock.clone().flat_map(|_| None::<Row>);
    let stockout = stockout::render(events.seen, &mut accepted, &mut levels, clock, config);
    accepted.finish();
    let (status, liveness, _) = fork(liveness, "Liveness: split", |o| match o {
        liveness::Out::Status(m, s) => Fork::<_, _, Infallible>::A((m, s)),
        liveness::Out::Row(l) => Fork::B(l),
    });
    let facts = health::facts(
        windows.latest,
        status,
        &mut levels,
        stockout.restock_needed.clone().map(|(m, _, _)| m),
        signals.anomalies.clone(),
        silent.clone().map(|s| s.machine_id),
        health::failure_likely(candidates.clone(), config.maintenance.horizon_days),
    );
    let health = health::render(facts);
    let inventory = levels.map(inventory::row);
    levels.finish();

    let too_late = sales
        .too_late
        .map(|_| "sales".to_owned())
        .concat(revenue.too_late.map(|_| "revenue".to_owned()))
        .concat(revenue.local_too_late.map(|_| "revenue_local".to_owned()))
        .concat(windows.too_late.map(|_| "anomaly_windows".to_owned()))
        .concat(commands.too_late.map(|_| "commands".to_owned()))
        .concat(refunds_too_late.map(|_| "refunds".to_owned()));
    let errors = errors::render(errors, too_late, config);

    let duplicates = fold::count_total(sales.duplicates, "Sales: duplicates per machine");
    let event_duplicates = fold::count_total(
        windows.duplicates.concat(restock_duplicates),
        "Events: duplicates per machine and kind",
    );

    let views: Vec<(&'static str, VecCollection<'s, Time, Row>)> = vec![
        (
            "revenue_machine_daily",
            revenue.machine_daily.map(revenue::machine_daily_row),
        ),
        (
            "revenue_location_daily",
            revenue.location_daily.map(revenue::location_daily_row),
        ),
        (
            "revenue_location_hourly",
            revenue.location_hourly.map(revenue::location_hourly_row),
        ),
        (
            "revenue_fleet_today",
            revenue.fleet_today.map(revenue::fleet_today_row),
        ),
        (
            "top_machines_today",
            revenue.top_today.map(revenue::top_row),
        ),
        (
            "revenue_machine_local_daily",
            revenue.machine_local_daily.map(revenue::local_daily_row),
        ),
        (
            "revenue_corrections",
            revenue.corrections.map(revenue::correction_row),
        ),
        (
            "revenue_location_corrections",
            revenue
                .location_corrections
                .map(revenue::location_correction_row),
        ),
        (
            "revenue_local_corrections",
            revenue.local_corrections.map(revenue::local_correction_row),
        ),
        (
            "slot_sales",
            revenue.slot_sales.map(revenue::slot_sales_row),
        ),
        ("sale_duplicates", duplicates.map(sales::duplicates_row)),
        ("event_duplicates", event_duplicates.map(dedup::row)),
        ("inventory", inventory),
        ("anomaly_windows", windows.windows),
        ("anomaly_window_corrections", windows.corrections),
        (
            "signal_baselines",
            signals.baselines.map(signals::baseline_row),
        ),
        (
            "signal_anomalies",
            signals.anomalies.map(signals::anomaly_row),
        ),
        ("zero_sales", silent.map(zero_sales::row)),
        ("maintenance_candidates", candidates.map(maintenance::row)),
        ("liveness", liveness),
        ("stockout_forecast", stockout.forecasts.map(stockout::row)),
        (
            "restock_needed",
            stockout.restock_needed.map(stockout::restock_row),
        ),
        ("health", health),
        ("errors", errors.recent.map(errors::row)),
        ("error_counts", errors.counts.map(errors::count_row)),
        ("too_late", errors.too_late.map(errors::too_late_row)),
        ("commands", commands.status.map(commands::row)),
        ("leases", leases.map(leases::row)),
        ("lease_events", lease_events.map(leases::event_row)),
        ("dex_audits", dex.audits.map(dex::audit_row)),
        ("reconciliation", dex.reconciliation.map(dex::recon_row)),
        (
            "settlement_daily",
            settlement_daily.map(settlement::daily_row),
        ),
        (
            "settlement_exceptions",
            settlement_exceptions.map(settlement::exception_row),
        ),
        ("refunds", refunds.map(refunds::row)),
        ("sequence_gaps", gaps.map(sequence_gaps::row)),
        // Planned by the service, not computed here (see `routes`): empty in the dataflow.
        ("restock_routes", planned.clone()),
        ("restock_loads", planned),
    ];
    let mut by_name: std::collections::HashMap<&str, VecCollection<'s, Time, Row>> =
        views.into_iter().collect();
    CATALOG
        .iter()
        .map(|def| {
            by_name
                .remove(def.name)
                .unwrap_or_else(|| panic!("view {} is in the catalog but not built", def.name))
        })
        .collect()
}

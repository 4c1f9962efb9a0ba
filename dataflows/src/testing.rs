//! Test support: seeded random scenarios, a runner, and view assertions for the oracle tests.
//!
//! A scenario is what a source would do: registry records, then deliveries `(ingestion time,
//! event)` in ingestion order. Random scenarios mix in what the real fleet does to us: events
//! out of order by seconds, machines offline for hours whose buffered events arrive late (some
//! beyond a view's horizon), and re-delivered duplicates. Horizons are shortened so that a few
//! days of events exercise every expiry.

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE};
use vendflow_protocol::{
    Cents, Command, DoorStatus, ErrorCode, ErrorEvent, Event, EventKind, Heartbeat, Machine,
    MachineId, MachineStatus, Milli, RegistryRecord, Restock, Sale, Settlement, SettlementStatus,
    Slot, Timestamp,
};

use crate::config::Config;
use crate::engine::{Batch, Engine};
use crate::errors::ErrorRecord;
use crate::operators::Time;
use crate::row::Row;
use crate::view_store::Snapshot;

/// What makes an event the same event, for the oracles, written the obvious way (not with the
/// engine's fingerprint): its machine and its number when the machine numbers events, else its
/// machine and the whole event (time and payload).
pub(crate) type NaiveIdentity = (MachineId, Option<u64>, Option<(Timestamp, EventKind)>);

pub(crate) fn naive_identity(e: &Event) -> NaiveIdentity {
    (
        e.machine_id.clone(),
        e.seq,
        e.seq.is_none().then(|| (e.timestamp, e.kind.clone())),
    )
}

/// Monday 2024-01-15 00:00 UTC.
pub const BASE: i64 = 1_705_276_800_000;

pub fn machine(id: &str) -> MachineId {
    MachineId::parse(id).unwrap_or_else(|e| panic!("{e}"))
}

pub fn sale(m: &str, ts: i64, slot: u32, cents: i64, txn: &str) -> Event {
    Event {
        machine_id: machine(m),
        timestamp: Timestamp(ts),
        seq: None,
        kind: EventKind::Sale(Sale {
            slot_number: slot,
            product_id: format!("p{slot}").into(),
            amount: Cents(cents),
            quantity: 1,
            payment_method: "card".into(),
            transaction_id: txn.into(),
            offline: false,
        }),
    }
}

pub fn heartbeat(m: &str, ts: i64, temperature: i64) -> Event {
    Event {
        machine_id: machine(m),
        timestamp: Timestamp(ts),
        seq: None,
        kind: EventKind::Heartbeat(Heartbeat {
            temperature: Some(Milli(temperature)),
            ..Heartbeat::default()
        }),
    }
}

pub struct Scenario {
    pub config: Config,
    pub registry: Vec<RegistryRecord>,
    pub deliveries: Vec<(Time, Event)>,
    pub errors: Vec<(Time, ErrorRecord)>,
    /// Commands to machines, by the time they reach the engine.
    pub commands: Vec<(Time, Command)>,
}

impl Scenario {
    pub fn empty() -> Scenario {
        Scenario {
            config: Config::default(),
            registry: Vec::new(),
            deliveries: Vec::new(),
            errors: Vec::new(),
            commands: Vec::new(),
        }
    }

    pub fn deliver(&mut self, at: i64, event: Event) {
        self.deliveries.push((Timestamp(at), event));
    }

    pub fn register_machine(&mut self, id: &str, location: &str, slots: &[(u32, u32)]) {
        self.registry.push(RegistryRecord::Machine(Machine {
            machine_id: machine(id),
            serial_number: format!("SN-{id}"),
            model: "VX-30".into(),
            location_id: Some(location.into()),
            status: MachineStatus::Active,
            firmware_version: None,
            registered_at: None,
            slots: slots
                .iter()
                .map(|&(slot_number, max_capacity)| Slot {
                    slot_number,
                    product_id: format!("p{slot_number}"),
                    max_capacity,
                    price: Cents(150),
                    low_stock_threshold: None,
                })
                .collect(),
        }));
    }

    /// The last ingestion time; views are read as of it.
    pub fn now(&self) -> Time {
        let d = self.deliveries.iter().map(|(t, _)| *t);
        d.chain(self.errors.iter().map(|(t, _)| *t))
            .chain(self.commands.iter().map(|(t, _)| *t))
            .max()
            .unwrap_or(Time::EPOCH)
    }

    pub fn machine_locations(&self) -> HashMap<MachineId, String> {
        self.registry
            .iter()
            .filter_map(|r| match r {
                RegistryRecord::Machine(m) => {
                    m.location_id.clone().map(|l| (m.machine_id.clone(), l))
                }
                _ => None,
            })
            .collect()
    }

    /// About 2.5 days of a six-machine fleet, with late, out-of-order and duplicate deliveries.
    pub fn random(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty();
        s.config = Config {
            workers: 2,
            dedup_horizon_ms: 6 * MS_PER_HOUR,
            window_retention_ms: 2 * MS_PER_HOUR,
            // Windows leave memory for disk long before their retention ends, and late events
            // take them back.
            window_memory_ms: 20 * MS_PER_MINUTE,
            revenue_retention_days: 1,
            // Machine-days leave memory for disk an hour after their day, and late sales take
            // them back.
            day_memory_ms: MS_PER_HOUR,
            settlement_days: 1,
            // Transactions leave memory for the parked store long before their hold ends.
            settlement_memory_ms: 2 * MS_PER_HOUR,
            demand_days: 2,
            // The machines' days are kept a day longer than the slots', and the second day is
            // a holiday (left out of the levels and the weekday index, its sales teach the
            // holiday factor).
            demand_index_days: 3,
            holidays: std::sync::Arc::new([BASE / MS_PER_DAY + 1].into()),
            error_retention_ms: MS_PER_HOUR,
            signal_baseline_days: 1,
            signal_min_baseline_hours: 3,
            signal_min_readings: 1,
            // Silences of an hour or so: alarms raised and cleared all through the stream.
            zero_sales_expected_units: 1.5,
            zero_sales_min_daily_units: 5.0,
            // Keener than the trained model, so that short random streams list and flag
            // machines both ways.
            maintenance: std::sync::Arc::new(crate::maintenance::Model {
                intercept: -1.0,
                weights: vec![1.0, 0.5, 1.0, 0.5, 1.0, 0.5],
                trained: None,
                ..(*crate::maintenance::Model::builtin()).clone()
            }),
            ..Config::default()
        };
        for (i, loc) in ["loc-a", "loc-a", "loc-b"].iter().enumerate() {
            s.register_machine(&format!("m{i}"), loc, &[(1, 6), (2, 8), (3, 10), (4, 12)]);
        }
        // m3: registered, no location, in maintenance; m4, m5: never registered.
        s.registry.push(RegistryRecord::Machine(Machine {
            machine_id: machine("m3"),
            serial_number: "SN-m3".into(),
            model: "VX-10".into(),
            location_id: None,
            status: MachineStatus::Maintenance,
            firmware_version: None,
            registered_at: None,
            slots: vec![Slot {
                slot_number: 101,
                product_id: "water".into(),
                max_capacity: 5,
                price: Cents(100),
                low_stock_threshold: Some(2),
            }],
        }));

        let mut planned: Vec<(i64, Event)> = Vec::new();
        // What the machines physically sold (each sale once, however it was delivered): their
        // DEX counters.
        let mut sold: Vec<(String, i64, u32, u32, i64)> = Vec::new();
        // Card transactions as sold: (machine, id) → (first line's time, total, offline).
        let mut carts: std::collections::BTreeMap<(String, String), (i64, i64, bool)> =
            Default::default();
        let mut numbered: HashMap<String, u64> = HashMap::new();
        let mut ts = BASE + rng.random_range(0..MS_PER_HOUR);
        let end = BASE + 5 * MS_PER_DAY / 2;
        while ts < end {
            ts += rng.random_range(0..8 * 60_000);
            let m = format!("m{}", rng.random_range(0..6));
            let slot = if m == "m3" {
                101
            } else {
                rng.random_range(1..=5)
            };
            let roll = rng.random_range(0..100);
            let kind = if roll < 50 {
                EventKind::Heartbeat(Heartbeat {
                    temperature: rng
                        .random_bool(0.9)
                        .then(|| Milli(rng.random_range(2..20) * 500)),
                    door_status: Some(if rng.random_bool(0.1) {
                        DoorStatus::Open
                    } else {
                        DoorStatus::Closed
                    }),
                    payment_module_status: None,
                    network_signal: rng
                        .random_bool(0.7)
                        .then(|| Milli(-1000 * rng.random_range(55..98))),
                    motor_current: rng
                        .random_bool(0.5)
                        .then(|| Milli(100 * rng.random_range(4..21))),
                    controller: None,
                })
            } else if roll < 80 {
                EventKind::Sale(Sale {
                    slot_number: slot,
                    product_id: format!("p{slot}").into(),
                    amount: Cents(25 * rng.random_range(1..17)),
                    quantity: rng.random_range(1..=2),
                    payment_method: if rng.random_bool(0.7) { "card" } else { "cash" }.into(),
                    // A small id space per machine makes carts (several slots, one id).
                    transaction_id: format!("t{}", rng.random_range(0..400)).into(),
                    // Sold while the machine was offline, authorised by its floor limit.
                    offline: rng.random_bool(0.2),
                })
            } else if roll < 85 {
                EventKind::Restock(Restock {
                    slot_number: slot,
                    quantity: rng.random_range(1..8),
                    product_id: None,
                })
            } else if roll < 95 {
                let code = match rng.random_range(0..3) {
                    0 => ErrorCode::CardReadFailure,
                    1 => ErrorCode::MotorJam,
                    _ => ErrorCode::Other("E42".into()),
                };
                EventKind::Error(ErrorEvent {
                    code,
                    message: "fault".into(),
                })
            } else {
                EventKind::Door(if rng.random_bool(0.7) {
                    DoorStatus::Open
                } else {
                    DoorStatus::Closed
                })
            };
            // m0, m2 and m4 number their events (identity by `seq`); the others do not
            // (identity by content).
            let seq = (m.ends_with(['0', '2', '4'])).then(|| {
                let n = numbered.entry(m.clone()).or_insert(0u64);
                *n += 1;
                *n
            });
            let event = Event {
                machine_id: machine(&m),
                timestamp: Timestamp(ts),
                seq,
                kind,
            };
            // When it reaches us: usually at once (give or take a few seconds of reordering),
            // sometimes hours later from an offline buffer, sometimes twice.
            // Late deliveries land before the scenario ends, so its last hours hold live windows.
            let last = end + MS_PER_HOUR / 2;
            let is_sale = matches!(event.kind, EventKind::Sale(_));
            let delay = if is_sale && ts < BASE + MS_PER_DAY / 2 && rng.random_bool(0.15) {
                // Days late (a machine offline over a weekend): after its day left the live
                // revenue and its line left dedup's memory.
                last - ts
            } else if rng.random_bool(0.08) {
                rng.random_range(MS_PER_HOUR..9 * MS_PER_HOUR)
            } else {
                rng.random_range(0..30_000)
            };
            if let EventKind::Sale(sale) = &event.kind {
                if sale.is_card() {
                    carts
                        .entry((m.clone(), sale.transaction_id.to_string()))
                        .or_insert((ts, 0, sale.offline))
                        .1 += sale.amount.0;
                }
                sold.push((
                    m.clone(),
                    ts,
                    sale.slot_number,
                    sale.quantity,
                    sale.amount.0,
                ));
                // Now and then a sale never reaches us (its machine's DEX counters still have it).
                if rng.random_bool(0.01) {
                    continue;
                }
            }
            let first = (ts + delay).min(last);
            planned.push((first, event.clone()));
            if is_sale && rng.random_bool(0.15) {
                // A re-delivery: hours later, or (rarely) days later, recognised by the ledger.
                let again = if rng.random_bool(0.1) {
                    last
                } else {
                    ts + rng.random_range(0..10 * MS_PER_HOUR)
                };
                planned.push((again.min(last), event.clone()));
            } else if !is_sale && rng.random_bool(0.12) {
                // Every kind is re-sent now and then: with the first delivery (one record
                // counted twice), minutes or hours later (within or past a window's retention),
                // or days later (a restock within its remembered days).
                let again = match rng.random_range(0..4) {
                    0 => first,
                    1 => first + rng.random_range(0..600_000),
                    2 => first + rng.random_range(0..4 * MS_PER_HOUR),
                    _ => first + rng.random_range(0..2 * MS_PER_DAY),
                };
                planned.push((again.min(last), event.clone()));
            }
            // Two events alike in time and payload are two events when the machine numbers them.
            if let (Some(n), false) = (event.seq, is_sale)
                && rng.random_bool(0.03)
            {
                let twin = Event {
                    seq: Some(n + 1),
                    ..event.clone()
                };
                numbered.insert(m.clone(), n + 1);
                planned.push((first, twin));
            }
            if rng.random_bool(0.01) {
                let raw = b"{\"machineId\":\"m1\",\"type\":\"sale\"";
                let err = vendflow_protocol::decode::decode_line(raw)
                    .pop()
                    .and_then(Result::err);
                if let Some(err) = err {
                    planned.push((ts, heartbeat("m0", ts, 4_000)));
                    s.errors.push((
                        Timestamp(ts),
                        ErrorRecord::new(Timestamp(ts), "random:1", &err, raw),
                    ));
                }
            }
        }
        // The processor's settlement lines, imported hours to days after the sales: most
        // transactions settled at their total, some at another amount, some declined (the
        // offline ones are the risk), some settled then reversed, some never settled; a few
        // lines for transactions telemetry never reported; now and then a file imported twice.
        let last = end + MS_PER_HOUR / 2;
        let mut verdicts: Vec<(i64, String, String, i64, SettlementStatus)> = Vec::new();
        for ((m, txn), (sold_at, total, offline)) in &carts {
            let at = sold_at
                + if *offline {
                    rng.random_range(MS_PER_HOUR..6 * MS_PER_HOUR)
                } else {
                    rng.random_range(0..300_000)
                };
            let roll = rng.random_range(0..100);
            let (m, txn) = (m.clone(), txn.clone());
            if roll < 55 {
                verdicts.push((at, m, txn, *total, SettlementStatus::Settled));
            } else if roll < 62 {
                verdicts.push((at, m, txn, total + 25, SettlementStatus::Settled));
            } else if roll < 75 {
                verdicts.push((at, m, txn, *total, SettlementStatus::Declined));
            } else if roll < 80 {
                verdicts.push((
                    at,
                    m.clone(),
                    txn.clone(),
                    *total,
                    SettlementStatus::Settled,
                ));
                verdicts.push((at + MS_PER_HOUR, m, txn, *total, SettlementStatus::Reversed));
            }
        }
        for k in 0..12 {
            let at = BASE + rng.random_range(0..2 * MS_PER_DAY);
            let status = if k % 3 == 0 {
                SettlementStatus::Declined
            } else {
                SettlementStatus::Settled
            };
            let m = format!("m{}", rng.random_range(0..6));
            verdicts.push((at, m, format!("x{k}"), 150, status));
        }
        // Not settled yet when the scenario ends.
        verdicts.retain(|v| v.0 < last);
        for (at, m, txn, cents, status) in verdicts {
            let event = Event {
                machine_id: machine(&m),
                timestamp: Timestamp(at),
                seq: None,
                kind: EventKind::Settlement(Settlement {
                    transaction_id: txn.into(),
                    amount: Cents(cents),
                    status,
                }),
            };
            let arrives = at + rng.random_range(2 * MS_PER_HOUR..40 * MS_PER_HOUR);
            planned.push((arrives.min(last), event.clone()));
            if rng.random_bool(0.1) {
                planned.push(((arrives + rng.random_range(0..MS_PER_DAY)).min(last), event));
            }
        }
        // Machines m0..m2 are audited every 10 hours and send the audit when it is read; m2's
        // board is replaced after its third audit (its counters restart).
        for m in ["m0", "m1", "m2"] {
            for k in 1..=5 {
                let at = BASE + k * 10 * MS_PER_HOUR;
                let reset_at = (m == "m2" && k > 3).then_some(BASE + 30 * MS_PER_HOUR);
                let since = reset_at.unwrap_or(i64::MIN);
                let mut counters: std::collections::BTreeMap<u32, (i64, i64)> = Default::default();
                for (_, ts, slot, qty, cents) in sold.iter().filter(|x| x.0 == m) {
                    if *ts < at && *ts >= since {
                        let c = counters.entry(*slot).or_default();
                        c.0 += i64::from(*qty);
                        c.1 += cents;
                    }
                }
                planned.push((at, dex_audit(m, at, &counters, reset_at.is_some())));
            }
        }
        planned.sort_by_key(|(at, _)| *at);
        // Ingestion time is the largest delivery clock seen so far, in whole seconds: the clock
        // a replay of this delivery order would have.
        let mut clock = 0i64;
        for (at, event) in planned {
            clock = clock.max(at);
            let t = clock + (1000 - clock.rem_euclid(1000)) % 1000;
            s.deliveries.push((Timestamp(t), event));
        }
        s
    }
}

/// A DEX audit event of machine `m` read at `at`, with (vends, value) per column; `since_reset`
/// also gives them as the since-reset counters.
pub fn dex_audit(
    m: &str,
    at: i64,
    counters: &std::collections::BTreeMap<u32, (i64, i64)>,
    since_reset: bool,
) -> Event {
    let mut text = String::from("DXS*RST1*VA*V0/6*1\r\nST*001*0001\r\nID1*SN*VX\r\n");
    let mut segments = 2;
    // Every column the machine has, sold or not.
    for slot in 1..=5 {
        let (vends, value) = counters.get(&slot).copied().unwrap_or_default();
        text.push_str(&format!("PA1*{slot}*150\r\n"));
        if since_reset {
            text.push_str(&format!("PA2*{vends}*{value}*{vends}*{value}\r\n"));
        } else {
            text.push_str(&format!("PA2*{vends}*{value}\r\n"));
        }
        segments += 2;
    }
    text.push_str(&format!("SE*{}*0001\r\nDXE*1*1\r\n", segments + 1));
    let audit = vendflow_protocol::dex::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    Event {
        machine_id: machine(m),
        timestamp: Timestamp(at),
        seq: None,
        kind: EventKind::Dex(Box::new(audit)),
    }
}

/// What a source does with a scenario, in order: each batch is sent at its time and every
/// worker is then advanced to it.
pub fn steps(scenario: &Scenario) -> Vec<(Time, Batch)> {
    let mut steps = vec![(
        Time::EPOCH,
        Batch {
            registry: scenario.registry.iter().map(|r| (r.clone(), 1)).collect(),
            ..Batch::default()
        },
    )];
    let mut deliveries = scenario.deliveries.clone();
    deliveries.sort_by_key(|(t, _)| *t);
    let mut errors = scenario.errors.clone();
    errors.sort_by_key(|(t, _)| *t);
    let mut errors = errors.into_iter().peekable();
    for (t, event) in deliveries {
        let mut batch = Batch {
            events: vec![event],
            ..Batch::default()
        };
        while errors.peek().is_some_and(|(et, _)| *et <= t) {
            if let Some((_, e)) = errors.next() {
                batch.errors.push(e);
            }
        }
        steps.push((t, batch));
    }
    for (t, c) in scenario.commands.iter().cloned() {
        steps.push((
            t,
            Batch {
                commands: vec![c],
                ..Batch::default()
            },
        ));
    }
    for (t, e) in errors {
        steps.push((
            t,
            Batch {
                errors: vec![e],
                ..Batch::default()
            },
        ));
    }
    steps
}

/// Runs a scenario through a real engine and returns the views as of its last ingestion time.
pub fn run(scenario: &Scenario) -> Snapshot {
    run_restarted(scenario, None).0
}

/// Runs a scenario; with `split`, the engine stops after that many [`steps`] (moved on to the
/// first step whose time is later than the one before), its state is taken at the millisecond
/// after, written to a checkpoint file and read back, and a new engine started from it takes
/// the rest.
/// Returns the views, and the frontier of the checkpoint.
pub fn run_restarted(scenario: &Scenario, split: Option<usize>) -> (Snapshot, Option<Time>) {
    let run = run_parking(scenario, split);
    (run.views, run.checkpoint)
}

/// What [`run_parking`] saw.
pub struct Run {
    pub views: Snapshot,
    /// The frontier of the checkpoint, when the run was split.
    pub checkpoint: Option<Time>,
    /// The anomaly windows its engines parked on disk, took back and ended on disk
    /// ([`Engine::parked_windows`]).
    pub parked: (u64, u64, u64),
    /// The rows each view kept on disk at the end ([`crate::view_store::ViewStore::rows_on_disk`]).
    pub on_disk: Vec<(&'static str, usize)>,
}

/// [`run_restarted`], and what its engines kept on disk.
pub fn run_parking(scenario: &Scenario, split: Option<usize>) -> Run {
    let steps = steps(scenario);
    let mut parked = (0, 0, 0);
    let mut add = |(a, b, c): (u64, u64, u64)| {
        parked = (parked.0 + a, parked.1 + b, parked.2 + c);
    };
    let split = split.map(|k| {
        (k.max(1)..steps.len())
            .find(|&i| steps[i].0 > steps[i - 1].0)
            .unwrap_or(steps.len())
    });
    let feed = |f: &mut crate::engine::Feeders, part: &[(Time, Batch)]| {
        for (t, batch) in part {
            f.send(*t, batch.clone()).unwrap_or_else(|e| panic!("{e}"));
            f.advance_all(*t).unwrap_or_else(|e| panic!("{e}"));
        }
    };
    let mut engine = Engine::start(scenario.config.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders taken"));
    let mut checkpoint = None;
    let rest = match split {
        None => &steps[..],
        Some(k) => {
            feed(&mut feeders, &steps[..k]);
            let at = steps[k - 1].0.max(feeders.time()) + 1;
            let state = feeders
                .checkpoint(at, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}"));
            drop(feeders);
            add(engine.parked_windows());
            engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
            // Through a checkpoint file and back.
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let files = crate::checkpoint::file::CheckpointDir::open(dir.path())
                .unwrap_or_else(|e| panic!("{e}"));
            files
                .write(&crate::checkpoint::file::Checkpoint {
                    engine: state,
                    source: Vec::new(),
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let (_, loaded) = files
                .load_newest()
                .unwrap_or_else(|e| panic!("{e}"))
                .checkpoint
                .unwrap_or_else(|| panic!("the checkpoint just written is not there"));
            let state = loaded.engine;
            engine = Engine::start_from(scenario.config.clone(), Some(state))
                .unwrap_or_else(|e| panic!("{e}"));
            feeders = engine.feeders().unwrap_or_else(|| panic!("feeders taken"));
            checkpoint = Some(at);
            &steps[k..]
        }
    };
    feed(&mut feeders, rest);
    let store = engine.store();
    let end = scenario.now() + 1;
    feeders.advance_all(end).unwrap_or_else(|e| panic!("{e}"));
    // As a bulk load ends: the workers drop their state as soon as the store has every
    // update, so every oracle test also checks that nothing is lost by that.
    assert!(
        engine.finish_load(end, Duration::from_secs(60)),
        "views did not reach {end}"
    );
    let snapshot = store.snapshot();
    assert_eq!(
        snapshot.frontier, end,
        "the store must stop at the last input time"
    );
    let on_disk = store.rows_on_disk();
    drop(feeders);
    add(engine.parked_windows());
    engine.shutdown().unwrap_or_else(|e| panic!("{e}"));
    Run {
        views: snapshot,
        checkpoint,
        parked,
        on_disk,
    }
}

/// The random scenario of `seed` and its views, run once per test process: every oracle test
/// checks its own views against the same runs instead of starting an engine of its own.
pub fn random_run(seed: u64) -> &'static (Scenario, Snapshot) {
    static RUNS: [std::sync::OnceLock<(Scenario, Snapshot)>; 6] =
        [const { std::sync::OnceLock::new() }; 6];
    let cell = RUNS
        .get(seed as usize)
        .unwrap_or_else(|| panic!("random runs exist for seeds 0..6, not {seed}"));
    cell.get_or_init(|| {
        let scenario = Scenario::random(seed);
        let views = run(&scenario);
        (scenario, views)
    })
}

pub fn rows(snapshot: &Snapshot, view: &str) -> Vec<Row> {
    snapshot
        .rows(view)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_vec()
}

/// Asserts a view equals the expected rows (as a multiset), showing where they differ.
pub fn assert_view(snapshot: &Snapshot, view: &str, mut expected: Vec<Row>, seed: u64) {
    expected.sort();
    // Views that a random scenario always fills must not pass by both being empty.
    if seed > 0
        && !matches!(
            view,
            "revenue_fleet_today"
                | "top_machines_today"
                | "restock_needed"
                | "sale_duplicates"
                // rare in a random stream (its test counts them over every seed)
                | "signal_anomalies"
                | "zero_sales"
                // 2.5 days are too short for a local day to leave its view (tested on its own)
                | "revenue_local_corrections"
        )
    {
        assert!(
            !expected.is_empty(),
            "view {view} (seed {seed}): the oracle expects no rows; the scenario tests nothing"
        );
    }
    let got = rows(snapshot, view);
    if got != expected {
        let missing: Vec<&Row> = expected
            .iter()
            .filter(|r| !got.contains(r))
            .take(5)
            .collect();
        let extra: Vec<&Row> = got
            .iter()
            .filter(|r| !expected.contains(r))
            .take(5)
            .collect();
        panic!(
            "view {view} (seed {seed}) differs from the oracle: {} rows, expected {}\n  missing: {missing:?}\n  unexpected: {extra:?}",
            got.len(),
            expected.len()
        );
    }
}

/// A free port on loopback (for an in-process cluster).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts one engine per config at once (a cluster's processes connect to each other while
/// they start).
fn start_cluster(configs: Vec<(Config, Option<crate::engine::EngineState>)>) -> Vec<Engine> {
    std::thread::scope(|s| {
        let starting: Vec<_> = configs
            .into_iter()
            .map(|(config, state)| s.spawn(move || Engine::start_from(config, state)))
            .collect();
        starting
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("an engine's start panicked"))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    })
}

/// Stops a cluster's engines at once.
fn stop_cluster(engines: Vec<Engine>) {
    std::thread::scope(|s| {
        for engine in engines {
            s.spawn(move || engine.shutdown().unwrap_or_else(|e| panic!("{e}")));
        }
    });
}

/// A thread that takes the first cluster checkpoint of `engine` the way the service does: its
/// workers' sections, the views at their boundary, then the release.
fn collect_one(engine: &mut Engine) -> std::thread::JoinHandle<(Time, crate::engine::EngineState)> {
    let aligned = engine
        .aligned()
        .unwrap_or_else(|| panic!("no checkpoint grid"));
    let store = engine.store();
    std::thread::spawn(move || {
        let mut sections = Vec::new();
        while sections.len() < CLUSTER_WORKERS {
            let s: crate::aligned::Section = aligned
                .sections
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("no section: {e}"));
            sections.push(s);
        }
        sections.sort_by_key(|s| s.worker);
        let at = sections[0].at;
        assert!(
            sections.iter().all(|s| s.at == at),
            "sections at two boundaries"
        );
        let views = crate::engine::views_at(&store, at, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        aligned.release(at);
        let hour = sections.iter().find_map(|s| s.hour).flatten();
        let state = crate::engine::EngineState {
            frontier: at,
            workers: sections.into_iter().map(|s| s.state).collect(),
            hour,
            views,
        };
        (at, state)
    })
}

/// Workers per process in [`run_cluster_restarted`].
const CLUSTER_WORKERS: usize = 2;

/// Runs a scenario on a cluster of two processes (here, on loopback) of two workers each, with
/// the grid of cluster checkpoints (`grid_ms`). After `split` [`steps`] process 0 asks for a
/// checkpoint; every worker saves at the grid's next boundary while the input goes on to the
/// end. Then both processes stop, agree on the frontier to start from (process 0 also has a
/// newer one, process 1 has not), start again from their own states and take the input from
/// that boundary on. Returns process 0's views and the checkpoint's frontier.
///
/// With `slow_save`, process 1's workers keep running that long between reaching the boundary
/// and saving there, while process 0 (with the cluster's worker 0) is as quick as it can be.
pub fn run_cluster_restarted(
    scenario: &Scenario,
    split: usize,
    grid_ms: i64,
    slow_save: Option<Duration>,
) -> (Snapshot, Time) {
    // Each step at the time a source would send it (a feeder's time only moves forward).
    let mut high = Time::EPOCH;
    let steps: Vec<(Time, Batch)> = steps(scenario)
        .into_iter()
        .map(|(t, b)| {
            high = high.max(t);
            (high, b)
        })
        .collect();
    let addresses = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    if let Some(d) = slow_save
        && let Ok(mut slow) = crate::aligned::SLOW_SAVES.lock()
    {
        slow.push((addresses[1].clone(), d));
    }
    let config = |process: usize| Config {
        workers: CLUSTER_WORKERS,
        cluster: Some(crate::config::Cluster {
            process,
            addresses: addresses.clone(),
        }),
        checkpoint_grid_ms: Some(grid_ms),
        ..scenario.config.clone()
    };
    let end = scenario.now() + 1;
    let feed = |engines: &mut [Engine], part: &[(Time, Batch)], ask_after: Option<usize>| {
        let mut feeders: Vec<_> = engines
            .iter_mut()
            .map(|e| e.feeders().unwrap_or_else(|| panic!("feeders taken")))
            .collect();
        for (i, (t, batch)) in part.iter().enumerate() {
            feeders[i % 2]
                .send(*t, batch.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            for f in &mut feeders {
                f.advance_all(*t).unwrap_or_else(|e| panic!("{e}"));
            }
            if ask_after == Some(i) {
                // Waits for room in worker 0's channel.
                while !feeders[0]
                    .request_checkpoint()
                    .unwrap_or_else(|e| panic!("{e}"))
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        for f in &mut feeders {
            f.advance_all(end).unwrap_or_else(|e| panic!("{e}"));
        }
        let store = engines[0].store();
        assert!(
            store.wait_for(end, Duration::from_secs(120)),
            "views did not reach {end}"
        );
        store.snapshot()
    };

    let mut engines = start_cluster(vec![(config(0), None), (config(1), None)]);
    let collectors: Vec<_> = engines.iter_mut().map(collect_one).collect();
    feed(&mut engines, &steps, Some(split));
    let states: Vec<(Time, crate::engine::EngineState)> = collectors
        .into_iter()
        .map(|c| c.join().unwrap_or_else(|_| panic!("a collector panicked")))
        .collect();
    stop_cluster(engines);
    let at = states[0].0;
    assert!(
        states.iter().all(|(t, _)| *t == at),
        "processes saved at two frontiers"
    );

    // They agree on the newest frontier both have.
    let agreed: Vec<Option<Time>> = std::thread::scope(|s| {
        let asks: Vec<_> = [vec![at, at + grid_ms], vec![at]]
            .into_iter()
            .enumerate()
            .map(|(p, ours)| {
                let config = config(p);
                s.spawn(move || crate::aligned::agree_frontier(&config, &ours))
            })
            .collect();
        asks.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("agreement panicked"))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    });
    assert_eq!(agreed, vec![Some(at), Some(at)]);

    let restarted = states
        .into_iter()
        .enumerate()
        .map(|(p, (_, state))| (config(p), Some(state)))
        .collect();
    let mut engines = start_cluster(restarted);
    let rest: Vec<(Time, Batch)> = steps.into_iter().filter(|(t, _)| *t >= at).collect();
    let snapshot = feed(&mut engines, &rest, None);
    stop_cluster(engines);
    (snapshot, at)
}

//! `liveness`: each machine's last heartbeat and whether it is active, offline or in maintenance.
//!
//! ```sql
//! SELECT machine_id, max(heartbeat.timestamp) AS last_heartbeat,
//!        CASE WHEN registry.status = 'maintenance' THEN 'maintenance'
//!             WHEN now() < max(heartbeat.timestamp) + offline_after THEN 'active'
//!             ELSE 'offline' END AS status
//! FROM registry FULL JOIN heartbeats USING (machine_id) GROUP BY machine_id
//! ```
//! "Now" is the ingestion frontier, not a wall clock that something polls: the latest heartbeat
//! is published together with its own retraction from the online set, scheduled
//! `offline_after_ms` later (temporal filter). State is one latest heartbeat per machine.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::InputCapability;
use timely::dataflow::operators::generic::Operator;
use vendflow_protocol::{MachineId, MachineStatus, RegistryRecord, Timestamp};

use crate::checkpoint;
use crate::config::Config;
use crate::fold::{KeyedFold, Published};
use crate::operators::{Time, Waiting, hash_of, room_for_machines};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, RowWriter, col, null};

pub const LIVENESS: ViewDef = ViewDef {
    name: "liveness",
    description: "last heartbeat and status (active / offline / maintenance) per machine",
    columns: &[
        col("machine_id", Text),
        null("last_heartbeat", Time),
        col("status", Text),
        col("registered", Bool),
    ],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Active,
    Offline,
    Maintenance,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Offline => "offline",
            Status::Maintenance => "maintenance",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Liveness {
    pub machine_id: MachineId,
    pub last_heartbeat: Option<Timestamp>,
    pub status: Status,
    pub registered: bool,
}

/// What the fold hears of a machine: the newest of its heartbeats at each time
/// ([`newest_beats`]), and its registry records.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Fact {
    Registered(MachineStatus),
    Heartbeat(Timestamp),
}

/// The status rule, shared with the oracle.
pub fn status(registered: Option<MachineStatus>, online: bool) -> Status {
    match (registered, online) {
        (Some(MachineStatus::Maintenance), _) => Status::Maintenance,
        (Some(MachineStatus::Offline), _) => Status::Offline,
        (_, true) => Status::Active,
        (_, false) => Status::Offline,
    }
}

/// One machine: its registry statuses (a multiset: the registry can retract), its latest
/// heartbeat, whether that heartbeat is recent, and the one timer it has pending.
#[derive(Default, PartialEq, Serialize, Deserialize)]
struct State {
    registered: Vec<(MachineStatus, isize)>,
    last: Option<Timestamp>,
    online: bool,
    timer: Option<Time>,
}

/// What the liveness operator publishes: the view's row (kept as published, so its retraction
/// is not built again), and the status alone (for health, which must not hear about every
/// heartbeat, only about status changes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    Row(Row),
    Status(MachineId, Status),
}

/// Liveness per machine, folded in ingestion-time order. A heartbeat moves the machine's last
/// heartbeat (and its row); the machine goes offline when ingestion time reaches
/// `last + offline_after`, by a timer the machine holds at most one of. `heartbeats`: when each
/// machine's heartbeats happened, as delivered.
pub fn render<'s>(
    heartbeats: VecCollection<'s, Time, (MachineId, Timestamp)>,
    registry: VecCollection<'s, Time, RegistryRecord>,
    config: &Config,
) -> VecCollection<'s, Time, Out> {
    let offline_after = config.offline_after_ms;
    let deadline = move |last: Timestamp| last.saturating_add(offline_after);
    let registered = registry.flat_map(|r| match r {
        RegistryRecord::Machine(m) => Some((m.machine_id, Fact::Registered(m.status))),
        _ => None,
    });
    newest_beats(heartbeats).concat(registered).fold_by_key(
        "Liveness",
        Published::Kept,
        hash_of::<MachineId>,
        move |_m, state: &mut State, fact, diff, ctx| match fact {
            Fact::Registered(s) => {
                match state.registered.iter_mut().find(|(x, _)| *x == s) {
                    Some((_, c)) => *c += diff,
                    None => state.registered.push((s, diff)),
                }
                state.registered.retain(|(_, c)| *c != 0);
            }
            Fact::Heartbeat(ts) => {
                if diff <= 0 || state.last.is_some_and(|l| l >= ts) {
                    return;
                }
                state.last = Some(ts);
                let until = deadline(ts);
                state.online = until > ctx.now();
                if state.online && state.timer.is_none() {
                    state.timer = Some(until);
                    ctx.wake_at(until);
                }
            }
        },
        move |_m, state, ctx| {
            state.timer = None;
            let Some(until) = state.last.map(deadline) else {
                return;
            };
            state.online = until > ctx.now();
            if state.online {
                state.timer = Some(until);
                ctx.wake_at(until);
            }
        },
        |m, state, out| {
            let reg = state
                .registered
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(s, _)| *s)
                .max();
            if reg.is_none() && state.last.is_none() {
                return;
            }
            let status = status(reg, state.online);
            out.push(Out::Row(row(Liveness {
                machine_id: m.clone(),
                last_heartbeat: state.last,
                status,
                registered: reg.is_some(),
            })));
            out.push(Out::Status(m.clone(), status));
        },
    )
}

/// A time's heartbeats as the newest of each machine's: all the fold keeps of them is the
/// newest, and a machine's heartbeats of one time are folded at the same "now", so the newest
/// alone gives the same rows (an older one's offline timer would find the newer heartbeat and
/// change nothing). A bulk load's hour holds a machine's every heartbeat of that hour: 800,000
/// heartbeats of the 1 M benchmark, each a probe of the fold's table of machines (larger than
/// the cache) and a record through its exchange, become one record per machine.
///
/// Heartbeats wait per time until the input frontier has passed it ([`Waiting`], as the folds'
/// records do: the engine's state at a frontier holds them here, enrolled in checkpoints, never
/// in a channel). A machine's place in its time's list is found by its interned number, not a
/// hash ([`Newest`]). Records with a diff of 0 or less (a retraction) tell the fold nothing and
/// are not passed on, as the fold ignored them.
pub fn newest_beats<'s>(
    heartbeats: VecCollection<'s, Time, (MachineId, Timestamp)>,
) -> VecCollection<'s, Time, (MachineId, Fact)> {
    type Builder =
        timely::container::CapacityContainerBuilder<Vec<((MachineId, Fact), Time, isize)>>;
    heartbeats
        .inner
        .unary_frontier::<Builder, _, _, _>(Pipeline, "Liveness: newest beats", |cap, _info| {
            let held = Rc::new(RefCell::new(Newest {
                waiting: Waiting::new(),
                places: Vec::new(),
            }));
            let restored: Option<BTreeMap<Time, Beats>> =
                checkpoint::enrol("Liveness: newest beats", &held, |n: &Newest, out| {
                    checkpoint::whole(n.waiting.records(), out)
                });
            if let Some(saved) = restored {
                let waiting = &mut held.borrow_mut().waiting;
                waiting.restore(saved, cap);
                waiting.settle(waiting.first_time());
            }
            move |(input, frontier), output| {
                let Newest { waiting, places } = &mut *held.borrow_mut();
                input.for_each_stamp(|cap, data| {
                    for container in data {
                        note_all(waiting, places, &cap, output.output_index(), container);
                    }
                });
                // Records carry their own times: every ready time in one message, at the
                // capability held at (or before) the earliest.
                let frontier = frontier.frontier();
                if let Some(h) = waiting.hold().cloned() {
                    let mut session = output.session(&h);
                    while let Some((time, beats)) = waiting.pop_ready(&frontier) {
                        session.give_iterator(
                            beats
                                .into_iter()
                                .map(move |(m, ts)| ((m, Fact::Heartbeat(ts)), time, 1)),
                        );
                    }
                }
                waiting.settle(waiting.first_time());
            }
        })
        .as_collection()
}

/// A time's heartbeats: each machine's newest.
type Beats = Vec<(MachineId, Timestamp)>;

/// What [`newest_beats`] holds: the heartbeats of each time not yet passed on, one entry per
/// machine with its newest heartbeat; and per machine (by [`MachineId::grouping_key`], dense:
/// 200 KB for 50,000 machines, 16 MB at the id cap), the place of its entry in the list of the
/// time it last had a heartbeat at. The places are the process's numbers: never saved.
struct Newest {
    waiting: Waiting<(MachineId, Timestamp)>,
    places: Vec<u32>,
}

/// Takes one container of heartbeats as delivered (a machine's, when, at which time, how
/// many). A machine's place is used only when the entry there, in the list of the time at
/// hand, is the machine's: a place from another time's list (times interleave in a live
/// stream) or a stale one is passed over and the machine gets an entry of its own (a second
/// entry of a machine in one time's list is harmless: the fold keeps the newest). A time's list
/// is looked up once per run of its records (a container holds one time, mostly).
fn note_all(
    waiting: &mut Waiting<(MachineId, Timestamp)>,
    places: &mut Vec<u32>,
    cap: &InputCapability<Time>,
    output: usize,
    container: &mut Vec<((MachineId, Timestamp), Time, isize)>,
) {
    let mut records = container.drain(..).peekable();
    while let Some(&(_, t, _)) = records.peek() {
        let beats = waiting.queue_at(cap, output, t);
        while let Some(((m, ts), _, r)) = records.next_if(|(_, u, _)| *u == t) {
            if r <= 0 {
                continue;
            }
            let i = m.grouping_key();
            room_for_machines(places, i, 1, u32::MAX);
            if let Some((held, newest)) = beats.get_mut(places[i] as usize)
                && *held == m
            {
                *newest = (*newest).max(ts);
                continue;
            }
            if let Ok(place) = u32::try_from(beats.len()) {
                places[i] = place;
            }
            beats.push((m, ts));
        }
    }
}

pub fn row(l: Liveness) -> Row {
    Row::build(|r| {
        r.text(l.machine_id.as_str());
        r.opt(l.last_heartbeat, RowWriter::time);
        r.text(l.status.as_str());
        r.bool(l.registered);
    })
}

#[cfg(test)]
pub(crate) fn oracle(scenario: &crate::testing::Scenario) -> Vec<Liveness> {
    use std::collections::BTreeMap;
    let now = scenario.now();
    let mut machines: BTreeMap<MachineId, (Option<MachineStatus>, Option<Timestamp>)> =
        BTreeMap::new();
    for r in &scenario.registry {
        if let RegistryRecord::Machine(m) = r {
            machines.entry(m.machine_id.clone()).or_default().0 = Some(m.status);
        }
    }
    for (_, e) in &scenario.deliveries {
        if matches!(e.kind, vendflow_protocol::EventKind::Heartbeat(_)) {
            let last = &mut machines.entry(e.machine_id.clone()).or_default().1;
            *last = (*last).max(Some(e.timestamp));
        }
    }
    machines
        .into_iter()
        .map(|(m, (reg, last))| {
            let online =
                last.is_some_and(|ts| Timestamp(ts.0 + scenario.config.offline_after_ms) > now);
            Liveness {
                machine_id: m,
                last_heartbeat: last,
                status: status(reg, online),
                registered: reg.is_some(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value;
    use crate::testing::{self, Scenario};

    #[test]
    fn liveness_matches_batch_oracle_on_random_streams() {
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            testing::assert_view(
                views,
                "liveness",
                oracle(scenario).into_iter().map(row).collect(),
                seed,
            );
        }
    }

    type Seen = Rc<RefCell<Vec<((MachineId, Fact), Time, isize)>>>;
    type BeatsInput =
        differential_dataflow::input::InputSession<Time, (MachineId, Timestamp), isize>;

    /// [`newest_beats`] alone on `worker`: its input, what it passed on, and a probe of it.
    fn newest_beats_on(
        worker: &mut timely::worker::Worker,
    ) -> (
        BeatsInput,
        Seen,
        timely::dataflow::operators::probe::Handle<Time>,
    ) {
        use differential_dataflow::input::Input;

        let seen: Seen = Rc::default();
        let probe = timely::dataflow::operators::probe::Handle::new();
        let input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, beats) = scope.new_collection::<(MachineId, Timestamp), isize>();
            let seen = seen.clone();
            newest_beats(beats)
                .inspect(move |(d, t, r)| seen.borrow_mut().push((d.clone(), *t, *r)))
                .probe_with(&probe);
            input
        });
        (input, seen, probe)
    }

    /// The newest heartbeat of each machine at each time, against a naive max over the
    /// delivered records: heartbeats of several times in one batch (interleaved, so a machine's
    /// place in one time's list is taken by another's), duplicates delivered with a count, and
    /// retractions (newer than every heartbeat: were one passed on, the newest would be wrong).
    #[test]
    fn newest_beats_are_each_time_s_newest_heartbeat_of_each_machine() {
        use std::collections::BTreeMap;

        use rand::{Rng, SeedableRng};

        for seed in 0..8u64 {
            timely::execute_directly(move |worker| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let (mut input, seen, probe) = newest_beats_on(worker);
                let machines: Vec<MachineId> = (0..12)
                    .map(|i| MachineId::parse(&format!("newest-{seed}-{i}")))
                    .collect::<Result<_, _>>()
                    .expect("ids");
                let mut want: BTreeMap<(Time, MachineId), Timestamp> = BTreeMap::new();
                let mut positive = 0;
                for step in 0..6i64 {
                    let now = Timestamp(step * 1_000);
                    input.advance_to(now);
                    for _ in 0..rng.random_range(0..80) {
                        let m = machines[rng.random_range(0..machines.len())].clone();
                        // This step's time or one of the next two, mixed in one batch.
                        let t = Timestamp(now.0 + 1_000 * rng.random_range(0..3));
                        if rng.random_bool(0.1) {
                            input.update_at((m, Timestamp(1 << 40)), t, -1);
                            continue;
                        }
                        let ts = Timestamp(rng.random_range(0..1_000_000));
                        let count = if rng.random_bool(0.2) { 2 } else { 1 };
                        input.update_at((m.clone(), ts), t, count);
                        positive += 1;
                        let newest = want.entry((t, m)).or_insert(ts);
                        *newest = (*newest).max(ts);
                    }
                    input.flush();
                }
                input.advance_to(Timestamp(10_000));
                input.flush();
                while probe.less_than(&Timestamp(10_000)) {
                    worker.step();
                }
                let seen = seen.borrow();
                let mut got: BTreeMap<(Time, MachineId), Timestamp> = BTreeMap::new();
                for ((m, fact), t, r) in seen.iter() {
                    assert_eq!(*r, 1, "seed {seed}: one record per heartbeat passed on");
                    let Fact::Heartbeat(ts) = fact else {
                        panic!("seed {seed}: not a heartbeat: {fact:?}");
                    };
                    let newest = got.entry((*t, m.clone())).or_insert(*ts);
                    *newest = (*newest).max(*ts);
                }
                assert_eq!(got, want, "seed {seed}");
                assert!(
                    seen.len() <= positive,
                    "seed {seed}: {} records for {positive} heartbeats",
                    seen.len()
                );
            });
        }
    }

    /// Within one batch of one time a machine's heartbeats become one record.
    #[test]
    fn a_time_s_heartbeats_become_one_record_per_machine() {
        timely::execute_directly(|worker| {
            let (mut input, seen, probe) = newest_beats_on(worker);
            let (a, b) = (
                MachineId::parse("one-record-a").expect("id"),
                MachineId::parse("one-record-b").expect("id"),
            );
            for ts in [5, 9, 7] {
                input.insert((a.clone(), Timestamp(ts)));
                input.insert((b.clone(), Timestamp(ts * 10)));
            }
            input.advance_to(Timestamp(1));
            input.flush();
            while probe.less_than(&Timestamp(1)) {
                worker.step();
            }
            let mut seen = seen.borrow().clone();
            seen.sort();
            let beat = |m: &MachineId, ts: i64| {
                ((m.clone(), Fact::Heartbeat(Timestamp(ts))), Timestamp(0), 1)
            };
            assert_eq!(seen, vec![beat(&a, 9), beat(&b, 90)]);
        });
    }

    #[test]
    fn machine_goes_offline_after_two_silent_minutes_of_ingestion_time() {
        let mut scenario = Scenario::empty();
        let t = testing::BASE;
        scenario.deliver(t, testing::heartbeat("quiet", t, 4_000));
        scenario.deliver(t, testing::heartbeat("chatty", t, 4_000));
        scenario.deliver(
            t + 121_000,
            testing::heartbeat("chatty", t + 121_000, 4_000),
        );
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "liveness");
        assert_eq!(rows[0].cell(2), Value::text("active"), "{rows:?}");
        assert_eq!(rows[1].cell(2), Value::text("offline"), "{rows:?}");
    }
}

//! `revenue`: money from accepted (deduplicated) sale lines, on event time.
//!
//! ```sql
//! -- revenue_machine_daily: kept for `revenue_retention_days` after the day ends
//! SELECT machine_id, day(timestamp) AS day, sum(amount) AS revenue, sum(quantity) AS units, count(*) AS lines
//! FROM accepted_sale_lines GROUP BY 1, 2
//! -- revenue_location_daily: the same by the machine's registered location ('unassigned' if none)
//! -- revenue_location_hourly: the same by location and event-time hour, for today's hours only
//! -- revenue_fleet_today: the fleet's total for the day the ingestion clock is in
//! -- top_machines_today: the 10 machines with most revenue today (ties by machine id)
//! -- slot_sales: per (machine, slot), all time
//! SELECT machine_id, slot_number, sum(quantity) AS units, count(*) AS lines, sum(amount) AS revenue
//! FROM accepted_sale_lines GROUP BY 1, 2
//! ```
//! A late sale (delivered hours later from an offline machine) adds to the day it happened on:
//! the old total is retracted and the corrected one published. A sale for a day that has already
//! left `revenue_machine_daily` (older than `revenue_retention_days`) is still counted: it goes to
//! `revenue_corrections` (and `revenue_location_corrections`), by the day it arrived, and the
//! archive adds those rows to the day's history, so `revenue_by_machine_day` over SQL includes it.
//! ```sql
//! -- revenue_corrections: kept until 2 days after the day they arrived
//! SELECT machine_id, day(timestamp) AS day, day(arrival) AS arrived, sum(amount), sum(quantity), count(*)
//! FROM accepted_sale_lines WHERE day(timestamp) left revenue_machine_daily before arrival GROUP BY 1, 2, 3
//! ``` Totals are kept in the diff field
//! (`explode` + `count_total`), so state is one record per (machine, day), not per sale.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use std::hash::Hash;

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::operators::core::Map;
use vendflow_protocol::units::{MS_PER_DAY, MS_PER_HOUR};
use vendflow_protocol::{Cents, MachineId, Timestamp};

use crate::config::Config;
use crate::fold::{
    Ctx, KeyedFold, ParkSums, Published, split_late, sum_by_key, sum_by_key_parking, totals,
};
use crate::operators::{Time, hash_of};
use crate::parked::Parked;
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col};
use crate::sales::SaleLine;

pub const UNASSIGNED: &str = "unassigned";

/// Accumulated money, units and line count: a diff, summed by differential.
pub type Totals = (isize, isize, isize);
/// A correction's key: (machine or location, (day, arrival day)).
pub type CorrectionKey<K> = (K, (i64, i64));
/// A local day's key: (machine, (time zone, local day)).
pub type LocalDayKey = (MachineId, (Zone, i64));

/// A time zone as the local-day views key it: the zone itself, two bytes, so a sale line's key
/// costs no allocation and no parse (it was a `String` of the zone's name, made for every line:
/// half a million of them held at ten days of the benchmark fleet). Ordered, shown and
/// (de)serialized by its IANA name, as the views print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zone(pub chrono_tz::Tz);

impl Zone {
    pub const UTC: Zone = Zone(chrono_tz::UTC);

    /// The zone of an IANA name; a name that is not one is UTC, as the registry's check says.
    pub fn parse(name: &str) -> Zone {
        name.parse().map_or(Zone::UTC, Zone)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl AsRef<str> for Zone {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

impl Ord for Zone {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for Zone {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl serde::Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Zone {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse()
            .map(Zone)
            .map_err(|_| serde::de::Error::custom(format!("{name:?} is not an IANA time zone")))
    }
}

pub const MACHINE_DAILY: ViewDef = ViewDef {
    name: "revenue_machine_daily",
    description: "revenue per machine per event-time day (UTC)",
    columns: &[
        col("machine_id", Text),
        col("day", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const LOCATION_DAILY: ViewDef = ViewDef {
    name: "revenue_location_daily",
    description: "revenue per location per event-time day (UTC)",
    columns: &[
        col("location_id", Text),
        col("day", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const LOCATION_HOURLY: ViewDef = ViewDef {
    name: "revenue_location_hourly",
    description: "today's revenue per location per event-time hour (UTC); an hour leaves when its day ends",
    columns: &[
        col("location_id", Text),
        col("hour", Time),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const FLEET_TODAY: ViewDef = ViewDef {
    name: "revenue_fleet_today",
    description: "the whole fleet's revenue for the current day",
    columns: &[
        col("day", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const TOP_MACHINES_TODAY: ViewDef = ViewDef {
    name: "top_machines_today",
    description: "the 10 machines with the most revenue today",
    columns: &[
        col("rank", Int),
        col("machine_id", Text),
        col("revenue", Money),
    ],
};
pub const MACHINE_LOCAL_DAILY: ViewDef = ViewDef {
    name: "revenue_machine_local_daily",
    description: "revenue per machine per day of its location's own calendar (the location's IANA time zone; UTC without one)",
    columns: &[
        col("machine_id", Text),
        col("time_zone", Text),
        col("day", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const CORRECTIONS: ViewDef = ViewDef {
    name: "revenue_corrections",
    description: "sales for days that had already left revenue_machine_daily, per machine, day and arrival day (added to the history)",
    columns: &[
        col("machine_id", Text),
        col("day", Date),
        col("arrived", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const LOCATION_CORRECTIONS: ViewDef = ViewDef {
    name: "revenue_location_corrections",
    description: "sales for days that had already left revenue_location_daily, per location, day and arrival day (added to the history)",
    columns: &[
        col("location_id", Text),
        col("day", Date),
        col("arrived", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
pub const LOCAL_CORRECTIONS: ViewDef = ViewDef {
    name: "revenue_local_corrections",
    description: "sales for local days that had already left revenue_machine_local_daily, per machine, time zone, local day and arrival day (added to the history)",
    columns: &[
        col("machine_id", Text),
        col("time_zone", Text),
        col("day", Date),
        col("arrived", Date),
        col("revenue", Money),
        col("units", Int),
        col("lines", Int),
    ],
};
/// How long after the UTC day of the same date a local day may end: 12 h (UTC−12, the latest
/// zone), with room to spare.
const LOCAL_DAY_LAG: i64 = 14 * MS_PER_HOUR;

/// Days a correction stays live after the day it arrived (time for the archive to write it).
pub const CORRECTIONS_KEPT_DAYS: i64 = 2;

/// The UTC day of ingestion time `t`: the day a correction arrived on.
pub fn arrival_day(t: Time) -> i64 {
    t.day()
}

/// A correction's window (see [`sum_by_key`]): from now until [`CORRECTIONS_KEPT_DAYS`] after
/// the day it arrived.
pub fn correction_window(arrived: i64) -> (Time, Time) {
    (
        Time::EPOCH,
        Timestamp::of_day(arrived + 1 + CORRECTIONS_KEPT_DAYS),
    )
}
pub const SLOT_SALES: ViewDef = ViewDef {
    name: "slot_sales",
    description: "units, lines and revenue per machine and slot, all time",
    columns: &[
        col("machine_id", Text),
        col("slot_number", Int),
        col("units", Int),
        col("lines", Int),
        col("revenue", Money),
    ],
};

pub struct Revenue<'s> {
    pub machine_daily: VecCollection<'s, Time, ((MachineId, i64), Totals)>,
    pub location_daily: VecCollection<'s, Time, ((String, i64), Totals)>,
    /// Keyed by (location, hour start in ms), today's hours only.
    pub location_hourly: VecCollection<'s, Time, ((String, i64), Totals)>,
    pub fleet_today: VecCollection<'s, Time, (i64, Totals)>,
    pub top_today: VecCollection<'s, Time, (usize, MachineId, Cents)>,
    pub slot_sales: VecCollection<'s, Time, ((MachineId, u32), Totals)>,
    /// Lines (counted per machine-day) whose day had already left the live window on arrival.
    pub too_late: VecCollection<'s, Time, (MachineId, i64)>,
    /// Their totals, keyed by (machine, (day, arrival day)).
    pub corrections: VecCollection<'s, Time, (CorrectionKey<MachineId>, Totals)>,
    /// The same by location.
    pub location_corrections: VecCollection<'s, Time, (CorrectionKey<String>, Totals)>,
    /// Per machine, (time zone, local day).
    pub machine_local_daily: VecCollection<'s, Time, (LocalDayKey, Totals)>,
    /// Lines whose local day had left `machine_local_daily`, per (machine, zone), local day and
    /// arrival day.
    pub local_corrections: VecCollection<'s, Time, (CorrectionKey<(MachineId, Zone)>, Totals)>,
    /// Lines whose local day had already left `machine_local_daily` on arrival.
    pub local_too_late: VecCollection<'s, Time, MachineId>,
}

pub fn totals_of(line: &SaleLine) -> Totals {
    (line.amount.0 as isize, line.quantity as isize, 1)
}

const TOP: usize = 10;

/// Where the machines' closed days wait ([`Config::day_memory_ms`]): the UTC days' store and
/// the local days'.
pub type DayStores = (Parked, Parked);

pub fn render<'s>(
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    machine_location: VecCollection<'s, Time, (MachineId, String)>,
    location_zone: VecCollection<'s, Time, (String, String)>,
    config: &Config,
    day_stores: Option<DayStores>,
) -> Revenue<'s> {
    let retention = config.revenue_retention_days * MS_PER_DAY;
    let memory = config.day_memory_ms;
    let (utc_store, local_store) = day_stores.unzip();
    let by_machine = |k: &(MachineId, i64)| hash_of(&k.0);
    let today = |day: i64| (Timestamp::of_day(day), Timestamp::of_day(day + 1));

    let slot_sales = totals(sum_by_key(
        accepted.map(|l| ((l.machine_id.clone(), l.slot_number), totals_of(l))),
        "Revenue: slot sales",
        |k: &(MachineId, u32)| hash_of(&k.0),
        |_| (Time::EPOCH, Time::MAX),
    ));

    // Per machine and day, live until the day is `retention` old; later lines are too late.
    // A machine-day is quiet `memory` after its day: it waits on disk for the rest of its
    // retention.
    let daily = sum_by_key_parking(
        accepted.map(|l| ((l.machine_id.clone(), l.timestamp.day()), totals_of(l))),
        "Revenue: machine daily",
        by_machine,
        move |(_, day): &(MachineId, i64)| (Time::EPOCH, Timestamp::of_day(day + 1) + retention),
        utc_store.map(|store| ParkSums {
            store,
            quiet_from: Box::new(move |(_, day): &(MachineId, i64)| {
                Timestamp::of_day(day + 1).saturating_add(memory)
            }),
        }),
    );
    let (machine_daily, daily_late) = split_late(daily, "Revenue: machine daily split");
    let too_late = daily_late
        .clone()
        .inner
        .map::<Vec<_>, _, _>(|(((m, day), totals), t, r)| ((m, day), t, r * totals.2))
        .as_collection();
    let late_lines = daily_late
        .inner
        .map::<Vec<_>, _, _>(|(((m, day), totals), t, r)| {
            (((m, (day, arrival_day(t))), totals), t, r)
        })
        .as_collection();
    let corrections = totals(sum_by_key(
        late_lines,
        "Revenue: corrections",
        |k: &(MachineId, (i64, i64))| hash_of(&k.0),
        |(_, (_, arrived)): &(MachineId, (i64, i64))| correction_window(*arrived),
    ));
    let location_corrections = by_location(corrections.clone(), machine_location.clone());

    let location_daily = by_location(machine_daily.clone(), machine_location.clone());

    // Per machine and local day: each line in its machine's zone when it arrives.
    let local = sum_by_key_parking(
        local_days(accepted, machine_location.clone(), location_zone),
        "Revenue: machine local daily",
        |k: &LocalDayKey| hash_of(&k.0),
        // A local day ends at most 14 h after the UTC day of the same date.
        move |(_, (_, day)): &LocalDayKey| (Time::EPOCH, Timestamp::of_day(day + 2) + retention),
        local_store.map(|store| ParkSums {
            store,
            quiet_from: Box::new(move |(_, (_, day)): &LocalDayKey| {
                Timestamp::of_day(day + 1)
                    .saturating_add(LOCAL_DAY_LAG)
                    .saturating_add(memory)
            }),
        }),
    );
    let (machine_local_daily, local_late) = split_late(local, "Revenue: machine local daily split");
    let local_too_late = local_late.clone().map(|((m, _), _)| m);
    let late_local_lines = local_late
        .inner
        .map::<Vec<_>, _, _>(|(((m, (zone, day)), totals), t, r)| {
            ((((m, zone), (day, arrival_day(t))), totals), t, r)
        })
        .as_collection();
    let local_corrections = totals(sum_by_key(
        late_local_lines,
        "Revenue: local corrections",
        |k: &CorrectionKey<(MachineId, Zone)>| hash_of(&k.0.0),
        |(_, (_, arrived)): &CorrectionKey<(MachineId, Zone)>| correction_window(*arrived),
    ));

    // Today's hours only: per machine first, then per location.
    let machine_hourly = totals(sum_by_key(
        accepted.map(|l| {
            let hour = l.timestamp.0.div_euclid(MS_PER_HOUR) * MS_PER_HOUR;
            ((l.machine_id.clone(), hour), totals_of(l))
        }),
        "Revenue: machine hourly",
        by_machine,
        move |(_, hour): &(MachineId, i64)| today(hour.div_euclid(MS_PER_DAY)),
    ));
    let location_hourly = by_location(machine_hourly, machine_location);

    // The day the ingestion clock is in: a line of that day is never too late for the machine
    // totals above, so summing the lines directly equals summing those totals.
    let fleet_today = totals(sum_by_key(
        accepted.map(|l| (l.timestamp.day(), totals_of(l))),
        "Revenue: fleet today",
        |day: &i64| *day as u64,
        move |day: &i64| today(*day),
    ));
    let machine_today = totals(sum_by_key(
        accepted.map(|l| ((l.machine_id.clone(), l.timestamp.day()), totals_of(l))),
        "Revenue: machine today",
        by_machine,
        move |(_, day): &(MachineId, i64)| today(*day),
    ));

    // Top machines today in two rounds, so that no one operator re-sorts the whole fleet: the
    // top 10 of each of 16 groups (a sorted multiset per group), then the top 10 of those.
    let top_today = machine_today
        .map(|((m, day), (cents, _, _))| ((day, hash_of(&m) % 16), (-(cents as i64), m)))
        .fold_by_key(
            "Revenue: top per group",
            Published::Kept,
            |k: &(i64, u64)| k.1,
            add_to_multiset,
            |_, _, _| {},
            |(day, _), set, out| {
                out.extend(set.keys().take(TOP).map(|v| (*day, v.clone())));
            },
        )
        .fold_by_key(
            "Revenue: top of fleet",
            Published::Kept,
            |day: &i64| *day as u64,
            add_to_multiset,
            |_, _, _| {},
            |_, set, out| {
                out.extend(
                    set.keys()
                        .take(TOP)
                        .enumerate()
                        .map(|(rank, (neg, m))| (rank + 1, m.clone(), Cents(-neg))),
                );
            },
        );

    Revenue {
        machine_daily,
        location_daily,
        location_hourly,
        fleet_today,
        top_today,
        slot_sales,
        too_late,
        corrections,
        location_corrections,
        machine_local_daily,
        local_corrections,
        local_too_late,
    }
}

/// What the zone operator hears per location: a machine there, or the location's zone.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum AtLocation {
    Machine(MachineId),
    Zone(String),
}

/// What the local-day operator hears per machine: its zone, or a sale line (time, totals).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum ForMachine {
    Zone(Zone),
    Sale(i64, Totals),
}

/// A multiset of a few values (a registry record can be retracted and replaced).
fn count_in<T: PartialEq>(set: &mut Vec<(T, isize)>, value: T, diff: isize) {
    match set.iter_mut().find(|(x, _)| *x == value) {
        Some((_, c)) => *c += diff,
        None => set.push((value, diff)),
    }
    set.retain(|(_, c)| *c != 0);
}

#[derive(Default, PartialEq, Serialize, Deserialize)]
struct Zoned {
    machines: Vec<(MachineId, isize)>,
    zones: Vec<(String, isize)>,
}

/// Each accepted line as ((machine, (zone, local day)), totals): the day in its machine's
/// location's time zone at the time the line arrives (UTC for a machine with no zoned location).
/// A zone that changes later does not move days already counted.
fn local_days<'s>(
    accepted: &mut crate::operators::FanOut<'s, SaleLine>,
    machine_location: VecCollection<'s, Time, (MachineId, String)>,
    location_zone: VecCollection<'s, Time, (String, String)>,
) -> VecCollection<'s, Time, (LocalDayKey, Totals)> {
    // Which zone each machine is in: per location, its machines and its zone.
    let machine_zone = machine_location
        .map(|(m, l)| (l, AtLocation::Machine(m)))
        .concat(location_zone.map(|(l, z)| (l, AtLocation::Zone(z))))
        .fold_by_key(
            "Revenue: machine zones",
            Published::Kept,
            hash_of::<String>,
            |_l, state: &mut Zoned, change, diff, _ctx| match change {
                AtLocation::Machine(m) => count_in(&mut state.machines, m, diff),
                AtLocation::Zone(z) => count_in(&mut state.zones, z, diff),
            },
            |_, _, _| {},
            |_l, state, out| {
                let Some((zone, _)) = state.zones.iter().rev().find(|(_, c)| *c > 0) else {
                    return;
                };
                for (m, c) in &state.machines {
                    if *c > 0 {
                        out.push((m.clone(), zone.clone()));
                    }
                }
            },
        );
    machine_zone
        .map(|(m, z)| (m, ForMachine::Zone(Zone::parse(&z))))
        .concat(accepted.map(|l| {
            (
                l.machine_id.clone(),
                ForMachine::Sale(l.timestamp.0, totals_of(l)),
            )
        }))
        .fold_by_key(
            "Revenue: local days",
            Published::Kept,
            hash_of::<MachineId>,
            |m, zones: &mut Vec<(Zone, isize)>, input, diff, ctx| match input {
                ForMachine::Zone(z) => count_in(zones, z, diff),
                ForMachine::Sale(ts, t) => {
                    let zone = zones
                        .iter()
                        .rev()
                        .find(|(_, c)| *c > 0)
                        .map_or(Zone::UTC, |(z, _)| *z);
                    let day = vendflow_protocol::registry::local_day(ts, zone.0);
                    ctx.give(((m.clone(), (zone, day)), t), diff);
                }
            },
            |_, _, _| {},
            |_, _, _| {},
        )
}

/// A sorted multiset's update (`BTreeMap` of value → count).
fn add_to_multiset<K, V: Ord, O>(
    _key: &K,
    set: &mut BTreeMap<V, isize>,
    value: V,
    diff: isize,
    _ctx: &mut Ctx<'_, K, O>,
) {
    match set.entry(value) {
        std::collections::btree_map::Entry::Occupied(mut o) => {
            *o.get_mut() += diff;
            if *o.get() == 0 {
                o.remove();
            }
        }
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(diff);
        }
    }
}

/// What the location operator hears per machine: its registered location, or a change of one of
/// its totals.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum ByMachine<K> {
    Location(String),
    Totals(K, Totals),
}

/// One machine: its locations (a multiset: the registry can retract and replace) and its live
/// totals by day or hour, in key order. A sorted vector rather than a map: a machine has a day or
/// an hour or a few live, and a map's first node alone is ~450 bytes.
#[derive(PartialEq, Serialize, Deserialize)]
struct Located<K> {
    locations: Vec<(String, isize)>,
    totals: Vec<(K, (Totals, isize))>,
}

impl<K> Default for Located<K> {
    fn default() -> Self {
        Located {
            locations: Vec::new(),
            totals: Vec::new(),
        }
    }
}

/// Re-keys per-machine totals by the machine's location (`UNASSIGNED` for a machine without
/// one) and sums them. One fold per machine holds its location and its totals, so a location
/// change moves all of them (what a join would do) without arranging every total twice.
fn by_location<'s, K>(
    by_machine: VecCollection<'s, Time, ((MachineId, K), Totals)>,
    machine_location: VecCollection<'s, Time, (MachineId, String)>,
) -> VecCollection<'s, Time, ((String, K), Totals)>
where
    K: ExchangeData + Hash + Ord + Copy,
{
    let located = by_machine
        .map(|((m, key), t)| (m, ByMachine::Totals(key, t)))
        .concat(machine_location.map(|(m, l)| (m, ByMachine::Location(l))))
        .fold_by_key(
            "Revenue: by location",
            Published::Recomputed,
            hash_of::<MachineId>,
            |_m, state: &mut Located<K>, change, diff, _ctx| match change {
                ByMachine::Location(l) => count_in(&mut state.locations, l, diff),
                ByMachine::Totals(key, t) => {
                    let at = match state.totals.binary_search_by(|(k, _)| k.cmp(&key)) {
                        Ok(at) => at,
                        Err(at) => {
                            // Most machines hold one day (one hour) at a time: a first entry
                            // is allocated alone, not with room for three more.
                            if state.totals.capacity() == 0 {
                                state.totals.reserve_exact(1);
                            }
                            state.totals.insert(at, (key, (Totals::default(), 0)));
                            at
                        }
                    };
                    let entry = &mut state.totals[at].1;
                    if diff > 0 {
                        entry.0 = t;
                    }
                    entry.1 += diff;
                    if entry.1 == 0 {
                        state.totals.remove(at);
                        if state.totals.is_empty() {
                            state.totals = Vec::new();
                        }
                    }
                }
            },
            |_, _, _| {},
            |_m, state, out| {
                let located: Vec<(&String, isize)> = state
                    .locations
                    .iter()
                    .filter(|(_, c)| *c > 0)
                    .map(|(l, c)| (l, *c))
                    .collect();
                for (key, (t, _)) in &state.totals {
                    if located.is_empty() {
                        out.push(((UNASSIGNED.to_owned(), *key), *t));
                    }
                    for (l, c) in &located {
                        for _ in 0..*c {
                            out.push((((*l).clone(), *key), *t));
                        }
                    }
                }
            },
        );
    totals(sum_by_key(
        located,
        "Revenue: location sums",
        |k: &(String, K)| hash_of(&k.0),
        |_| (Time::EPOCH, Time::MAX),
    ))
}

fn totals_cells(t: Totals) -> [Value; 3] {
    [
        Value::Money(Cents(t.0 as i64)),
        Value::Int(t.1 as i64),
        Value::Int(t.2 as i64),
    ]
}

pub fn machine_daily_row(((m, day), t): ((MachineId, i64), Totals)) -> Row {
    let mut row = vec![Value::text(m.as_str()), Value::Date(day)];
    row.extend(totals_cells(t));
    row.into()
}

pub fn location_daily_row(((loc, day), t): ((String, i64), Totals)) -> Row {
    let mut row = vec![Value::text(loc), Value::Date(day)];
    row.extend(totals_cells(t));
    row.into()
}

pub fn local_daily_row<Z: AsRef<str>>(
    ((m, (zone, day)), t): ((MachineId, (Z, i64)), Totals),
) -> Row {
    let mut row = vec![
        Value::text(m.as_str()),
        Value::text(zone.as_ref()),
        Value::Date(day),
    ];
    row.extend(totals_cells(t));
    row.into()
}

pub fn correction_row(((m, (day, arrived)), t): ((MachineId, (i64, i64)), Totals)) -> Row {
    let mut row = vec![
        Value::text(m.as_str()),
        Value::Date(day),
        Value::Date(arrived),
    ];
    row.extend(totals_cells(t));
    row.into()
}

pub fn local_correction_row<Z: AsRef<str>>(
    (((m, zone), (day, arrived)), t): (CorrectionKey<(MachineId, Z)>, Totals),
) -> Row {
    let mut row = vec![
        Value::text(m.as_str()),
        Value::text(zone.as_ref()),
        Value::Date(day),
        Value::Date(arrived),
    ];
    row.extend(totals_cells(t));
    row.into()
}

pub fn location_correction_row(((l, (day, arrived)), t): ((String, (i64, i64)), Totals)) -> Row {
    let mut row = vec![Value::text(l), Value::Date(day), Value::Date(arrived)];
    row.extend(totals_cells(t));
    row.into()
}

pub fn location_hourly_row(((loc, hour), t): ((String, i64), Totals)) -> Row {
    let mut row = vec![Value::text(loc), Value::Time(Timestamp(hour))];
    row.extend(totals_cells(t));
    row.into()
}

pub fn fleet_today_row((day, t): (i64, Totals)) -> Row {
    let mut row = vec![Value::Date(day)];
    row.extend(totals_cells(t));
    row.into()
}

pub fn top_row((rank, m, cents): (usize, MachineId, Cents)) -> Row {
    Row::from([
        Value::Int(rank as i64),
        Value::text(m.as_str()),
        Value::Money(cents),
    ])
}

pub fn slot_sales_row(((m, slot), t): ((MachineId, u32), Totals)) -> Row {
    Row::build(|r| {
        r.text(m.as_str());
        r.int(i64::from(slot));
        r.int(t.1 as i64);
        r.int(t.2 as i64);
        r.money(Cents(t.0 as i64));
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{self, Scenario};

    fn add(into: &mut Totals, t: Totals) {
        into.0 += t.0;
        into.1 += t.1;
        into.2 += t.2;
    }

    #[test]
    fn revenue_views_match_batch_oracle_on_random_streams() {
        let mut hours_seen = 0;
        let mut corrections_seen = 0;
        for seed in 0..6 {
            let (scenario, views) = testing::random_run(seed);
            let config = &scenario.config;
            let now = scenario.now();
            let (accepted, _, _) = crate::sales::oracle(&scenario.deliveries, config);
            let retention = config.revenue_retention_days * MS_PER_DAY;
            let locations = scenario.machine_locations();

            let mut machine_daily: BTreeMap<(MachineId, i64), Totals> = BTreeMap::new();
            let mut slots: BTreeMap<(MachineId, u32), Totals> = BTreeMap::new();
            for (t, l) in &accepted {
                add(
                    slots
                        .entry((l.machine_id.clone(), l.slot_number))
                        .or_default(),
                    totals_of(l),
                );
                let until = Timestamp((l.timestamp.day() + 1) * MS_PER_DAY + retention);
                if until > now && until > *t {
                    add(
                        machine_daily
                            .entry((l.machine_id.clone(), l.timestamp.day()))
                            .or_default(),
                        totals_of(l),
                    );
                }
            }
            // Lines whose day had left the live view when they arrived: corrections, by the
            // day they arrived, until two days after it.
            let mut corrections: BTreeMap<(MachineId, (i64, i64)), Totals> = BTreeMap::new();
            for (t, l) in &accepted {
                let until = Timestamp((l.timestamp.day() + 1) * MS_PER_DAY + retention);
                let arrived = t.day();
                if until <= *t
                    && Timestamp((arrived + 1 + CORRECTIONS_KEPT_DAYS) * MS_PER_DAY) > now
                {
                    add(
                        corrections
                            .entry((l.machine_id.clone(), (l.timestamp.day(), arrived)))
                            .or_default(),
                        totals_of(l),
                    );
                }
            }
            corrections_seen += corrections.len();
            // No location has a time zone here: local days are UTC days, kept a day longer.
            let mut local: BTreeMap<(MachineId, (String, i64)), Totals> = BTreeMap::new();
            for (t, l) in &accepted {
                let until = Timestamp((l.timestamp.day() + 2) * MS_PER_DAY + retention);
                if until > now && until > *t {
                    add(
                        local
                            .entry((l.machine_id.clone(), ("UTC".to_owned(), l.timestamp.day())))
                            .or_default(),
                        totals_of(l),
                    );
                }
            }
            testing::assert_view(
                views,
                "revenue_machine_local_daily",
                local.into_iter().map(local_daily_row).collect(),
                seed,
            );
            // And the local days' own corrections (a day later than the UTC ones).
            let mut local_corrections: BTreeMap<CorrectionKey<(MachineId, String)>, Totals> =
                BTreeMap::new();
            for (t, l) in &accepted {
                let until = Timestamp((l.timestamp.day() + 2) * MS_PER_DAY + retention);
                let arrived = t.day();
                if until <= *t
                    && Timestamp((arrived + 1 + CORRECTIONS_KEPT_DAYS) * MS_PER_DAY) > now
                {
                    add(
                        local_corrections
                            .entry((
                                (l.machine_id.clone(), "UTC".to_owned()),
                                (l.timestamp.day(), arrived),
                            ))
                            .or_default(),
                        totals_of(l),
                    );
                }
            }
            testing::assert_view(
                views,
                "revenue_local_corrections",
                local_corrections
                    .into_iter()
                    .map(local_correction_row)
                    .collect(),
                seed,
            );
            let today = now.day();

            let location_of = |m: &MachineId| {
                locations
                    .get(m)
                    .cloned()
                    .unwrap_or_else(|| UNASSIGNED.to_owned())
            };
            let mut location_hourly: BTreeMap<(String, i64), Totals> = BTreeMap::new();
            for (_, l) in &accepted {
                if l.timestamp.day() == today {
                    let hour = l.timestamp.0 - l.timestamp.0.rem_euclid(MS_PER_HOUR);
                    add(
                        location_hourly
                            .entry((location_of(&l.machine_id), hour))
                            .or_default(),
                        totals_of(l),
                    );
                }
            }
            let mut location_daily: BTreeMap<(String, i64), Totals> = BTreeMap::new();
            let mut fleet: BTreeMap<i64, Totals> = BTreeMap::new();
            for ((m, day), t) in &machine_daily {
                add(
                    location_daily.entry((location_of(m), *day)).or_default(),
                    *t,
                );
                if *day == today {
                    add(fleet.entry(*day).or_default(), *t);
                }
            }
            let mut ranking: Vec<(i64, MachineId)> = machine_daily
                .iter()
                .filter(|((_, day), _)| *day == today)
                .map(|((m, _), t)| (-(t.0 as i64), m.clone()))
                .collect();
            ranking.sort();
            let top: Vec<Row> = ranking
                .into_iter()
                .take(TOP)
                .enumerate()
                .map(|(i, (neg, m))| top_row((i + 1, m, Cents(-neg))))
                .collect();

            testing::assert_view(
                views,
                "revenue_machine_daily",
                machine_daily.into_iter().map(machine_daily_row).collect(),
                seed,
            );
            let mut location_corrections: BTreeMap<(String, (i64, i64)), Totals> = BTreeMap::new();
            for ((m, key), t) in &corrections {
                add(
                    location_corrections
                        .entry((location_of(m), *key))
                        .or_default(),
                    *t,
                );
            }
            testing::assert_view(
                views,
                "revenue_corrections",
                corrections.into_iter().map(correction_row).collect(),
                seed,
            );
            testing::assert_view(
                views,
                "revenue_location_corrections",
                location_corrections
                    .into_iter()
                    .map(location_correction_row)
                    .collect(),
                seed,
            );
            testing::assert_view(
                views,
                "revenue_location_daily",
                location_daily.into_iter().map(location_daily_row).collect(),
                seed,
            );
            hours_seen += location_hourly.len();
            testing::assert_view(
                views,
                "revenue_location_hourly",
                location_hourly
                    .into_iter()
                    .map(location_hourly_row)
                    .collect(),
                seed,
            );
            testing::assert_view(
                views,
                "revenue_fleet_today",
                fleet.into_iter().map(fleet_today_row).collect(),
                seed,
            );
            testing::assert_view(views, "top_machines_today", top, seed);
            testing::assert_view(
                views,
                "slot_sales",
                slots.into_iter().map(slot_sales_row).collect(),
                seed,
            );
        }
        assert!(
            hours_seen > 0,
            "the random streams never sold anything today"
        );
        assert!(
            corrections_seen > 0,
            "the random streams never delivered a sale after its day left the live view"
        );
    }

    #[test]
    fn zones_are_ordered_and_sent_by_their_names() -> Result<(), serde_json::Error> {
        let tokyo = Zone::parse("Asia/Tokyo");
        assert_eq!(tokyo.name(), "Asia/Tokyo");
        assert_eq!(Zone::parse("Mars/Olympus_Mons"), Zone::UTC);
        let mut zones = [Zone::UTC, tokyo, Zone::parse("America/Lima")];
        zones.sort();
        assert_eq!(zones.map(Zone::name), ["America/Lima", "Asia/Tokyo", "UTC"]);
        let text = serde_json::to_string(&tokyo)?;
        assert_eq!(text, "\"Asia/Tokyo\"");
        assert_eq!(serde_json::from_str::<Zone>(&text)?, tokyo);
        assert!(serde_json::from_str::<Zone>("\"Mars/Olympus_Mons\"").is_err());
        Ok(())
    }

    /// A scenario with machine `tokyo` at Haneda airport (time zone Asia/Tokyo).
    fn tokyo() -> Scenario {
        use vendflow_protocol::{Location, LocationType, Micro, RegistryRecord};
        let mut scenario = Scenario::empty();
        scenario.registry.push(RegistryRecord::Location(Location {
            location_id: "haneda".into(),
            client_id: "c".into(),
            address: "Haneda Airport".into(),
            lat: Micro(35_549_000),
            lng: Micro(139_779_000),
            location_type: LocationType::Airport,
            region: None,
            time_zone: Some("Asia/Tokyo".into()),
        }));
        scenario.register_machine("tokyo", "haneda", &[(1, 10)]);
        scenario
    }

    #[test]
    fn a_machine_in_tokyo_closes_its_day_at_tokyo_midnight() {
        let mut scenario = tokyo();
        let day0 = testing::BASE.div_euclid(MS_PER_DAY);
        // 16:00 UTC is 01:00 the next day in Tokyo; 10:00 UTC is 19:00 the same day.
        let late = testing::BASE + 16 * MS_PER_HOUR;
        let early = testing::BASE + 10 * MS_PER_HOUR;
        for (m, ts, txn) in [
            ("tokyo", late, "a"),
            ("tokyo", early, "b"),
            ("nowhere", late, "c"),
        ] {
            scenario.deliver(ts, testing::sale(m, ts, 1, 200, txn));
        }
        let views = testing::run(&scenario);
        let mut rows = testing::rows(&views, "revenue_machine_local_daily");
        rows.sort();
        let got: Vec<(Value, Value, Value)> = rows
            .iter()
            .map(|r| (r.cell(0), r.cell(1), r.cell(2)))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Value::text("nowhere"),
                    Value::text("UTC"),
                    Value::Date(day0)
                ),
                (
                    Value::text("tokyo"),
                    Value::text("Asia/Tokyo"),
                    Value::Date(day0)
                ),
                (
                    Value::text("tokyo"),
                    Value::text("Asia/Tokyo"),
                    Value::Date(day0 + 1)
                ),
            ]
        );
        // The UTC view keeps both Tokyo sales on the UTC day.
        let utc = testing::rows(&views, "revenue_machine_daily");
        assert!(
            utc.iter()
                .any(|r| r.cell(0) == Value::text("tokyo") && r.cell(4) == Value::Int(2))
        );
    }

    /// A Tokyo sale delivered 40 days late: its local day has left the local view, so it is a
    /// local correction on Tokyo's date (and a UTC correction on the UTC date).
    #[test]
    fn a_sale_after_its_local_day_left_the_view_is_a_local_correction() {
        let mut scenario = tokyo();
        let day0 = testing::BASE.div_euclid(MS_PER_DAY);
        // 16:00 UTC on day 0 is 01:00 on day 1 in Tokyo.
        let sold = testing::BASE + 16 * MS_PER_HOUR;
        let arrives = testing::BASE + 40 * MS_PER_DAY;
        scenario.deliver(sold, testing::sale("tokyo", sold, 1, 200, "on-time"));
        scenario.deliver(arrives, testing::sale("tokyo", sold, 1, 350, "late"));
        let machine = testing::machine;
        let views = testing::run(&scenario);
        let local = testing::rows(&views, "revenue_local_corrections");
        assert_eq!(
            local,
            [local_correction_row((
                (
                    (machine("tokyo"), "Asia/Tokyo".to_owned()),
                    (day0 + 1, day0 + 40)
                ),
                (350, 1, 1)
            ))]
        );
        let utc = testing::rows(&views, "revenue_corrections");
        assert_eq!(
            utc,
            [correction_row((
                (machine("tokyo"), (day0, day0 + 40)),
                (350, 1, 1)
            ))]
        );
    }

    #[test]
    fn late_sale_updates_its_own_day_revenue() {
        let mut scenario = Scenario::empty();
        let day0 = testing::BASE;
        let day1 = day0 + MS_PER_DAY;
        scenario.deliver(day0 + 1_000, testing::sale("m1", day0 + 1_000, 1, 200, "a"));
        scenario.deliver(day1 + 5_000, testing::sale("m1", day1 + 5_000, 1, 300, "b"));
        // Buffered while offline: happened on day 0, arrives on day 1.
        scenario.deliver(day1 + 9_000, testing::sale("m1", day0 + 7_000, 2, 450, "c"));
        let views = testing::run(&scenario);
        let rows = testing::rows(&views, "revenue_machine_daily");
        let d0 = day0.div_euclid(MS_PER_DAY);
        assert_eq!(rows[0].cell(1), Value::Date(d0));
        assert_eq!(rows[0].cell(2), Value::Money(Cents(650)));
        assert_eq!(rows[1].cell(2), Value::Money(Cents(300)));
        assert_eq!(
            testing::rows(&views, "revenue_fleet_today")[0].cell(1),
            Value::Money(Cents(300))
        );
    }

    /// In a live engine a machine's days keep their rows on disk once the day has been over for
    /// `day_memory_ms` (a local day 12 hours more); a late sale for such a day changes its row
    /// there, and the views read as they do with every row in memory.
    #[test]
    fn old_days_keep_their_rows_on_disk_and_a_late_sale_changes_them_there() {
        let mut scenario = tokyo();
        assert!(scenario.config.cold_views);
        scenario.config.day_memory_ms = MS_PER_HOUR;
        let midnight = testing::BASE.div_euclid(MS_PER_DAY) * MS_PER_DAY;
        // 10:00 UTC (19:00 in Tokyo) on days 0 to 3, each sale delivered when made.
        for day in 0..4 {
            let ts = midnight + day * MS_PER_DAY + 10 * MS_PER_HOUR;
            for m in ["tokyo", "nowhere"] {
                scenario.deliver(ts, testing::sale(m, ts, 1, 200, &format!("{m}-{day}")));
            }
        }
        // Day 1's sale from a buffer, delivered on day 3 at 11:00, when day 1's rows have been
        // on disk since 01:00 (UTC) and 13:00 (local) on day 2.
        let sold = midnight + MS_PER_DAY + 10 * MS_PER_HOUR + 60_000;
        let arrives = midnight + 3 * MS_PER_DAY + 11 * MS_PER_HOUR;
        scenario.deliver(arrives, testing::sale("tokyo", sold, 1, 350, "late"));
        // The store sweeps its cold rows at most once a minute of its frontier, and which
        // frontiers it publishes depends on how fast the workers run: the late sale's new row
        // may or may not be swept out in the publication that brings it. A heartbeat two
        // minutes on makes the last publication sweep, whatever came before it.
        let after = arrives + 2 * 60_000;
        scenario.deliver(after, testing::heartbeat("nowhere", after, 40));

        let run = testing::run_parking(&scenario, None);
        // At 11:02 on day 3 the UTC days 0 to 2 have been over for an hour or more, the local
        // days 0 and 1 for thirteen hours or more: both machines' rows of those days are on
        // disk, Tokyo's day 1 too, whose old row the late sale retracted there and whose new
        // row the last sweep moved there. The card sales' windows are on disk too.
        let mut on_disk = run.on_disk.clone();
        on_disk.sort();
        assert_eq!(
            on_disk,
            [
                ("anomaly_windows", 4),
                ("revenue_machine_daily", 6),
                ("revenue_machine_local_daily", 4)
            ]
        );
        // Tokyo's (day, lines) in a view with those columns.
        let lines = |view: &str, day: usize, lines: usize| {
            let mut rows: Vec<(Value, Value)> = testing::rows(&run.views, view)
                .iter()
                .filter(|r| r.cell(0) == Value::text("tokyo"))
                .map(|r| (r.cell(day), r.cell(lines)))
                .collect();
            rows.sort();
            rows
        };
        let day0 = midnight / MS_PER_DAY;
        let expected: Vec<(Value, Value)> = (0..4)
            .map(|d| {
                (
                    Value::Date(day0 + d),
                    Value::Int(if d == 1 { 2 } else { 1 }),
                )
            })
            .collect();
        assert_eq!(lines("revenue_machine_daily", 1, 4), expected);
        assert_eq!(lines("revenue_machine_local_daily", 2, 5), expected);
        assert!(
            testing::rows(&run.views, "revenue_corrections").is_empty(),
            "the late sale's day is still in the view"
        );

        // The same views with every row in memory.
        scenario.config.cold_views = false;
        let in_memory = testing::run_parking(&scenario, None);
        assert!(in_memory.on_disk.is_empty());
        for view in ["revenue_machine_daily", "revenue_machine_local_daily"] {
            let mut cold = testing::rows(&run.views, view);
            let mut warm = testing::rows(&in_memory.views, view);
            cold.sort();
            warm.sort();
            assert_eq!(cold, warm, "{view}");
        }
    }
}

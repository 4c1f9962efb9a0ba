//! A sales history as daily series: units per slot and day, per machine and day, and when each
//! machine was first seen.
//!
//! Read from vendflow's JSON Lines telemetry (what `vendflow replay` reads; a CSV export becomes
//! one with `vendflow import csv`), in any order. Each sale line counts once however often it
//! was delivered: its identity is the engine's (machine, transaction, coil). Days are UTC days,
//! as the engine's forecast counts them. A line that does not decode is counted and its first
//! few messages kept for the report, never a panic and never silently skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use foldhash::fast::RandomState;
use vendflow_protocol::registry::{LocationType, RegistryRecord};
use vendflow_protocol::{EventKind, MachineId, Timestamp, decode};

use crate::ForecastError;

/// One slot's units per day (index 0 is the history's first day).
#[derive(Clone, Debug)]
pub struct SlotSeries {
    pub slot_number: u32,
    /// The day of its first sale.
    pub first_sale: usize,
    pub units: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct MachineSeries {
    pub machine_id: MachineId,
    /// From the registry, if one was given and names the machine's location.
    pub location_type: Option<LocationType>,
    /// The first day with any event of the machine.
    pub first_day: usize,
    /// Units per day, all slots together.
    pub units: Vec<u32>,
    /// By slot number.
    pub slots: Vec<SlotSeries>,
}

/// What reading the history found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReadStats {
    pub lines: u64,
    pub events: u64,
    pub sale_lines: u64,
    /// Sale lines delivered again (the same machine, transaction and coil): counted once.
    pub duplicates: u64,
    /// Lines or events that did not decode.
    pub errors: u64,
    /// The first few of them: `line N: message`.
    pub first_errors: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct History {
    /// The epoch day (UTC) of day 0.
    pub start_day: i64,
    pub days: usize,
    pub machines: Vec<MachineSeries>,
    pub stats: ReadStats,
}

impl History {
    /// The weekday (Monday 0) of day 0.
    pub fn weekday_of_0(&self) -> usize {
        usize::from(Timestamp(self.start_day * vendflow_protocol::units::MS_PER_DAY).weekday())
    }
}

const KEPT_ERRORS: usize = 10;

/// Builds a [`History`] from events in any order.
#[derive(Default)]
pub struct HistoryBuilder {
    machines: HashMap<MachineId, Building, RandomState>,
    seen: HashSet<(MachineId, vendflow_protocol::Text, u32), RandomState>,
    stats: ReadStats,
}

#[derive(Default)]
struct Building {
    first_day: Option<i64>,
    /// (slot, day) → units.
    units: BTreeMap<(u32, i64), u32>,
}

impl HistoryBuilder {
    pub fn event(&mut self, event: vendflow_protocol::Event) {
        self.stats.events += 1;
        let day = event.timestamp.day();
        let machine = self.machines.entry(event.machine_id.clone()).or_default();
        machine.first_day = Some(machine.first_day.map_or(day, |d| d.min(day)));
        if let EventKind::Sale(sale) = event.kind {
            self.stats.sale_lines += 1;
            let identity = (event.machine_id, sale.transaction_id, sale.slot_number);
            if !self.seen.insert(identity) {
                self.stats.duplicates += 1;
                return;
            }
            *machine.units.entry((sale.slot_number, day)).or_default() += sale.quantity;
        }
    }

    pub fn error(&mut self, line: u64, message: impl std::fmt::Display) {
        self.stats.errors += 1;
        if self.stats.first_errors.len() < KEPT_ERRORS {
            self.stats
                .first_errors
                .push(format!("line {line}: {message}"));
        }
    }

    /// Reads JSON Lines telemetry (single events or whole envelopes per line).
    pub fn read(&mut self, input: impl BufRead) -> Result<(), std::io::Error> {
        for (n, line) in input.split(b'\n').enumerate() {
            let line = line?;
            let number = n as u64 + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.stats.lines += 1;
            decode::decode_line_each(&line, |r| match r {
                Ok(e) => self.event(e),
                Err(e) => self.error(number, e),
            });
        }
        Ok(())
    }

    /// The daily series, with each machine's location type from `registry`.
    pub fn finish(self, registry: &[RegistryRecord]) -> Result<History, ForecastError> {
        let mut location_types = HashMap::new();
        for r in registry {
            if let RegistryRecord::Location(l) = r {
                location_types.insert(l.location_id.as_str(), l.location_type);
            }
        }
        let mut machine_types = HashMap::new();
        for r in registry {
            if let RegistryRecord::Machine(m) = r
                && let Some(location) = &m.location_id
                && let Some(t) = location_types.get(location.as_str())
            {
                machine_types.insert(m.machine_id.clone(), *t);
            }
        }
        let first = self.machines.values().filter_map(|m| m.first_day).min();
        let last = self
            .machines
            .values()
            .filter_map(|m| m.units.keys().map(|(_, d)| *d).max().or(m.first_day))
            .max();
        let (Some(start_day), Some(last)) = (first, last) else {
            return Err(ForecastError::Empty);
        };
        let days = usize::try_from(last - start_day + 1).map_err(|_| ForecastError::Empty)?;
        if days > MAX_DAYS {
            return Err(ForecastError::Span { days });
        }
        let mut machines: Vec<MachineSeries> = self
            .machines
            .into_iter()
            .map(|(machine_id, b)| {
                let mut units = vec![0u32; days];
                let mut slots: Vec<SlotSeries> = Vec::new();
                for ((slot, day), n) in b.units {
                    let d = (day - start_day) as usize;
                    units[d] = units[d].saturating_add(n);
                    if slots.last().is_none_or(|s| s.slot_number != slot) {
                        slots.push(SlotSeries {
                            slot_number: slot,
                            first_sale: d,
                            units: vec![0; days],
                        });
                    }
                    if let Some(s) = slots.last_mut() {
                        s.units[d] = n;
                        s.first_sale = s.first_sale.min(d);
                    }
                }
                MachineSeries {
                    location_type: machine_types.get(&machine_id).copied(),
                    first_day: b.first_day.map_or(0, |d| (d - start_day) as usize),
                    machine_id,
                    units,
                    slots,
                }
            })
            .collect();
        machines.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
        Ok(History {
            start_day,
            days,
            machines,
            stats: self.stats,
        })
    }
}

/// The longest history read (ten years): a date far off is an error, not a huge allocation.
pub const MAX_DAYS: usize = 3660;

/// Reads a history file, and a registry file (JSON Lines) if given.
pub fn read(path: &Path, registry: Option<&Path>) -> Result<History, ForecastError> {
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|e| ForecastError::Io(p.display().to_string(), e))
    };
    let mut builder = HistoryBuilder::default();
    builder
        .read(std::io::BufReader::with_capacity(1 << 20, open(path)?))
        .map_err(|e| ForecastError::Io(path.display().to_string(), e))?;
    let mut records = Vec::new();
    if let Some(r) = registry {
        let file = std::io::BufReader::new(open(r)?);
        for (n, line) in file.lines().enumerate() {
            let line = line.map_err(|e| ForecastError::Io(r.display().to_string(), e))?;
            if line.trim().is_empty() {
                continue;
            }
            match decode::decode_registry(line.as_bytes()) {
                Ok(record) => records.push(record),
                Err(e) => {
                    return Err(ForecastError::Registry {
                        file: r.display().to_string(),
                        line: n + 1,
                        message: e.to_string(),
                    });
                }
            }
        }
    }
    builder.finish(&records)
}

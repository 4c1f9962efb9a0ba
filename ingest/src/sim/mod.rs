//! The simulated fleet as a source, on an accelerated clock.
//!
//! The simulated clock is the ingestion clock: every `step` of wall time the fleet advances by
//! `speed × step`, its envelopes are fed to the engine (each machine to the worker that owns it),
//! and every worker is advanced to the new simulated time, so the views move even when no machine
//! says anything. The loop runs until `stop` is raised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vendflow_dataflows::{Batch, Feeders, Time};
use vendflow_firmware::Fleet;
use vendflow_protocol::Timestamp;

use crate::IngestError;

/// How the simulation is paced.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Simulated milliseconds per wall-clock millisecond.
    pub speed: f64,
    /// Wall time between fleet steps.
    pub step: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            speed: 60.0,
            step: Duration::from_millis(100),
        }
    }
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Sends the fleet's registry, at the fleet's start time.
pub fn register(fleet: &Fleet, feeders: &mut Feeders) -> Result<(), IngestError> {
    let start = fleet.now().0.max(0) as Time;
    let registry = fleet.registry().iter().map(|r| (r.clone(), 1)).collect();
    feeders.send(
        start,
        Batch {
            registry,
            ..Batch::default()
        },
    )?;
    feeders.advance_all(start)?;
    Ok(())
}

/// Runs the fleet into the engine until `stop`; calls `tick` with the simulated time after each step.
pub fn run(
    fleet: &mut Fleet,
    feeders: &mut Feeders,
    pace: &Pace,
    stop: &AtomicBool,
    mut tick: impl FnMut(Timestamp),
) -> Result<(), IngestError> {
    // The simulated clock follows the wall clock × speed, but never jumps more than two steps'
    // worth at once: if feeding falls behind (a slow machine, a debug build), the simulation
    // slows down instead of delivering minutes of heartbeats in one burst, which would make
    // every machine look silent (offline) until the burst lands.
    let max_step = (pace.step.as_secs_f64() * 1000.0 * pace.speed * 2.0) as i64;
    let mut behind_reported = false;
    let wall_start = Instant::now();
    let sim_start = fleet.now().0;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(pace.step);
        let elapsed = wall_start.elapsed().as_secs_f64() * 1000.0;
        let target = sim_start + (elapsed * pace.speed) as i64;
        let to = Timestamp(target.min(fleet.now().0 + max_step.max(1)));
        if to.0 < target && !behind_reported {
            behind_reported = true;
            tracing::warn!(
                speed = pace.speed,
                "the simulation cannot keep up with its speed; simulated time runs slower"
            );
        }
        step(fleet, feeders, to)?;
        tick(to);
    }
    Ok(())
}

/// Advances the fleet to `to` and feeds what it delivered.
///
/// Each envelope is ingested at its own latest event time (never later than `to`), in time
/// order, as a replay would: a view at any frontier then holds everything delivered before it,
/// whatever the step size.
pub fn step(fleet: &mut Fleet, feeders: &mut Feeders, to: Timestamp) -> Result<(), IngestError> {
    let end = to.0.max(0) as Time;
    let mut envelopes: Vec<(Time, _)> = fleet
        .advance(to)
        .into_iter()
        .map(|env| {
            let latest = env
                .events
                .iter()
                .map(|e| e.timestamp.0)
                .max()
                .unwrap_or(to.0);
            ((latest.max(0) as Time).min(end), env)
        })
        .collect();
    envelopes.sort_by_key(|(time, _)| *time);
    for (time, envelope) in envelopes {
        let key = hash(envelope.machine_id.as_str());
        feeders.send_keyed(
            key,
            time,
            Batch {
                events: envelope.events,
                ..Batch::default()
            },
        )?;
    }
    feeders.advance_all(end)?;
    Ok(())
}

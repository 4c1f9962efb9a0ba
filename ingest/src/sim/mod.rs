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
    let wall_start = Instant::now();
    let sim_start = fleet.now().0;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(pace.step);
        let elapsed = wall_start.elapsed().as_secs_f64() * 1000.0;
        let to = Timestamp(sim_start + (elapsed * pace.speed) as i64);
        step(fleet, feeders, to)?;
        tick(to);
    }
    Ok(())
}

/// Advances the fleet to `to` and feeds what it delivered.
pub fn step(fleet: &mut Fleet, feeders: &mut Feeders, to: Timestamp) -> Result<(), IngestError> {
    let time = to.0.max(0) as Time;
    for envelope in fleet.advance(to) {
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
    feeders.advance_all(time)?;
    Ok(())
}

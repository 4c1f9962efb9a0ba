//! The simulated fleet's registry as a source. The fleet's telemetry reaches the engine the way
//! a real fleet's does: signed envelopes over MQTT (`vendflow_firmware::mqtt`, then
//! [`crate::mqtt`] or the bridge).

use vendflow_dataflows::{Batch, Feeders, Time};
use vendflow_firmware::Fleet;

use crate::IngestError;

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

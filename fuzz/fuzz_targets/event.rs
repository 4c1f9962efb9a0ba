//! A line of telemetry as a machine, a broker or a file hands it over: an event or an envelope
//! of events (`decode_line`), an envelope alone (`decode_envelope`), and a signed envelope's
//! signature check. Never a panic; what decodes survives its own wire form unchanged; and the
//! decoder's one-pass shortcut gives exactly what its exact path gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vendflow_protocol::auth::{MachineKey, StoredKey, claimed_machine, verify_envelope};
use vendflow_protocol::decode::{decode_envelope, decode_event, decode_event_exactly, decode_line};
use vendflow_protocol::MachineId;

fuzz_target!(|data: &[u8]| {
    for event in decode_line(data).into_iter().flatten() {
        let line = event.to_json_line();
        let again: Vec<_> = decode_line(line.as_bytes());
        assert_eq!(again.len(), 1, "{line}");
        assert_eq!(again[0].as_ref().ok(), Some(&event), "{line}");
    }
    let envelope = MachineId::parse("m1").ok();
    for machine in [None, envelope.as_ref()] {
        assert_eq!(decode_event(data, machine), decode_event_exactly(data, machine));
    }
    let _ = decode_envelope(data);
    let _ = claimed_machine(data);
    let key = MachineKey::from_secret("fuzz");
    let _ = verify_envelope(data, |_| Some(StoredKey::PublicKey(key.public())));
    let _ = verify_envelope(data, |_| Some(StoredKey::Legacy(key.legacy())));
});

//! A registry record (location, machine with its planogram, lease, lease event), as the
//! registry file, the Kafka registry topic and the REST API take it. Never a panic; what
//! decodes survives its own wire form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vendflow_protocol::decode::decode_registry;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_registry(data) {
        let line = record.to_json_line();
        let again = decode_registry(line.as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&record), "{line}");
    }
});

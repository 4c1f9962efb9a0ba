//! A command on `machine-commands` (and on a machine's MQTT command topic). Never a panic; what
//! decodes survives its own wire form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vendflow_protocol::command::decode_command;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = decode_command(data) {
        let line = command.to_json();
        let again = decode_command(line.as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&command), "{line}");
    }
});

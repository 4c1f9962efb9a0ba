//! An EVA-DTS / DEX audit file (`vendflow import dex`, or a machine's `dex` event). Never a
//! panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = vendflow_protocol::dex::parse(&text);
});

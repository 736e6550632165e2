//! Fuzz the control-socket request parser: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = screengate_server::control::parse_request(data);
});

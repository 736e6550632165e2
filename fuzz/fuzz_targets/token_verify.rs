//! Fuzz token parsing and verification: no input panics, none verifies.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use screengate_token::{Authority, Channel, DeviceKey, ManualClock};

fn authority() -> &'static Authority<ManualClock> {
    static A: OnceLock<Authority<ManualClock>> = OnceLock::new();
    A.get_or_init(|| {
        Authority::new(
            &DeviceKey::from_bytes([7; 32]),
            Duration::from_secs(30),
            ManualClock::new(),
        )
        .unwrap_or_else(|e| panic!("authority: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for ch in [Channel::Display, Channel::Native] {
        if authority().verify(&text, ch).is_ok() {
            panic!("a fuzzed token verified");
        }
    }
    let _ = screengate_token::claimed_id_prefix(&text);
});
